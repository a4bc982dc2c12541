"""PRISM: download (or generate) the raw files, parse users and dialogs, split users, write comparisons.

    cd PRISM && python prepare.py              # HannahRoseKirk/prism-alignment from the hub
    cd PRISM && python prepare.py --offline    # generated files in the same format (offline/prism.py)

Reads: survey.jsonl, conversations.jsonl, utterances.jsonl in the data folder, downloaded there through
huggingface_hub (valid files already there are reused; a bad download is deleted); offline: written
there by the generator, with ground_truth.* beside them.
Writes (data folder): prism_data_user.json, prism_data_dialog.json, prism_split_ids_50.json (the seed-123
seen/unseen split of the original), train.parquet and test.parquet (one row per (chosen, rejected)
response of a turn, the dialog so far as the prompt; columns split, seen, user_id, dialog_id, turn_nb,
total_turn_nb, prompt, chosen, rejected) and prepare_summary.json (counts).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import harness  # noqa: E402
import prism_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False            # True: generated raw files (offline/prism.py) instead of the hub, no network
data_dir = "data/prism"
dataset = prism_data.HUB_DATASET
split_seed = 123           # the original split's numpy seed (reproduced exactly)
seed = 0                   # offline generator: seed of texts, users and planted labels
offline_users = 240        # offline generator: survey rows (some with 0 or few conversations)
personal_scale = 1.0       # offline generator: strength of the users' personal tastes (0: the null world, where
                           # every user's reward is the shared head alone, with the same label noise)
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, _ = harness.script_dirs(__file__, settings)
this_command = harness.command_line("prepare.py", settings)

if offline:
    import offline as generated
    from offline import prism as offline_prism
    from offline.planted import truth_files
    generated.ensure_generated(
        data_path, "prism", offline_prism.GENERATOR_VERSION,
        {"seed": seed, "n_users": offline_users, "personal_scale": personal_scale},
        [*prism_data.RAW_FILES, *truth_files(offline_prism.GROUND_TRUTH)],
        lambda: offline_prism.generate(data_path, seed=seed, n_users=offline_users, personal_scale=personal_scale))
else:
    data_path.mkdir(parents=True, exist_ok=True)
    prism_data.download_raw(data_path, dataset, harness.command_line("prepare.py", settings) + " --offline")

data_user, data_dialog, counts = prism_data.parse_raw(data_path)
if not data_user or not data_dialog:
    raise SystemExit(f"error: the raw files in {data_path} hold no usable user or dialog ({counts}); nothing "
                     f"was written")
split_ids = prism_data.split_users(data_user, seed=split_seed)
n_seen, n_unseen = len(split_ids["seen_user_ids"]), len(split_ids["unseen_user_ids"])
if not n_seen or not n_unseen:
    raise SystemExit(f"error: the split of {data_path} has {n_seen} seen and {n_unseen} unseen users (more than 5 "
                     f"dialogs are needed); nothing was written")
comparisons = prism_data.build_comparisons(data_dialog, split_ids)

harness.write_json_atomic(data_path / prism_data.USER_FILE, data_user)
harness.write_json_atomic(data_path / prism_data.DIALOG_FILE, data_dialog)
harness.write_json_atomic(data_path / prism_data.SPLIT_FILE, split_ids)
print(f"users: {counts['survey_rows']} in the survey, {counts['users_zero_conversations']} skipped with 0 "
      f"completed conversations, {counts['users_dropped_no_dialog']} dropped with no usable dialog, "
      f"{counts['users']} kept ({counts['users_without_conversation_rows']} of them without conversation rows)")
print(f"dialogs: {counts['conversations']} conversations, {counts['dialogs_dropped_no_usable_turn']} dropped "
      f"without a usable turn, {counts['conversations_of_unknown_users']} of skipped users, "
      f"{counts['dialogs']} kept")
print(f"split (seed {split_seed}): {n_seen} seen users, {n_unseen} unseen users (more than 5 dialogs), "
      f"{counts['users'] - n_seen - n_unseen} users with 5 or fewer dialogs left out; "
      f"{len(split_ids['train_dialog_ids'])} train dialogs, {len(split_ids['test_dialog_ids'])} test dialogs")
summary = {"settings": settings, "counts": counts, "seen_users": n_seen, "unseen_users": n_unseen,
           "comparisons": {}}
for split in prism_data.SPLITS:
    rows = comparisons[split]
    out = data_path / prism_data.COMPARISONS_FILE.format(split=split)
    prism_data.write_comparisons(rows, out)
    n_seen_rows = sum(r["seen"] for r in rows)
    summary["comparisons"][split] = {"total": len(rows), "seen": n_seen_rows, "unseen": len(rows) - n_seen_rows}
    print(f"{split}: {len(rows)} comparisons ({n_seen_rows} of seen users, {len(rows) - n_seen_rows} of unseen "
          f"users) -> {out}")
harness.write_json_atomic(data_path / prism_data.PREPARE_SUMMARY_FILE, summary)
print(f"next: {this_command.replace('prepare.py', 'generate-prism-embeddings.py')}")

"""Your own population: any multi-user comparisons -> checked comparisons, split into seen and new users.

    cd CustomData && python prepare.py --comparisons=mine.jsonl     # a local .jsonl, .json, .parquet or .csv
    cd CustomData && python prepare.py --comparisons=mine.csv --columns='{"user_id": "annotator_id"}'
    cd CustomData && python prepare.py --hub_dataset=NAME [--hub_config=...] [--hub_split=train]
    cd CustomData && python prepare.py --preset=multipref                  # allenai/multipref from the hub
    cd CustomData && python prepare.py --preset=community_alignment        # facebook/community-alignment-dataset
    cd CustomData && python prepare.py --offline                           # generated comparisons (offline/custom.py)
    cd CustomData && python prepare.py --offline --comparisons=mine.jsonl  # your file, for the tiny backbone

Reads: one comparison per row, columns user_id, prompt (text, or a list of {"role", "content"} chat
messages), chosen, rejected; or the A/B form, response_a, response_b and preference ("a", "b", "tie");
other column names given with --columns='{"user_id": "annotator_id", ...}' (ours: yours). A preset
reads its dataset's own columns (custom_data.PRESETS, with where each mapping comes from), from the hub
or from a local file of that dataset (--comparisons). --offline selects the tiny backbone (data go to
data/custom-offline); without --comparisons it writes and reads <data>/raw/comparisons.jsonl, generated
from the planted world (+ ground_truth.* beside it), with a few rows of every drop reason.
Checks (custom_data.py): a malformed row is an error naming the file and the line (.jsonl, .csv: the
header is line 1) or row (.json, .parquet, hub); every comparison read is kept or dropped for one reason,
counted: missing_user, empty_text, tie, chosen_equals_rejected, duplicate_row, below_min_comparisons,
single_prompt_seen_user.
Split (seeded by `seed`; custom_data.split_population): users with fewer than `min_comparisons`
comparisons are dropped; the rest, sorted by id and shuffled, are cut into new (unseen) users, the first
round(unseen_fraction * n) (at least 1), and seen users (at least 2). A seen user's distinct prompts are
shuffled and round(seen_test_fraction * P) of them (at least 1, at most P - 1) become its test prompts, the
rest its train prompts: a prompt is never in both (a seen user with a single distinct prompt is dropped).
A new user's comparisons are shuffled: the first min(num_shots, m - 1) are its few-shot train part, the
rest its test part. Too few users to split is an error naming the counts; nothing is written then.
Writes (data folder): train.parquet and test.parquet (columns split, seen, user_id, prompt (its JSON
encoding), chosen, rejected, source (the input's line or row)) and, last, prepare.json: settings, the
input (path and sha256, or hub dataset, config, split and fingerprint), rows_read, comparisons_read (a
preset's row gives several; otherwise equal), rows_dropped {reason: count} (comparisons_read = kept +
the sum), users, comparisons per group, the split's rules and the prepared files' sha256.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import custom_data  # noqa: E402

import harness  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False                # True: the tiny backbone; without --comparisons, generated comparisons too
data_dir = "data/custom"
comparisons: str | None = None   # your file: .jsonl, .json (a list of rows), .parquet or .csv
columns: str | None = None       # JSON {our column: yours}, e.g. '{"user_id": "annotator_id"}'
hub_dataset: str | None = None   # a hub dataset in the same schema (or a preset's, with --preset)
hub_config: str | None = None    # None: the preset's config, else the dataset's default
hub_split: str | None = None     # None: the preset's split, else "train"
preset: str | None = None        # "multipref" | "community_alignment": that dataset's columns (and hub id)
seed = 0                       # the split
min_comparisons = 20           # fewer: the user is dropped (2 x num_shots: a new user's test part is at least its few-shot part)
unseen_fraction = 0.5          # new users among those kept: the reported figure averages as many users as the basis
seen_test_fraction = 0.5       # a seen user's prompts held out as its test prompts
num_shots = 10                 # a new user's few-shot train comparisons, at most (the rest: its test part); the
                               # order of the paper's settings: PRISM's new users have ~12, PersonalLLM's 9
offline_seed = 0               # offline generator: texts, users and planted labels
offline_users = 60             # offline generator: regular users (plus one below min_comparisons)
personal_scale = 1.0           # offline generator: the personal part of each user's reward (0: the shared part alone)
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, _ = harness.script_dirs(__file__, settings)
this_command = harness.command_line("prepare.py", settings)

if preset is not None and preset not in custom_data.PRESETS:
    raise SystemExit(f"error: --preset={preset!r}: choose among {', '.join(custom_data.PRESETS)}")
if comparisons is not None and hub_dataset is not None:
    raise SystemExit("error: give --comparisons=FILE or --hub_dataset=NAME, not both")
if personal_scale < 0:
    raise SystemExit(f"error: --personal_scale={personal_scale}: must be at least 0")
column_map = custom_data.parse_columns(columns)
if comparisons is not None:
    # a path given on the command line is from the working folder, one edited in above from this folder
    path = Path(comparisons).expanduser()
    path = path.resolve() if "comparisons" in settings.overridden else (Path(__file__).resolve().parent / path)
    source = {"kind": "file", "path": str(path)}
elif hub_dataset is not None or preset is not None:
    if offline:
        raise SystemExit("error: --offline reads no hub dataset; give the file with --comparisons=FILE (in the "
                         "preset's schema with --preset), or drop --offline")
    source = custom_data.hub_source(hub_dataset, hub_config, hub_split, preset)
elif offline:
    import offline as generated
    from offline import custom as offline_custom

    raw = data_path / "raw"
    generated.ensure_generated(raw, "custom", offline_custom.GENERATOR_VERSION,
                               {"seed": offline_seed, "n_users": offline_users, "personal_scale": personal_scale},
                               [offline_custom.COMPARISONS, "ground_truth.json", "ground_truth.safetensors"],
                               lambda: offline_custom.generate(raw, seed=offline_seed, n_users=offline_users,
                                                               personal_scale=personal_scale))
    path = data_path / custom_data.RAW_FILE
    source = {"kind": "file", "path": str(path), "generated": True}
else:
    raise SystemExit("error: no input: give --comparisons=FILE (.jsonl, .json, .parquet, .csv), --hub_dataset=NAME, "
                     f"--preset={' or --preset='.join(custom_data.PRESETS)}, or --offline for generated data")

if source["kind"] == "file":
    rows = custom_data.read_file(path)
    name_in_errors = str(path)
else:
    loaded, fingerprint = custom_data.load_hub(source["dataset"], source["config"], source["split"],
                                               harness.command_line("prepare.py", settings) + " --offline")
    source["fingerprint"] = fingerprint
    rows = custom_data.hub_rows(loaded)
    name_in_errors = f"{source['dataset']} ({source['config'] or 'default config'}, split {source['split']})"
kept, report = custom_data.read_comparisons(rows, name_in_errors, preset=preset, columns=column_map)
if source["kind"] == "file":
    source["sha256"] = harness.file_sha256(path)
source.update(format=path.suffix.lower() if source["kind"] == "file" else "hub", preset=preset, columns=column_map,
              form=report["form"])
prepared, split = custom_data.split_population(kept, seed=seed, min_comparisons=min_comparisons,
                                               unseen_fraction=unseen_fraction, seen_test_fraction=seen_test_fraction,
                                               num_shots=num_shots, source=name_in_errors)
dropped = {reason: report["rows_dropped"][reason] + split["dropped"].get(reason, 0)
           for reason in custom_data.DROP_REASONS}
assert report["comparisons_read"] == split["comparisons"]["kept"] + sum(dropped.values())   # every one counted once

files = {}
for part in custom_data.SPLITS:
    out = data_path / custom_data.COMPARISONS_FILE.format(split=part)
    custom_data.write_comparisons([r for r in prepared if r["split"] == part], out)
    files[out.name] = harness.file_sha256(out)
summary = {"settings": settings, "input": source, "rows_read": report["rows_read"],
           "comparisons_read": report["comparisons_read"], "rows_dropped": dropped,
           **({"preset_counts": report["preset_counts"]} if preset else {}),
           "users": split["users"], "comparisons": split["comparisons"], "min_comparisons": min_comparisons,
           "split": {"seed": seed, "unseen_fraction": unseen_fraction, "seen_test_fraction": seen_test_fraction,
                     "num_shots": num_shots, "rules": custom_data.SPLIT_RULES},
           "seen_users": split["seen_users"], "unseen_users": split["unseen_users"], "files": files}
harness.write_json_atomic(data_path / custom_data.PREPARE_FILE, summary)

what = f"{report['rows_read']} rows" + (f" ({report['comparisons_read']} comparisons)" if preset else "")
print(f"read {what} from {name_in_errors}")
print("dropped: " + ", ".join(f"{reason} {n}" for reason, n in dropped.items()) + f" (total {sum(dropped.values())})")
u, c = split["users"], split["comparisons"]
print(f"kept {c['kept']} comparisons of {u['kept']} users: {u['seen']} seen (train {c['seen_train']}, test "
      f"{c['seen_test']}), {u['unseen']} new (few-shot {c['unseen_train']}, test {c['unseen_test']})")
print(f"wrote {', '.join(files)} and {custom_data.PREPARE_FILE} in {data_path}")
print(f"next: {this_command.replace('prepare.py', 'generate-custom-embeddings.py')}")

"""Your own reward model, on PRISM: fit new users' weights against this folder's basis, export one user's
reward model, reload it with from_pretrained alone and score everyone's held-out responses
(personalize.py's fit, export and score, end to end).

    cd PRISM && python personalize_demo.py --offline    # after prepare, the embeddings and train_basis (--offline)
    cd PRISM && python personalize_demo.py              # the same on the real data and Skywork

Reads: the prepared PRISM comparisons (prepare.py) and a basis V file with the train_basis.json beside it
(train_basis.py; default results/PRISM_V_lore_K_5_alpha_10000.0.pt). The first `demo_users` unseen users
(by id) that have train and test comparisons and a figure in that train_basis.json are fitted from their
train comparisons (V frozen, personalize.fit), the first is exported (personalize.export_model) and
reloaded, and everyone's test responses are scored (personalize.score). Prints each user's held-out
accuracy (a tie is wrong) next to the pipeline's figure for that user.
Writes (results folder): personalize_demo.json / .md, user_weights.safetensors / .json, scores.csv /
.json, the demo's comparisons and responses files, and reward_model_<user>/. The demo owns its results
folder (default results/personalize(-offline) beside this script, not personalize.py's): a rerun
replaces its weights and its exported model there (fit and export_model with overwrite=True), so do not
point --results_dir at a folder of your own fits.
"""
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedding  # noqa: E402
import harness  # noqa: E402
import personalize  # noqa: E402
import prism_data  # noqa: E402
from offline import script_model  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False               # True: the built-in tiny model, the offline PRISM data and basis, no network
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
dtype = "bfloat16"            # offline: float32 unless given
attn_implementation: str | None = None  # None: the library default (sdpa)
device: str | None = None     # None: cuda if available, else cpu (the weights are fitted on the cpu)
data_dir = "data/prism"
basis = "results/PRISM_V_lore_K_5_alpha_10000.0.pt"   # offline: results-offline/...
results_dir = "results/personalize"
demo_users = 5                # new PRISM users to fit
seed = 0
num_iterations: int | None = None  # None: the pipeline's few-shot iterations (train_basis.json), else 500
learning_rate: float | None = None  # None: the pipeline's few-shot learning rate, else 0.5
batch_size = 16               # conversations per forward pass (at most)
max_tokens: int | None = 32768  # padded tokens per forward pass (at most); None: rows only
max_length: int | None = None  # tokens per conversation, oldest dropped (BOS and the end kept); None: all
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
if demo_users < 1:
    raise harness.SettingsError(f"error: --demo_users={demo_users}: the demo needs at least one user to fit")
data_path, results_path = harness.script_dirs(__file__, settings)
model_name, dtype = script_model(settings)
here = Path(__file__).resolve().parent
basis_path = Path(basis).expanduser().resolve() if "basis" in settings.overridden else \
    here / Path(basis).parent.with_name(Path(basis).parent.name + "-offline" * offline) / Path(basis).name
made_by = "python prepare.py{o} && python generate-prism-embeddings.py{o} && python train_basis.py{o}".format(
    o=" --offline" if offline else "")
engine = dict(batch_size=batch_size, max_tokens=max_tokens, max_length=max_length)

# the pipeline's per-user figures for this basis: the row of its K and alpha in the train_basis.json beside it
personalize.check_basis(personalize.read_basis(harness.require_file(basis_path, made_by)), str(basis_path),
                        model_name)
name = re.search(r"_V_lore_K_(\d+)_alpha_(.+)\.(pt|safetensors)$", basis_path.name)
try:
    rows_of_fit = json.loads((basis_path.parent / "train_basis.json").read_text())["results"]
    figures = next(r["per_user"]["unseen_test"] for r in rows_of_fit
                   if name and r["K"] == int(name[1]) and float(r["alpha"]) == float(name[2]))
except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
    raise SystemExit(f"error: the demo needs the pipeline's per-user figures for {basis_path.name} from "
                     f"{basis_path.parent / 'train_basis.json'}, which it cannot read ({type(e).__name__}); run "
                     f"`{made_by}`") from None

prepared = prism_data.load_prepared(data_path, made_by)
rows = {split: {u: [] for u in figures} for split in prepared}        # the unseen users' rows, by split
for split in prepared:
    for r in prepared[split]:
        rows[split].get(r["user_id"], []).append(r)
chosen = [u for u in sorted(figures) if figures[u] is not None and rows["test"][u]
          and any(r["chosen"] != r["rejected"] for r in rows["train"][u])][:demo_users]
if not chosen:
    raise SystemExit(f"error: no unseen user in {data_path} has train and test comparisons and a figure in "
                     f"train_basis.json; run `{made_by}`")
print(f"demo: {len(chosen)} new PRISM users {', '.join(chosen)}; basis {basis_path}")
comparisons_file, responses_file = results_path / "demo_comparisons.jsonl", results_path / "demo_responses.jsonl"
harness.write_jsonl_atomic(comparisons_file, [{k: r[k] for k in ("user_id", "prompt", "chosen", "rejected")}
                                              for u in chosen for r in rows["train"][u]])
heldout = [r for u in chosen for r in rows["test"][u]]        # scored: every chosen, then every rejected side
harness.write_jsonl_atomic(responses_file, [{"id": f"{r['user_id']}:{side}", "prompt": r["prompt"],
                                             "response": r[side]} for side in ("chosen", "rejected") for r in heldout])
backbone = personalize.load_backbone(model_name, dtype, attn_implementation, device)
weights_path = personalize.fit(comparisons_file, basis_path, results_path, model_name=model_name, dtype=dtype,
                               seed=seed, num_iterations=num_iterations, learning_rate=learning_rate,
                               settings=settings, backbone=backbone, overwrite=True, **engine)  # its own folder
scored, ids, table, in_force = personalize.score(responses_file, weights_path, chosen, model_name=model_name,
                                                 dtype=dtype, backbone=backbone, **engine)
in_force_settings = {**settings, "model_name": model_name, "dtype": dtype, "basis": str(basis_path)}  # not defaults
personalize.write_scores(scored, ids, table, results_path, {**in_force, "settings": in_force_settings})
owner = torch.tensor([chosen.index(r["user_id"]) for r in heldout])
correct = (table[:len(heldout)] - table[len(heldout):]).gather(1, owner[:, None])[:, 0] > 0    # a tie is wrong

first = chosen[0]      # exported, then reloaded with from_pretrained alone (the demo owns this folder)
folder = personalize.export_model(weights_path, first, results_path / personalize.MODEL_FOLDER.format(
    user=personalize.safe_name(first)), overwrite=True, backbone=backbone)
logits = personalize.reloaded_logits(folder, [embedding.conversation(r["prompt"], r[side])
                                              for side in ("chosen", "rejected") for r in rows["test"][first]],
                                     device).view(2, -1)
users_table = [{"user_id": u, "fewshot_comparisons": len(rows["train"][u]), "heldout_comparisons": len(rows["test"][u]),
                "pipeline_accuracy": figures[u], "score_accuracy": float(correct[owner == j].float().mean()),
                "exported_model_accuracy": float((logits[0] > logits[1]).float().mean()) if u == first else None}
               for j, u in enumerate(chosen)]
percent = (lambda x: "-" if x is None else f"{100 * x:.1f}")
markdown = [f"# Your own reward model: {len(chosen)} new PRISM users", "",
            f"Basis {basis_path.name}, backbone {Path(str(model_name)).name}. Accuracy (%) on each user's held-out "
            f"(test) comparisons; a tie is wrong.", "",
            "| user | few-shot comparisons | held-out comparisons | pipeline (train_basis.json) | "
            "personalize.py score | exported model, reloaded |", "|---|---|---|---|---|---|"]
markdown += [f"| {u['user_id']} | {u['fewshot_comparisons']} | {u['heldout_comparisons']} | "
             f"{percent(u['pipeline_accuracy'])} | {percent(u['score_accuracy'])} | "
             f"{percent(u['exported_model_accuracy'])} |" for u in users_table]
markdown += ["", f"User {first}'s model was exported to {folder.name}/ and reloaded with "
             f"AutoModelForSequenceClassification.from_pretrained alone (its own logits). The pipeline fitted all "
             f"{len(figures)} unseen users at once from another seeded start than this fit of {len(chosen)}, so a "
             f"user's weights, and a held-out prediction close to a tie, can differ."]
harness.write_json_atomic(results_path / "personalize_demo.json", {
    "name": "personalize_demo", "settings": in_force_settings, "basis": str(basis_path), "backbone": str(model_name),
    "weights": str(weights_path), "exported_folder": str(folder), "users": users_table})
harness.write_text_atomic(results_path / "personalize_demo.md", "\n".join(markdown) + "\n")
print("\n" + "\n".join(markdown) + f"\n\nwrote personalize_demo.json, .md and the files above in {results_path}")

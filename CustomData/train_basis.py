"""Your own population: learn a LoRe basis on the seen users and personalise it for the new users (accuracy vs rank).

    cd CustomData && python train_basis.py              # after prepare.py and the embeddings
    cd CustomData && python train_basis.py --offline    # built-in tiny model (generated data or your file)

Reads (data folder): train.parquet, test.parquet, prepare.json (prepare.py: the split is made there),
conversation_embeddings and reward_head .safetensors (generate-custom-embeddings.py).
Groups: seen users' train prompts (the basis and their weights are fitted on them) and test prompts;
new users' few-shot comparisons (only their K weights are fitted, V frozen) and their other comparisons.
Then utils.run over K_list x alpha_list (K = 0: the backbone's own reward head); with --offline on the
generated data, the planted (true) rewards' accuracy on the same groups too.
Writes (results folder): train_basis.json (settings, seed, prepare.json's counts and user ids, per-K
means and raw stds), train_basis.md (table), generalization_accuracy_vs_rank_lore_alpha_{alpha}.png, the
fitted bases Custom_V_lore_K_{K}_alpha_{alpha}.pt / Custom_W_lore_seen_{K}_{alpha}.pt for K >= 1 and,
with `baselines` or several `seeds`, paper_table.{json,md}.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import custom_data  # noqa: E402

import baselines as baseline_methods  # noqa: E402
import harness  # noqa: E402
import reports  # noqa: E402
import utils  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False               # True: built-in tiny model and the data prepared with --offline, no network
data_dir = "data/custom"
results_dir = "results"
seed = 0                      # the fits (the split's seed is prepare.py's)
K_list = [0, 1, 2, 3, 4, 5]
alpha_list = [0.0]
num_iterations = 1000         # joint fit (LoRe)
learning_rate = 0.5
fewshot_iterations = 500      # new users' weights (PersonalizeBatch)
fewshot_learning_rate = 0.1
baselines: list[str] = []     # e.g. ["PAL", "VPL"]: the paper's comparison beside LoRe (none: LoRe alone)
baseline_settings: str | None = None  # JSON {method: {hyperparameter: value}} for the baselines (PAL: also "grid")
seeds = 1                     # seeds seed, seed + 1, ...: with several, every figure is the mean over seeds ± std
device: str | None = None     # None: cuda if available, else cpu
overwrite = False             # True: replace saved bases (V/W files) fitted with other settings or data
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
baseline_hyper = harness.json_setting("baseline_settings", baseline_settings)
baseline_methods.check_methods(baselines, baseline_hyper)   # a bad name stops here, not after the fits
data_path, results_path = harness.script_dirs(__file__, settings)
harness.hold_lock(results_path, "train_basis")    # one run per results folder at a time
checkpoints = results_path / ".train_basis_fits"   # finished fits of this run: a killed run resumes

groups, users, V_ref, counts = custom_data.user_groups(
    data_path, harness.command_line("prepare.py", settings),
    harness.command_line("generate-custom-embeddings.py", settings))
N, N_unseen = len(users["seen"]), len(users["unseen"])
print(f"users: {N} seen, {N_unseen} new; comparisons: " + ", ".join(f"{k} {g.N}" for k, g in groups.items())
      + f"; d = {groups['seen_train'].d}")
extra = {"prepared": counts, "seen_users": users["seen"], "unseen_users": users["unseen"]}
if offline and (counts["input"] or {}).get("generated"):
    from offline import custom as offline_custom
    extra["planted_accuracy"] = offline_custom.planted_accuracy(data_path, groups, users)

start = time.time()
seed_list = list(range(seed, seed + seeds))
records = [record for s in seed_list for record in utils.run(
    K_list, alpha_list, V_ref, *groups.values(), N, N_unseen, device, num_iterations=num_iterations,
    learning_rate=learning_rate, fewshot_iterations=fewshot_iterations, fewshot_learning_rate=fewshot_learning_rate,
    seed=s, results_dir=results_path if s == seed else None, dataset_name="Custom", overwrite=overwrite,
    checkpoint_dir=checkpoints, save_bases=False).records]
methods = baseline_methods.evaluate_methods(baselines, groups, seed_list, V_ref=V_ref, hyper=baseline_hyper,
                                            device=device,
                                            dataset="your population") if baselines else []
extra["seconds"] = round(time.time() - start, 1)
reports.save_train_basis(results_path, "Your own population", settings, records, extra, user_ids=users,
                         methods=methods, bases="Custom", checkpoints=checkpoints)

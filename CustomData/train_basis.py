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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import custom_data  # noqa: E402

import experiment  # noqa: E402
import harness  # noqa: E402

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
experiment.check_baselines(settings)     # a bad name stops here, not after the fits
data_path, results_path = harness.script_dirs(__file__, settings)

groups, users, V_ref, counts = custom_data.user_groups(
    data_path, harness.command_line("prepare.py", settings),
    harness.command_line("generate-custom-embeddings.py", settings))
N, N_unseen = len(users["seen"]), len(users["unseen"])
print(f"users: {N} seen, {N_unseen} new; comparisons: " + ", ".join(f"{k} {g.N}" for k, g in groups.items())
      + f"; d = {groups['seen_train'].d}")
extra = {"prepared": counts, "seen_users": users["seen"], "unseen_users": users["unseen"]}
if offline and (counts["input"] or {}).get("generated"):
    from offline import custom as offline_custom
    extra["planted_accuracy"] = offline_custom.planted_accuracy(data_path, groups, users,
                                                                harness.command_line("prepare.py", settings))

experiment.train_basis(settings, results_path, "Your own population", "Custom", groups, V_ref, extra,
                       user_ids=users)

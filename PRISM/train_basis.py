"""PRISM: fit LoRe (cosine-regularised, alternating) for every rank K and evaluate seen and new users.

    cd PRISM && python train_basis.py              # real data (after prepare.py and the embeddings)
    cd PRISM && python train_basis.py --offline    # the built-in tiny model and generated data

Reads (data folder): prism_split_ids_50.json, train.parquet, test.parquet (prepare.py),
conversation_embeddings.safetensors, reward_head.safetensors (generate-prism-embeddings.py). Four groups
by (seen, split), users sorted by id: seen-train (LoRe training data), seen-test (seen users, unseen
prompts), unseen-train (few-shot data of new users), unseen-test (new users, unseen prompts). K = 0 is
the backbone's own reward head (V_ref, "ref"); K >= 1 is utils.run_regularized (utils.LoRe_regularized:
alternating W/V Adam steps, cosine pull towards V_ref with weight alpha warmed up over 20%-80% of the
iterations, pruned basis).
Writes (results folder): PRISM_V_lore_K_{K}_alpha_{alpha}.pt / PRISM_W_lore_seen_{K}_{alpha}.pt
(+ .safetensors) for every K >= 1, train_basis.json (settings, seed, per-K means and raw stds, cosines
of the basis to V_ref), train_basis.md (the table) and generalization_accuracy_vs_rank_lore_alpha_{alpha}.png.
Offline it also reports the accuracy of the planted (true) user rewards on each group.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import experiment  # noqa: E402
import harness  # noqa: E402
import prism_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False               # True: the built-in tiny model and the generated data, no network
data_dir = "data/prism"
results_dir = "results"
seed = 0
K_list = [0, 1, 5, 10, 15, 20, 25, 50]
alpha_list = [1e4]            # weight of the cosine pull towards the reference head
num_iterations = 20000        # LoRe_regularized iterations per (alpha, K)
learning_rate = 0.5
fewshot_iterations = 500      # few-shot fit of the new users' weights (V frozen)
fewshot_learning_rate = 0.5
baselines: list[str] = []     # e.g. ["PAL", "VPL"]: the paper's comparison beside LoRe (none: the original run)
baseline_settings: str | None = None  # JSON {method: {hyperparameter: value}} for the baselines (PAL: also "grid")
seeds = 1                     # seeds seed, seed + 1, ...: with several, every figure is the mean over seeds ± std
device: str | None = None     # None: cuda if available, else cpu
overwrite = False             # True: replace saved bases (V/W files) fitted with other settings or data
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
experiment.check_baselines(settings)     # a bad name stops here, not after the fits
data_path, results_path = harness.script_dirs(__file__, settings)

groups, users, V_ref = prism_data.user_groups(data_path, harness.command_line("prepare.py", settings),
                                              harness.command_line("generate-prism-embeddings.py", settings))
N, N_unseen = len(users["seen"]), len(users["unseen"])
counts = {"seen_users": N, "unseen_users": N_unseen, **{k: g.N for k, g in groups.items()}}
print(f"users: {N} seen, {N_unseen} unseen; comparisons: " + ", ".join(f"{k} {g.N}" for k, g in groups.items())
      + f"; d = {groups['seen_train'].d}")
extra = {"counts": counts}
if offline:
    from offline import prism as offline_prism
    extra["planted_accuracy"] = offline_prism.planted_accuracy(data_path, groups, users,
                                                               harness.command_line("prepare.py", settings))

experiment.train_basis(settings, results_path, "PRISM", "PRISM", groups, V_ref, extra, user_ids=users,
                       regularized=True)

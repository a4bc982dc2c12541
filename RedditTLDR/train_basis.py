"""Reddit TLDR: learn a LoRe basis on seen workers and personalise it for unseen workers (accuracy vs rank).

    cd RedditTLDR && python train_basis.py              # real data (after prepare.py and the embeddings)
    cd RedditTLDR && python train_basis.py --offline    # built-in tiny model and generated data

Reads (data folder): comparisons_{train,validation}.parquet (prepare.py), conversation_embeddings and
reward_head .safetensors (generate-tldr-embeddings.py).
Split: per split, workers sorted by count and the `drop_smallest` smallest dropped; the workers present
in both splits, sorted by id, shuffled with random seed `seed` and halved into seen and unseen (workers
lacking a side are skipped and counted). Seen worker: min(len, seen_train_size) random train
comparisons, test = all its validation comparisons; unseen worker: min(len, unseen_train_size) random
train comparisons as few-shot data, test = all its validation comparisons. Then utils.run over
K_list x alpha_list (K = 0: the backbone's own reward head).
Writes (results folder): train_basis.json (settings, seed, split counts and worker ids, per-K means
and raw stds), train_basis.md (table), generalization_accuracy_vs_rank_lore_alpha_{alpha}.png, and the
fitted bases TLDR_V_lore_K_{K}_alpha_{alpha}.pt / TLDR_W_lore_seen_{K}_{alpha}.pt for K >= 1.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import experiment  # noqa: E402
import harness  # noqa: E402
import tldr_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False               # True: built-in tiny model and generated data, no network
data_dir = "data/tldr"
results_dir = "results"
seed = 0                      # worker split and comparison draws (random.Random), and the fits
K_list = [0, 1, 2, 3, 4, 5, 6]
alpha_list = [0.0]
drop_smallest = 2             # workers dropped per split (the smallest by count)
seen_train_size = 150         # train comparisons per seen worker (at most)
unseen_train_size = 50        # few-shot comparisons per unseen worker (at most)
num_iterations = 1000         # joint fit (LoRe)
learning_rate = 0.5
fewshot_iterations = 500      # unseen users' weights (PersonalizeBatch)
fewshot_learning_rate = 0.1
baselines: list[str] = []     # e.g. ["PAL", "VPL"]: the paper's comparison beside LoRe (none: the original run)
baseline_settings: str | None = None  # JSON {method: {hyperparameter: value}} for the baselines (PAL: also "grid")
seeds = 1                     # seeds seed, seed + 1, ...: with several, every figure is the mean over seeds ± std
device: str | None = None     # None: cuda if available, else cpu
overwrite = False             # True: replace saved bases (V/W files) fitted with other settings or data
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
experiment.check_baselines(settings)     # a bad name stops here, not after the fits
data_path, results_path = harness.script_dirs(__file__, settings)

groups, users, V_ref, split_counts = tldr_data.user_groups(
    data_path, dict(seed=seed, drop_smallest=drop_smallest, seen_train_size=seen_train_size,
                    unseen_train_size=unseen_train_size),
    harness.command_line("prepare.py", settings), harness.command_line("generate-tldr-embeddings.py", settings))
N, N_unseen = len(users["seen"]), len(users["unseen"])
extra = {"split": split_counts, "seen_workers": users["seen"], "unseen_workers": users["unseen"]}
if offline:
    from offline import tldr as offline_tldr
    extra["planted_accuracy"] = offline_tldr.planted_accuracy(data_path, groups, users,
                                                              harness.command_line("prepare.py", settings))

experiment.train_basis(settings, results_path, "Reddit TLDR", "TLDR", groups, V_ref, extra, user_ids=users)

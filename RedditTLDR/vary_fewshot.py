"""Reddit TLDR: few-shot accuracy of unseen workers against the number of shots (LoRe basis fixed).

    cd RedditTLDR && python vary_fewshot.py              # real data (after prepare.py and the embeddings)
    cd RedditTLDR && python vary_fewshot.py --offline    # built-in tiny model and generated data

Reads (data folder): the prepared comparisons and the embeddings, as train_basis.py.
The worker split of train_basis.py (same seed: same seen and unseen workers, same seen train draws);
each unseen worker's few-shot pool is min(len, unseen_pool_size) random train comparisons. A joint fit
on the seen workers per K, then for every shot count `trials` seeded draws of that many comparisons
per unseen worker, a few-shot fit and the accuracy on the worker's validation comparisons
(utils.run_few_shot_vary_shots).
Writes (results folder): vary_fewshot.json (settings, seed, split counts, per (K, shots) mean, std over
trials and std over users), vary_fewshot.md (table) and fewshot_accuracy_vs_shots.png.
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
seed = 0                      # worker split and comparison draws, shot draws, fits
K_list = [5]
alpha_list = [0.0]
trials = 20                   # shot draws per shot count
num_shots = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
drop_smallest = 2             # workers dropped per split (the smallest by count)
seen_train_size = 150         # train comparisons per seen worker (at most)
unseen_pool_size = 100        # train comparisons per unseen worker that the shots are drawn from (at most)
num_iterations = 500          # joint fit (LoRe)
learning_rate = 0.5
fewshot_iterations = 500      # few-shot fit of every (trial, unseen worker) at once
fewshot_learning_rate = 0.1
device: str | None = None     # None: cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, results_path = harness.script_dirs(__file__, settings)

groups, users, V_ref, split_counts = tldr_data.user_groups(
    data_path, dict(seed=seed, drop_smallest=drop_smallest, seen_train_size=seen_train_size,
                    unseen_train_size=unseen_pool_size),
    harness.command_line("prepare.py", settings), harness.command_line("generate-tldr-embeddings.py", settings))
experiment.vary_fewshot(settings, results_path, "Reddit TLDR: unseen-worker accuracy vs shots", groups, V_ref,
                        {"split": split_counts, "seen_workers": users["seen"], "unseen_workers": users["unseen"]})

"""Your own population: few-shot accuracy of the new users against the number of shots (LoRe basis fixed).

    cd CustomData && python vary_fewshot.py              # after prepare.py and the embeddings
    cd CustomData && python vary_fewshot.py --offline    # built-in tiny model (generated data or your file)

Reads (data folder): the prepared comparisons and the embeddings, as train_basis.py.
A joint fit on the seen users' train prompts per K, then for every shot count `trials` seeded draws of
that many comparisons from each new user's few-shot part (prepare.py's num_shots of them: a larger shot
count is capped and marked so), a few-shot fit and the accuracy on the user's test part
(utils.run_few_shot_vary_shots).
Writes (results folder): vary_fewshot.json (settings, seed, prepare.json's counts, per (K, shots) mean,
std over trials and std over users), vary_fewshot.md (table) and fewshot_accuracy_vs_shots.png.
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
seed = 0                      # shot draws and fits
K_list = [3]                  # e.g. the K train_basis.py chose on seen users
alpha_list = [0.0]
trials = 20                   # shot draws per shot count
num_shots = [1, 2, 5, 10]     # few-shot comparisons per new user (their pool: prepare.py's num_shots)
num_iterations = 1000         # joint fit (LoRe), as train_basis.py
learning_rate = 0.5
fewshot_iterations = 500      # few-shot fit of every (trial, new user) at once
fewshot_learning_rate = 0.1
device: str | None = None     # None: cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, results_path = harness.script_dirs(__file__, settings)

groups, users, V_ref, counts = custom_data.user_groups(
    data_path, harness.command_line("prepare.py", settings),
    harness.command_line("generate-custom-embeddings.py", settings))
experiment.vary_fewshot(settings, results_path, "Your own population: new-user accuracy vs shots", groups, V_ref,
                        {"prepared": counts, "seen_users": users["seen"], "unseen_users": users["unseen"]})

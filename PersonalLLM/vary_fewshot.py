"""Few-shot accuracy of unseen PersonalLLM users against the number of shots (absent from the original).

    cd PersonalLLM && python vary_fewshot.py              # real data (after prepare.py and the embeddings)
    cd PersonalLLM && python vary_fewshot.py --offline    # built-in tiny model and generated data

The population is train_basis.py's (same seed, same Dirichlet users, same seen-user data); each unseen
user gets a pool of int(unseen_pool_fraction * P_train) train prompts (best vs worst response under its
mixture, as in train_basis.py), from which `trials` seeded draws of s comparisons are taken for every s
in num_shots (the same draws for every K). For each K the basis is fitted once on the seen users
(utils.run_few_shot_vary_shots); K = 0 (the reference head) and K = 1 use w = [1.0] and so give flat
reference lines. Unseen users are tested on all test prompts.

Reads: as train_basis.py.
Writes into <results>: vary_fewshot.{json,md} (settings, seed, counts, per (K, shots) mean, std over
trials and std over users) and fewshot_accuracy_vs_shots.png.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import experiment  # noqa: E402
import harness  # noqa: E402
import personalllm_simulation as sim  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False                  # True: the data and embeddings of the built-in offline default
data_dir = "data/personalllm"
results_dir = "results"
seed = 0                         # simulation draws, shot draws and every fit
K_list = [0, 1, 5]               # 0 and 1: flat references (w = [1.0]); 5: LoRe
alpha_list = [0.0]
trials = 20                      # shot draws per shot count
num_shots = [1, 2, 3, 5, 10, 20, 40]
n_seen_users = 1000
n_unseen_users = 500
seen_prompt_fraction = 0.005     # as train_basis.py: seen users' train prompts
unseen_pool_fraction = 0.005     # unseen users: a pool of int(fraction * P_train) train prompts to draw shots from
dirichlet_concentration = 0.1
num_iterations = 500             # the joint fit on the seen users (per K >= 1)
learning_rate = 0.5
fewshot_iterations = 500
fewshot_learning_rate = 0.1
device: str | None = None        # None: cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, results_path = harness.script_dirs(__file__, settings)

start = time.time()
groups, population, V_ref, reward_models = sim.user_groups(
    data_path, dict(n_seen=n_seen_users, n_unseen=n_unseen_users, seen_prompt_fraction=seen_prompt_fraction,
                    unseen_pool_fraction=unseen_pool_fraction, concentration=dirichlet_concentration, seed=seed),
    harness.command_line("prepare.py", settings), harness.command_line("generate-personalllm-embeddings.py", settings))
counts = population.counts()
for name in ("seen_train", "unseen_train", "unseen_test"):
    print(f"{name}: {counts[name]['users']} users, {counts[name]['comparisons']} comparisons "
          f"({counts[name]['skipped_all_equal']} skipped)")
experiment.vary_fewshot(settings, results_path, "PersonalLLM: unseen users, accuracy vs shots", groups, V_ref,
                        {"reward_models": reward_models, "simulation": population.settings,
                         "counts": {k: counts[k] for k in ("seen_train", "unseen_train", "unseen_test")},
                         "load_and_simulate_seconds": round(time.time() - start, 1)})

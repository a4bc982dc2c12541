"""PRISM: accuracy of new (unseen) users against the number of few-shot comparisons, for chosen ranks.

    cd PRISM && python vary_fewshot.py              # real data (after prepare.py and the embeddings)
    cd PRISM && python vary_fewshot.py --offline    # the built-in tiny model and generated data

Reads: the same files as train_basis.py. For every alpha and K, one LoRe_regularized fit on the seen
users' train comparisons (K = 0: the reference head, "ref"); then for every shot count s, `trials`
seeded draws of min(m_i, s) of each unseen user's train comparisons (the same draws for every K), a
few-shot fit of the user weights with V frozen (K <= 1: w = [1]), and the accuracy on those shots and on
the unseen users' test comparisons (utils.run_few_shot_vary_shots). Unseen users have few train
comparisons (about 20 each in the real data), so the largest shot counts use all of them (marked capped).
Writes (results folder): vary_fewshot.json (settings, seed, per (alpha, K, shots) mean, std over trials
and std over users), vary_fewshot.md (tables) and fewshot_accuracy_vs_shots.png.
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
K_list = [0, 1, 5, 10]        # ranks compared (0: the reference head; 1: one shared reward)
alpha_list = [1e4]            # cosine pull towards the reference head (as train_basis.py)
num_shots = [1, 2, 5, 10, 15, 20]  # few-shot comparisons per unseen user (capped at what it has)
trials = 10                   # seeded draws of the shots per shot count
num_iterations = 20000        # LoRe_regularized iterations of the joint fit per (alpha, K)
learning_rate = 0.5
fewshot_iterations = 500
fewshot_learning_rate = 0.5   # as train_basis.py (run_regularized)
device: str | None = None     # None: cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, results_path = harness.script_dirs(__file__, settings)

groups, users, V_ref = prism_data.user_groups(data_path, harness.command_line("prepare.py", settings),
                                              harness.command_line("generate-prism-embeddings.py", settings))
N, N_unseen = len(users["seen"]), len(users["unseen"])
pools = groups["unseen_train"].counts()
print(f"users: {N} seen ({groups['seen_train'].N} train comparisons), {N_unseen} unseen with "
      f"{int(pools.min())}-{int(pools.max())} (median {int(pools.median())}) few-shot comparisons each, "
      f"{groups['unseen_test'].N} test comparisons")

experiment.vary_fewshot(settings, results_path, "PRISM: unseen-user accuracy vs few-shot comparisons", groups, V_ref,
                        {"counts": {"seen_users": N, "unseen_users": N_unseen, "unseen_train_per_user": pools.tolist()}},
                        regularized=True)

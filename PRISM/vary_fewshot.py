"""PRISM: accuracy of new (unseen) users against the number of few-shot comparisons, for chosen ranks.

    cd PRISM && python vary_fewshot.py              # real data (after prepare.py and the embeddings)
    cd PRISM && python vary_fewshot.py --offline    # the built-in tiny model and generated data

Reads: the same files as train_basis.py. For every alpha and K, one LoRe_regularized fit on the seen
users' train comparisons (K = 0: the reference head, "ref"); then for every shot count s, `trials`
seeded draws of min(m_i, s) of each unseen user's train comparisons (the same draws for every K), a
few-shot fit of the user weights with V frozen (K <= 1: w = [1]), and the accuracy on those shots and on
the unseen users' test comparisons (utils.run_few_shot_vary_shots). Unseen users have few train
comparisons (about 20 each in the real data), so the largest shot counts use all of them.
Writes (results folder): prism_fewshot_results.json (settings, seed, per (alpha, K, shots) means and
raw stds over users and trials), prism_fewshot_results.md (tables) and prism_fewshot_accuracy_vs_shots.png.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
import prism_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False               # True: the built-in tiny model and the generated data, no network
data_dir = "data/prism"
results_dir = "results"
seed = 0
K_list = [0, 1, 5, 10]        # ranks compared (0: the reference head; 1: one shared reward)
alpha_list = [1e4]            # cosine pull towards the reference head (as train_basis.py)
offline_alpha_list = [0.0]    # offline default unless --alpha_list (alpha = 1e4 only repeats "ref" offline:
                              # see train_basis.py)
num_shots = [1, 2, 5, 10, 15, 20]  # few-shot comparisons per unseen user (capped at what it has)
trials = 10                   # seeded draws of the shots per shot count
num_iterations = 20000        # LoRe_regularized iterations of the joint fit per (alpha, K)
learning_rate = 0.5
fewshot_iterations = 500
fewshot_learning_rate = 0.5   # as train_basis.py (run_regularized)
device = None                 # None: cuda if available, else cpu
results_name = "prism_fewshot_results"
plot_name = "prism_fewshot_accuracy_vs_shots.png"
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, results_path = utils.script_dirs(__file__, data_dir, results_dir, offline)
if offline and "alpha_list" not in settings.overridden:
    alpha_list = list(offline_alpha_list)
    print(f"offline: alpha_list = {alpha_list} (offline_alpha_list; pass --alpha_list=... to change)")
settings = utils.script_settings(globals())   # a snapshot, before other module globals exist

groups, users, V_final = prism_data.user_groups(data_path)
N, N_unseen = len(users["seen"]), len(users["unseen"])
counts = groups["unseen_train"].counts()
print(f"users: {N} seen ({groups['seen_train'].N} train comparisons), {N_unseen} unseen with "
      f"{int(counts.min())}-{int(counts.max())} (median {int(counts.median())}) few-shot comparisons each, "
      f"{groups['unseen_test'].N} test comparisons")

start = time.time()
results = utils.run_few_shot_vary_shots(
    trials, alpha_list, K_list, num_shots, groups["seen_train"], groups["unseen_train"], groups["unseen_test"],
    V_final, N, N_unseen, device or utils.get_device(), seed=seed, num_iterations=num_iterations,
    learning_rate=learning_rate, fewshot_iterations=fewshot_iterations,
    fewshot_learning_rate=fewshot_learning_rate, regularized=True)
extra = {"seconds": round(time.time() - start, 1),
         "counts": {"seen_users": N, "unseen_users": N_unseen, "unseen_train_per_user": counts.tolist()}}
paths = utils.save_fewshot_results(results_path, results_name, settings, num_shots, K_list,
                                   alpha_list, results, plot_name=plot_name,
                                   title="PRISM: unseen-user accuracy vs few-shot comparisons", extra=extra)
print(paths["markdown"].read_text())
print(f"wrote {paths['json']}, {paths['markdown']}, {paths['plots'][0]} ({extra['seconds']} s)")

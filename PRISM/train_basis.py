"""PRISM: fit LoRe (cosine-regularised, alternating) for every rank K and evaluate seen and new users.

    cd PRISM && python train_basis.py              # real data (after prepare.py and the embeddings)
    cd PRISM && python train_basis.py --offline    # the built-in tiny model and generated data

Reads (data folder): prism_split_ids_50.json, train.parquet, test.parquet (prepare.py),
conversation_embeddings.safetensors, comparison_index.safetensors, reward_head.safetensors
(generate-prism-embeddings.py). Four groups by (seen, split), users sorted by id: seen-train (LoRe
training data), seen-test (seen users, unseen prompts), unseen-train (few-shot data of new users),
unseen-test (new users, unseen prompts). K = 0 is the backbone's own reward head (V_ref, "ref");
K >= 1 is utils.run_regularized (utils.LoRe_regularized: alternating W/V Adam steps, cosine pull
towards V_ref with weight alpha warmed up over 20%-80% of the iterations, pruned basis).
Writes (results folder): PRISM_V_lore_K_{K}_alpha_{alpha}.pt / PRISM_W_lore_seen_{K}_{alpha}.pt
(+ .safetensors) for every K >= 1, prism_lore_results.json (settings, seed, per-K means and raw stds),
prism_lore_results.md (the table) and generalization_accuracy_vs_rank_lore_alpha_{alpha}.png.
Offline it also reports the accuracy of the planted (true) user rewards on each group.
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
K_list = [0, 1, 5, 10, 15, 20, 25, 50]
alpha_list = [1e4]            # weight of the cosine pull towards the reference head
offline_alpha_list = [0.0, 1e4]  # offline default (unless --alpha_list). The tiny model's head is unrelated
                              # to the planted tastes, and at its hidden size (128) and scale alpha = 1e4
                              # pins every basis vector to it: those rows repeat "ref" (the regulariser at
                              # work); alpha = 0 shows what LoRe learns from the generated data
num_iterations = 20000        # LoRe_regularized iterations per (alpha, K)
learning_rate = 0.5
fewshot_iterations = 500      # few-shot fit of the new users' weights (V frozen)
fewshot_learning_rate = 0.5
device = None                 # None: cuda if available, else cpu
dataset_name = "PRISM"        # prefix of the saved V / W files
results_name = "prism_lore_results"
plot_name = "generalization_accuracy_vs_rank_lore_alpha_{alpha}.png"
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, results_path = utils.script_dirs(__file__, data_dir, results_dir, offline)
if offline and "alpha_list" not in settings.overridden:
    alpha_list = list(offline_alpha_list)
    print(f"offline: alpha_list = {alpha_list} (offline_alpha_list; pass --alpha_list=... to change)")
settings = utils.script_settings(globals())   # a snapshot, before other module globals exist

groups, users, V_final = prism_data.user_groups(data_path)
N, N_unseen = len(users["seen"]), len(users["unseen"])
print(f"users: {N} seen, {N_unseen} unseen; comparisons: " + ", ".join(f"{k} {g.N}" for k, g in groups.items())
      + f"; d = {groups['seen_train'].d}")
extra = {"counts": {"seen_users": N, "unseen_users": N_unseen, **{k: g.N for k, g in groups.items()}}}
if offline:
    from offline import prism as offline_prism
    extra["planted_accuracy"] = offline_prism.planted_accuracy(data_path, groups, users)
    print("planted (true) user rewards: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in
                                                       extra["planted_accuracy"].items()))

start = time.time()
results = utils.run_regularized(
    K_list, alpha_list, V_final, groups["seen_train"], groups["seen_test"], groups["unseen_train"],
    groups["unseen_test"], N, N_unseen, device or utils.get_device(), num_iterations=num_iterations,
    learning_rate=learning_rate, fewshot_iterations=fewshot_iterations,
    fewshot_learning_rate=fewshot_learning_rate, seed=seed, results_dir=results_path, dataset_name=dataset_name)
extra["seconds"] = round(time.time() - start, 1)
paths = utils.save_results(results_path, results_name, settings, K_list, alpha_list,
                           results, plot_name=plot_name, title="PRISM: LoRe accuracy vs rank", extra=extra)
print(paths["markdown"].read_text())
print(f"wrote {paths['json']}, {paths['markdown']}, " + ", ".join(str(p) for p in paths["plots"])
      + f" and V/W per K in {results_path} ({extra['seconds']} s)")

"""Few-shot accuracy of unseen PersonalLLM users against the number of shots (absent from the original).

    cd PersonalLLM && python vary_fewshot.py              # real data (after prepare.py and the embeddings)
    cd PersonalLLM && python vary_fewshot.py --offline --seen_prompt_fraction=0.3 --unseen_pool_fraction=0.3 --trials=5
                                                           # built-in tiny model and generated data

The population is train_basis.py's (same seed, same Dirichlet users, same seen-user data); each unseen
user gets a pool of int(unseen_pool_fraction * P_train) train prompts (best vs worst response under its
mixture, as in train_basis.py), from which `trials` seeded draws of s comparisons are taken for every s
in num_shots (the same draws for every K). For each K the basis is fitted once on the seen users
(utils.run_few_shot_vary_shots); K = 0 (the reference head) and K = 1 use w = [1.0] and so give flat
reference lines. Unseen users are tested on all test prompts.

Reads: as train_basis.py (<data>/rewards.safetensors, {train,test}_embeddings.safetensors,
reward_head.safetensors).
Writes into <results>: personalllm_vary_fewshot.{json,md} (settings, seed, counts, per (K, shots) mean
and raw std over users and trials) and fewshot_accuracy_vs_shots.png.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import personalllm_simulation as sim  # noqa: E402
import utils  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False                  # True: the data and embeddings of the built-in offline default
data_dir = "data/personalllm"
results_dir = "results"
seed = 0                         # simulation draws, shot draws and every fit
K_list = [0, 1, 5]               # 0 and 1: flat references (w = [1.0]); 5: LoRe
alpha_list = [0]
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
device = None                    # None: cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, results_path = utils.script_dirs(__file__, data_dir, results_dir, offline)
RESULTS_NAME = "personalllm_vary_fewshot"
PLOT_NAME = "fewshot_accuracy_vs_shots.png"


def main() -> None:
    start = time.perf_counter()
    rewards, tables, head, reward_models = sim.load_inputs(data_path, offline)
    P = rewards["train"].shape[0]
    pool = sim.prompts_per_user(unseen_pool_fraction, P, "unseen", "unseen_pool_fraction")
    if max(num_shots) > pool:
        print(f"note: shot counts above the pool of {pool} comparisons per unseen user use the whole pool")
    population = sim.simulate_population(
        rewards["train"], rewards["test"], n_seen_users, n_unseen_users,
        sim.prompts_per_user(seen_prompt_fraction, P, "seen", "seen_prompt_fraction"), pool,
        concentration=dirichlet_concentration, seed=seed)
    counts = population.counts()
    for name in ("seen_train", "unseen_train", "unseen_test"):
        c = counts[name]
        print(f"{name}: {c['users']} users, {c['comparisons']} comparisons ({c['skipped_all_equal']} skipped)")
    # one copy of each table on the run's device, shared by the groups that index into it
    tables = {split: table.to(utils.get_device() if device is None else device) for split, table in tables.items()}
    simulated = time.perf_counter()
    results = utils.run_few_shot_vary_shots(
        trials, alpha_list, K_list, num_shots, population.seen_train.comparisons(tables["train"]),
        population.unseen_train.comparisons(tables["train"]), population.unseen_test.comparisons(tables["test"]),
        head, n_seen_users, n_unseen_users, device, seed=seed, num_iterations=num_iterations,
        learning_rate=learning_rate, fewshot_iterations=fewshot_iterations,
        fewshot_learning_rate=fewshot_learning_rate)
    done = time.perf_counter()
    extra = {"data": str(data_path), "reward_models": reward_models,
             "prompts": {split: int(rewards[split].shape[0]) for split in ("train", "test")},
             "d": int(tables["train"].shape[1]), "simulation": population.settings,
             "ground_truth": sim.ground_truth_summary(data_path),
             "counts": {k: counts[k] for k in ("seen_train", "unseen_train", "unseen_test")},
             "seconds": {"load_and_simulate": simulated - start, "run": done - simulated}}
    files = utils.save_fewshot_results(results_path, RESULTS_NAME, utils.script_settings(globals()), num_shots,
                                       K_list, alpha_list, results, plot_name=PLOT_NAME,
                                       title="PersonalLLM: unseen users, accuracy vs shots", extra=extra)
    print(files["markdown"].read_text())
    print(f"wrote {files['json']}, {files['markdown']}, {files['plots'][0]}")


if __name__ == "__main__":
    main()

"""Fit LoRe on the simulated PersonalLLM population and evaluate seen and few-shot unseen users vs rank K.

    cd PersonalLLM && python train_basis.py              # real data (after prepare.py and the embeddings)
    cd PersonalLLM && python train_basis.py --offline --seen_prompt_fraction=0.3 --unseen_prompt_fraction=0.06
                                                          # built-in tiny model and generated data

Simulation (SPEC 2.3): users w ~ Dirichlet(0.1 * ones(10)) over the 10 reward models; on a prompt a
user prefers the best of the 8 responses over the worst under rewards[p] @ w (ties: the first response
among equal scores; a prompt whose 8 scores are all equal for that user is skipped and counted). Seen
users: a random int(seen_prompt_fraction * P_train) train prompts each (without replacement); unseen
users: int(unseen_prompt_fraction * P_train) as few-shot data; every user is tested on all test prompts.
The offline data have 160 train prompts, so the real fractions (0.005, 0.001) give 0 prompts per user
there (an error): pass the fractions above (48 and 9 prompts, the real run's 47 and 9).

Comparisons are indices into the embedding tables [P * 8, d] (utils.Comparisons, indexed form), never
one d-vector per user and comparison: full scale (1,500 users, 1.5M test comparisons, d = 4096) fits in
a few GB (bench/personalllm_scale.py measures it).

Reads: <data>/rewards.safetensors (prepare.py), <data>/{train,test}_embeddings.safetensors and
<data>/reward_head.safetensors (generate-personalllm-embeddings.py).
Writes into <results> (results, or results-offline): personalllm_train_basis.{json,md} (settings,
seed, counts, per-K mean and raw std over users), generalization_accuracy_vs_rank_lore_alpha_{alpha}.png,
PersonalLLM_V_lore_K_{K}_alpha_{alpha}.pt / PersonalLLM_W_lore_seen_{K}_{alpha}.pt (+ .safetensors).
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
seed = 0                         # simulation draws and every fit
K_list = [0, 1, 2, 3, 4, 5]      # 0: the backbone's own reward head ("ref")
alpha_list = [0]                 # LoRe's pull towards the reference head (0: none)
n_seen_users = 1000
n_unseen_users = 500
seen_prompt_fraction = 0.005     # seen users: int(fraction * P_train) train prompts each
unseen_prompt_fraction = 0.001   # unseen users: int(fraction * P_train) few-shot train prompts each
dirichlet_concentration = 0.1    # users' mixture over the 10 reward models
num_iterations = 1000            # joint LoRe fit (Adam)
learning_rate = 0.5
fewshot_iterations = 500         # unseen users' weights with V frozen
fewshot_learning_rate = 0.1
device = None                    # None: cuda if available, else cpu
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, results_path = utils.script_dirs(__file__, data_dir, results_dir, offline)
RESULTS_NAME = "personalllm_train_basis"
PLOT_NAME = "generalization_accuracy_vs_rank_lore_alpha_{alpha}.png"


def simulate(rewards: dict) -> sim.Population:
    """The seen/unseen population of SPEC 2.3 as indices (personalllm_simulation.simulate_population)."""
    P = rewards["train"].shape[0]
    return sim.simulate_population(
        rewards["train"], rewards["test"], n_seen_users, n_unseen_users,
        sim.prompts_per_user(seen_prompt_fraction, P, "seen", "seen_prompt_fraction"),
        sim.prompts_per_user(unseen_prompt_fraction, P, "unseen", "unseen_prompt_fraction"),
        concentration=dirichlet_concentration, seed=seed)


def main() -> None:
    start = time.perf_counter()
    rewards, tables, head, reward_models = sim.load_inputs(data_path, offline)
    population = simulate(rewards)
    counts = population.counts()
    for name, c in counts.items():
        print(f"{name}: {c['users']} users, {c['comparisons']} comparisons "
              f"({c['skipped_all_equal']} skipped: all 8 scores equal; "
              f"ties resolved to the first response: best {c['tied_best_first_taken']}, worst {c['tied_worst_first_taken']})")
    # one copy of each table on the run's device, shared by the groups that index into it
    tables = {split: table.to(utils.get_device() if device is None else device) for split, table in tables.items()}
    groups = [population.seen_train.comparisons(tables["train"]), population.seen_test.comparisons(tables["test"]),
              population.unseen_train.comparisons(tables["train"]), population.unseen_test.comparisons(tables["test"])]
    simulated = time.perf_counter()
    results = utils.run(K_list, alpha_list, head, *groups, n_seen_users, n_unseen_users, device,
                        num_iterations=num_iterations, learning_rate=learning_rate,
                        fewshot_iterations=fewshot_iterations, fewshot_learning_rate=fewshot_learning_rate,
                        seed=seed, results_dir=results_path, dataset_name="PersonalLLM")
    done = time.perf_counter()
    extra = {"data": str(data_path), "reward_models": reward_models,
             "prompts": {split: int(rewards[split].shape[0]) for split in ("train", "test")},
             "d": int(tables["train"].shape[1]), "simulation": population.settings, "counts": counts,
             "tie_rule": "argmax/argmin take the first response among equal scores; all-equal prompts are skipped",
             "ground_truth": sim.ground_truth_summary(data_path),
             "seconds": {"load_and_simulate": simulated - start, "run": done - simulated}}
    files = utils.save_results(results_path, RESULTS_NAME, utils.script_settings(globals()), K_list, alpha_list,
                               results, plot_name=PLOT_NAME, title="PersonalLLM: LoRe accuracy vs rank", extra=extra)
    print(files["markdown"].read_text())
    print(f"wrote {files['json']}, {files['markdown']}, {', '.join(str(p) for p in files['plots'])}")


if __name__ == "__main__":
    main()

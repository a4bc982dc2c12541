"""Fit LoRe on the simulated PersonalLLM population and evaluate seen and few-shot unseen users vs rank K.

    cd PersonalLLM && python train_basis.py              # real data (after prepare.py and the embeddings)
    cd PersonalLLM && python train_basis.py --offline    # built-in tiny model and generated data

Simulation (as the original): users w ~ Dirichlet(0.1 * ones(10)) over the 10 reward models; on a prompt
a user prefers the best of the 8 responses over the worst under rewards[p] @ w (ties: the first response
among equal scores; a prompt whose 8 scores are all equal for that user is skipped and counted). Seen
users: a random int(seen_prompt_fraction * P_train) train prompts each (without replacement); unseen
users: int(unseen_prompt_fraction * P_train) as few-shot data; every user is tested on all test prompts.
Comparisons are indices into the embedding table, never one d-vector per user and comparison: full
scale (1,500 users, 1.5M test comparisons, d = 4096) fits in a few GB (bench/personalllm_scale.py).

Reads: <data>/rewards.safetensors, train.parquet, test.parquet (prepare.py),
<data>/conversation_embeddings.safetensors and reward_head.safetensors (generate-personalllm-embeddings.py).
Writes into <results>: train_basis.{json,md} (settings, seed, counts, per-K mean and raw std over
users), generalization_accuracy_vs_rank_lore_alpha_{alpha}.png, PersonalLLM_V_lore_K_{K}_alpha_{alpha}.pt /
PersonalLLM_W_lore_seen_{K}_{alpha}.pt (+ .safetensors).
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
seed = 0                         # simulation draws and every fit
K_list = [0, 1, 2, 3, 4, 5]      # 0: the backbone's own reward head ("ref")
alpha_list = [0.0]               # LoRe's pull towards the reference head (0: none)
n_seen_users = 1000
n_unseen_users = 500
seen_prompt_fraction = 0.005     # seen users: int(fraction * P_train) train prompts each
unseen_prompt_fraction = 0.001   # unseen users: int(fraction * P_train) few-shot train prompts each
dirichlet_concentration = 0.1    # users' mixture over the 10 reward models
num_iterations = 1000            # joint LoRe fit (Adam)
learning_rate = 0.5
fewshot_iterations = 500         # unseen users' weights with V frozen
fewshot_learning_rate = 0.1
baselines: list[str] = []        # e.g. ["PAL", "VPL"]: the paper's comparison beside LoRe (none: the original run)
baseline_settings: str | None = None  # JSON {method: {hyperparameter: value}} for the baselines (PAL: also "grid")
seeds = 1                        # seeds seed, seed + 1, ...: with several, every figure is the mean over seeds ± std
device: str | None = None        # None: cuda if available, else cpu
overwrite = False                # True: replace saved bases (V/W files) fitted with other settings or data
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
experiment.check_baselines(settings)     # a bad name stops here, not after the fits
data_path, results_path = harness.script_dirs(__file__, settings)

start = time.time()
groups, population, V_ref, reward_models = sim.user_groups(
    data_path, dict(n_seen=n_seen_users, n_unseen=n_unseen_users, seen_prompt_fraction=seen_prompt_fraction,
                    unseen_prompt_fraction=unseen_prompt_fraction, concentration=dirichlet_concentration, seed=seed),
    harness.command_line("prepare.py", settings), harness.command_line("generate-personalllm-embeddings.py", settings))
counts = population.counts()
for name, c in counts.items():
    print(f"{name}: {c['users']} users, {c['comparisons']} comparisons ({c['skipped_all_equal']} skipped: all 8 "
          f"scores equal; ties resolved to the first response: best {c['tied_best_first_taken']}, worst "
          f"{c['tied_worst_first_taken']})")
extra = {"reward_models": reward_models, "simulation": population.settings, "counts": counts,
         "tie_rule": "argmax/argmin take the first response among equal scores; all-equal prompts are skipped"}
if offline:
    from offline import personalllm as offline_personalllm
    extra["planted_accuracy"] = offline_personalllm.planted_accuracy(data_path, groups, population,
                                                                     harness.command_line("prepare.py", settings))
extra["load_and_simulate_seconds"] = round(time.time() - start, 1)
experiment.train_basis(settings, results_path, "PersonalLLM", "PersonalLLM", groups, V_ref, extra)

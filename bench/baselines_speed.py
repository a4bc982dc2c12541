"""Speed and memory of the PAL and VPL baselines (baselines.py) beside LoRe, measured in one run on this CPU.

    python bench/baselines_speed.py                              # PRISM scale timing + PersonalLLM full-scale memory
    python bench/baselines_speed.py --d=256 --n_users=100 --memory_check=False   # a quick try
    python bench/baselines_speed.py --timing=False               # the memory check alone

1. Timing at PRISM scale: n_users seen users x comparisons_per_user comparisons (1,000 x 20 = 20,000) in
   R^d (d = 4096), indexed as the pipeline holds them: a table of rows_per_comparison x N random
   conversation embeddings and (chosen, rejected) row pairs, labelled by a planted population
   (offline.planted.random_population: n_directions tastes, Dirichlet users, Bradley-Terry at the 1/100
   temperature); n_unseen new users with as many few-shot and test comparisons. For each of PAL-B,
   PAL-A, VPL (their default hyperparameters, K prototypes) and utils.LoRe_regularized (rank K, the
   PRISM trainer, alpha = 0) it times two fits of different lengths on the same data (after an untimed
   warm-up; the fastest of `repeats` runs of each) and reports the difference per optimiser step (so
   setup and the VPL encoder pass over the training users cancel):
   seconds per iteration (a baseline's iteration is one mini-batch step, LoRe's one full pass), the
   iterations of a default fit and that fit's extrapolated time; then the time of the new users' fit
   and of evaluating the four groups. Ratios are to LoRe_regularized, measured in the same run.
2. Memory at PersonalLLM's full scale: random embedding tables [9,402 x 8, d] and [1,000 x 8, d]
   (float32: 1.36 GB at d = 4096) and random reward scores, simulated by the pipeline's own
   PersonalLLM/personalllm_simulation.py (1,000 seen users with 47 train prompts, 500 unseen with 9,
   every user tested on all 1,000 test prompts: 1.5M test comparisons), groups as indexed
   utils.Comparisons. Then, per method, a short fit (memory_steps steps: memory does not grow with
   the number of steps), the new users' fit and the evaluation of all four groups, with the peak
   resident memory of that phase (VmHWM, reset before each phase) and of the whole process. LoRe
   (utils.LoRe, rank 5, as train_basis) is measured the same way for reference. It must stay well
   within the 24 GB of this machine.
Prints both tables; writes nothing. Timings on a shared CPU vary with its load (printed with them).
"""
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "PersonalLLM"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from memory import GB, process_peak_gb, reset_peak, rss_gb  # noqa: E402

import baselines  # noqa: E402
import harness  # noqa: E402
import reports  # noqa: E402
import utils  # noqa: E402
from offline.planted import random_population  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
timing = True                 # part 1: seconds per iteration at PRISM scale
memory_check = True           # part 2: PersonalLLM full-scale peak memory
methods = ["PAL", "PAL-A", "VPL"]
n_users = 1000                # seen users (PRISM: about 1,000)
comparisons_per_user = 20     # per seen user (about 20,000 in all); new users get as many few-shot and test
n_unseen = 250
rows_per_comparison = 1.5     # table rows per comparison (a turn's chosen conversation is shared by its rejected)
d = 4096
K = 10                        # LoRe's rank and PAL's number of prototypes
n_directions = 8              # planted tastes
short_steps = 10              # the two fit lengths timed per method: per step = (long - short) / difference
long_steps = 40
lore_short = 5                # the same for LoRe_regularized (full passes)
lore_long = 25
repeats = 2                   # each fit length is timed this often (the minimum counts: least disturbed by other load)
lore_iterations = 20000       # a default LoRe_regularized fit (PRISM train_basis)
lore_fewshot_iterations = 500
pl_train_prompts = 9402       # PersonalLLM
pl_test_prompts = 1000
pl_responses = 8
pl_reward_models = 10
pl_seen_users = 1000
pl_unseen_users = 500
pl_seen_fraction = 0.005      # 47 train prompts per seen user
pl_unseen_fraction = 0.001    # 9 per unseen user
memory_steps = 20             # training steps per method in the memory check
memory_limit_gb = 24.0
threads = 2                   # torch threads while timing
seed = 0
# -----------------------------------------------------------------------------
settings = harness.configure(globals())


def planted_groups():
    """The four groups at PRISM scale, indexed, labelled by a planted population. Each group has its own
    rows_per_comparison x N table rows: one distinct row per rejected candidate and the rest shared by
    the chosen candidates (a PRISM turn's chosen conversation is compared with each of its rejected)."""
    population = random_population(n_users + n_unseen, d, n_directions, seed=seed)
    V_star = torch.tensor(population.directions, dtype=torch.float32)
    W_star = torch.tensor(population.user_weights, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    sizes = [n_users, n_users, n_unseen, n_unseen]
    N = [n * comparisons_per_user for n in sizes]
    extra = [max(1, int((rows_per_comparison - 1) * n)) for n in N]
    table = torch.randn(sum(N) + sum(extra), d, generator=g) / math.sqrt(2)    # e_a - e_b ~ N(0, I)
    projected = table @ V_star                                                # [T, B*], then indexed
    groups, offset = {}, 0
    for name, weights, n, shared in zip(utils.GROUP_NAMES, (W_star[:n_users], W_star[:n_users],
                                        W_star[n_users:], W_star[n_users:]), N, extra):
        users = torch.arange(weights.shape[0]).repeat_interleave(comparisons_per_user)
        b = offset + torch.arange(n)                                          # distinct rows
        a = offset + n + torch.randint(shared, (n,), generator=g)             # shared rows
        p = torch.sigmoid(((projected[a] - projected[b]) * weights[users]).sum(1) / utils.TEMPERATURE)
        a_wins = torch.rand(n, generator=g) < p
        groups[name] = utils.Comparisons(users, weights.shape[0], table=table, chosen=torch.where(a_wins, a, b),
                                         rejected=torch.where(a_wins, b, a))
        offset += n + shared
    return groups


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def per_step(fit, short: int, long: int):
    """(seconds per step, the model of the last long fit): an untimed warm-up, then the fastest of
    `repeats` timings of each length, differenced."""
    fit(1)
    t_short = min(timed(lambda: fit(short))[1] for _ in range(repeats))
    best, model = float("inf"), None
    for _ in range(repeats):
        model, seconds = timed(lambda: fit(long))
        best = min(best, seconds)
    return (best - t_short) / (long - short), model


def evaluate(model, groups, new_state):
    return {name: float(np.nanmean(model.per_user_accuracy(groups[name], state).numpy()))
            for name, state in (("seen_train", model.seen_state), ("seen_test", model.seen_state),
                                ("unseen_train", new_state), ("unseen_test", new_state))}


def default_steps(method: str, N: int) -> int:
    """Optimiser steps of one default fit on N comparisons (VPL: every comparison `duplicates` times per
    epoch; PAL: one fit of its selection grid, on the 90% it trains on)."""
    hyper = baselines.METHODS[method].DEFAULTS
    targets = N * int(hyper.get("duplicates", 1)) if method == "VPL" else int(N * (1 - baselines.VALIDATION_FRACTION))
    return int(hyper["epochs"]) * math.ceil(targets / int(hyper["batch_size"]))


def part_timing():
    torch.set_num_threads(threads)
    groups = planted_groups()
    train = groups["seen_train"]
    table_gb = train.table.numel() * 4 / GB
    live = len(torch.unique(torch.cat([train.chosen, train.rejected])))
    print(f"PRISM scale: {n_users} users x {comparisons_per_user} = {train.N} train comparisons on {live} table "
          f"rows (table of the four groups {tuple(train.table.shape)} float32, {table_gb:.2f} GB), {n_unseen} new "
          f"users; K = {K}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {}

    def lore_fit(iterations):
        model = utils.LoRe_regularized(None, 0.0, train.n_users, d, K, iterations, 0.5, seed=seed, device="cpu",
                                       progress=False)
        return model.train(train)
    per_iteration, (weights, V) = per_step(lore_fit, lore_short, lore_long)

    def lore_rest():
        new = utils.learn_multiple_few_shot(groups["unseen_train"], V, lore_fewshot_iterations, 0.5, progress=False)
        return [utils.accuracy_mean_std(groups[name], V, w)[0] for name, w in
                (("seen_train", weights), ("seen_test", weights), ("unseen_train", new), ("unseen_test", new))]
    _, rest = timed(lore_rest)
    results["LoRe_regularized"] = {"per_iteration": per_iteration, "iterations": lore_iterations, "rest": rest}
    print(f"  LoRe_regularized: {per_iteration * 1e3:.1f} ms per iteration", flush=True)

    for method in methods:
        def fit(steps, method=method):
            return baselines.fit(method, train, K=K, seed=seed, device="cpu", max_steps=steps)
        seconds, model = per_step(fit, short_steps, long_steps)
        new_state, t_new = timed(lambda: model.personalize(groups["unseen_train"], seed=seed))
        _, t_eval = timed(lambda: evaluate(model, groups, new_state))
        results[method] = {"per_iteration": seconds, "iterations": default_steps(method, train.N),
                           "rest": t_new + t_eval, "personalize": t_new, "evaluate": t_eval,
                           "parameters": model.parameter_counts(n_users)}
        print(f"  {method}: {seconds * 1e3:.1f} ms per step; new users {t_new:.1f} s, evaluation {t_eval:.1f} s",
              flush=True)

    lore = results["LoRe_regularized"]
    lore_fit_seconds = lore["per_iteration"] * lore["iterations"]
    print("\n| method | s / iteration | vs LoRe | iterations (default fit) | fit (extrapolated) | vs LoRe fit | "
          "new users + evaluation | parameters total |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        fit_seconds = r["per_iteration"] * r["iterations"]
        params = r.get("parameters", reports.lore_parameter_counts(d, K, n_users))["total"]
        print(f"| {name} | {r['per_iteration']:.4f} | {r['per_iteration'] / lore['per_iteration']:.2f}x | "
              f"{r['iterations']:,} | {fit_seconds / 60:.1f} min | {fit_seconds / lore_fit_seconds:.2f}x | "
              f"{r['rest']:.1f} s | {params:,} |")
    print(f"\nAn iteration: LoRe_regularized one full pass over the {train.N} comparisons (a W step and a V "
          f"step); a baseline one mini-batch step (PAL: {baselines.PAL.DEFAULTS['batch_size']} comparisons; "
          f"VPL: {baselines.VPL.DEFAULTS['batch_size']} targets with {baselines.VPL.DEFAULTS['context_min']}-"
          f"{baselines.VPL.DEFAULTS['context_max']} context comparisons each). Default fits: LoRe "
          f"{lore_iterations:,} iterations; PAL {baselines.PAL.DEFAULTS['epochs']} epochs per candidate of its "
          f"{len(baselines.PAL_GRID['K']) * len(baselines.PAL_GRID['d_pref'])}-point selection grid, VPL "
          f"{baselines.VPL.DEFAULTS['epochs']} epochs of {baselines.VPL.DEFAULTS['duplicates']} copies. "
          f"Load average now {os.getloadavg()[0]:.1f}.")
    return results


def part_memory():
    import personalllm_simulation as sim
    torch.set_num_threads(threads)
    resettable = reset_peak()
    start_gb = rss_gb()
    g = torch.Generator().manual_seed(seed)
    tables = {"train": torch.randn(pl_train_prompts * pl_responses, d, generator=g),
              "test": torch.randn(pl_test_prompts * pl_responses, d, generator=g)}
    head = torch.randn(d, 1, generator=g)
    rng = np.random.default_rng(seed)
    rewards = {split: rng.standard_normal((n, pl_responses, pl_reward_models))
               for split, n in (("train", pl_train_prompts), ("test", pl_test_prompts))}
    population = sim.simulate_population(
        rewards["train"], rewards["test"], pl_seen_users, pl_unseen_users,
        sim.prompts_per_user(pl_seen_fraction, pl_train_prompts, "seen", "pl_seen_fraction"),
        sim.prompts_per_user(pl_unseen_fraction, pl_train_prompts, "unseen", "pl_unseen_fraction"), seed=seed)
    groups = {"seen_train": population.seen_train.comparisons(tables["train"]),
              "seen_test": population.seen_test.comparisons(tables["test"]),
              "unseen_train": population.unseen_train.comparisons(tables["train"]),
              "unseen_test": population.unseen_test.comparisons(tables["test"])}
    table_gb = sum(t.numel() * 4 for t in tables.values()) / GB
    base_gb = rss_gb()
    build_peak = rss_gb("VmHWM") if resettable else process_peak_gb()
    print(f"\nPersonalLLM full scale: tables {tuple(tables['train'].shape)} + {tuple(tables['test'].shape)} "
          f"float32 ({table_gb:.2f} GB); comparisons " + ", ".join(f"{k} {v.N:,}" for k, v in groups.items())
          + f"; RSS {base_gb:.2f} GB after building them (from {start_gb:.2f} GB)", flush=True)
    rows = []

    def phase(name, work):
        reset_peak()
        before = rss_gb()
        start = time.perf_counter()
        accuracy = work()
        seconds = time.perf_counter() - start
        peak = rss_gb("VmHWM") if resettable else process_peak_gb()
        rows.append((name, seconds, before, peak, accuracy))
        print(f"  {name}: {seconds:.1f} s, peak RSS {peak:.2f} GB", flush=True)

    def lore_work():
        weights, V = utils.solve_regularized(head, 0.0, groups["seen_train"], 5, memory_steps, 0.5, seed=seed,
                                             progress=False)
        new = utils.learn_multiple_few_shot(groups["unseen_train"], V, lore_fewshot_iterations, 0.1, progress=False)
        return utils.accuracy_mean_std(groups["unseen_test"], V, new)[0]
    phase("LoRe (K = 5)", lore_work)
    for method in methods:
        def work(method=method):
            model = baselines.fit(method, groups["seen_train"], K=5, seed=seed, device="cpu", max_steps=memory_steps)
            new_state = model.personalize(groups["unseen_train"], seed=seed)
            return evaluate(model, groups, new_state)["unseen_test"]
        phase(method, work)
    process_peak = max([build_peak] + [peak for _, _, _, peak, _ in rows])
    print(f"\n| method (fit {memory_steps} steps, new users, evaluate 4 groups) | seconds | RSS before | peak RSS | "
          f"peak above the RSS with the groups built |")
    print("|---|---|---|---|---|")
    for name, seconds, before, peak, _ in rows:
        print(f"| {name} | {seconds:.1f} | {before:.2f} GB | {peak:.2f} GB | {peak - base_gb:.2f} GB |")
    verdict = "within" if process_peak < memory_limit_gb else "OVER"
    print(f"\nPeak RSS of the whole process {process_peak:.2f} GB (the largest phase peak; building the tables "
          f"and groups {build_peak:.2f} GB): {verdict} the {memory_limit_gb:.0f} GB of this machine (embedding "
          f"tables {table_gb:.2f} GB)." + ("" if resettable else " (per-phase peaks are the process peak so far: "
                                           "/proc/self/clear_refs could not be written)"))
    return rows


if __name__ == "__main__":
    if timing:
        part_timing()
    if memory_check:
        part_memory()

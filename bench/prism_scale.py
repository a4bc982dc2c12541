"""PRISM train_basis.py at real scale on this CPU: one rank's fit timed, the whole K sweep extrapolated.

    python bench/prism_scale.py                                  # K = 10 and K = 50, 1,000 timed iterations each
    python bench/prism_scale.py --timed_iterations=20000 --ranks=[10]   # one full 20,000-iteration fit

Planted features of the real shape (offline.planted.random_population / simulate_comparisons): n_seen users x
comparisons_per_user training comparisons in R^d (about 1,000 x 20 = 20,000, d = 4096, as the real PRISM
split), plus seen-user test comparisons and n_unseen new users with few-shot and test comparisons. For
each rank in `ranks` it times `timed_iterations` iterations of utils.LoRe_regularized (the PRISM
trainer, alpha 1e4, lr 0.5; the cosine term is on for the last 80% of a run, so a short run pays for
it as a full one does) and the rest of run_regularized's work for that rank (few-shot fit of the new
users, four evaluations). Seconds per iteration grow about linearly in K, so the two ranks give
t(K) = a + b K, which extrapolates to every K of K_list at full_iterations (K = 0 fits nothing).
Prints the measurements and the estimate; writes nothing. Timings on a shared CPU vary with its load,
which is printed with them.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

import harness  # noqa: E402
import utils  # noqa: E402
from offline.planted import PlantedPopulation, random_population, simulate_comparisons  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
n_seen = 1000                 # seen users (real PRISM split: about 1,000)
n_unseen = 250                # new users
comparisons_per_user = 20     # train comparisons per seen user (about 20,000 in all); the same for the others
d = 4096                      # Skywork's hidden size
n_directions = 8              # planted tastes
ranks = [10, 50]              # ranks timed (two: the sweep is extrapolated linearly in K)
timed_iterations = 1000       # LoRe_regularized iterations timed per rank (20000: a full fit)
full_iterations = 20000       # iterations per rank in train_basis.py
K_list = [0, 1, 5, 10, 15, 20, 25, 50]
alpha = 1e4
learning_rate = 0.5
fewshot_iterations = 500
fewshot_learning_rate = 0.5
seed = 0
# -----------------------------------------------------------------------------
settings = harness.configure(globals())


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    population = random_population(n_seen + n_unseen, d, n_directions, seed=seed)
    seen = PlantedPopulation(population.directions, population.user_weights[:n_seen])
    unseen = PlantedPopulation(population.directions, population.user_weights[n_seen:])
    train, _ = simulate_comparisons(seen, comparisons_per_user, seed=seed + 1)
    test, _ = simulate_comparisons(seen, comparisons_per_user, seed=seed + 2)
    fewshot, _ = simulate_comparisons(unseen, comparisons_per_user, seed=seed + 3)
    test_unseen, _ = simulate_comparisons(unseen, comparisons_per_user, seed=seed + 4)
    V_star = torch.tensor(population.directions, dtype=torch.float32)
    V_ref = V_star[:, :1] + 0.5 * V_star.norm(dim=0).mean() * torch.randn(d, 1) / d ** 0.5  # a related head
    print(f"train features: {tuple(train.table.shape)} float32 "
          f"({train.table.numel() * 4 / 2**20:.0f} MiB); {n_unseen} new users x {comparisons_per_user}")

    per_iteration, other = {}, {}
    for K in ranks:
        model = utils.LoRe_regularized(V_ref, alpha, n_seen, d, K, timed_iterations, learning_rate, seed=seed,
                                       device="cpu", progress=True)
        start = time.perf_counter()
        weights, V = model.train(train)
        fit_seconds = time.perf_counter() - start
        per_iteration[K] = fit_seconds / timed_iterations
        start = time.perf_counter()    # the rest of run_regularized's work for this rank
        weights_unseen = utils.learn_multiple_few_shot(fewshot, V, fewshot_iterations, fewshot_learning_rate,
                                                      seed=seed, progress=False)
        accuracy = [utils.accuracy_mean_std(group, V, w)[0] for group, w in
                    ((train, weights), (test, weights), (fewshot, weights_unseen), (test_unseen, weights_unseen))]
        other[K] = time.perf_counter() - start
        print(f"K = {K}: {timed_iterations} iterations in {fit_seconds:.1f} s = {per_iteration[K] * 1e3:.1f} ms "
              f"per iteration -> {full_iterations} iterations: {per_iteration[K] * full_iterations / 60:.1f} min; "
              f"few-shot + evaluation {other[K]:.1f} s; kept {V.shape[1]} columns; accuracies (seen train, "
              f"seen test, new few-shot, new test) {', '.join(f'{100 * a:.1f}' for a in accuracy)}"
              + ("" if timed_iterations == full_iterations else " (short run: accuracies not final)"))

    lo, hi = min(ranks), max(ranks)
    slope = max(0.0, (per_iteration[hi] - per_iteration[lo]) / (hi - lo)) if hi > lo else 0.0  # noise-proof
    intercept = per_iteration[lo] - slope * lo
    other_seconds = max(other.values())
    total = 0.0
    print(f"seconds per iteration ~ {intercept * 1e3:.1f} ms + {slope * 1e3:.2f} ms x K "
          f"(from K = {lo} and K = {hi})")
    for K in K_list:
        if K == 0:
            continue
        seconds = (intercept + slope * K) * full_iterations + other_seconds
        total += seconds
        print(f"  K = {K:3d}: {seconds / 60:6.1f} min")
    print(f"==> train_basis.py sweep, K_list = {K_list}, {full_iterations} iterations per rank, one alpha: "
          f"about {total / 3600:.2f} h on this CPU ({total / 60:.0f} min)")


if __name__ == "__main__":
    main()

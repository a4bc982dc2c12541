"""Speed of the LoRe core at PRISM scale on this CPU: prints ratios measured in one run.

    python bench/lore_speed.py                            # everything, incl. a full 20,000-iteration fit
    python bench/lore_speed.py --full_iterations=2000     # time 2,000 iterations and extrapolate
    python bench/lore_speed.py --full_fit=False           # skip the full fit

Measures, on a planted population of n_users x comparisons_per_user comparisons in R^d:
1. seconds per LoRe_regularized iteration (utils) vs the straightforward formulation written below
   (every comparison against every user's weights, X @ (V @ softmax(W).T) then gather, a separate
   forward and backward pass for the W step and for the V step): target >= 50x;
2. the same iteration vs the physical floor: two plain read passes over X (two X.sum()): target <= 3x;
3. PersonalizeBatch over fewshot_users users vs a per-user Python loop, 500 iterations each: >= 100x;
4. the wall time of a full LoRe_regularized fit (full_fit, full_iterations).
Writes nothing. Timings on a shared CPU vary; each figure is the median of `repeats` measurements.
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import harness  # noqa: E402
import utils  # noqa: E402
from offline.planted import random_population, simulate_comparisons  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
n_users = 1000
comparisons_per_user = 20
d = 4096
B = 10
alpha = 1e4
learning_rate = 0.5
fast_iterations = 30          # iterations timed per measurement of the fast iteration
reference_iterations = 2      # iterations of the straightforward formulation (each takes seconds)
repeats = 3                   # measurements per figure (median reported)
fewshot_users = 250
fewshot_iterations = 500
loop_users = 250              # users fitted one by one for the loop baseline (scaled to fewshot_users)
full_fit = True               # time a full fit (False: skip it)
full_iterations = 20000       # its iterations; fewer than 20000 are timed and extrapolated
seed = 0
# -----------------------------------------------------------------------------
settings = harness.configure(globals())


def median_seconds(fn, repeat=repeats):
    return timings(fn, repeat)[0]


def timings(fn, repeat=repeats):
    """(median, min) wall seconds of fn over `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def straightforward_iterations(X_all, users, V_ref, W, V, iterations, total):
    """The original formulation of LoRe_regularized's alternating iteration (reference for timing)."""
    W, V = W.clone().requires_grad_(), V.clone().requires_grad_()
    opt_W, opt_V = torch.optim.Adam([W], lr=learning_rate), torch.optim.Adam([V], lr=learning_rate)
    for t in range(iterations):
        opt_W.zero_grad()
        logits = X_all @ (V.detach() @ torch.softmax(W, 1).T) / 100            # [N, C]
        (-F.logsigmoid(logits.gather(1, users[:, None]))).mean().backward()
        opt_W.step()
        opt_V.zero_grad()
        logits = X_all @ (V @ torch.softmax(W.detach(), 1).T) / 100
        loss = (-F.logsigmoid(logits.gather(1, users[:, None]))).mean()
        cos = (F.normalize(V, dim=0) * F.normalize(V_ref, dim=0)).sum(0)
        (loss + utils.cosine_warmup_alpha(t, total, alpha) * torch.mean(1 - cos)).backward()
        opt_V.step()


def per_user_few_shot(X_users, V, W0):
    """The per-user loop: one small Adam fit per user, X_i @ V @ softmax(w) every iteration."""
    weights = []
    for x, w0 in zip(X_users, W0):
        w = w0.clone().requires_grad_()
        opt = torch.optim.Adam([w], lr=0.1)
        for _ in range(fewshot_iterations):
            opt.zero_grad()
            (-F.logsigmoid(x @ V @ torch.softmax(w, 0) / 100)).mean().backward()
            opt.step()
        weights.append(torch.softmax(w.detach(), 0))
    return torch.stack(weights)


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; "
          f"{n_users} users x {comparisons_per_user} comparisons, d = {d}, B = {B}")
    population = random_population(n_users, d, B, seed=seed)
    data, _ = simulate_comparisons(population, comparisons_per_user, seed=seed + 1)
    X, users = data.table[data.chosen], data.users          # the features [N, d] of the straightforward form
    V_star = torch.tensor(population.directions, dtype=torch.float32)
    V_ref = V_star[:, :1] / V_star[:, :1].norm()
    print(f"X: {tuple(X.shape)} float32, {X.numel() * 4 / 2**20:.0f} MiB")

    # 1-2. one alternating iteration: floor, fast, straightforward
    floor, floor_min = timings(lambda: (X.sum(), X.sum()), repeat=7)
    model = utils.LoRe_regularized(V_ref, alpha, n_users, d, B, fast_iterations, learning_rate, seed=seed,
                                   device="cpu", progress=False)
    W0, V0 = model.W.detach().clone(), model.V.detach().clone()

    def fit():
        utils.LoRe_regularized(V_ref, alpha, n_users, d, B, fast_iterations, learning_rate, seed=seed,
                               device="cpu", progress=False).train(data)
    fit()  # warm-up (imports, allocator)
    fast, fastest = [seconds / fast_iterations for seconds in timings(fit)]
    reference = median_seconds(lambda: straightforward_iterations(X, users, V_ref, W0, V0, reference_iterations,
                                                                  20000), repeat=1) / reference_iterations
    print(f"floor, two X.sum():          {floor * 1e3:8.1f} ms (min {floor_min * 1e3:.1f})")
    print(f"fast iteration:              {fast * 1e3:8.1f} ms (min {fastest * 1e3:.1f}) "
          f"= {fast / floor:.2f}x the floor (min/min {fastest / floor_min:.2f}x)")
    print(f"straightforward iteration:   {reference * 1e3:8.1f} ms")
    print(f"==> speed-up vs straightforward: {reference / fast:.0f}x (target >= 50x); vs floor: {fast / floor:.2f}x "
          f"(aim <= 3x)")

    # 3. few-shot: batched PersonalizeBatch vs one fit per user
    shots = data.select(users < fewshot_users, n_users=fewshot_users)
    V_frozen = V_star / 400
    batched = utils.PersonalizeBatch(fewshot_users, d, B, fewshot_iterations, 0.1, seed=seed, device="cpu",
                                     progress=False)
    W_init = batched.W.detach().clone()
    batched.train_weights(shots, V_frozen)  # warm-up

    def batched_fit():
        m = utils.PersonalizeBatch(fewshot_users, d, B, fewshot_iterations, 0.1, seed=seed, device="cpu",
                                   progress=False)
        return m.train_weights(shots, V_frozen)
    batched_seconds = median_seconds(batched_fit)
    X_users = shots.user_list()[:loop_users]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the loop's tiny ops run fastest on one thread: its best setting
    start = time.perf_counter()
    loop_weights = per_user_few_shot(X_users, V_frozen, W_init[:loop_users])
    loop_seconds = (time.perf_counter() - start) * fewshot_users / loop_users
    torch.set_num_threads(threads)
    # float32 rounding differs between one batched product and per-user products, and 500 Adam steps
    # amplify it where a weight's gradient is ~0; tests/test_lore.py checks exact equality in float64
    difference = (loop_weights - batched_fit()[:loop_users]).abs()
    scaled = "" if loop_users == fewshot_users else f" (timed on {loop_users} users, scaled)"
    print(f"few-shot, {fewshot_users} users x {comparisons_per_user} comparisons, {fewshot_iterations} iterations: "
          f"batched {batched_seconds:.3f} s, per-user loop {loop_seconds:.1f} s{scaled}; weights differ by "
          f"median {difference.median():.1e}, max {difference.max():.1e} (float32)")
    print(f"==> few-shot speed-up: {loop_seconds / batched_seconds:.0f}x (target >= 100x)")

    # 4. the full fit
    if full_fit:
        full = utils.LoRe_regularized(V_ref, alpha, n_users, d, B, full_iterations, learning_rate, seed=seed,
                                      device="cpu", progress=True)
        start = time.perf_counter()
        weights, V = full.train(data)
        seconds = time.perf_counter() - start
        extrapolated = seconds * 20000 / full_iterations
        note = "" if full_iterations == 20000 else f" -> 20,000 iterations extrapolated: {extrapolated / 60:.1f} min"
        print(f"full LoRe_regularized fit, {full_iterations} iterations: {seconds:.0f} s{note} "
              f"(kept {V.shape[1]} of {B} columns; straightforward formulation: "
              f"{reference * 20000 / 3600:.1f} h for 20,000 iterations at the rate measured above)")


if __name__ == "__main__":
    main()

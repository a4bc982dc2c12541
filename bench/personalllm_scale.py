"""Memory and time of PersonalLLM's train_basis machinery at full scale, on random data of the real shapes.

    python bench/personalllm_scale.py                       # 9,402 + 1,000 prompts x 8, d = 4096, 1,500 users
    python bench/personalllm_scale.py --num_iterations=100  # more LoRe iterations (wall time grows linearly)

Random embedding tables [9402 * 8, 4096] and [1000 * 8, 4096] float32 (1.23 GB + 0.13 GB), random
reward scores [P, 8, 10], then exactly what PersonalLLM/train_basis.py does: simulate 1,000 seen and 500
unseen users (indices into the tables), build the indexed utils.Comparisons and call utils.run over
K_list. The LoRe fits run `num_iterations` iterations (train_basis uses 1,000; the per-iteration time is
measured and the full-run time extrapolated). Prints and writes bench/results/personalllm_scale.json:
per-phase wall time and resident memory, the peak RSS of the whole process (ru_maxrss), and the memory
the per-user-copy layout of the original (one d-vector per user and comparison, users x prompts x d x
4 bytes, train + test) would need: computed, never allocated.
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "PersonalLLM"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from memory import GB, process_peak_gb, rss_gb  # noqa: E402

import harness  # noqa: E402
import personalllm_simulation as sim  # noqa: E402
import utils  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
n_train_prompts = 9402
n_test_prompts = 1000
n_responses = 8
n_reward_models = 10
d = 4096
n_seen_users = 1000
n_unseen_users = 500
seen_prompt_fraction = 0.005
unseen_prompt_fraction = 0.001
K_list = [0, 1, 2, 3, 4, 5]
alpha_list = [0.0]
num_iterations = 20              # per LoRe fit (train_basis: 1000); reduced for the shared CPU
full_iterations = 1000           # the real run's count, for the extrapolated wall time
fewshot_iterations = 500         # as train_basis (cheap: O(N.B) per iteration after one projection)
timing_iterations = 10           # extra K = 5 LoRe fit timed alone for the per-iteration cost
seed = 0
out = "results/personalllm_scale.json"  # relative to bench/
# -----------------------------------------------------------------------------
settings = harness.configure(globals())


def main() -> None:
    phases = {}
    clock = time.perf_counter()

    def phase(name: str, **extra) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = {"seconds": round(now - clock, 2), "rss_gb": round(rss_gb(), 3),
                        "peak_rss_gb": round(process_peak_gb(), 3), **extra}
        print(f"{name:>24}: {now - clock:8.1f} s   rss {rss_gb():6.2f} GB   peak {process_peak_gb():6.2f} GB")
        clock = now

    phase("start")
    g = torch.Generator().manual_seed(seed)
    tables = {"train": torch.randn(n_train_prompts * n_responses, d, generator=g),
              "test": torch.randn(n_test_prompts * n_responses, d, generator=g)}
    head = torch.randn(d, 1, generator=g)
    rng = np.random.default_rng(seed)
    rewards = {"train": rng.standard_normal((n_train_prompts, n_responses, n_reward_models)),
               "test": rng.standard_normal((n_test_prompts, n_responses, n_reward_models))}
    table_bytes = sum(t.numel() * t.element_size() for t in tables.values())
    phase("random tables", table_gb=round(table_bytes / GB, 3))

    population = sim.simulate_population(
        rewards["train"], rewards["test"], n_seen_users, n_unseen_users,
        sim.prompts_per_user(seen_prompt_fraction, n_train_prompts, "seen", "seen_prompt_fraction"),
        sim.prompts_per_user(unseen_prompt_fraction, n_train_prompts, "unseen", "unseen_prompt_fraction"),
        seed=seed)
    groups = [population.seen_train.comparisons(tables["train"]), population.seen_test.comparisons(tables["test"]),
              population.unseen_train.comparisons(tables["train"]), population.unseen_test.comparisons(tables["test"])]
    counts = population.counts()
    phase("simulate + Comparisons", comparisons={k: v["comparisons"] for k, v in counts.items()})

    live = groups[0].compact()          # what every LoRe fit does first: copy the live train rows
    phase("compact train table", live_train_rows=int(live.table.shape[0]))
    fit_start = time.perf_counter()
    model = utils.LoRe(None, 0, n_seen_users, d, 5, timing_iterations, 0.5, seed=seed, progress=False)
    model.train(live)
    per_iteration = (time.perf_counter() - fit_start) / timing_iterations
    del live, model
    phase("timing fit (K=5)", seconds_per_iteration=round(per_iteration, 3))

    results = utils.run(K_list, alpha_list, head, *groups, n_seen_users, n_unseen_users, "cpu",
                        num_iterations=num_iterations, fewshot_iterations=fewshot_iterations, seed=seed,
                        progress=False)
    phase("utils.run", num_iterations=num_iterations, K_list=K_list)

    n_fits = sum(1 for K in K_list if K >= 1) * len(alpha_list)
    extrapolated = phases["utils.run"]["seconds"] + n_fits * (full_iterations - num_iterations) * per_iteration
    copy_bytes = sim.per_user_copy_bytes(population, d)
    copy_groups = {name: (g.N + g.n_skipped) * d * 4 / GB for name, g in (
        ("seen_train", population.seen_train), ("seen_test", population.seen_test),
        ("unseen_train", population.unseen_train), ("unseen_test", population.unseen_test))}
    report = {
        "settings": settings, "seed": seed,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "load_average": os.getloadavg()},
        "phases": phases, "peak_rss_gb": round(process_peak_gb(), 3), "embedding_tables_gb": round(table_bytes / GB, 3),
        "per_user_copy_gb": round(copy_bytes / GB, 2),
        "per_user_copy_gb_by_group": {k: round(v, 2) for k, v in copy_groups.items()},
        "total_wall_seconds": round(sum(p["seconds"] for p in phases.values()), 1),
        "extrapolated_run_seconds_at_full_iterations": round(extrapolated, 1),
        "unseen_test_accuracy_by_K": dict(zip(map(str, K_list), map(float, results[3]))),
    }
    path = Path(__file__).resolve().parent / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    print(f"\npeak RSS {report['peak_rss_gb']:.2f} GB (embedding tables {report['embedding_tables_gb']:.2f} GB); "
          f"per-user copies would need {report['per_user_copy_gb']:.1f} GB "
          f"({', '.join(f'{k} {v:.2f}' for k, v in copy_groups.items())} GB)")
    print(f"wall {report['total_wall_seconds']:.0f} s with {num_iterations} LoRe iterations per K; "
          f"{per_iteration:.2f} s per LoRe iteration -> utils.run at {full_iterations} iterations ~ "
          f"{extrapolated / 60:.0f} min on this machine now")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

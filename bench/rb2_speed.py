"""RewardBench 2 scoring speed: the engine vs one prompt per forward pass (the original's way).

    python bench/rb2_speed.py                      # the tiny offline model on the generated RB2 file
    python bench/rb2_speed.py --batch_size=32 --repeats=1 --threads=[1] --limit=40

Both ways go through rewardbench2.score_rows (same rendering, same model). "One prompt per forward"
scores each prompt's responses, whole, in one forward pass of their own, as the original eval_rb2.py
did. The engine batches across prompts by length and runs each prompt, shared by its responses, once
(embedding.shared_prefix_groups); "batching alone" is the engine with share_prefixes=False. Prints
prompts/s of each way, the speed-ups (the target is at least 3x) and the largest score difference
(they must agree). Best of `repeats` timings each, for each torch thread count in `threads` (0: torch's
default, all cores).
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
import rewardbench2 as rb2  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
batch_size = 32        # rows per forward pass when batching across prompts
max_tokens = 0         # padded tokens per forward pass when batching (0: no cap)
repeats = 2            # timings per way; the best is reported
threads = [0, 1]       # torch thread counts to measure (0: torch's default, all cores)
limit = 0              # first N prompts only (0: all)
data_dir: str | None = None  # the generated RB2 file's folder (None: the offline default, PRISM/data/rewardbench2-offline)
# -----------------------------------------------------------------------------
settings = harness.configure(globals())


def best_time(fn, n):
    times, out = [], None
    for _ in range(n):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    from offline.rewardbench2 import dataset_path
    from offline.tiny_model import tiny_model_path
    path = dataset_path(data_dir or ROOT / "PRISM" / "data" / "rewardbench2-offline")
    rows = rb2.load_rows(path, limit=limit or None)
    model, tokenizer = rb2.load_scoring_model(tiny_model_path(), "seqclf", device="cpu")
    n = len(rows)
    responses = sum(len(r["chosen"]) + len(r["rejected"]) for r in rows)
    default_threads = torch.get_num_threads()
    print(f"tiny offline model, {n} prompts ({responses} responses), batch_size {batch_size}, "
          f"best of {repeats}")
    print("| torch threads | one prompt per forward (prompts/s) | batching alone (prompts/s) | engine (prompts/s) "
          "| batching alone | engine | max abs score diff |")
    print("|---|---|---|---|---|---|---|")
    for count in threads:
        torch.set_num_threads(count or default_threads)
        rb2.score_rows(model, tokenizer, rows[:4], batch_size=batch_size)  # warm-up
        t_batched, batched = best_time(lambda: rb2.score_rows(model, tokenizer, rows, batch_size=batch_size, max_tokens=max_tokens or None),
                                       repeats)
        t_unshared, unshared = best_time(lambda: rb2.score_rows(model, tokenizer, rows, batch_size=batch_size,
                                                                max_tokens=max_tokens or None, share_prefixes=False), repeats)
        t_single, single = best_time(
            lambda: [rb2.score_rows(model, tokenizer, [r], batch_size=len(r["chosen"]) + len(r["rejected"]),
                                    share_prefixes=False)[0] for r in rows], repeats)
        diff = max(float(np.max(np.abs(np.concatenate(way) - np.concatenate(single))))
                   for way in (batched, unshared))
        print(f"| {torch.get_num_threads()} | {n / t_single:.1f} | {n / t_unshared:.1f} | {n / t_batched:.1f} | "
              f"{t_single / t_unshared:.2f}x | **{t_single / t_batched:.2f}x** | {diff:.1e} |", flush=True)
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()

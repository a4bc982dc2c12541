"""The CPU benchmarks in bench/ run, at tiny sizes, so none of them rots when the code they measure changes.

These are not timed tests: each runs a script with small settings and checks that it finishes and prints
its ratio lines; the figures themselves come from full-size runs (the README's speed section).
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY_RUNS = {
    "lore_speed.py": (["--n_users=20", "--comparisons_per_user=5", "--d=32", "--fast_iterations=2",
                       "--reference_iterations=1", "--repeats=1", "--fewshot_users=10", "--fewshot_iterations=5",
                       "--loop_users=5", "--full_fit=False"], "==> speed-up vs straightforward"),
    "prism_scale.py": (["--n_seen=20", "--n_unseen=5", "--comparisons_per_user=5", "--d=32", "--ranks=[2,4]",
                        "--timed_iterations=5", "--fewshot_iterations=5"], "==> train_basis.py sweep"),
    "baselines_speed.py": (["--n_users=20", "--comparisons_per_user=5", "--n_unseen=5", "--d=32", "--K=3",
                            "--short_steps=1", "--long_steps=2", "--lore_short=1", "--lore_long=2", "--repeats=1",
                            "--lore_fewshot_iterations=5", "--pl_train_prompts=50", "--pl_test_prompts=10",
                            "--pl_seen_users=10", "--pl_unseen_users=5", "--pl_seen_fraction=0.1",
                            "--pl_unseen_fraction=0.05", "--memory_steps=2"], "VPL"),
    "personalllm_scale.py": (["--n_train_prompts=50", "--n_test_prompts=10", "--d=16", "--n_seen_users=10",
                              "--n_unseen_users=5", "--seen_prompt_fraction=0.2", "--unseen_prompt_fraction=0.1",
                              "--num_iterations=2", "--timing_iterations=2", "--fewshot_iterations=2",
                              "--out={tmp}/personalllm_scale.json"], "peak RSS"),
    "rb2_speed.py": (["--limit=4", "--repeats=1", "--threads=[1]", "--data_dir={tmp}/rewardbench2"], "x"),
    "embed_speed.py": (["--data=synthetic", "--n=6", "--min_sentences=1", "--max_sentences=2"], "max relative difference"),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_a_benchmark_runs_at_tiny_sizes(script, tmp_path):
    arguments, expected = TINY_RUNS[script]
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *arguments], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert expected in done.stdout and "Traceback" not in done.stderr

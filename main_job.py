"""The main job: every dataset folder's scripts in their documented order, then the result tables.

    python main_job.py                 # offline default: tiny model and generated data (~N minutes on 2 cores)
    python main_job.py --smoke         # the same pipeline with tiny iteration counts (used by the tests)

(`bash main.sh` creates the virtual environment, installs requirements.txt and runs this.)
Each step runs as its own process (`python <script> --offline ...`) exactly as a user would run it;
its output goes to results/logs/. At the end the tables every script wrote are printed, and its
tables, JSON and plots are copied to results/<folder>/. A second run reuses the built model, data and
embeddings (prepare and the embedding scripts skip what is already complete).
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import utils

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
results_dir = "results"     # where the tables, JSON and plots of every folder are gathered
smoke = False               # tiny iteration counts: checks that everything runs, figures are not meaningful
only = ""                   # run only the steps of this folder (e.g. "PRISM"); "" runs all
# -----------------------------------------------------------------------------

# (folder, script, offline arguments, smoke arguments), in the documented order. The offline arguments
# shrink the real-scale iteration counts and fractions to what the small generated data need; every
# value a step gets is visible here.
FAST = ["--num_iterations=30", "--fewshot_iterations=30"]   # smoke: every fit runs, none converges
STEPS = [
    ("PRISM", "prepare.py", [], []),
    ("PRISM", "generate-prism-embeddings.py", [], []),
    # 1,000 LoRe_regularized iterations fit the small generated data (the real default is 20,000)
    ("PRISM", "train_basis.py", ["--num_iterations=1000"], FAST + ["--K_list=[0,1,5]"]),
    ("PRISM", "vary_fewshot.py", ["--num_iterations=1000"], FAST + ["--trials=2", "--num_shots=[1,5]"]),
    ("PRISM", "eval_rb2.py", ["--batch_size", "32"], []),   # the tiny model's own head (seqclf)
    ("PRISM", "eval_rb2.py", ["--batch_size", "32", "--rm_head", "PRISM_V_lore_K_5_alpha_0.0.pt"], []),
    ("PRISM", "eval_rb2.py", ["--batch_size", "32", "--rm_head", "PRISM_V_lore_K_5_alpha_10000.0.pt"], []),
    ("RedditTLDR", "prepare.py", [], []),
    ("RedditTLDR", "generate-tldr-embeddings.py", [], []),
    ("RedditTLDR", "train_basis.py", [], FAST + ["--K_list=[0,1,3]"]),
    ("RedditTLDR", "vary_fewshot.py", [], FAST + ["--trials=2", "--num_shots=[5,10]"]),
    ("PersonalLLM", "prepare.py", [], []),
    ("PersonalLLM", "generate-personalllm-embeddings.py", [], []),
    # 160 generated train prompts: these fractions give 48 / 9 prompts per seen / unseen user, as the
    # real run's 0.5% / 0.1% of 9,402 prompts give 47 / 9.
    ("PersonalLLM", "train_basis.py",
     ["--seen_prompt_fraction=0.3", "--unseen_prompt_fraction=0.06", "--num_iterations=300",
      "--fewshot_iterations=300"],
     FAST + ["--n_seen_users=100", "--n_unseen_users=50", "--K_list=[0,1,3]"]),
    ("PersonalLLM", "vary_fewshot.py",
     ["--seen_prompt_fraction=0.3", "--unseen_pool_fraction=0.3", "--trials=5", "--num_iterations=300",
      "--fewshot_iterations=300"],
     FAST + ["--n_seen_users=100", "--n_unseen_users=50", "--trials=2", "--num_shots=[1,5]"]),
    ("debias_lora", "demo_offline.py", [], ["--smoke"]),
]

# What each folder's offline results folder holds that a reader looks at.
GATHERED = ("*.md", "*.json", "*.png", "*.csv")


def run_step(index: int, folder: str, script: str, args: list[str], log_dir: Path) -> float:
    """Run one script in its folder; stream nothing, log everything; fail loudly with the log's tail."""
    log = log_dir / f"{index:02d}_{folder}_{Path(script).stem}.log"
    command = [sys.executable, script, "--offline", *args]
    start = time.time()
    # One thread per process: the tiny model is too small for two threads to help, and oversubscribed
    # OpenMP threads made one RewardBench 2 step 40x slower on a busy 2-core machine.
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=ROOT / folder, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"\n{folder}/{script} failed (exit {code}); last lines of {log}:\n{tail}")
    return time.time() - start


def gather(folder: str, out_dir: Path) -> list[Path]:
    """Copy a folder's offline results (tables, JSON, plots) to out_dir/folder; return the tables."""
    source = ROOT / folder / "results-offline"
    target = out_dir / folder
    target.mkdir(parents=True, exist_ok=True)
    tables = []
    for pattern in GATHERED:
        for path in sorted(source.glob(pattern), key=lambda p: p.stat().st_mtime):  # in the order written
            shutil.copy2(path, target / path.name)
            if path.suffix == ".md":
                tables.append(target / path.name)
    return tables


def main() -> None:
    utils.configure(globals())
    out_dir = Path(results_dir) if Path(results_dir).is_absolute() else ROOT / results_dir
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if not only or s[0] == only]
    total = time.time()
    for i, (folder, script, offline_args, smoke_args) in enumerate(steps, 1):
        print(f"[{i:2d}/{len(steps)}] {folder}/{script} ...", end="", flush=True)
        seconds = run_step(i, folder, script, offline_args + (smoke_args if smoke else []), log_dir)
        print(f" {seconds:6.1f} s", flush=True)
    print(f"\nall steps done in {time.time() - total:.0f} s; logs in {log_dir}\n")
    for folder in dict.fromkeys(s[0] for s in steps):
        for table in gather(folder, out_dir):
            print(f"## {folder}: {table.stem}\n")
            print(table.read_text().strip() + "\n")
    print(f"tables, JSON and plots: {out_dir}")


if __name__ == "__main__":
    main()

"""The main job: every dataset folder's scripts in their documented order on the offline default, then the
result tables.

    python main_job.py                 # 6.5-9.5 minutes on 2 cores, + about 2 for CustomData (bash main.sh installs, then runs this)
    python main_job.py --smoke         # tiny iteration counts: checks that everything runs (tables marked SMOKE)
    python main_job.py --only=PRISM    # one folder (--only=PRISM,personalize: several)

Each step runs as its own process (`python <script> --offline ...`), exactly as a user would run it, with
the overrides listed in STEPS; its output goes to <results>/logs/. Every step writes its tables, JSON and
plots into <results>/<folder>/ (a top-level script: <results>/<its name>/; results/, or results-smoke/
with --smoke); at the end the tables and findings of the files this run wrote are printed (and listed,
with the steps' timings, in <results>/main_job.json). The offline data stay in each folder's
data/*-offline (or under --data_dir), so a second run reuses the built model, data and embeddings.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import utils

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
results_dir = "results"      # tables, JSON and plots of every folder (results-smoke with --smoke, unless given)
data_dir: str | None = None  # None: each script's own offline data folder; else one folder for all the data
smoke = False                # tiny iteration counts: checks that everything runs, figures are not meaningful
only: str | None = None      # run only the steps of these folders (e.g. "PRISM,personalize"); None runs all
# -----------------------------------------------------------------------------

# (folder, script, its data folder name, offline arguments, smoke arguments), in the documented order.
# Every value a step gets is visible here: the offline default runs the scripts' real settings except
# where noted.
FAST = ["--num_iterations=30", "--fewshot_iterations=30"]   # smoke: every fit runs, none converges
# The paper's comparison in every train_basis.py: PAL and VPL beside LoRe over two seeds (the scripts'
# default is one seed and no baselines: the original's run); smoke: one seed. PersonalLLM: one seed and
# 300 seen / 150 new users (the real 1,000 / 500: VPL's decoder over 150,000 test comparisons alone takes
# about 4 minutes per seed here)
# --overwrite=True: the bases under <results> are this job's own, remade by every run (an edit of the
# settings here would otherwise stop the next run at the V files the last one saved)
COMPARE = ["--baselines=['PAL','VPL']", "--seeds=2", "--overwrite=True"]
SMOKE_COMPARE = ["--baselines=['PAL','VPL']", "--seeds=1", "--overwrite=True"]
PERSONALLLM_COMPARE = ["--baselines=['PAL','VPL']", "--seeds=1", "--n_seen_users=300", "--n_unseen_users=150",
                       "--overwrite=True"]
RB2 = ["--batch_size", "32"]
STEPS = [
    ("PRISM", "prepare.py", "prism", [], []),
    ("PRISM", "generate-prism-embeddings.py", "prism", [], []),
    # 2,000 LoRe_regularized iterations (the real default is 20,000: about 9 minutes here, the same
    # figures within a point); alpha = 0 runs beside the real 1e4 as the contrast
    ("PRISM", "train_basis.py", "prism", ["--num_iterations=2000", "--alpha_list=[10000.0,0.0]"] + COMPARE,
     FAST + ["--K_list=[0,1,5]"] + SMOKE_COMPARE),
    ("PRISM", "vary_fewshot.py", "prism", ["--num_iterations=2000"], FAST + ["--trials=2", "--num_shots=[1,5]"]),
    ("PRISM", "eval_rb2.py", "rewardbench2", RB2, []),   # the tiny model's own head (seqclf)
] + [("PRISM", "eval_rb2.py", "rewardbench2", RB2 + ["--rm_head", f"PRISM_V_lore_K_5_alpha_{alpha}.pt"] + weights, [])
     for alpha in ("10000.0", "0.0")               # every column of the K = 5 basis, then the average seen user
     for weights in ([], ["--rm_weights", f"PRISM_W_lore_seen_5_{alpha}.pt"])] + [
    # personalize.py's demo on PRISM's data and basis at the real alpha ({results}: this run's results)
    (".", "personalize.py", "PRISM/prism", ["--basis={results}/PRISM/PRISM_V_lore_K_5_alpha_10000.0.pt"],
     ["--num_iterations=30"]),
    ("RedditTLDR", "prepare.py", "tldr", [], []),
    ("RedditTLDR", "generate-tldr-embeddings.py", "tldr", [], []),
    ("RedditTLDR", "train_basis.py", "tldr", COMPARE, FAST + ["--K_list=[0,1,3]"] + SMOKE_COMPARE),
    ("RedditTLDR", "vary_fewshot.py", "tldr", [], FAST + ["--trials=2", "--num_shots=[5,10]"]),
    ("PersonalLLM", "prepare.py", "personalllm", [], []),
    ("PersonalLLM", "generate-personalllm-embeddings.py", "personalllm", [], []),
    ("PersonalLLM", "train_basis.py", "personalllm", PERSONALLLM_COMPARE,
     FAST + ["--n_seen_users=100", "--n_unseen_users=50"] + SMOKE_COMPARE),
    ("PersonalLLM", "vary_fewshot.py", "personalllm", ["--trials=5"],
     FAST + ["--n_seen_users=100", "--n_unseen_users=50", "--trials=2", "--num_shots=[1,5]"]),
    # your own population: the generated comparisons file of 60 users in the default schema
    ("CustomData", "prepare.py", "custom", [], []),
    ("CustomData", "generate-custom-embeddings.py", "custom", [], []),
    ("CustomData", "train_basis.py", "custom", COMPARE, FAST + ["--K_list=[0,1,3]"] + SMOKE_COMPARE),
    ("CustomData", "vary_fewshot.py", "custom", [], FAST + ["--trials=2", "--num_shots=[1,5]"]),
    ("debias_lora", "demo_offline.py", "data", [], ["--smoke"]),
]
ARGPARSE_SCRIPTS = {"eval_rb2.py", "demo_offline.py"}     # published command lines: `--name value`
TABLES = "*.md"


def results_name(folder: str, script: str) -> str:
    """The folder of a step's results under <results>: its own folder's name, a top-level script's name."""
    return Path(script).stem if folder == "." else folder


def step_command(folder, script, data_name, arguments, results: Path, data_root: Path | None) -> list[str]:
    """The command line of one step: the script on the offline default, writing into results/<folder>."""
    flag = (lambda name, value: [f"--{name}", str(value)]) if script in ARGPARSE_SCRIPTS else \
        (lambda name, value: [f"--{name}={value}"])
    command = [sys.executable, script] + ([] if script == "demo_offline.py" else ["--offline"])
    if script not in ("prepare.py",) and not script.startswith("generate-"):
        command += flag("results_dir", results / results_name(folder, script))
    if data_root is not None:
        command += flag("data_dir", data_root / folder / data_name)
    return command + [argument.format(results=results) for argument in arguments]


def run_step(index: int, command: list[str], folder: str, log_dir: Path) -> float:
    """Run one script in its folder; log everything; fail loudly with the log's tail."""
    log = log_dir / f"{index:02d}_{results_name(folder, command[1])}_{Path(command[1]).stem}.log"
    start = time.time()
    # One thread per process: the tiny model is too small for two threads to help, and oversubscribed
    # OpenMP threads made one RewardBench 2 step 40x slower on a busy 2-core machine.
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=ROOT / folder, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"\n{folder}/{command[1]} failed (exit {code}); last lines of {log}:\n{tail}")
    return time.time() - start


def findings(results: Path, since: float) -> list[str]:
    """The offline world's story, each sentence computed from this run's result files (written at or
    after `since`; a stale file of an earlier run, or of another version, is not read) with its test and
    whether it holds: the head (ref) is a good but imperfect reward, LoRe beats it and one shared
    reward on new users, the regularised PRISM basis keeps the head's RewardBench 2 score, and the
    debias demo's base is a reasonable reward model."""
    def load(path):
        path = results / path
        return json.loads(path.read_text()) if path.exists() and path.stat().st_mtime >= since else None

    def verdict(ok):
        return "holds" if ok else "does NOT hold"

    lines = []
    for folder, name, alpha in (("PRISM", "PRISM", 1e4), ("RedditTLDR", "Reddit TLDR", 0.0),
                                ("PersonalLLM", "PersonalLLM", 0.0), ("CustomData", "Custom data", 0.0)):
        run = load(f"{folder}/train_basis.json")
        if run is None or "planted_accuracy" not in run:
            continue
        rows = {r["K"]: r for r in run["results"] if r["alpha"] == alpha}
        planted, K = run["planted_accuracy"]["unseen_test"], run["K_chosen_on_seen_users"][str(alpha)]
        ref, one = rows[0]["unseen_test"]["mean"], rows[1]["unseen_test"]["mean"]
        lines.append(f"- {name} (alpha = {alpha:g}): on new users the backbone's head (ref) scores {100 * ref:.1f}%, "
                     f"clearly above chance (> 55%) and below the planted rate ({100 * planted:.1f}%, by more "
                     f"than 2 points): {verdict(0.55 < ref < planted - 0.02)}.")
        if K in rows and K != 1:
            lore = rows[K]["unseen_test"]["mean"]
            lines.append(f"- {name}: LoRe at K = {K} (chosen on seen users) scores {100 * lore:.1f}% on new users, "
                         f"above ref ({100 * ref:.1f}%) and K = 1 ({100 * one:.1f}%): {verdict(lore > max(ref, one))}.")
    head = load("PRISM/rb2_seqclf.json")
    kept, lost = (load(f"PRISM/rb2_lmhead_PRISM_V_lore_K_5_alpha_{a}_mean_user.json") for a in ("10000.0", "0.0"))
    if head and kept and lost:
        h, k, l = (f["official"]["overall"][0] for f in (head, kept, lost))
        lines.append(f"- PRISM on RewardBench 2 (official overall): the head {100 * h:.1f}; the alpha = 1e4 basis "
                     f"(K = 5, the average seen user's reward) {100 * k:.1f}, within 5 points of it; the alpha = 0 "
                     f"basis {100 * l:.1f}, at least twice as far below: "
                     f"{verdict(k >= h - 0.05 and h - l >= 2 * max(h - k, 0.025))}.")
    demo = load("debias_lora/demo_offline.json")
    if demo:
        base = next((r.get("rb2_overall") for r in demo["results"] if r["lambda"] == 0.0), None)
        if base is not None:
            lines.append(f"- Debias demo: the biased base's RewardBench 2 overall is {100 * base:.1f}, above the "
                         f"25 that random scores get: {verdict(base > 0.25)}.")
        claim = demo["claim"]
        lines.append(f"- Debias demo: base - {claim['claim_lambda']:g} x the style forget LoRA raises the hard "
                     f"(style against correctness) accuracy {claim['hard_at_0']:.3f} -> {claim['hard_at_claim']:.3f} "
                     f"by at least {claim['min_rise']:g} while the normal one stays within {claim['max_drop']:g} "
                     f"({claim['normal_at_0']:.3f} -> {claim['normal_at_claim']:.3f}); "
                     f"easy (style and correctness agree) {claim['easy_at_0']:.3f} -> {claim['easy_at_claim']:.3f}: "
                     f"{verdict(claim['hard_rises'] and claim['normal_holds'])}.")
    return lines


def main() -> None:
    settings = utils.configure(globals())
    folders = list(dict.fromkeys(results_name(folder, script) for folder, script, *_ in STEPS))
    wanted = folders if only is None else only.split(",")
    if set(wanted) - set(folders):
        raise utils.SettingsError(f"error: --only={only!r} names no folder of the main job; choose among {folders}")
    default = "results-smoke" if smoke and "results_dir" not in settings.overridden else results_dir
    results = Path(default) if Path(default).is_absolute() else ROOT / default
    data_root = None if data_dir is None else Path(data_dir).resolve()
    log_dir = results / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if results_name(s[0], s[1]) in wanted]
    started, timings = time.time(), []
    for i, (folder, script, data_name, offline_args, smoke_args) in enumerate(steps, 1):
        command = step_command(folder, script, data_name, offline_args + (smoke_args if smoke else []), results,
                               data_root)
        print(f"[{i:2d}/{len(steps)}] {folder}/{script} {' '.join(command[2:])} ...", end="", flush=True)
        seconds = run_step(i, command, folder, log_dir)
        timings.append({"step": f"{folder}/{script}", "command": " ".join(command[1:]), "seconds": round(seconds, 1)})
        print(f" {seconds:6.1f} s", flush=True)
    print(f"\nall steps done in {time.time() - started:.0f} s; logs in {log_dir}\n")
    written = [path for folder in folders for path in sorted((results / folder).glob(TABLES),
                                                             key=lambda p: p.stat().st_mtime)
               if path.stat().st_mtime >= started]          # this run's tables only, not stale ones
    for table in written:
        if smoke:   # a smoke table says so, in the file too
            utils.write_text_atomic(table, f"> SMOKE run (iteration counts cut to {' '.join(FAST)}): the figures "
                                           f"are not meaningful.\n\n" + table.read_text())
        print(f"## {table.parent.name}: {table.stem}\n\n{table.read_text().strip()}\n")
    story = findings(results, since=started)
    if story:
        text = ("# What the offline run shows\n\n" + ("> SMOKE run: the figures are not meaningful.\n\n" if smoke else "")
                + "\n".join(story) + "\n")
        utils.write_text_atomic(results / "findings.md", text)
        print(text)
    utils.write_json_atomic(results / "main_job.json", {"settings": settings, "steps": timings,
                                                        "tables": [str(t) for t in written], "findings": story})
    print(f"tables, JSON and plots: {results}")


if __name__ == "__main__":
    main()

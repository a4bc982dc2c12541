"""The main job: every dataset folder's scripts in their documented order on the offline default, then the
result tables.

    python main_job.py                 # 6.5-9.5 minutes on 2 cores (bash main.sh installs, then runs this)
    python main_job.py --smoke         # tiny iteration counts: checks that everything runs (tables marked SMOKE)
    python main_job.py --only=PRISM    # one folder (--only=PRISM,personalize,PRISM-null: several)

Each step runs as its own process (`python <script> --offline ...`), exactly as a user would run it, with
the overrides listed in STEPS; its output goes to <results>/logs/. Every step writes its tables, JSON and
plots into <results>/<folder>/ (the personalize demo: <results>/personalize/; results/, or results-smoke/
with --smoke); at the end the tables and findings of the files this run wrote are printed (and listed,
with the steps' timings, in <results>/main_job.json). The offline data stay in each folder's
data/*-offline (or under --data_dir), so a second run reuses the built model, data and embeddings.
"""
import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import evidence
import harness

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
results_dir = "results"      # tables, JSON and plots of every folder (results-smoke with --smoke, unless given)
data_dir: str | None = None  # None: each script's own offline data folder; else one folder for all the data
smoke = False                # tiny iteration counts: checks that everything runs, figures are not meaningful
only: str | None = None      # run only the steps of these folders (e.g. "PRISM,personalize"); None runs all
# -----------------------------------------------------------------------------

# The steps in their documented order. Every value a step gets is visible here: the offline default runs
# the scripts' real settings except where noted.
class Step(typing.NamedTuple):
    folder: str                 # where the script lives (and runs)
    script: str
    data: str                   # its data folder's name: <folder>/data/<data>-offline, or <data_dir>/<folder>/<data>
    offline: list               # its arguments in the real run
    smoke: list                 # ... added with --smoke
    results: str | None = None  # its results folder under <results>, and its name for --only (None: <folder>)
    own_data: bool = False      # always give --data_dir (a second world beside the script's default one)


FAST = ["--num_iterations=30", "--fewshot_iterations=30"]   # smoke: every fit runs, none converges
# The paper's comparison in every train_basis.py: PAL and VPL beside LoRe over two seeds (the scripts'
# default is one seed and no baselines: the original's run); smoke: one seed. PersonalLLM: one seed and
# 300 seen / 150 new users (the real 1,000 / 500: VPL's decoder over 150,000 test comparisons alone takes
# about 4 minutes per seed here)
# --overwrite=True: the bases under <results> are this job's own, remade by every run (an edit of the
# settings here would otherwise stop the next run at the V files the last one saved)
COMPARE = ["--baselines=['PAL','VPL']", "--seeds=2", "--overwrite=True"]
SMOKE_COMPARE = ["--baselines=['PAL','VPL']", "--seeds=1", "--overwrite=True",   # and one short fit of each
                 '--baseline_settings={"PAL": {"epochs": 1, "grid": {"K": [2], "d_pref": [16]}}, '
                 '"VPL": {"epochs": 1, "duplicates": 1, "hidden_dim": 16, "latent_dim": 8}}']
PERSONALLLM_COMPARE = ["--baselines=['PAL','VPL']", "--seeds=1", "--n_seen_users=300", "--n_unseen_users=150",
                       "--overwrite=True"]
RB2 = ["--batch_size", "32"]
# PRISM: 2,000 LoRe_regularized iterations (the real default is 20,000: about 9 minutes here, the same
# figures within a point); alpha = 0 runs beside the real 1e4 as the contrast
PRISM_FIT = ["--num_iterations=2000", "--alpha_list=[10000.0,0.0]"]
STEPS = [
    Step("PRISM", "prepare.py", "prism", [], []),
    Step("PRISM", "generate-prism-embeddings.py", "prism", [], []),
    Step("PRISM", "train_basis.py", "prism", PRISM_FIT + COMPARE, FAST + ["--K_list=[0,1,5]"] + SMOKE_COMPARE),
    Step("PRISM", "vary_fewshot.py", "prism", ["--num_iterations=2000"], FAST + ["--trials=2", "--num_shots=[1,5]"]),
    Step("PRISM", "eval_rb2.py", "rewardbench2", RB2, []),   # the tiny model's own head (seqclf)
] + [Step("PRISM", "eval_rb2.py", "rewardbench2", RB2 + ["--rm_head", f"PRISM_V_lore_K_5_alpha_{alpha}.pt"] + weights, [])
     for alpha in ("10000.0", "0.0")               # every column of the K = 5 basis, then the average seen user
     for weights in ([], ["--rm_weights", f"PRISM_W_lore_seen_5_{alpha}.pt"])] + [
    # personalize.py's fit, export and score on new PRISM users, against this run's basis at the real alpha
    Step("PRISM", "personalize_demo.py", "prism", ["--basis={results}/PRISM/PRISM_V_lore_K_5_alpha_10000.0.pt"],
         ["--num_iterations=30"], results="personalize"),
    # PRISM's null world: the same generator with personal_scale = 0 (every user's reward is the head, with
    # the same label noise), its own data folder; the K_list cut to [0, 1, 5, 10] (no baselines) to keep the
    # job short: what it must show is that no K finds a personal gain there
    Step("PRISM", "prepare.py", "prism-null", ["--personal_scale=0.0"], [], results="PRISM-null", own_data=True),
    Step("PRISM", "generate-prism-embeddings.py", "prism-null", [], [], results="PRISM-null", own_data=True),
    Step("PRISM", "train_basis.py", "prism-null", PRISM_FIT + ["--K_list=[0,1,5,10]", "--seeds=2", "--overwrite=True"],
         FAST + ["--K_list=[0,1,5]", "--seeds=1"], results="PRISM-null", own_data=True),
    Step("RedditTLDR", "prepare.py", "tldr", [], []),
    Step("RedditTLDR", "generate-tldr-embeddings.py", "tldr", [], []),
    Step("RedditTLDR", "train_basis.py", "tldr", COMPARE, FAST + ["--K_list=[0,1,3]"] + SMOKE_COMPARE),
    Step("RedditTLDR", "vary_fewshot.py", "tldr", [], FAST + ["--trials=2", "--num_shots=[5,10]"]),
    Step("PersonalLLM", "prepare.py", "personalllm", [], []),
    Step("PersonalLLM", "generate-personalllm-embeddings.py", "personalllm", [], []),
    Step("PersonalLLM", "train_basis.py", "personalllm", PERSONALLLM_COMPARE,
         FAST + ["--n_seen_users=100", "--n_unseen_users=50"] + SMOKE_COMPARE),
    Step("PersonalLLM", "vary_fewshot.py", "personalllm", ["--trials=5"],
         FAST + ["--n_seen_users=100", "--n_unseen_users=50", "--trials=2", "--num_shots=[1,5]"]),
    # your own population (CustomData/): the generated comparisons file in the default schema
    Step("CustomData", "prepare.py", "custom", [], []),
    Step("CustomData", "generate-custom-embeddings.py", "custom", [], []),
    Step("CustomData", "train_basis.py", "custom", COMPARE, FAST + ["--K_list=[0,1,3]"] + SMOKE_COMPARE),
    Step("CustomData", "vary_fewshot.py", "custom", [], FAST + ["--trials=2", "--num_shots=[1,5]"]),
    Step("debias_lora", "demo_offline.py", "data", [], ["--smoke"]),
]
ARGPARSE_SCRIPTS = {"eval_rb2.py", "demo_offline.py"}     # published command lines: `--name value`
TABLES = "*.md"


def results_name(step: Step) -> str:
    """The folder of a step's results under <results>."""
    return step.results or step.folder


def step_command(step: Step, arguments, results: Path, data_root: Path | None) -> list[str]:
    """The command line of one step: the script on the offline default, writing into results/<folder>."""
    flag = (lambda name, value: [f"--{name}", str(value)]) if step.script in ARGPARSE_SCRIPTS else \
        (lambda name, value: [f"--{name}={value}"])
    command = [sys.executable, step.script] + ([] if step.script == "demo_offline.py" else ["--offline"])
    if step.script not in ("prepare.py",) and not step.script.startswith("generate-"):
        command += flag("results_dir", results / results_name(step))
    if data_root is not None:
        command += flag("data_dir", data_root / step.folder / step.data)
    elif step.own_data:
        command += flag("data_dir", ROOT / step.folder / "data" / f"{step.data}-offline")
    return command + [argument.replace("{results}", str(results)) for argument in arguments]


def run_step(index: int, command: list[str], step: Step, log_dir: Path) -> float:
    """Run one script in its folder; log everything; fail loudly with the log's tail."""
    folder = step.folder
    log = log_dir / f"{index:02d}_{results_name(step)}_{Path(step.script).stem}.log"
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
    """What this run measured, each sentence computed from this run's result files (written at or after
    `since`; a stale file of an earlier run, or of another version, is not read). A sentence about a gain
    decides by its 95% interval over users (evidence.verdict): a gain when the interval lies above 0, a
    loss when below, otherwise "no clear difference"."""
    def load(path):
        path = results / path
        return json.loads(path.read_text()) if path.exists() and path.stat().st_mtime >= since else None

    lines = []
    for folder, name, alpha in (("PRISM", "PRISM", 1e4), ("PRISM", "PRISM", 0.0), ("PRISM-null", "PRISM null world", 1e4),
                                ("PRISM-null", "PRISM null world", 0.0), ("RedditTLDR", "Reddit TLDR", 0.0),
                                ("PersonalLLM", "PersonalLLM", 0.0), ("CustomData", "Your own population", 0.0)):
        run = load(f"{folder}/train_basis.json")
        rows = {r["K"]: r for r in (run or {}).get("results", []) if r["alpha"] == alpha}
        K = (run or {}).get("K_chosen_on_seen_users", {}).get(str(alpha))
        if K is None or K not in rows or 0 not in rows:
            continue
        new, planted = rows[K]["unseen_test"], run.get("planted_accuracy", {}).get("unseen_test")
        gains = "; ".join(f"{label} {evidence.describe(new[key])}" for key, label in (
            ("gain_vs_ref", "over the head (ref)"), ("gain_vs_K1", "over one shared reward (K = 1)"),
            ("gain_vs_shared", "own weights over the seen users' mean weights"),
            ("gain_vs_other", "own weights over another user's")) if key in new)
        lines.append(f"- {name} (alpha = {alpha:g}), new users: ref {100 * rows[0]['unseen_test']['mean']:.1f}%, LoRe at "
                     f"K = {K} (chosen on seen users) {100 * new['mean']:.1f}%"
                     + (f", planted rate {100 * planted:.1f}%" if planted else "") + f". Paired per user: {gains}.")
        chosen = rows[K]
        if "numerical_rank" in chosen:
            lines.append(f"  Its basis: {chosen['basis_size']} columns, numerical rank {chosen['numerical_rank']}, cos to "
                         f"the head {chosen['mean_cos_ref']:.5f} on average, {chosen['bases_used']} column(s) some seen "
                         f"user's largest weight.")
    for folder, name in (("PRISM", "PRISM"), ("RedditTLDR", "Reddit TLDR"), ("PersonalLLM", "PersonalLLM"),
                         ("CustomData", "Your own population")):
        table = load(f"{folder}/paper_table.json")
        for row in (table or {}).get("rows", []):
            gain = row["groups"].get("unseen_test", {}).get("gain_vs_ref")
            if row["method"] != "LoRe" and gain:
                lines.append(f"- {name}, {row['label']} on new users over the head: {evidence.describe(gain)}.")
    head = load("PRISM/rb2_seqclf.json")
    bases = {a: load(f"PRISM/rb2_lmhead_PRISM_V_lore_K_5_alpha_{a}_mean_user.json") for a in ("10000.0", "0.0")}
    if head and all(bases.values()):
        h, kept, drifted = (f["official"]["overall"][0] for f in (head, bases["10000.0"], bases["0.0"]))
        lines.append(f"- PRISM on RewardBench 2 (official overall, the offline rows; one figure each, no interval): the "
                     f"head {100 * h:.1f}, the alpha = 1e4 basis read as the average seen user's reward {100 * kept:.1f}, "
                     f"the alpha = 0 basis {100 * drifted:.1f}.")
    demo = load("debias_lora/demo_offline.json")
    if demo:
        base = next((r.get("rb2_overall") for r in demo["results"] if r["lambda"] == 0.0), None)
        if base is not None:
            lines.append(f"- Debias demo: the biased base's RewardBench 2 overall is {100 * base:.1f} (random scores: 25).")
        claim = demo["claim"]
        passed = claim["hard_rises"] and claim["normal_holds"]
        lines.append(f"- Debias demo: base - {claim['claim_lambda']:g} x the style forget LoRA: hard (style against "
                     f"correctness) accuracy {claim['hard_at_0']:.3f} -> {claim['hard_at_claim']:.3f}, normal "
                     f"{claim['normal_at_0']:.3f} -> {claim['normal_at_claim']:.3f}, easy {claim['easy_at_0']:.3f} -> "
                     f"{claim['easy_at_claim']:.3f}. The check fixed in advance (hard rises by at least "
                     f"{claim['min_rise']:g}, normal drops by at most {claim['max_drop']:g}; margins from the spread over "
                     f"seeds, see demo_offline.py) {'passes' if passed else 'FAILS'}.")
    return lines


def main() -> None:
    settings = harness.configure(globals())
    folders = list(dict.fromkeys(results_name(step) for step in STEPS))
    wanted = folders if only is None else only.split(",")
    if set(wanted) - set(folders):
        raise harness.SettingsError(f"error: --only={only!r} names no folder of the main job; choose among {folders}")
    default = "results-smoke" if smoke and "results_dir" not in settings.overridden else results_dir
    results = Path(default) if Path(default).is_absolute() else ROOT / default
    data_root = None if data_dir is None else Path(data_dir).resolve()
    log_dir = results / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    steps = [step for step in STEPS if results_name(step) in wanted]
    started, timings = time.time(), []
    for i, step in enumerate(steps, 1):
        command = step_command(step, step.offline + (step.smoke if smoke else []), results, data_root)
        print(f"[{i:2d}/{len(steps)}] {step.folder}/{step.script} {' '.join(command[2:])} ...", end="", flush=True)
        seconds = run_step(i, command, step, log_dir)
        timings.append({"step": f"{step.folder}/{step.script}", "command": " ".join(command[1:]),
                        "seconds": round(seconds, 1)})
        print(f" {seconds:6.1f} s", flush=True)
    print(f"\nall steps done in {time.time() - started:.0f} s; logs in {log_dir}\n")
    written = [path for folder in folders for path in sorted((results / folder).glob(TABLES),
                                                             key=lambda p: p.stat().st_mtime)
               if path.stat().st_mtime >= started]          # this run's tables only, not stale ones
    for table in written:
        if smoke:   # a smoke table says so, in the file too
            harness.write_text_atomic(table, f"> SMOKE run (iteration counts cut to {' '.join(FAST)}): the figures "
                                           f"are not meaningful.\n\n" + table.read_text())
        print(f"## {table.parent.name}: {table.stem}\n\n{table.read_text().strip()}\n")
    story = findings(results, since=started)
    if story:
        text = ("# What the offline run shows\n\n" + ("> SMOKE run: the figures are not meaningful.\n\n" if smoke else "")
                + "\n".join(story) + "\n")
        harness.write_text_atomic(results / "findings.md", text)
        print(text)
    harness.write_json_atomic(results / "main_job.json", {"settings": settings, "steps": timings,
                                                        "tables": [str(t) for t in written], "findings": story})
    print(f"tables, JSON and plots: {results}")


if __name__ == "__main__":
    main()

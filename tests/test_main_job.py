"""The README's two commands, and the main job itself (its smoke form) into a temporary folder."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FOLDERS = ("PRISM", "personalize", "PRISM-null", "RedditTLDR", "PersonalLLM", "CustomData",
           "debias_lora")   # <results>/<folder>


def readme_commands() -> list[str]:
    """Shell lines of the README's "Two commands" block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_gives_the_install_and_run_commands_that_ci_and_the_main_job_use():
    assert readme_commands() == ["bash main.sh", "bash .ci/run"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -r requirements.txt" in ci and "pytest -q tests" in ci
    main = (ROOT / "main.sh").read_text()
    assert "pip install -q -r requirements.txt" in main and "main_job.py" in main


@pytest.mark.slow
def test_main_job_runs_every_folder_in_order_and_prints_the_tables(tmp_path):
    """`python main_job.py --smoke`: the main job with tiny iteration counts, data and results in tmp_path."""
    before = sorted(p for p in ROOT.rglob("*") if ".git" not in p.parts and "__pycache__" not in p.parts)
    stale = tmp_path / "results" / "PRISM" / "stale_table.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("| a table of an earlier run |\n")
    done = subprocess.run([sys.executable, "main_job.py", "--smoke", f"--results_dir={tmp_path / 'results'}",
                           f"--data_dir={tmp_path / 'data'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    steps = re.findall(r"\] (\S+)/(\S+) ", out)
    assert [f for f in dict.fromkeys(folder for folder, _ in steps)] == ["PRISM", "RedditTLDR", "PersonalLLM",
                                                                         "CustomData", "debias_lora"]
    assert steps[:4] == [("PRISM", "prepare.py"), ("PRISM", "generate-prism-embeddings.py"),
                         ("PRISM", "train_basis.py"), ("PRISM", "vary_fewshot.py")]
    assert steps.index(("PRISM", "personalize_demo.py")) > steps.index(("PRISM", "train_basis.py"))
    assert steps.count(("PRISM", "prepare.py")) == 2                   # the default world, then the null world
    for folder in FOLDERS:
        assert f"## {folder}: " in out
        assert list((tmp_path / "results" / folder).glob("*.json"))
    assert "| K | seen users: train | seen users: unseen prompts | unseen users: few-shot train" in out
    assert "RewardBench 2 (official scoring)" in out and "| lambda | hard | normal | easy" in out
    # the personalize demo on the PRISM basis and data this run wrote: 5 new users, one exported and reloaded
    demo = json.loads((tmp_path / "results" / "personalize" / "personalize_demo.json").read_text())
    assert demo["basis"] == str(tmp_path / "results" / "PRISM" / "PRISM_V_lore_K_5_alpha_10000.0.pt")
    assert len(demo["users"]) == 5 and demo["users"][0]["exported_model_accuracy"] is not None
    assert "| user | few-shot comparisons | held-out comparisons | pipeline (train_basis.json)" in out
    assert "a table of an earlier run" not in out                      # only this run's tables
    # the findings are computed from this run's files (smoke: whether each holds is not meaningful)
    story = (tmp_path / "results" / "findings.md").read_text()
    for opening in ("- PRISM (alpha = 10000), new users", "- PRISM null world (alpha = 10000), new users",
                    "- Reddit TLDR (alpha = 0), new users", "- PersonalLLM (alpha = 0), new users",
                    "- Your own population (alpha = 0), new users", "- PRISM, VPL+ref on new users over the head",
                    "biased base's RewardBench 2 overall"):
        assert opening in story, opening
    assert "holds" not in story and "x the style forget LoRA: hard" in story
    assert all(t.read_text().startswith("> SMOKE run") for f in FOLDERS
               for t in (tmp_path / "results" / f).glob("*.md") if t != stale)
    after = sorted(p for p in ROOT.rglob("*") if ".git" not in p.parts and "__pycache__" not in p.parts)
    assert after == before                                             # nothing written into the checkout


def test_main_job_refuses_an_unknown_folder():
    done = subprocess.run([sys.executable, "main_job.py", "--only=PRISMA"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "PRISMA" in done.stderr and "RedditTLDR" in done.stderr


def test_findings_read_only_this_runs_files(tmp_path):
    """A result file left by an earlier run (here an older demo JSON without the claim's margins) is not
    read into this run's findings; the same file written during the run is."""
    import os
    import time
    sys.path.insert(0, str(ROOT))
    import main_job
    demo = tmp_path / "debias_lora" / "demo_offline.json"
    demo.parent.mkdir(parents=True)
    claim = {"claim_lambda": 1.0, "hard_at_0": 0.1, "normal_at_0": 0.7, "easy_at_0": 1.0, "hard_at_claim": 0.6,
             "normal_at_claim": 0.68, "easy_at_claim": 0.5, "hard_rises": True, "normal_holds": True}
    demo.write_text(json.dumps({"claim": claim, "results": [{"lambda": 0.0, "rb2_overall": 0.4}]}))
    os.utime(demo, (time.time() - 3600, time.time() - 3600))
    assert main_job.findings(tmp_path, since=time.time()) == []
    demo.write_text(json.dumps({"claim": dict(claim, min_rise=0.2, max_drop=0.15),
                                "results": [{"lambda": 0.0, "rb2_overall": 0.4}]}))
    story = main_job.findings(tmp_path, since=time.time() - 60)
    assert len(story) == 2 and "40.0" in story[0] and "0.100 -> 0.600" in story[1] and story[1].endswith("passes.")


@pytest.mark.parametrize("interval, word", [([1.0, 2.0], "gain"), ([-3.0, -1.0], "loss"),
                                            ([-1.0, 2.0], "no clear difference"), ([0.0, 0.4], "no clear difference")])
def test_findings_decide_a_gain_by_its_interval(tmp_path, interval, word):
    """Every sentence about a gain says gain, loss or "no clear difference" by the interval alone, and
    never "holds"."""
    import time
    sys.path.insert(0, str(ROOT))
    import main_job
    gain = {"mean": sum(interval) / 2, "ci95": interval, "users": 30}
    rows = [{"alpha": 0.0, "K": 0, "unseen_test": {"mean": 0.6}},
            {"alpha": 0.0, "K": 3, "basis_size": 3, "numerical_rank": 3, "mean_cos_ref": 0.5, "bases_used": 3,
             "unseen_test": {"mean": 0.7, "gain_vs_ref": gain, "gain_vs_shared": gain}}]
    (tmp_path / "RedditTLDR").mkdir()
    (tmp_path / "RedditTLDR" / "train_basis.json").write_text(json.dumps(
        {"results": rows, "K_chosen_on_seen_users": {"0.0": 3}}))
    story = main_job.findings(tmp_path, since=time.time() - 60)
    sentence = story[0]
    assert sentence.count(f"over 30 users: {word}") == 2 and "holds" not in " ".join(story)
    assert f"[{interval[0]:+.1f}, {interval[1]:+.1f}]" in sentence

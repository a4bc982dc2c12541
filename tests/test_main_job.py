"""The README's two commands: the main job (run here in its fast form) and the test command."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FOLDERS = ("PRISM", "RedditTLDR", "PersonalLLM", "debias_lora")


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


def test_main_job_runs_every_folder_in_order_and_prints_the_tables(tmp_path):
    """`bash main.sh --smoke`: the README's main-job command with tiny iteration counts."""
    done = subprocess.run(["bash", "main.sh", "--smoke", f"--results_dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    steps = re.findall(r"\] (\S+)/(\S+) \.\.\.", out)
    assert [f for f in dict.fromkeys(folder for folder, _ in steps)] == list(FOLDERS)
    assert steps[:4] == [("PRISM", "prepare.py"), ("PRISM", "generate-prism-embeddings.py"),
                         ("PRISM", "train_basis.py"), ("PRISM", "vary_fewshot.py")]
    for folder in FOLDERS:
        assert f"## {folder}: " in out
        assert list((tmp_path / folder).glob("*.md")) and list((tmp_path / folder).glob("*.json"))
    assert "| K | seen users: train | seen users: unseen prompts | unseen users: few-shot train" in out
    assert "RewardBench 2 (official scoring)" in out and "| lambda | hard | normal | easy" in out

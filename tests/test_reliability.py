"""Nothing lost: a full disk, a read-only folder, damaged generated files, file permissions and progress in
logs. Each failure must stop with a message naming the file and what to do, and leave no partial output
that a later run could take for complete."""
import errno
import os
import runpy
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import harness
import utils

ROOT = Path(__file__).resolve().parent.parent


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_no_half_written_v_file(tmp_path, monkeypatch):
    """A .pt written without its .safetensors twin looked complete: both are now written to temporaries and
    renamed only when both are written; a full disk is a clear error naming the file and what to free."""
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(SystemExit, match=r"no space left on the device while writing .*V.pt and .*V.safetensors; "
                                         r"they were not replaced\. Free space on the disk that holds"):
        utils._save_tensor(tmp_path / "V.pt", torch.ones(3, 2), "V", {"K": 2})
    assert list(tmp_path.iterdir()) == []                                   # no .pt, no temporary file
    monkeypatch.undo()
    utils._save_tensor(tmp_path / "V.pt", torch.ones(3, 2), "V", {"K": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["V.pt", "V.safetensors"]


def test_every_atomic_write_reports_a_full_disk_and_keeps_the_old_file(tmp_path, monkeypatch):
    harness.write_text_atomic(tmp_path / "a.json", "old")
    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(SystemExit, match=r"no space left on the device while writing .*a.json"):
        harness.write_text_atomic(tmp_path / "a.json", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_text() == "old"
    monkeypatch.undo()
    with pytest.raises(ValueError):                                         # any other failure is not a full disk
        with harness.atomic_path(tmp_path / "b.txt"):
            raise ValueError("a bug")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# -----------------------------------------------------------------------------
# a read-only output folder is found before any work, by every script that writes


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing can be written into. chmod is enough for a user; root writes anywhere, so for root
    creating a folder or file under it fails as on a read-only mount."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        def refused(path):
            if Path(path).resolve().is_relative_to(folder):
                raise PermissionError(errno.EROFS, "Read-only file system")
        real_mkstemp, real_mkdir = tempfile.mkstemp, Path.mkdir
        monkeypatch.setattr(tempfile, "mkstemp", lambda *a, dir=None, **k: refused(dir) or real_mkstemp(*a, dir=dir, **k))
        monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refused(self) or real_mkdir(self, *a, **k))
    yield folder
    folder.chmod(0o755)


def run_script(monkeypatch, script, *args):
    """`python script args` in this process (its folder first on the path, as python puts it)."""
    monkeypatch.syspath_prepend(str((ROOT / script).parent))
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *map(str, args)])
    runpy.run_path(str(ROOT / script), run_name="__main__")


@pytest.mark.parametrize("script, args, setting", [
    ("PRISM/prepare.py", ["--offline", "--data_dir={ro}/data"], "--data_dir"),
    ("PRISM/generate-prism-embeddings.py", ["--offline", "--data_dir={ro}/data"], "--data_dir"),
    ("PRISM/train_basis.py", ["--offline", "--data_dir={tmp}/none", "--results_dir={ro}/results"], "--results_dir"),
    ("PRISM/vary_fewshot.py", ["--offline", "--data_dir={tmp}/none", "--results_dir={ro}/results"], "--results_dir"),
    ("PRISM/eval_rb2.py", ["--offline", "--results_dir", "{ro}/results"], "--results_dir"),
    ("PRISM/eval_rb2.py", ["--offline", "--save_json", "{ro}/rb2.json"], "--save_json"),
    ("PRISM/personalize_demo.py", ["--offline", "--data_dir={tmp}/none", "--results_dir={ro}/results"], "--results_dir"),
    ("personalize.py", ["--offline", "--command=score", "--responses=r.jsonl", "--results_dir={ro}/r"], "--results_dir"),
    ("personalize.py", ["--offline", "--command=export", "--head_only", "--export_dir={ro}/heads"], "--export_dir"),
    ("RedditTLDR/prepare.py", ["--offline", "--data_dir={ro}/data"], "--data_dir"),
    ("RedditTLDR/generate-tldr-embeddings.py", ["--offline", "--data_dir={ro}/data"], "--data_dir"),
    ("RedditTLDR/train_basis.py", ["--offline", "--data_dir={tmp}/none", "--results_dir={ro}/results"], "--results_dir"),
    ("RedditTLDR/vary_fewshot.py", ["--offline", "--data_dir={tmp}/none", "--results_dir={ro}/results"], "--results_dir"),
    ("PersonalLLM/prepare.py", ["--offline", "--data_dir={ro}/data"], "--data_dir"),
    ("PersonalLLM/generate-personalllm-embeddings.py", ["--offline", "--data_dir={ro}/data"], "--data_dir"),
    ("PersonalLLM/train_basis.py", ["--offline", "--data_dir={tmp}/none", "--results_dir={ro}/results"],
     "--results_dir"),
    ("PersonalLLM/vary_fewshot.py", ["--offline", "--data_dir={tmp}/none", "--results_dir={ro}/results"],
     "--results_dir"),
    ("debias_lora/build_pairs.py", ["--offline", "--data_dir", "{ro}/data"], "--data_dir"),
    ("debias_lora/demo_offline.py", ["--data_dir", "{tmp}/none", "--results_dir", "{ro}/results"], "--results_dir"),
    ("debias_lora/train_forget_lora.py", ["--model", "m", "--data", "p.jsonl", "--output", "{ro}/lora"], "--output"),
    ("debias_lora/evaluate_lambdas.py", ["--base_model", "m", "--lora_path", "l", "--output_path", "{ro}/s.json"],
     "--output_path"),
    ("debias_lora/subtract_lora.py", ["--base_model", "m", "--lora_path", "l", "--lambda", "1", "--output_dir",
                                      "{ro}/merged"], "--output_dir"),
])
def test_a_read_only_output_folder_is_refused_before_any_work(read_only, tmp_path, monkeypatch, script, args,
                                                              setting):
    monkeypatch.chdir(tmp_path)
    args = [a.format(ro=read_only, tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit, match=rf"cannot write to the folder {read_only}.*choose another folder with "
                                         rf"{setting}="):
        run_script(monkeypatch, script, *args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["read-only"]


def test_the_writable_check_leaves_no_folder_behind(tmp_path):
    assert harness.require_writable(tmp_path / "a" / "b", "--results_dir=...") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []                 # created for the probe, removed again
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"cannot write to the folder .*file.*--results_dir"):
        harness.require_writable(tmp_path / "file", "--results_dir=...")

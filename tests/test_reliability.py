"""Nothing lost: a full disk, a read-only folder, damaged generated files, file permissions and progress in
logs. Each failure must stop with a message naming the file and what to do, and leave no partial output
that a later run could take for complete."""
import errno
import json
import os
import runpy
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import harness

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
        harness.save_tensor(tmp_path / "V.pt", torch.ones(3, 2), "V", {"K": 2})
    assert list(tmp_path.iterdir()) == []                                   # no .pt, no temporary file
    monkeypatch.undo()
    harness.save_tensor(tmp_path / "V.pt", torch.ones(3, 2), "V", {"K": 2})
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


def test_the_writable_check_leaves_no_folder_behind(tmp_path, monkeypatch):
    assert harness.require_writable(tmp_path / "a" / "b", "--results_dir=...") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []                 # created for the probe, removed again
    # under accelerate every process probes: one may remove the folder another is probing; that one tries again
    calls = []

    def mkstemp(*args, real=tempfile.mkstemp, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    harness.require_writable(tmp_path / "a", "--output=...")
    monkeypatch.undo()
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"cannot write to the folder .*file.*--results_dir"):
        harness.require_writable(tmp_path / "file", "--results_dir=...")


# -----------------------------------------------------------------------------
# damaged generated files: rebuilt, or named with the command that rebuilds them


class Stop(Exception):
    pass


@pytest.mark.parametrize("script, args, truth", [
    ("PRISM/prepare.py", ["--offline", "--data_dir={tmp}/d"], "{tmp}/d/ground_truth"),
    ("RedditTLDR/prepare.py", ["--offline", "--data_dir={tmp}/d"], "{tmp}/d/raw/ground_truth"),
    ("PersonalLLM/prepare.py", ["--offline", "--data_dir={tmp}/d"], "{tmp}/d/ground_truth"),
])
def test_every_offline_prepare_checks_its_ground_truth(tmp_path, monkeypatch, script, args, truth):
    """A truncated ground_truth.safetensors was not rebuilt by prepare (only the raw files were checked), and
    train_basis then failed with a traceback: the ground truth is in every generator's list of files."""
    import offline
    listed = []

    def ensure_generated(folder, generator, version, settings, files, generate):
        listed.extend(Path(folder) / f for f in files)
        raise Stop
    monkeypatch.setattr(offline, "ensure_generated", ensure_generated)
    with pytest.raises(Stop):
        run_script(monkeypatch, script, *[a.format(tmp=tmp_path) for a in args])
    truth = Path(truth.format(tmp=tmp_path))
    assert {truth.with_suffix(".safetensors"), truth.with_suffix(".json")} <= {p.resolve() for p in listed}


def test_a_damaged_listed_file_is_generated_again(tmp_path):
    import offline
    made = []

    def generate():
        made.append(1)
        (tmp_path / "ground_truth.safetensors").write_bytes(safetensors_bytes())
    for _ in range(2):
        offline.ensure_generated(tmp_path, "toy", 1, {}, ["ground_truth.safetensors"], generate)
    assert len(made) == 1                                                      # reused
    data = (tmp_path / "ground_truth.safetensors").read_bytes()
    (tmp_path / "ground_truth.safetensors").write_bytes(data[:len(data) // 2])  # truncated
    offline.ensure_generated(tmp_path, "toy", 1, {}, ["ground_truth.safetensors"], generate)
    assert len(made) == 2 and (tmp_path / "ground_truth.safetensors").read_bytes() == data


def safetensors_bytes():
    import numpy as np
    from safetensors.numpy import save
    return save({"directions": np.ones((4, 2))})


def test_an_unreadable_ground_truth_names_prepare(tmp_path):
    from offline import prism as offline_prism
    (tmp_path / "ground_truth.safetensors").write_bytes(b"\x00garbage")
    (tmp_path / "ground_truth.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"planted ground truth .*ground_truth.safetensors .*missing or damaged "
                                         r"\(.*\); run `python prepare.py --offline --data_dir=x` to rebuild it"):
        offline_prism.planted_accuracy(tmp_path, {}, {}, "python prepare.py --offline --data_dir=x")


def test_the_offline_rewardbench2_file_is_generated_again_when_its_ground_truth_is_damaged(tmp_path, monkeypatch):
    from offline import rewardbench2 as gen
    small = dict(subset_rows={"Factuality": 2, "Precise IF": 2, "Math": 2, "Safety": 2, "Focus": 2}, ties_pairs=1)
    written = []
    monkeypatch.setattr(gen, "write", lambda *a, real=gen.write, **k: written.append(1) or real(*a, **k, **small))
    path = gen.dataset_path(tmp_path)
    assert gen.dataset_path(tmp_path) == path and len(written) == 1                # reused
    for name in ("ground_truth.json", "ground_truth.safetensors"):
        (tmp_path / name).write_text('{"version": ')                               # json.loads failed here
        assert gen.dataset_path(tmp_path) == path and json.loads((tmp_path / "ground_truth.json").read_text())
    assert len(written) == 3


def test_a_damaged_tiny_model_is_built_again(tmp_path, monkeypatch):
    """A truncated tiny model gave a hub message suggesting --offline (twice): it is rebuilt, to the same bytes."""
    from offline import tiny_model
    monkeypatch.setattr(tiny_model, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(tiny_model, "MODEL_DIR", tmp_path / "tiny")
    folder = Path(tiny_model.tiny_model_path())
    built = {p.name: p.read_bytes() for p in folder.iterdir()}
    for name, damage in (("model.safetensors", lambda b: b[:len(b) // 2]), ("config.json", lambda b: b"")):
        (folder / name).write_bytes(damage(built[name]))
        assert tiny_model.tiny_model_path() == str(folder)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]                  # no temporary folder left


def test_a_local_model_folder_that_does_not_load_is_not_a_hub_problem(tmp_path, monkeypatch):
    import embedding
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    settings = harness.Settings(offline=True, data_dir=str(tmp_path / "d"), attn_implementation=None, batch_size=2,
                                max_tokens=None, max_length=None, shard_size=8, device="cpu", overwrite=False)
    settings.overridden = frozenset({"data_dir"})
    conversations = [[{"role": "user", "content": "hi"}]]
    with pytest.raises(SystemExit) as err:
        embedding.embed_dataset("embed.py", settings, tmp_path / "d", conversations, str(folder), "float32")
    assert f"{folder} is a folder but not a loadable checkpoint" in str(err.value)
    assert "hub" not in str(err.value) and "--offline" not in str(err.value)
    with pytest.raises(SystemExit) as err:                      # a hub id with --offline: the switch named once
        embedding.embed_dataset("embed.py", settings, tmp_path / "d", conversations, "no-org/no-model", "float32")
    assert str(err.value).count("--offline") == 1


# -----------------------------------------------------------------------------
# permissions: what a plainly created file gets (the umask's), also where a library writes 0600 / 0700


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(folder):
    return {p.name: p.stat().st_mode & 0o777 for p in [Path(folder), *Path(folder).rglob("*")]}


def test_the_ground_truth_gets_the_umask_permissions(tmp_path, umask_022):
    import numpy as np

    from offline.planted import PlantedPopulation
    PlantedPopulation(np.ones((4, 2)), np.full((3, 2), 0.5)).save(tmp_path / "ground_truth", seed=0)
    assert {name: mode for name, mode in modes(tmp_path).items() if name != tmp_path.name} == {
        "ground_truth.safetensors": 0o644, "ground_truth.json": 0o644}              # safetensors alone: 0600


def test_the_tiny_model_gets_the_umask_permissions(tmp_path, monkeypatch, umask_022):
    from offline import tiny_model
    monkeypatch.setattr(tiny_model, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(tiny_model, "MODEL_DIR", tmp_path / "tiny")
    built = modes(tiny_model.tiny_model_path())
    assert built.pop("tiny") == 0o755 and built and set(built.values()) == {0o644}, built   # mkdtemp: 0700

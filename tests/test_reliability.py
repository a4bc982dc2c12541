"""Nothing lost: a full disk, a read-only folder, damaged generated files, file permissions and progress in
logs. Each failure must stop with a message naming the file and what to do, and leave no partial output
that a later run could take for complete."""
import errno
import os

import pytest
import torch

import harness
import utils


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

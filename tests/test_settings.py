"""The strict --name=value settings override shared by every script, and the folders it resolves."""
import os
from pathlib import Path

import pytest

import harness


def settings():
    return {"K_list": [0, 1, 5], "alpha_list": [1e4], "num_iterations": 100, "offline": False,
            "model_name": "Skywork/x", "limit": None, "max_length": 4096, "device": None,
            "__annotations__": {"limit": "int | None", "device": "str | None"},
            "__doc__": "doc", "_private": 1, "CONSTANT": 3, "harness": harness}


def test_override_parses_literals_and_keeps_types():
    s = settings()
    snapshot = harness.configure(s, ["--K_list=[0,2]", "--alpha_list=[10]", "--num_iterations=5", "--offline",
                                   "--limit=3", "--model_name=/tmp/m"])
    assert s["K_list"] == [0, 2] and s["alpha_list"] == [10.0] and isinstance(s["alpha_list"][0], float)
    assert s["num_iterations"] == 5 and s["offline"] is True and s["limit"] == 3 and s["model_name"] == "/tmp/m"
    assert snapshot.overridden == {"K_list", "alpha_list", "num_iterations", "offline", "limit", "model_name"}
    # the snapshot: settings only (no docstring, private names, constants or modules)
    assert snapshot == {"K_list": [0, 2], "alpha_list": [10.0], "num_iterations": 5, "offline": True,
                        "model_name": "/tmp/m", "limit": 3, "max_length": 4096, "device": None}
    assert harness.configure(settings(), ["--limit=None"])["limit"] is None


def test_a_single_capital_is_a_setting_and_an_upper_case_name_a_constant():
    snapshot = harness.configure({**settings(), "K": 10}, ["--K=3"])        # a symbol, as bench/baselines_speed.py's K
    assert snapshot["K"] == 3 and "CONSTANT" not in snapshot
    with pytest.raises(harness.SettingsError, match="unknown setting --CONSTANT"):
        harness.configure(settings(), ["--CONSTANT=4"])


@pytest.mark.parametrize("arg, message", [
    ("--nope=1", "unknown setting --nope"),
    ("--num_iterations=1.5", "--num_iterations takes int"),
    ("--offline=maybe", "--offline takes bool"),
    ("--num_iterations", "--num_iterations needs a value"),
    ("num_iterations=3", "expected --name=value"),
    ("--_private=2", "unknown setting"),
    ("--CONSTANT=2", "unknown setting"),
    ("--limit=abc", "--limit takes int or None"),         # a None default has a declared type
    ("--K_list=[0,1.5]", "--K_list takes a list of int"),
    ("--K_list=[-1,2]", "K >= 0"),
    ("--K_list=[]", "non-empty"),
    ("--alpha_list=[-1.0]", "alpha >= 0"),
    ("--num_iterations=0", "at least 1"),
    ("--device=cuda:99", "use --device=cpu"),
    ("--device=gpu", "not a device"),
    ("--max_length=1", "must be at least 2 (the BOS token and at least one token"),   # before any model load
])
def test_bad_settings_are_refused_with_a_message(arg, message):
    with pytest.raises(harness.SettingsError) as err:
        harness.configure(settings(), [arg])
    assert message in str(err.value)


def test_argparse_scripts_get_the_same_range_checks():
    """eval_rb2.py and the debias scripts keep argparse command lines: harness.cli_args checks the values
    given as configure does, before any work (--max_length 1 failed with a ValueError after the model load)."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=8)
    assert harness.cli_args(parser, ["--max_length", "2"]).max_length == 2
    for args, message in ((["--max_length", "1"], "--max_length=1: must be at least 2"),
                          (["--batch_size", "0"], "--batch_size=0: must be at least 1")):
        with pytest.raises(harness.SettingsError, match=message):
            harness.cli_args(parser, args)


def test_a_none_default_without_a_declared_type_is_a_developer_error():
    with pytest.raises(TypeError, match="declare their type"):
        harness.configure({"max_length": None}, [])


def test_default_folders_live_beside_the_script_and_given_ones_are_used_as_given(tmp_path, monkeypatch):
    script = tmp_path / "PRISM" / "train_basis.py"
    defaults = {"data_dir": "data/prism", "results_dir": "results", "offline": False}
    offline = harness.configure(dict(defaults), ["--offline"])
    assert harness.script_dirs(str(script), offline) == (tmp_path / "PRISM" / "data" / "prism-offline",
                                                        tmp_path / "PRISM" / "results-offline")
    assert harness.script_dirs(str(script), harness.configure(dict(defaults), []))[0].name == "prism"
    given = harness.configure(dict(defaults), ["--offline", f"--data_dir={tmp_path / 'mine'}", "--results_dir=out"])
    monkeypatch.chdir(tmp_path / "PRISM" if (tmp_path / "PRISM").mkdir() is None else tmp_path)
    data, results = harness.script_dirs(str(script), given)
    assert data == tmp_path / "mine"                                  # no -offline appended to a given folder
    assert results == Path(os.getcwd()) / "out"                       # relative: to the working directory
    # the hint runs as given: only settings prepare.py has (it has no results_dir)
    assert harness.command_line("prepare.py", given) == f"python prepare.py --offline --data_dir={tmp_path / 'mine'}"


def test_atomic_writes_keep_the_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        harness.write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644     # mkstemp alone gives 0600

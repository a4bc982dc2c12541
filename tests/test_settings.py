"""The strict --name=value settings override shared by every script."""
import pytest

import utils


def settings():
    return {"K_list": [0, 1, 5], "alpha": 1e4, "iters": 100, "offline": False, "model_name": "Skywork/x",
            "limit": None, "__doc__": "doc", "_private": 1, "utils": utils}


def test_override_parses_literals_and_keeps_types():
    s = settings()
    changed = utils.configure(s, ["--K_list=[0,2]", "--alpha=10", "--iters=5", "--offline", "--limit=3",
                                  "--model_name=/tmp/m"])
    assert s["K_list"] == [0, 2] and s["alpha"] == 10.0 and isinstance(s["alpha"], float)
    assert s["iters"] == 5 and s["offline"] is True and s["limit"] == 3 and s["model_name"] == "/tmp/m"
    assert changed.overridden == {"K_list", "alpha", "iters", "offline", "limit", "model_name"}
    assert changed == {"K_list": [0, 2], "alpha": 10.0, "iters": 5, "offline": True, "model_name": "/tmp/m",
                       "limit": 3}     # the snapshot: settings only (no __doc__, _private or modules)


@pytest.mark.parametrize("arg, message", [
    ("--nope=1", "unknown setting --nope"),
    ("--iters=1.5", "--iters takes a int"),
    ("--offline=maybe", "--offline takes True or False"),
    ("--iters", "--iters needs a value"),
    ("iters=3", "expected --name=value"),
    ("--_private=2", "unknown setting"),
])
def test_bad_settings_are_refused_with_a_message(arg, message):
    with pytest.raises(utils.SettingsError) as err:
        utils.configure(settings(), [arg])
    assert message in str(err.value)


def test_offline_dirs_never_mix_with_real_ones(tmp_path):
    script = tmp_path / "PRISM" / "train_basis.py"
    data, results = utils.script_dirs(str(script), "data/prism", "results", offline=True)
    assert data == tmp_path / "PRISM" / "data" / "prism-offline"
    assert results == tmp_path / "PRISM" / "results-offline"
    assert utils.script_dirs(str(script), "data/prism", "results", offline=False)[0].name == "prism"

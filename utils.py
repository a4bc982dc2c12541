"""Shared machinery of every LoRe script: settings override, paths, and the LoRe models and pipelines.

LoRe (Bose et al., 2025, arXiv:2504.14439) learns a shared basis V (d x B) of reward directions over
frozen reward-model embeddings and one weight vector w_i = softmax(W_i) per user. The reward margin of
a comparison with feature x = e(chosen) - e(rejected) for user i is x . V . w_i / 100.
"""
from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# settings: one commented block of module globals per script, overridden as --name=value


class SettingsError(SystemExit):
    """A bad command-line setting: exits with the message (and is catchable in tests)."""


_SETTING_TYPES = (bool, int, float, str, list, tuple, type(None))


def _is_setting(name: str, value) -> bool:
    return not name.startswith("_") and isinstance(value, _SETTING_TYPES) and not isinstance(
        value, (types.ModuleType, type))


def _parse_value(name: str, raw: str, default):
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word is a string
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise SettingsError(f"error: --{name} takes True or False, got {raw!r}")
        return value
    if isinstance(default, str):
        return raw if not isinstance(value, str) else value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if type(value) is not type(default):
        raise SettingsError(
            f"error: --{name} takes a {type(default).__name__} (default {default!r}), got {raw!r}")
    return value


def configure(settings: dict, argv: list[str] | None = None) -> set[str]:
    """Override a script's settings in place from `--name=value` arguments (nanoGPT style).

    `settings` is the script's `globals()`, called right after its settings block. Values are Python
    literals (`--K_list=[0,1,5]`, `--alpha=1e4`, `--offline=True`; a bare `--offline` sets a bool to
    True). An unknown name, a positional argument or a value of the wrong type is an error. `--help`
    prints the script's docstring and settings. Returns the names that were overridden.
    """
    argv = sys.argv[1:] if argv is None else argv
    known = {k: v for k, v in settings.items() if _is_setting(k, v)}
    if any(a in ("-h", "--help") for a in argv):
        print((settings.get("__doc__") or "").strip())
        print("\nsettings (override as --name=value):")
        for k, v in known.items():
            print(f"  --{k}={v!r}")
        raise SystemExit(0)
    overridden = set()
    for arg in argv:
        if not arg.startswith("--"):
            raise SettingsError(f"error: expected --name=value, got {arg!r}")
        name, sep, raw = arg[2:].partition("=")
        if name not in known:
            raise SettingsError(
                f"error: unknown setting --{name}; known settings: {', '.join(sorted(known))}")
        if not sep:
            if not isinstance(known[name], bool):
                raise SettingsError(f"error: --{name} needs a value, as --{name}=...")
            raw = "True"
        settings[name] = _parse_value(name, raw, known[name])
        overridden.add(name)
    return overridden


def script_settings(settings: dict) -> dict:
    """The current settings of a script (for result files): every setting-typed public global."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items() if _is_setting(k, v)}


def script_dirs(script_file: str, data_dir: str, results_dir: str, offline: bool) -> tuple[Path, Path]:
    """Absolute data and results folders of a script, relative to the script's own folder.

    With the offline default the folders get an `-offline` suffix, so generated data and results
    never mix with real ones.
    """
    here = Path(script_file).resolve().parent
    suffix = "-offline" if offline else ""
    data = Path(data_dir) if Path(data_dir).is_absolute() else here / data_dir
    results = Path(results_dir) if Path(results_dir).is_absolute() else here / results_dir
    return data.with_name(data.name + suffix), results.with_name(results.name + suffix)


def require_file(path: Path, made_by: str) -> Path:
    """Fail with a message that names the script that makes `path` when it is missing."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: {path} is missing; run `{made_by}` first")
    return path

"""The built-in offline default: a tiny reward model and generators of every dataset's raw format.

The generated world is built on the method's premise (offline/planted.py has the details): a good
general reward model exists, the tiny backbone's own head, and every planted user's reward is that
head plus a low-rank personal part (a Dirichlet mixture of a few personal directions, with a
documented balance between the two). PRISM, Reddit TLDR and PersonalLLM labels are drawn from it; the
offline RewardBench 2 rows are decided by the head with noise (about the real Skywork head's profile).
The tiny model (offline/tiny_model.py) makes a few embedding directions ~100x louder than the head's,
which is what lets PRISM's real default, alpha = 1e4, keep a basis next to the head and still improve
on it, as on the real data. Every generator records a version that includes the tiny model's, so data
made by an older version are rebuilt, never mixed.
"""
from __future__ import annotations

import json
from pathlib import Path

from offline.tiny_model import tiny_model_path  # noqa: F401


def script_model(settings) -> tuple[str, str]:
    """(model, dtype) of a script with the settings `model_name` and `dtype`: as set, or with `offline`
    the built-in tiny model in float32 (a model or dtype given on the command line still wins)."""
    model_name, dtype = settings["model_name"], settings["dtype"]
    if settings.get("offline"):
        model_name = model_name if "model_name" in settings.overridden else tiny_model_path()
        dtype = dtype if "dtype" in settings.overridden else "float32"
    return str(model_name), dtype


STAMP = "generated.json"   # written last into a generated folder: which generator, version and settings


def ensure_generated(folder, generator: str, version, settings: dict, files, generate) -> bool:
    """Make `folder` hold what `generate()` writes for these settings, generating it only when needed.

    The stamp `folder/generated.json` ({generator, version, settings}) is written after `generate()`
    returns; the folder is reused when the stamp matches and every one of `files` (paths relative to
    `folder`) is there, not empty and readable, and generated again otherwise (an older generator
    version, other settings, an interrupted or damaged generation: never a mix). Returns True when it
    generated.
    """
    folder = Path(folder)
    stamp = {"generator": generator, "version": version, "settings": settings}
    try:
        current = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        current = None
    if current == stamp and all(_readable(folder / f) for f in files):
        print(f"offline {generator}: reusing the generated files in {folder}")
        return False
    print(f"offline {generator}: generating into {folder}" + (" (a file was missing, empty or damaged)"
                                                                if current == stamp else ""))
    (folder / STAMP).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    generate()
    import harness
    harness.write_json_atomic(folder / STAMP, stamp)
    return True


def _readable(path: Path) -> bool:
    """A generated file is there, not empty and parses (parquet metadata, safetensors header, JSON lines)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet
            pyarrow.parquet.read_metadata(path)
        elif path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt"):
                pass
        elif path.suffix in (".json", ".jsonl"):
            with open(path) as lines:
                for line in lines if path.suffix == ".jsonl" else [lines.read()]:
                    if line.strip():
                        json.loads(line)
    except Exception:       # any parse error: the file is damaged, so the folder is generated again
        return False
    return True

"""The built-in offline default: a tiny reward model and generators of every dataset's raw format."""
from __future__ import annotations

import json
from pathlib import Path

from offline.tiny_model import tiny_model_path  # noqa: F401

STAMP = "generated.json"   # written last into a generated folder: which generator, version and settings


def ensure_generated(folder, generator: str, version: int, settings: dict, files, generate) -> bool:
    """Make `folder` hold what `generate()` writes for these settings, generating it only when needed.

    The stamp `folder/generated.json` ({generator, version, settings}) is written after `generate()`
    returns; the folder is reused when the stamp matches and every one of `files` (paths relative to
    `folder`) is there and not empty, and generated again otherwise (an older generator version, other
    settings, an interrupted or damaged generation: never a mix). Returns True when it generated.
    """
    folder = Path(folder)
    stamp = {"generator": generator, "version": version, "settings": settings}
    try:
        current = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        current = None
    if current == stamp and all((folder / f).exists() and (folder / f).stat().st_size > 0 for f in files):
        print(f"offline {generator}: reusing the generated files in {folder}")
        return False
    print(f"offline {generator}: generating into {folder}")
    (folder / STAMP).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    generate()
    import utils
    utils.write_json_atomic(folder / STAMP, stamp)
    return True

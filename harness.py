"""The script harness every script shares: settings (a commented block of module globals, overridden as
`--name=value`), the data and results folders, atomic file writes, JSON-lines reading, hub checks and
progress reporting. Nothing here knows the method; utils.py is the method, reports.py writes its results.
"""
from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import types
import typing
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


class SettingsError(SystemExit):
    """A bad command-line setting: exits with the message (and is catchable in tests)."""


class Settings(dict):
    """A script's settings after the command line: {name: value}; `.overridden` holds the names given."""
    overridden: frozenset = frozenset()


_PLAIN_TYPES = (bool, int, float, str, list, tuple, type(None))


def _is_setting(name: str, value) -> bool:
    # settings are the public globals of a plain type; constants are UPPER_CASE (a single capital, K or B,
    # is a symbol: a setting)
    constant = name.isupper() and len(name) > 1
    return not name.startswith("_") and not constant and isinstance(value, _PLAIN_TYPES)


def _declared(annotation) -> tuple[tuple, type | None]:
    """(accepted types, list element type or None) of a setting's annotation (`int | None`, `list[int]`)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"list": list, "tuple": tuple})   # `from __future__ import annotations`
    kinds, element = [], None
    for part in typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,):
        origin = typing.get_origin(part) or part
        if origin in (list, tuple) and typing.get_args(part):
            element = typing.get_args(part)[0]
        kinds.append(type(None) if part is None else origin)
    return tuple(kinds), element


def _literal(raw: str):
    """A Python literal, with the names nan and inf read as floats (so `--alpha_list=[nan]` is refused as
    not finite rather than as a string)."""
    tree = ast.parse(raw.strip(), mode="eval")

    class Floats(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id.lower() in ("nan", "inf", "infinity"):
                return ast.copy_location(ast.Constant(float(node.id.lower())), node)
            return node
    return ast.literal_eval(ast.fix_missing_locations(Floats().visit(tree)))


def _parse_value(name: str, raw: str, kinds: tuple, element: type | None):
    try:
        value = _literal(raw)
    except (ValueError, SyntaxError, TypeError):
        value = raw                                   # a bare word is a string
    want = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
    if str in kinds and not isinstance(value, str) and not (value is None and type(None) in kinds):
        value = raw
    if bool in kinds and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, (list, tuple)) and (list in kinds or tuple in kinds):
        value = list(value) if list in kinds else tuple(value)
        if element is not None:
            if element is float:
                value = type(value)(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
            bad = [v for v in value if type(v) is not element]
            if bad:
                raise SettingsError(f"error: --{name} takes a list of {element.__name__}, got {raw!r}")
    if not any(type(value) is k for k in kinds):
        raise SettingsError(f"error: --{name} takes {want}, got {raw!r}")
    return value


# The shortest conversation the embedding engine can truncate to: its BOS and at least one token of the
# conversation (embedding.render_all_ids keeps the BOS first, and the last token is the one embedded).
MIN_MAX_LENGTH = 2


def _check_ranges(values: dict) -> None:
    """The ranges of the settings every script shares, checked before any work starts."""
    for name, value in values.items():
        def fail(what):
            raise SettingsError(f"error: --{name}={value!r}: {what}")
        if value is None or isinstance(value, bool):
            continue
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            fail("is not finite")
        if name in ("K_list", "alpha_list", "num_shots") and isinstance(value, list) and len(set(value)) != len(value):
            fail("lists a value twice (every value is one row of the results)")
        if name.endswith(("iterations", "trials", "batch_size", "shard_size", "seeds")) or name.startswith("n_"):
            if isinstance(value, int) and value < 1:
                fail("must be at least 1")
        elif name.endswith(("learning_rate", "_lr")) and isinstance(value, (int, float)) and value <= 0:
            fail("must be positive")
        elif name.endswith("fraction") and isinstance(value, (int, float)) and not 0 < value <= 1:
            fail("must lie in (0, 1]")
        elif name == "max_length" and isinstance(value, int) and value < MIN_MAX_LENGTH:
            fail(f"must be at least {MIN_MAX_LENGTH} (the BOS token and at least one token of the conversation), "
                 f"or None for no limit")
        elif name == "K_list" and (not value or any(k < 0 for k in value)):
            fail("must be a non-empty list of ranks K >= 0 (0: the reference head)")
        elif name == "alpha_list" and (not value or any(a < 0 for a in value)):
            fail("must be a non-empty list of alpha >= 0")
        elif name == "num_shots" and isinstance(value, int) and value < 1:
            fail("must be at least 1")
        elif name == "num_shots" and isinstance(value, list) and (not value or any(s < 1 for s in value)):
            fail("must be a non-empty list of shot counts >= 1")
        elif name == "device":
            try:
                device = torch.device(value)
            except RuntimeError:
                fail("is not a device (cpu, cuda, cuda:1, ...)")
            if device.type == "cuda" and (not torch.cuda.is_available() or
                                          (device.index or 0) >= torch.cuda.device_count()):
                fail(f"this machine has {torch.cuda.device_count()} CUDA device(s); use --device=cpu")


def configure(settings: dict, argv: list[str] | None = None) -> Settings:
    """Override a script's settings in place from `--name=value` arguments (nanoGPT style).

    `settings` is the script's `globals()`, called right after its settings block: the settings are
    the public globals of a plain type defined by then, except UPPER_CASE constants. A setting whose default is None
    declares its type with an annotation (`max_length: int | None = None`); others take their
    default's type (and a list its elements' type). Values are Python literals (`--K_list=[0,1,5]`,
    `--alpha_list=[1e4]`, `--offline=True`; a bare `--offline` sets a bool to True). An unknown name, a
    positional argument, a value of the wrong type or out of range (K >= 0, iterations >= 1, an existing
    device, ...) is an error before any work. `--help` prints the docstring and the settings. Returns
    a snapshot of the settings (for result files), with `.overridden` the names given.
    """
    argv = sys.argv[1:] if argv is None else argv
    known = {k: v for k, v in settings.items() if _is_setting(k, v)}
    annotations = settings.get("__annotations__", {})
    undeclared = [k for k, v in known.items() if v is None and k not in annotations]
    if undeclared:
        raise TypeError(f"settings {undeclared} default to None: declare their type, as `name: int | None = None`")
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
            raise SettingsError(f"error: unknown setting --{name}; known settings: {', '.join(sorted(known))}")
        default = known[name]
        if name in annotations:
            kinds, element = _declared(annotations[name])
        else:
            kinds = (type(default),)
            items = [type(v) for v in default] if isinstance(default, (list, tuple)) else []
            element = items[0] if items and all(t is items[0] for t in items) else None
            element = float if items and set(items) <= {int, float} and float in items else element
        if not sep:
            if bool not in kinds:
                raise SettingsError(f"error: --{name} needs a value, as --{name}=...")
            raw = "True"
        settings[name] = _parse_value(name, raw, kinds, element)
        overridden.add(name)
    snapshot = Settings({k: list(settings[k]) if isinstance(settings[k], tuple) else settings[k] for k in known})
    snapshot.overridden = frozenset(overridden)
    _check_ranges({k: snapshot[k] for k in overridden})
    return snapshot


def json_setting(name: str, text: str | None, kind=dict):
    """A setting given as JSON text (`--baseline_settings='{"PAL": {"epochs": 5}}'`), parsed; None stays None.
    Anything else than JSON of `kind` is a SettingsError naming the setting."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SettingsError(f"error: --{name} must be JSON ({e.msg}), got {text!r}") from None
    if not isinstance(value, kind):
        raise SettingsError(f"error: --{name} must be a JSON {kind.__name__}, got {text!r}")
    return value


def cli_args(parser, argv=None):
    """`parser.parse_args(argv)` of a script that keeps a published argparse command line, with
    `.settings`: its values as Settings, `.overridden` the options whose value is not the default. The
    values given are range-checked as configure's (--max_length=1 stops here, not after the model load)."""
    args = parser.parse_args(argv)
    args.settings = Settings(vars(args))
    args.settings.overridden = frozenset(k for k, v in vars(args).items() if k != "settings" and v != parser.get_default(k))
    _check_ranges({k: args.settings[k] for k in args.settings.overridden})
    return args


def script_dirs(script_file: str, settings: Settings, check_writable: bool = True) -> tuple[Path, Path | None]:
    """The data and results folders of a script: (data path, results path or None).

    The defaults (settings `data_dir`, `results_dir` in source) live beside the script, with an
    `-offline` suffix when `offline` is set, so generated data and results never mix with real ones.
    A folder given on the command line is used as given, relative to the working directory.
    check_writable: the folder the script writes, its results folder if it has one, else its data folder
    (prepare and embedding scripts), must be writable, checked before any work (require_writable); a
    script that writes elsewhere passes False and checks its own output folder.
    """
    here = Path(script_file).resolve().parent

    def folder(name):
        if settings.get(name) is None:
            return None
        path = Path(settings[name]).expanduser()
        if name in settings.overridden:
            return path.resolve()
        path = path if path.is_absolute() else here / path
        return path.with_name(path.name + "-offline") if settings.get("offline") else path
    data, results = folder("data_dir"), folder("results_dir")
    if check_writable and (results or data) is not None:
        require_writable(results or data, "--results_dir=..." if results else "--data_dir=...")
    return data, results


def require_writable(folder, setting: str) -> Path:
    """`folder` when a file can be written there; else an exit naming it and `setting` (the option that
    chooses another), before any work: a read-only results folder was found only after the first fit.
    Creates the folder, writes and removes a probe file, and removes again the folders it created (a run
    refused later leaves nothing behind)."""
    folder = Path(folder)
    for attempt in range(3):
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
            os.close(fd)
            os.unlink(probe)
            return folder
        except OSError as e:
            # FileNotFoundError: another process of the same launch (accelerate) removed the folder it had just
            # created for its own probe: try again
            if not isinstance(e, FileNotFoundError) or attempt == 2:
                raise SystemExit(f"error: cannot write to the folder {folder} ({e.strerror or type(e).__name__}); "
                                 f"make it writable or choose another folder with {setting}") from None
        finally:
            for created in missing:                        # deepest first
                with contextlib.suppress(OSError):
                    created.rmdir()


def command_line(script: str, settings: Settings, keep=("offline", "data_dir")) -> str:
    """The command that (re)makes an input, with the overrides in force that matter to it:
    `python prepare.py --offline --data_dir=/x` (a hint for an error message). `keep`: settings that
    script has too (every prepare and embedding script has offline and data_dir, none results_dir)."""
    args = [f"--{k}" if settings[k] is True else f"--{k}={settings[k]}"
            for k in keep if k in settings and (k in settings.overridden or (k == "offline" and settings[k]))]
    return " ".join(["python", script, *args])


def require_file(path, made_by: str) -> Path:
    """`path` when it exists and is not empty; else an error naming the command that makes it."""
    path = Path(path)
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        raise SystemExit(f"error: {path} is {'missing' if not path.exists() else 'empty'}; run `{made_by}`")
    return path


NEARLY_FULL_BYTES = 1 << 20   # a write that fails with less than this left on its disk failed for want of space


def _no_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC or EDQUOT, a library's text for them
    (safetensors), or a disk left nearly full (torch.save says only "unexpected pos ...")."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(words in str(error) for words in ("No space left on device", "Disk quota exceeded")):
        return True
    try:
        return isinstance(error, (OSError, RuntimeError)) and shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def clear_full_disk(*paths):
    """Run a block that writes `paths` (files or folders): a failure for want of space exits with a message
    naming them and what to free, instead of a library's traceback. Removing the partial output is the
    block's own cleanup (atomic_path removes its temporary files)."""
    paths = [Path(p) for p in paths]
    folder = paths[0].parent
    try:
        yield
    except Exception as e:
        if not _no_space(e, folder):
            raise
        raise SystemExit(f"error: no space left on the device while writing {' and '.join(map(str, paths))}; "
                         f"{'it was' if len(paths) == 1 else 'they were'} not replaced. Free space on the disk that "
                         f"holds {folder} (`df -h {folder}`; old results, the .shards folder of an interrupted "
                         f"embedding run or the hub cache are candidates) or write to another folder, then run the "
                         f"same command again") from None


@contextlib.contextmanager
def _replaced_when_done(path: Path):
    """A temporary path beside `path` that replaces it in one rename when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())        # mkstemp makes 0600: unreadable to colleagues
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one rename, with
    the permissions a plainly created file gets (the umask's). A failure leaves the old file (or none);
    a full disk exits with a clear message (clear_full_disk)."""
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths):
    """atomic_path for files that belong together: a temporary path for each; none replaces its file until
    the block has written them all, then they are renamed last path first, so the first (the one a reader
    takes as the mark of a complete set) appears last. A failure leaves the old files (or none)."""
    with clear_full_disk(*paths), contextlib.ExitStack() as stack:
        yield [stack.enter_context(_replaced_when_done(Path(p))) for p in paths]


def current_umask() -> int:
    umask = os.umask(0)          # reading the umask means setting it: put it back at once
    os.umask(umask)
    return umask


def umask_permissions(folder) -> Path:
    """Give a folder written by a library, and everything in it, the permissions plainly created ones get
    (the umask's): save_pretrained writes model.safetensors 0600 and mkdtemp makes 0700, which colleagues
    cannot read."""
    folder, umask = Path(folder), current_umask()
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    return folder


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(obj) -> str:
    """The JSON text of the result files: indented, non-ASCII kept, NaN and infinities as null."""
    return json.dumps(_json_value(obj), indent=1, ensure_ascii=False) + "\n"


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json_text(obj))


def write_jsonl_atomic(path, rows) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept), written atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path, hint: str):
    """Yield (line number, row) for every non-blank line of a JSON-lines file of objects. A line that is
    not UTF-8 JSON, or not an object, exits naming the file and the line, then `hint` (what to do)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                raise SystemExit(f"error: {path}, line {number}, is not valid JSON ({why}); {hint}") from None
            if not isinstance(row, dict):
                raise SystemExit(f"error: {path}, line {number}, is not a JSON object; {hint}")
            yield number, row


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(tensor) -> str:
    """Hex sha256 of a tensor's dtype, shape and bytes: the same whichever file format holds it (a V file's
    .pt and its .safetensors twin give one hash; the .pt file's own bytes differ from save to save)."""
    tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype} {tuple(tensor.shape)}\n".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def hub_unreachable(what: str, offline_command: str, cause: BaseException | None = None) -> SystemExit:
    """The error of every script that cannot get `what` from the Hugging Face hub: it names the offline
    switch (`offline_command`) and the cached-copy route."""
    detail = f"\n(underlying error: {type(cause).__name__}: {str(cause).splitlines()[0][:300]})" if cause else ""
    return SystemExit(f"error: cannot get {what} from the Hugging Face hub (no network, not in the local "
                      f"cache, or a wrong name).\nRun `{offline_command}` for the built-in tiny model and "
                      f"generated data, or set HF_HUB_OFFLINE=1 to use a cached copy.{detail}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test of the hub, so an offline machine fails in seconds (the libraries retry
    for ~30 s). False when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _json_value(value.item())
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _json_value(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value



# =============================================================================
# progress: a bar on a terminal, plain periodic lines in logs (nohup, CI, the main job's steps)

PLAIN_PROGRESS_SECONDS = 30.0      # a plain line at most this often when output is not a terminal


class _PlainProgress:
    """tqdm's update/close/iteration for output that is not a terminal: a line "desc: n/total (x%),
    elapsed" at most every PLAIN_PROGRESS_SECONDS, and one at the end when the work took longer than that."""

    def __init__(self, iterable=None, total=None, desc: str = ""):
        self.iterable, self.desc, self.n, self.postfix = iterable, desc, 0, ""
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.start = self.last = time.time()

    def _line(self, now: float) -> None:
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else str(self.n)
        print(f"{self.desc}: {done}, {now - self.start:.0f} s elapsed{self.postfix}", flush=True)
        self.last = now

    def set_postfix_str(self, text: str) -> None:
        self.postfix = f", {text}" if text else ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= PLAIN_PROGRESS_SECONDS:
            self._line(now)

    def close(self) -> None:
        now = time.time()
        if now - self.start >= PLAIN_PROGRESS_SECONDS and self.last != now:
            self._line(now)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable=None, desc: str = "", enabled: bool = True, total: int | None = None):
    """Progress over `iterable` (or a counter with .update(n) when iterable is None): a tqdm bar on a
    terminal, plain periodic lines otherwise, nothing when not enabled."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False, mininterval=1.0)
    return _PlainProgress(iterable, total, desc)


# =============================================================================
# tensors on disk with the record of what made them: fitted bases, and the checkpoints of a run in progress


def save_tensor(path, tensor: torch.Tensor, key: str, record: dict) -> None:
    """Write `path` (.pt: a plain tensor, loadable with weights_only=True) and its .safetensors twin (one
    entry named `key`, `record` as its metadata "fit") as one set: both are written before either is
    renamed (a failed write or a full disk leaves neither), the twin first, so a .pt in place always has
    its record beside it."""
    from safetensors.torch import save_file
    path = Path(path)
    tensor = tensor.detach().cpu().contiguous().clone()
    with atomic_paths(path, path.with_suffix(".safetensors")) as (tmp, twin):
        torch.save(tensor, tmp)
        save_file({key: tensor}, str(twin), metadata={"fit": json.dumps(record, sort_keys=True)})


def recorded_fit(path) -> dict | None:
    """The record saved with a tensor by save_tensor (from its .safetensors twin); None when there is none
    or it is unreadable."""
    from safetensors import safe_open
    try:
        with safe_open(str(Path(path).with_suffix(".safetensors")), framework="pt") as f:
            return json.loads((f.metadata() or {})["fit"])
    except Exception:
        return None


def fit_record(path, made_by: str) -> dict:
    """recorded_fit, or an exit naming the twin and `made_by` (the command that writes both again) when
    it is missing or unreadable."""
    twin = Path(path).with_suffix(".safetensors")
    remake = f"it records the fit that made {Path(path).name}; run `{made_by}` to write both again"
    if not twin.is_file():
        raise SystemExit(f"error: {twin} is missing: {remake}")
    record = recorded_fit(path)
    if not isinstance(record, dict):
        raise SystemExit(f"error: {twin} is unreadable or holds no fit record: {remake}")
    return record


def refuse_other_fits(records: dict, overwrite: bool) -> None:
    """{path: record} of tensors about to be written: exit, naming the differences, when one of them is
    on disk with another record (other settings or data), unless overwrite."""
    for path, record in records.items():
        old = None if overwrite else recorded_fit(path)
        if old is not None and old != record:
            changed = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in record.items() if old.get(k) != v)
            raise SystemExit(f"error: {path} holds a basis fitted with other settings or data ({changed}). Run "
                             f"with --overwrite=True to replace it, or give another --results_dir.")


def save_checkpoint(path, identity: dict, payload) -> None:
    """Atomically keep a finished piece of a long run (tensors, numbers, strings) with its identity."""
    with atomic_path(path) as tmp:
        torch.save({"identity": identity, "payload": payload}, tmp)


def load_checkpoint(path, identity: dict):
    """The payload of save_checkpoint when `path` holds one with this identity (same settings and data),
    else None (missing, unreadable, or made otherwise: the work is done again)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["payload"] if saved.get("identity") == identity else None
    except Exception:
        return None


# =============================================================================
# one run per output folder at a time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: alive
        return True
    return True


def hold_lock(folder, name: str) -> Path:
    """Take `folder/.{name}.lock` for this process until it exits, or exit naming the run that holds it
    (its pid, command and start). A lock whose process is gone (a killed run) is taken over."""
    import atexit
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / f".{name}.lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                print(f"note: {lock} was left by a run that is gone (pid {holder['pid']}); taking it over")
                lock.unlink(missing_ok=True)
                continue
            raise SystemExit(f"error: {folder} is in use by another {name} run (pid {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')}, `{holder.get('command', '?')}`, started "
                             f"{holder.get('started', '?')}); wait for it to end, or give this run another "
                             f"--results_dir. If no such run exists, delete {lock}.") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)

        def release():
            try:
                if json.loads(lock.read_text()).get("pid") == me["pid"]:
                    lock.unlink()
            except (OSError, ValueError):
                pass
        atexit.register(release)
        return lock
    raise SystemExit(f"error: could not take {lock}")

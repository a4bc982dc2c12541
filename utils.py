"""The LoRe core shared by every script: settings and paths, comparisons, trainers, pipelines,
evaluation, results and plots (in that order).

LoRe (Bose et al., 2025, arXiv:2504.14439) learns a shared basis V (d x B) of reward directions over
frozen reward-model embeddings and one weight vector w_i = softmax(W_i) per user. A comparison of user i
has the feature x = e(chosen) - e(rejected) and the reward margin s = x . V . w_i / 100 (the method's
1/100 temperature); its Bradley-Terry loss is -log sigmoid(s). It is predicted correctly iff
x . V . w_i > 0 (strictly: a tie is wrong). Shapes throughout: N comparisons, d embedding size, C users,
B basis vectors.

Speed: margins are rowsum((X @ V) * w[user_of_row]) (N.d.B work), never the N x C logit matrix
X @ (V @ w.T) of the original formulation; one X @ V per iteration serves the W step and the V step;
with V frozen (few-shot fits, evaluation) X @ V is computed once and every iteration is O(N.B).
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import tempfile
import types
import typing
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent
TEMPERATURE = 100.0         # the method's 1/100 temperature on every margin
STD_BAND_FACTOR = 0.25      # the original's plotted band: 0.25 x the std of per-user accuracy
PRUNE_THRESHOLD = 1e-2      # LoRe_regularized keeps basis column b iff max_i softmax(W)_ib >= this
WARMUP_START, WARMUP_END = 0.2, 0.8  # cosine regulariser: 0 before int(0.2 T), alpha from int(0.8 T)

# =============================================================================
# settings and paths: one commented block of module globals per script, overridden as --name=value


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


def _parse_value(name: str, raw: str, kinds: tuple, element: type | None):
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
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


def _check_ranges(values: dict) -> None:
    """The ranges of the settings every script shares, checked before any work starts."""
    for name, value in values.items():
        def fail(what):
            raise SettingsError(f"error: --{name}={value!r}: {what}")
        if value is None or isinstance(value, bool):
            continue
        if name.endswith(("iterations", "trials", "batch_size", "shard_size", "seeds")) or name.startswith("n_"):
            if isinstance(value, int) and value < 1:
                fail("must be at least 1")
        elif name.endswith(("learning_rate", "_lr")) and isinstance(value, (int, float)) and value <= 0:
            fail("must be positive")
        elif name.endswith("fraction") and isinstance(value, (int, float)) and not 0 < value <= 1:
            fail("must lie in (0, 1]")
        elif name == "K_list" and (not value or any(k < 0 for k in value)):
            fail("must be a non-empty list of ranks K >= 0 (0: the reference head)")
        elif name == "alpha_list" and (not value or any(a < 0 for a in value)):
            fail("must be a non-empty list of alpha >= 0")
        elif name == "num_shots" and (not value or any(s < 1 for s in value)):
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


def cli_args(parser, argv=None):
    """`parser.parse_args(argv)` of a script that keeps a published argparse command line, with
    `.settings`: its values as Settings, `.overridden` the options whose value is not the default."""
    args = parser.parse_args(argv)
    args.settings = Settings(vars(args))
    args.settings.overridden = frozenset(k for k, v in vars(args).items() if k != "settings" and v != parser.get_default(k))
    return args


def script_dirs(script_file: str, settings: Settings) -> tuple[Path, Path | None]:
    """The data and results folders of a script: (data path, results path or None).

    The defaults (settings `data_dir`, `results_dir` in source) live beside the script, with an
    `-offline` suffix when `offline` is set, so generated data and results never mix with real ones.
    A folder given on the command line is used as given, relative to the working directory.
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
    return folder("data_dir"), folder("results_dir")


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


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one rename, with
    the permissions a plainly created file gets (the umask's). A failure leaves the old file (or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)        # mkstemp makes 0600: unreadable to colleagues
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(_json_value(obj), indent=1, ensure_ascii=False) + "\n")


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


# =============================================================================
# comparisons


def get_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_device(device) -> torch.device:
    return get_device() if device is None else torch.device(device)


def derived_seed(seed: int, *keys: int) -> int:
    """An independent, reproducible seed for one named random draw (e.g. (seed, shots, trial))."""
    return int(np.random.SeedSequence([int(seed), *[int(k) for k in keys]]).generate_state(1)[0])


def _generator(seed: int) -> torch.Generator:
    """A CPU generator: draws are made on CPU and moved, so results do not depend on the device."""
    return torch.Generator().manual_seed(int(seed))


_FLOAT_DTYPES = (torch.float32, torch.float64)


class Comparisons:
    """N comparisons of C users over an embedding table: x_n = table[chosen_n] - table[rejected_n].

    `table` [T, d] holds embeddings (one row per distinct conversation); `chosen`, `rejected` [N] are
    row indices into it and `users` [N] (0..n_users-1) the user of each comparison. One d-vector is
    never materialised per comparison: PersonalLLM, say, reuses 8 responses per prompt across all its
    users. A set built from feature differences (the original's per-user lists) has each x as its
    chosen row and one zero row as every rejected row. Trainers and evaluation touch the features only
    through `project` (X @ V) and `project_T` (X^T @ G).
    """

    from_differences = False   # True: built from differences x (no real embeddings; see from_features)

    def __init__(self, users, n_users: int, table, chosen, rejected):
        self.users = torch.as_tensor(users).long()
        self.n_users = int(n_users)
        self.table = torch.as_tensor(table)
        if self.users.dim() != 1 or self.table.dim() != 2:
            raise ValueError(f"users must be [N] and table [T, d], got {tuple(self.users.shape)}, "
                             f"{tuple(self.table.shape)}")
        self.chosen = torch.as_tensor(chosen).long().to(self.table.device)
        self.rejected = torch.as_tensor(rejected).long().to(self.table.device)
        self.users = self.users.to(self.table.device)
        if self.chosen.shape != self.users.shape or self.rejected.shape != self.users.shape:
            raise ValueError(f"chosen {tuple(self.chosen.shape)} and rejected {tuple(self.rejected.shape)} must "
                             f"have the shape of users {tuple(self.users.shape)}")
        if self.N and (min(self.chosen.min(), self.rejected.min()) < 0
                       or max(self.chosen.max(), self.rejected.max()) >= len(self.table)):
            raise ValueError(f"chosen/rejected indices must lie in [0, {len(self.table)})")
        if self.N and (self.users.min() < 0 or self.users.max() >= self.n_users):
            raise ValueError(f"user indices must lie in [0, {self.n_users})")

    N = property(lambda self: int(self.users.shape[0]))
    d = property(lambda self: int(self.table.shape[1]))
    dtype = property(lambda self: self.table.dtype)
    device = property(lambda self: self.table.device)

    def __len__(self) -> int:
        return self.N

    def __repr__(self) -> str:
        return (f"Comparisons(N={self.N}, n_users={self.n_users}, table {tuple(self.table.shape)}, "
                f"{self.dtype}, {self.device})")

    def counts(self) -> torch.Tensor:
        """[C] number of comparisons of each user."""
        return torch.bincount(self.users, minlength=self.n_users)

    @classmethod
    def from_features(cls, users, n_users: int, features) -> "Comparisons":
        """Comparisons given as feature differences x [N, d] (one row per comparison): each x is a
        chosen row of the table and one zero row is every rejected row."""
        features = torch.as_tensor(features)
        if features.dim() != 2:
            raise ValueError(f"features must be [N, d], got shape {tuple(features.shape)}")
        n = len(features)
        table = torch.cat([features, features.new_zeros(1, features.shape[1])])
        out = cls(users, n_users, table, torch.arange(n), torch.full((n,), n))
        out.from_differences = True      # the zero row is no embedding: a nonlinear model must not read it
        return out

    @classmethod
    def from_user_list(cls, user_tensors) -> "Comparisons":
        """The original's format, a list of per-user feature tensors [m_i, d], as one set."""
        if isinstance(user_tensors, torch.Tensor) or not hasattr(user_tensors, "__len__") or not len(user_tensors):
            raise ValueError("expected a non-empty list of per-user tensors [m_i, d] (or a Comparisons)")
        tensors = [torch.as_tensor(x) for x in user_tensors]
        for i, x in enumerate(tensors):
            if x.dim() != 2 or x.shape[1] != tensors[0].shape[1]:
                raise ValueError(f"user {i}: features must be [m_i, d] with the d of user 0 "
                                 f"({tensors[0].shape[-1]}), got shape {tuple(x.shape)}")
        dtype = tensors[0].dtype if tensors[0].dtype in _FLOAT_DTYPES else torch.float32
        users = torch.repeat_interleave(torch.arange(len(tensors)), torch.tensor([len(x) for x in tensors]))
        return cls.from_features(users, len(tensors), torch.cat([x.to(tensors[0].device, dtype) for x in tensors]))

    def to(self, device=None, dtype=None) -> "Comparisons":
        """The same comparisons on another device / float dtype (self when nothing changes)."""
        table = self.table.to(device=device or self.device, dtype=dtype or self.dtype)
        if table is self.table:
            return self
        return self._like(self.users, self.n_users, table, self.chosen, self.rejected)

    def _like(self, users, n_users, table, chosen, rejected) -> "Comparisons":
        out = Comparisons(users, n_users, table, chosen, rejected)
        out.from_differences = self.from_differences
        return out

    def select(self, index, users=None, n_users=None) -> "Comparisons":
        """The comparisons at `index` (long indices or bool mask [N]), optionally with relabelled users;
        the table is shared, not copied."""
        index = torch.as_tensor(index, device=self.device)
        users = self.users[index] if users is None else users
        return self._like(users, self.n_users if n_users is None else n_users, self.table, self.chosen[index],
                          self.rejected[index])

    def compact(self) -> "Comparisons":
        """The same comparisons over only the table rows they use (each pass then reads live rows only)."""
        rows, inverse = torch.unique(torch.cat([self.chosen, self.rejected]), return_inverse=True)
        if len(rows) == len(self.table):
            return self
        return self._like(self.users, self.n_users, self.table[rows], inverse[:self.N], inverse[self.N:])

    def user_list(self) -> list[torch.Tensor]:
        """Per-user feature tensors [m_i, d] (materialised: for small sets and the original API)."""
        order = torch.argsort(self.users, stable=True)
        rows = self.table[self.chosen[order]] - self.table[self.rejected[order]]
        return list(torch.split(rows, self.counts().tolist()))

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """[N, B] = x_n @ V for every comparison: one pass over the table, then a gather (autograd works)."""
        if V.dim() != 2 or V.shape[0] != self.d:
            raise ValueError(f"V must be [d, B] with d = {self.d}, got shape {tuple(V.shape)}")
        projected = self.table @ V
        return projected[self.chosen] - projected[self.rejected]

    def project_T(self, G: torch.Tensor) -> torch.Tensor:
        """[d, B] = X^T @ G = sum_n x_n G_n^T for G [N, B]: G scattered onto the table rows, then one pass
        over the table, as (G^T @ table)^T (several times faster than table^T @ G for a row-major table)."""
        scattered = torch.zeros(len(self.table), G.shape[1], dtype=G.dtype, device=G.device)
        scattered.index_add_(0, self.chosen, G).index_add_(0, self.rejected, G, alpha=-1)
        return (scattered.t() @ self.table).t()


def as_comparisons(X, device=None, dtype=None) -> Comparisons:
    """A Comparisons from a list of per-user tensors [m_i, d] or a Comparisons, on `device`/`dtype`
    (a non-float table becomes float32)."""
    comparisons = X if isinstance(X, Comparisons) else Comparisons.from_user_list(X)
    if dtype is None and comparisons.dtype not in _FLOAT_DTYPES:
        dtype = torch.float32
    return comparisons.to(device=None if device is None else torch.device(device), dtype=dtype)


def _as_basis(V, d: int | None = None, name: str = "V") -> torch.Tensor:
    """V as [d, B]; a reward head [d] becomes [d, 1]."""
    V = torch.as_tensor(V)
    V = V[:, None] if V.dim() == 1 else V
    if V.dim() != 2 or (d is not None and V.shape[0] != d):
        raise ValueError(f"{name} must be [{d if d is not None else 'd'}, B] or [{d if d is not None else 'd'}], "
                         f"got shape {tuple(V.shape)}")
    return V


def _as_user_weights(W, n_users: int, B: int) -> torch.Tensor:
    """User weights as [C, B] from a [C, B] tensor or a list of C weight vectors [B]."""
    if not isinstance(W, torch.Tensor):
        W = torch.stack([torch.as_tensor(w).reshape(-1) for w in W])
    W = W[:, None] if W.dim() == 1 and B == 1 else W
    if W.dim() != 2 or W.shape != (n_users, B):
        raise ValueError(f"user weights must be [{n_users}, {B}] (one row per user, one column per basis "
                         f"vector), got shape {tuple(W.shape)}")
    return W


# =============================================================================
# trainers: names and signatures of the original; seed, device, dtype and progress are keywords


def bradley_terry_nll(margins: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(s) per comparison, for margins s [N] already divided by the temperature."""
    return F.softplus(-margins)


def cosine_warmup_alpha(iteration: int, num_iterations: int, alpha: float) -> float:
    """Weight of the cosine regulariser at `iteration` (0-based) of T = `num_iterations`: 0 before
    int(0.2 T), rising linearly to alpha at int(0.8 T), alpha from then on (the original's integer
    bounds: they differ from 0.2 T and 0.8 T when T is not a multiple of 5)."""
    start, end = int(WARMUP_START * num_iterations), int(WARMUP_END * num_iterations)
    if iteration < start:
        return 0.0
    if iteration >= end:
        return float(alpha)
    return float(alpha) * (iteration - start) / (end - start)


def cosine_regularizer(V: torch.Tensor, V_ref: torch.Tensor) -> torch.Tensor:
    """mean_b (1 - cos(V_b, V_ref)) for V [d, B] and the reference head V_ref [d, 1]."""
    return torch.mean(1 - (F.normalize(V, dim=0) * F.normalize(V_ref, dim=0)).sum(0))


def prune_basis(weights: torch.Tensor, V: torch.Tensor, threshold: float = PRUNE_THRESHOLD):
    """Keep the basis columns b with max_i weights_ib >= threshold: (weights[:, kept], V[:, kept]),
    not renormalised. If no column reaches the threshold (only possible for B > 1/threshold), the one
    with the largest weight is kept so the model stays usable."""
    kept = weights.max(0).values >= threshold
    if not bool(kept.any()):
        kept = weights.max(0).values == weights.max()
    return weights[:, kept], V[:, kept]


def _progress(iterable, desc: str, progress: bool):
    # disable=None: a bar only on a terminal; mininterval keeps the per-iteration cost negligible
    return tqdm(iterable, desc=desc, disable=None if progress else True, leave=False, mininterval=1.0)


class _Adam:
    """torch.optim.Adam's update (betas 0.9/0.999, eps 1e-8, no weight decay) on one tensor whose
    gradient the caller computes in closed form: the same arithmetic as torch's single-tensor Adam,
    without the optimizer's per-step overhead (it dominates small O(N.B) iterations)."""

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, (self.beta1, self.beta2), self.eps = param, float(lr), betas, eps
        self.exp_avg, self.exp_avg_sq, self.step_count = torch.zeros_like(param), torch.zeros_like(param), 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        self.step_count += 1
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1 ** self.step_count
        bias_correction2_sqrt = math.sqrt(1 - self.beta2 ** self.step_count)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-self.lr / bias_correction1)


@torch.no_grad()
def _bradley_terry_step(P, W, users, row_weight, need_W=True, need_P=False, need_loss=True):
    """Loss sum_n row_weight_n * (-log sigmoid(s_n)) with s_n = P_n . softmax(W)_{users_n} / 100, and its
    closed-form gradients dL/dW [C, B] (through the softmax) and dL/dP [N, B], for P = X @ V [N, B]."""
    weights = torch.softmax(W, 1)
    w_rows = weights[users]
    s = (P * w_rows).sum(1) / TEMPERATURE
    loss = (bradley_terry_nll(s) * row_weight).sum() if need_loss else None
    coefficient = (torch.sigmoid(-s) * row_weight).div_(-TEMPERATURE)[:, None]   # dL/d(P_n . w)
    grad_W = grad_P = None
    if need_W:
        grad_weights = torch.zeros_like(weights).index_add_(0, users, coefficient * P)
        grad_W = weights * (grad_weights - (grad_weights * weights).sum(1, keepdim=True))
    if need_P:
        grad_P = coefficient * w_rows
    return loss, grad_W, grad_P


def _per_user_mean_weights(comparisons: "Comparisons", dtype) -> torch.Tensor:
    """[N] row weights 1 / m_user: a sum of them over rows is the sum over users of their mean."""
    return (1.0 / comparisons.counts().clamp(min=1).to(dtype))[comparisons.users]


class _Trainer:
    """The two LoRe trainers' common state. `V_sft` is the reference head V_ref [d, 1] under the original
    classes' argument name (kept so their callers run unchanged)."""

    W_INIT = staticmethod(torch.randn)    # the draw of the user logits W [C, B] (V is always N(0, 1))

    def __init__(self, V_sft, alpha, num_classes, num_features, num_basis_vectors, num_iterations,
                 learning_rate, *, seed: int = 0, device=None, dtype=torch.float32, progress: bool = True):
        self.device, self.dtype, self.progress = _resolve_device(device), dtype, progress
        self.alpha, self.seed = float(alpha), int(seed)
        self.num_iterations, self.learning_rate = int(num_iterations), float(learning_rate)
        self.num_classes, self.num_features = int(num_classes), int(num_features)
        self.V_sft = None if V_sft is None else _as_basis(V_sft, self.num_features, "V_sft").to(self.device, dtype)
        if self.V_sft is not None and self.V_sft.shape[1] != 1:
            raise ValueError(f"V_sft must be [{self.num_features}, 1], got shape {tuple(self.V_sft.shape)}")
        if self.alpha > 0 and self.V_sft is None:
            raise ValueError("alpha > 0 needs V_sft (the reference reward head V_ref, [d, 1])")
        self.loss_history = None
        g = _generator(seed)
        self.W = self.W_INIT(num_classes, num_basis_vectors, generator=g, dtype=dtype).to(self.device)
        self.V = torch.randn(num_features, num_basis_vectors, generator=g, dtype=dtype).to(self.device)

    def _check(self, X) -> Comparisons:
        comparisons = as_comparisons(X, self.device, self.dtype).compact()
        if comparisons.d != self.num_features or comparisons.n_users != self.num_classes:
            raise ValueError(f"data have {comparisons.n_users} users and d = {comparisons.d}; the model was "
                             f"built for num_classes = {self.num_classes}, num_features = {self.num_features}")
        return comparisons

    def train(self, X):
        """Fit on X (a list of per-user tensors [m_i, d] or a Comparisons); see the subclass for what
        it returns."""
        return self._fit(self._check(X))


class LoRe(_Trainer):
    """Joint LoRe fit: W ~ N(0,1) [C, B], V ~ N(0,1) [d, B], Adam over both (one optimiser's update).

    Loss = sum over users of the mean Bradley-Terry NLL over that user's comparisons
    + alpha * sum_b ||V_b - V_sft||^2 (when alpha > 0). Per iteration one P = X @ V and one X^T @ dL/dP.
    `.train(X)` returns (softmax(W) [C, B], V [d, B]).
    """

    def loss(self, X) -> torch.Tensor:
        """Sum over users of their mean NLL (+ alpha * sum_b ||V_b - V_sft||^2) at the current W, V."""
        comparisons = self._check(X)
        loss = _bradley_terry_step(comparisons.project(self.V), self.W, comparisons.users,
                                   _per_user_mean_weights(comparisons, self.dtype), need_W=False)[0]
        return loss + self.alpha * ((self.V - self.V_sft) ** 2).sum() if self.alpha > 0 else loss

    def _fit(self, comparisons: Comparisons):
        users, row_weight = comparisons.users, _per_user_mean_weights(comparisons, self.dtype)
        adam_W, adam_V = _Adam(self.W, self.learning_rate), _Adam(self.V, self.learning_rate)
        losses = torch.empty(self.num_iterations, dtype=self.dtype, device=self.device)
        for t in _progress(range(self.num_iterations), "LoRe", self.progress):
            P = comparisons.project(self.V)
            loss, grad_W, grad_P = _bradley_terry_step(P, self.W, users, row_weight, need_P=True)
            grad_V = comparisons.project_T(grad_P)
            if self.alpha > 0:
                difference = self.V - self.V_sft
                loss = loss + self.alpha * (difference ** 2).sum()
                grad_V.add_(difference, alpha=2 * self.alpha)
            adam_W.step(grad_W)
            adam_V.step(grad_V)
            losses[t] = loss
        self.loss_history = losses
        return torch.softmax(self.W, 1), self.V.clone()


class LoRe_regularized(_Trainer):
    """LoRe with alternating steps and a cosine pull towards the reference head (the PRISM trainer).

    W ~ U(0,1) [C, B], V ~ N(0,1) [d, B], separate Adam optimisers. Each iteration: an Adam step on W
    with V fixed on the pooled mean NLL, then an Adam step on V with the updated W fixed on
    mean NLL + alpha_t * mean_b(1 - cos(V_b, V_sft)), alpha_t from `cosine_warmup_alpha`. Both steps
    share one P = X @ V (P depends only on V, which the W step does not change), and the V gradient is
    X^T @ dL/dP: two passes over X per iteration, exactly the straightforward alternation's result.
    `.train(X)` returns (softmax(W)[:, kept], V[:, kept]) for the columns with max_i softmax(W)_ib >= 1e-2
    (not renormalised); the full W and V stay in `.W`, `.V`; `.loss_history` holds the W-step NLL.
    """

    W_INIT = staticmethod(torch.rand)     # W ~ U(0, 1)

    def _fit(self, comparisons: Comparisons):
        users = comparisons.users
        row_weight = torch.full((comparisons.N,), 1.0 / max(comparisons.N, 1), dtype=self.dtype,
                                device=self.device)                                  # pooled mean
        adam_W, adam_V = _Adam(self.W, self.learning_rate), _Adam(self.V, self.learning_rate)
        losses = torch.empty(self.num_iterations, dtype=self.dtype, device=self.device)
        for t in _progress(range(self.num_iterations), "LoRe_regularized", self.progress):
            P = comparisons.project(self.V)                     # [N, B], shared by both steps
            loss, grad_W, _ = _bradley_terry_step(P, self.W, users, row_weight)           # W step, V fixed
            adam_W.step(grad_W)
            losses[t] = loss
            grad_P = _bradley_terry_step(P, self.W, users, row_weight, need_W=False, need_P=True,
                                         need_loss=False)[2]
            grad_V = comparisons.project_T(grad_P)                                         # V step, new W
            alpha_t = cosine_warmup_alpha(t, self.num_iterations, self.alpha)
            if alpha_t > 0:
                with torch.enable_grad():
                    V = self.V.detach().requires_grad_()
                    grad_V.add_(torch.autograd.grad(alpha_t * cosine_regularizer(V, self.V_sft), V)[0])
            adam_V.step(grad_V)
        self.loss_history = losses
        weights, V = prune_basis(torch.softmax(self.W, 1), self.V)
        return weights, V.clone()


class PersonalizeBatch:
    """Few-shot personalisation with V frozen: per-user logits W ~ N(0,1) [C, B], Adam on the sum over
    users of their mean NLL. X @ V is computed once; every iteration after that is O(N.B), for all users
    at once. `.train(X, V)` returns a list of C weight vectors softmax(w_i) [B] (`.train_weights` the
    same as one [C, B] tensor, also kept in `.weights`).
    """

    def __init__(self, num_classes, num_features, num_basis_vectors, num_iterations, learning_rate, *,
                 seed: int = 0, device=None, dtype=torch.float32, progress: bool = True):
        self.device, self.dtype, self.progress = _resolve_device(device), dtype, progress
        self.num_classes, self.num_features = int(num_classes), int(num_features)
        self.num_iterations, self.learning_rate = int(num_iterations), float(learning_rate)
        self.W = torch.randn(num_classes, num_basis_vectors, generator=_generator(seed), dtype=dtype).to(self.device)
        self.weights = None

    def train_weights(self, X, V) -> torch.Tensor:
        """Fit and return the user weights as one [C, B] tensor."""
        comparisons = as_comparisons(X, self.device, self.dtype).compact()
        if comparisons.d != self.num_features or comparisons.n_users != self.num_classes:
            raise ValueError(f"data have {comparisons.n_users} users and d = {comparisons.d}; the model was "
                             f"built for num_classes = {self.num_classes}, num_features = {self.num_features}")
        V = _as_basis(V, comparisons.d).to(self.device, self.dtype)
        if V.shape[1] != self.W.shape[1]:
            raise ValueError(f"V has {V.shape[1]} columns, the model {self.W.shape[1]} basis vectors")
        P = comparisons.project(V)                                             # once: V is frozen
        row_weight = _per_user_mean_weights(comparisons, self.dtype)
        adam = _Adam(self.W, self.learning_rate)
        for _ in _progress(range(self.num_iterations), "PersonalizeBatch", self.progress):
            adam.step(_bradley_terry_step(P, self.W, comparisons.users, row_weight, need_loss=False)[1])
        self.weights = torch.softmax(self.W, 1)
        return self.weights

    def train(self, X, V) -> list[torch.Tensor]:
        return list(self.train_weights(X, V))


def solve_regularized(V_sft, alpha, X, K, num_iterations, learning_rate, *, seed=0, device=None, dtype=None,
                      progress=True):
    """Fit the joint LoRe (`LoRe`: Adam on W and V together, optional L2 pull towards V_sft) with K basis
    vectors on X; d and the number of users come from the data. Returns (softmax(W) [C, K], V [d, K])."""
    comparisons = as_comparisons(X, device, dtype)
    model = LoRe(V_sft, alpha, comparisons.n_users, comparisons.d, K, num_iterations, learning_rate, seed=seed,
                 device=comparisons.device, dtype=comparisons.dtype, progress=progress)
    return model.train(comparisons)


def solve_regularized_simplex(V_sft, alpha, X, K, num_iterations, learning_rate, *, seed=0, device=None,
                              dtype=None, progress=True):
    """Fit `LoRe_regularized` with K basis vectors (d from the data): pruned (softmax(W), V)."""
    comparisons = as_comparisons(X, device, dtype)
    model = LoRe_regularized(V_sft, alpha, comparisons.n_users, comparisons.d, K, num_iterations,
                             learning_rate, seed=seed, device=comparisons.device, dtype=comparisons.dtype,
                             progress=progress)
    return model.train(comparisons)


def learn_multiple_few_shot(X, V, num_iterations, learning_rate, *, seed=0, device=None, dtype=None,
                            progress=True) -> list[torch.Tensor]:
    """Few-shot weights of every user in X against the frozen basis V: a list of C vectors [B]."""
    return list(_few_shot_weights(X, V, num_iterations, learning_rate, seed=seed, device=device, dtype=dtype,
                                  progress=progress))


def _few_shot_weights(X, V, num_iterations, learning_rate, *, seed=0, device=None, dtype=None, progress=True):
    comparisons = as_comparisons(X, device, dtype)
    V = _as_basis(V, comparisons.d)
    model = PersonalizeBatch(comparisons.n_users, comparisons.d, V.shape[1], num_iterations, learning_rate,
                             seed=seed, device=comparisons.device, dtype=comparisons.dtype, progress=progress)
    return model.train_weights(comparisons, V)


# =============================================================================
# pipelines


class SweepResults(tuple):
    """What `run` / `run_regularized` return: the original's 8 lists (seen train mean, seen test mean,
    unseen few-shot train mean, unseen test mean, then the same four as bands = 0.25 x the std over
    users), each of length len(alpha_list) * len(K_list), alpha-major. `.runs` holds, per (alpha, K):
    "alpha", "K", "basis_size" (columns of V after pruning), "cosine_to_ref" (cos(V_b, V_ref) per
    column), and "per_user" {group: [C] accuracies (NaN: no comparison)}. `.std_over` is "users"; for
    the combination of several seeds (combine_seeds) it is "seeds"."""
    runs: list
    std_over = "users"


def combine_seeds(sweeps: list) -> SweepResults:
    """One SweepResults from the sweeps of several seeds: every mean is the mean over seeds of the mean
    over users and every band 0.25 x the std over seeds (so save_results reports mean ± std over
    seeds); `.runs` keeps the first seed's details, with "per_seed" {group: [means]} added."""
    if len(sweeps) == 1:
        return sweeps[0]
    means = np.array([list(sweep[:4]) for sweep in sweeps])              # [seeds, 4, runs]
    out = SweepResults(list(means.mean(0)) + list(STD_BAND_FACTOR * means.std(0)))
    out.runs = [dict(run, per_seed={group: list(means[:, j, i]) for j, group in enumerate(GROUP_NAMES)})
                for i, run in enumerate(sweeps[0].runs)]
    out.std_over = "seeds"
    return out


def _save_tensor(path: Path, tensor: torch.Tensor, key: str, record: dict) -> None:
    """Atomically write `path` (.pt: a plain tensor, loadable with weights_only=True) and its
    .safetensors sibling (one entry named `key`, the fit that made it as metadata "fit")."""
    from safetensors.torch import save_file
    path = Path(path)
    tensor = tensor.detach().cpu().contiguous().clone()
    with atomic_path(path) as tmp:
        torch.save(tensor, tmp)
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file({key: tensor}, str(tmp), metadata={"fit": json.dumps(record, sort_keys=True)})


def _training_data_record(train: "Comparisons") -> dict:
    """The training data's part of a fit record: its sizes and a hash of its comparisons and rows."""
    train = train.compact()
    digest = hashlib.sha256()
    for tensor in (train.users, train.chosen, train.rejected, train.table):
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).data)
    return {"users": train.n_users, "comparisons": train.N, "d": train.d, "data_sha256": digest.hexdigest()}


def _check_fits_to_replace(results_dir, dataset_name, records: dict, overwrite: bool) -> None:
    """Before any fit: refuse to replace a saved basis that another fit made (other settings or data),
    unless overwrite, naming the differences. A long PRISM fit is hours of work."""
    from safetensors import safe_open
    for (alpha, K), record in records.items():
        path = (Path(results_dir) / lore_file_names(dataset_name, K, alpha)[0]).with_suffix(".safetensors")
        if overwrite or not path.exists():
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                old = json.loads((f.metadata() or {}).get("fit", "{}"))
        except Exception:
            continue                   # unreadable: nothing to keep
        if old != record:
            changed = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in record.items() if old.get(k) != v)
            raise SystemExit(f"error: {path.with_suffix('.pt')} holds a basis fitted with other settings or data "
                             f"({changed}). Run with --overwrite=True to replace it, or give another "
                             f"--results_dir.")


def lore_file_names(dataset_name: str | None, K: int, alpha) -> tuple[str, str]:
    """File names of a fitted basis and its seen-user weights, as the original named them."""
    prefix = f"{dataset_name}_" if dataset_name else ""
    return f"{prefix}V_lore_K_{K}_alpha_{alpha}.pt", f"{prefix}W_lore_seen_{K}_{alpha}.pt"


GROUP_NAMES = ("seen_train", "seen_test", "unseen_train", "unseen_test")


def _prepare(V_final, groups, N, N_unseen, device):
    """The four groups as Comparisons on one device and dtype, checked, and V_final as [d, 1]."""
    device = _resolve_device(device)
    first = as_comparisons(groups[0], device)
    groups = [first] + [as_comparisons(g, device, first.dtype) for g in groups[1:]]
    for name, group, want in zip(GROUP_NAMES, groups, (N, N, N_unseen, N_unseen)):
        if group.N == 0 or group.n_users == 0:
            raise SystemExit(f"error: {name} has {group.n_users} users and {group.N} comparisons: nothing to "
                             f"fit or evaluate (check the prepared data); nothing was written")
        if group.n_users != want:
            raise ValueError(f"{name} has {group.n_users} users, expected {want} (N = {N}, N_unseen = {N_unseen})")
        if group.d != first.d:
            raise ValueError(f"every group needs the same d, got {[g.d for g in groups]}")
    if V_final is not None:
        V_final = _as_basis(V_final, first.d, "V_final").to(device, first.dtype)
        if V_final.shape[1] != 1:
            raise ValueError(f"V_final (the reference head V_ref) must be [{first.d}, 1] or [{first.d}], got "
                             f"shape {tuple(V_final.shape)}")
    return V_final, groups, device


def _reference(V_final, K):
    if V_final is None:
        raise ValueError(f"K = {K} evaluates the reference head: pass V_final ([d, 1] or [d])")
    return V_final


def _pipeline(fit, fit_settings, K_list, alpha_list, V_final, groups, N, N_unseen, device, fewshot_iterations,
              fewshot_learning_rate, seed, results_dir, dataset_name, progress, overwrite) -> SweepResults:
    V_final, (train, test, train_unseen, test_unseen), device = _prepare(V_final, groups, N, N_unseen, device)
    records = {}      # what makes each saved basis: trainer settings, K, alpha, seed, training data (hashed once)
    if results_dir is not None:
        data = _training_data_record(train)
        records = {(alpha, K): {**fit_settings, "K": int(K), "alpha": float(alpha), "seed": int(seed), **data}
                   for alpha in alpha_list for K in K_list if K >= 1}
    _check_fits_to_replace(results_dir, dataset_name, records, overwrite)
    means, bands, runs = [[], [], [], []], [[], [], [], []], []
    for alpha, K in tqdm([(a, K) for a in alpha_list for K in K_list], desc="alpha, K",
                         disable=None if progress else True):
        if K == 0:
            V, weights_seen = _reference(V_final, K), torch.ones(N, 1, dtype=train.dtype, device=device)
        else:
            weights_seen, V = fit(V_final, alpha, train, K, seed=derived_seed(seed, 0), progress=progress)
            if results_dir is not None:
                v_name, w_name = lore_file_names(dataset_name, K, alpha)
                _save_tensor(Path(results_dir) / v_name, V, "V", records[alpha, K])
                _save_tensor(Path(results_dir) / w_name, weights_seen, "W", records[alpha, K])
        if K <= 1:
            weights_unseen = torch.ones(N_unseen, V.shape[1], dtype=V.dtype, device=device)
        else:
            weights_unseen = _few_shot_weights(train_unseen, V, fewshot_iterations, fewshot_learning_rate,
                                               seed=derived_seed(seed, 1), progress=progress)
        per_user = {}
        for i, (name, group, weights) in enumerate(zip(GROUP_NAMES, (train, test, train_unseen, test_unseen),
                                                       (weights_seen, weights_seen, weights_unseen, weights_unseen))):
            per_user[name] = per_user_accuracy(group, V, weights)
            mean, std = _mean_and_std(per_user[name])
            means[i].append(mean)
            bands[i].append(STD_BAND_FACTOR * std)
        cosine = None if V_final is None else (F.normalize(V, dim=0) * F.normalize(V_final, dim=0)).sum(0)
        runs.append({"alpha": alpha, "K": K, "basis_size": int(V.shape[1]), "per_user": per_user,
                     "cosine_to_ref": None if cosine is None else cosine.cpu().tolist()})
    out = SweepResults(means + bands)
    out.runs = runs
    return out


def run(K_list, alpha_list, V_final, train_features, test_features_sparse, train_features_unseen,
        test_features_sparse_unseen, N, N_unseen, device, *, num_iterations=1000, learning_rate=0.5,
        fewshot_iterations=500, fewshot_learning_rate=0.1, seed=0, results_dir=None, dataset_name=None,
        progress=True, overwrite=False) -> SweepResults:
    """Sweep alpha x K with the joint `LoRe` trainer; evaluate seen and (few-shot) unseen users.

    Groups: lists of per-user tensors [m_i, d] or Comparisons; the two seen groups have N users in the
    same order, the two unseen groups N_unseen. K = 0: V = V_final ([d, 1] or [d]) and every user
    weight [1.0]; K >= 1: `solve_regularized` (num_iterations, learning_rate, V_sft = V_final). Unseen
    users: K <= 1 uses w = [1.0], else `PersonalizeBatch` on train_features_unseen (fewshot_iterations,
    fewshot_learning_rate). device None: CUDA when present. Every fit and every K sees the same seeded
    draws. When results_dir is given, V and W of every K >= 1 are saved there (see run_regularized); a
    saved basis made by another fit (settings or data) is not replaced unless overwrite.
    Returns a SweepResults: the original's 8 lists (see there), `.runs` with the details per (alpha, K).
    """
    def fit(V_sft, alpha, X, K, seed, progress):
        return solve_regularized(V_sft, alpha, X, K, num_iterations, learning_rate, seed=seed, progress=progress)
    return _pipeline(fit, {"trainer": "LoRe", "num_iterations": num_iterations, "learning_rate": learning_rate},
                     K_list, alpha_list, V_final, (train_features, test_features_sparse, train_features_unseen,
                     test_features_sparse_unseen), N, N_unseen, device, fewshot_iterations, fewshot_learning_rate,
                     seed, results_dir, dataset_name, progress, overwrite)


def run_regularized(K_list, alpha_list, V_final, train_features, test_features_sparse, train_features_unseen,
                    test_features_sparse_unseen, N, N_unseen, device, *, num_iterations=20000, learning_rate=0.5,
                    fewshot_iterations=500, fewshot_learning_rate=0.5, seed=0, results_dir=None,
                    dataset_name=None, progress=True, overwrite=False) -> SweepResults:
    """`run` with the alternating, cosine-regularised `LoRe_regularized` trainer (the PRISM pipeline).

    Same arguments and returns as `run`. Saves, for every K >= 1, the pruned basis
    `<results_dir>/<dataset_name>_V_lore_K_{K}_alpha_{alpha}.pt` [d, B_kept] and the seen-user weights
    `<dataset_name>_W_lore_seen_{K}_{alpha}.pt` [N, B_kept] (plain tensors, loadable with
    weights_only=True), each with a .safetensors sibling (key "V" / "W"); results_dir None saves none.
    """
    def fit(V_sft, alpha, X, K, seed, progress):
        return solve_regularized_simplex(V_sft, alpha, X, K, num_iterations, learning_rate, seed=seed,
                                         progress=progress)
    return _pipeline(fit, {"trainer": "LoRe_regularized", "num_iterations": num_iterations,
                           "learning_rate": learning_rate}, K_list, alpha_list, V_final, (train_features,
                     test_features_sparse, train_features_unseen, test_features_sparse_unseen), N, N_unseen, device,
                     fewshot_iterations, fewshot_learning_rate, seed, results_dir, dataset_name, progress, overwrite)


class FewShotCurves(tuple):
    """What `run_few_shot_vary_shots` returns: the original's four lists for the last (alpha, K) of the
    sweep (the original kept only that one), so `a, b, c, d = run_few_shot_vary_shots(...)` unpacks as
    it did: (few-shot train means, few-shot train stds, unseen test means, unseen test stds), each an
    array [len(num_shots)]; a mean is the mean over trials of the per-trial mean over users, a std is
    the standard deviation over trials of that per-trial mean (no 0.25 factor).

    `.runs` holds every (alpha, K) of the sweep, alpha-major: {"alpha", "K", "fewshot_train",
    "unseen_test"}, each of the two a dict of arrays [len(num_shots)]: "mean", "std_trials" (the
    original's std) and "std_users" (the std over users within a trial, averaged over trials).
    `.num_shots` is the list of shot counts and `.capped` the shot counts that exceed every user's pool
    (those draws are the whole pool, the same for every trial).
    """
    runs: list
    num_shots: list
    capped: list

    @classmethod
    def build(cls, runs, num_shots, capped):
        last = runs[-1]
        out = cls((last["fewshot_train"]["mean"], last["fewshot_train"]["std_trials"],
                   last["unseen_test"]["mean"], last["unseen_test"]["std_trials"]))
        out.runs, out.num_shots, out.capped = runs, list(num_shots), list(capped)
        return out


def _trial_statistics(per_trial_accuracy: list) -> dict:
    """{"mean", "std_trials", "std_users"} of per-trial per-user accuracies (users without comparisons,
    NaN, left out): the mean over trials of each trial's mean over users, the std over trials of those
    means (population form, as np.std), and the mean over trials of each trial's std over users."""
    statistics = [_mean_and_std(accuracy) for accuracy in per_trial_accuracy]
    means = [mean for mean, _ in statistics]
    return {"mean": float(np.mean(means)), "std_trials": float(np.std(means)),
            "std_users": float(np.mean([std for _, std in statistics]))}


def run_few_shot_vary_shots(trials, alpha_list, K_list, num_shots, train_features, train_features_unseen,
                            test_features_sparse_unseen, V_final, N, N_unseen, device, *, seed=0,
                            num_iterations=500, learning_rate=0.5, fewshot_iterations=500,
                            fewshot_learning_rate=0.1, regularized=False, progress=True) -> FewShotCurves:
    """Few-shot accuracy of unseen users against the number of shots.

    For every alpha and K: one joint fit on the seen users' train_features (`solve_regularized`, or
    `solve_regularized_simplex` with regularized=True; num_iterations, learning_rate; K = 0 is the
    reference head V_final with w = [1.0]). Then for every shot count s in num_shots, `trials` seeded
    draws of min(m_i, s) comparisons per unseen user (`sample_shots`; draw (s, trial) is the same for
    every alpha and K), a few-shot fit of all trials x users at once (K <= 1: w = [1.0]), and per trial
    the per-user accuracy on those shots and on test_features_sparse_unseen.

    Returns a FewShotCurves: unpacked, the original's (few-shot train means, few-shot train stds, unseen
    test means, unseen test stds) per shot count for the last (alpha, K), std = over trials of the
    per-trial mean over users; `.runs` has every (alpha, K) with the std over users too.
    """
    V_final, (train, _, train_unseen, test_unseen), device = _prepare(
        V_final, (train_features, train_features, train_features_unseen, test_features_sparse_unseen),
        N, N_unseen, device)
    trials = int(trials)
    fit = solve_regularized_simplex if regularized else solve_regularized
    draws = {}               # depend only on (seed, shots, trial): the same for every alpha and K
    for s in num_shots:
        index, users = [], []
        for trial in range(trials):
            chosen = _shot_index(train_unseen, s, _generator(derived_seed(seed, 2, s, trial)))
            index.append(chosen)
            users.append(train_unseen.users[chosen] + trial * N_unseen)
        draws[s] = train_unseen.select(torch.cat(index), users=torch.cat(users),
                                       n_users=trials * N_unseen).compact()
    pools = train_unseen.counts()
    capped = [s for s in num_shots if len(pools) and s > int(pools.max())]
    runs = []
    for alpha in alpha_list:
        for K in tqdm(K_list, desc=f"alpha={alpha}: K", disable=None if progress else True):
            if K == 0:
                V = _reference(V_final, K)
            else:
                V = fit(V_final, alpha, train, K, num_iterations, learning_rate, seed=derived_seed(seed, 0),
                        progress=progress)[1]
            P_test = test_unseen.project(V)                  # once per fit: V is frozen from here on
            curves = {"fewshot_train": [], "unseen_test": []}
            for s in num_shots:
                shots = draws[s]
                if K <= 1:
                    weights = torch.ones(trials * N_unseen, V.shape[1], dtype=V.dtype, device=device)
                else:
                    weights = _few_shot_weights(shots, V, fewshot_iterations, fewshot_learning_rate,
                                                seed=derived_seed(seed, 1), progress=progress)
                train_accuracy = per_user_accuracy(shots, V, weights).numpy()
                curves["fewshot_train"].append(_trial_statistics(np.split(train_accuracy, trials)))
                curves["unseen_test"].append(_trial_statistics(
                    [_accuracy_from_projection(test_unseen, P_test, w).numpy() for w in weights.split(N_unseen)]))
            runs.append({"alpha": alpha, "K": K, **{
                name: {key: np.array([point[key] for point in points]) for key in ("mean", "std_trials", "std_users")}
                for name, points in curves.items()}})
    return FewShotCurves.build(runs, num_shots, capped)


def sample_shots(X, num_shots: int, seed: int = 0, generator: torch.Generator | None = None):
    """min(m_i, num_shots) comparisons of each user drawn without replacement (seeded), in their
    original order. Returns the same kind as X: a Comparisons (same users) or a list of tensors."""
    comparisons = as_comparisons(X)
    chosen = comparisons.select(_shot_index(comparisons, num_shots, generator or _generator(seed)))
    return chosen if isinstance(X, Comparisons) else chosen.user_list()


def _shot_index(comparisons: Comparisons, num_shots: int, generator: torch.Generator) -> torch.Tensor:
    users = comparisons.users.cpu()
    order = torch.randperm(comparisons.N, generator=generator)       # random order within each user...
    order = order[torch.argsort(users[order], stable=True)]           # ...grouped by user
    counts = comparisons.counts().cpu()
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(comparisons.N) - starts[users[order]]
    return order[rank < num_shots].sort().values.to(comparisons.device)


# =============================================================================
# evaluation: per-user accuracy (correct iff x . V . w > 0, a tie is wrong), mean and std over users


def per_user_accuracy(X, V, W) -> torch.Tensor:
    """[C] fraction of each user's comparisons with x . V . w_user > 0 (NaN for a user with none), on the
    CPU. X: list of [m_i, d] or Comparisons; V [d, B] (or a head [d]); W [C, B] or C vectors [B]."""
    comparisons = as_comparisons(X).compact()
    V = _as_basis(V, comparisons.d).to(comparisons.device, comparisons.dtype)
    W = _as_user_weights(W, comparisons.n_users, V.shape[1]).to(comparisons.device, comparisons.dtype)
    with torch.no_grad():
        return _accuracy_from_projection(comparisons, comparisons.project(V), W)


def _accuracy_from_projection(comparisons: Comparisons, P: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Per-user accuracy [C] (CPU) from P = X @ V [N, B] and user weights W [C, B]."""
    correct = ((P * W[comparisons.users]).sum(1) > 0).to(P.dtype)
    hits = torch.zeros(comparisons.n_users, dtype=P.dtype, device=P.device).index_add_(0, comparisons.users, correct)
    return (hits / comparisons.counts()).cpu()          # 0/0 = NaN for users without comparisons


def _mean_and_std(per_user) -> tuple[float, float]:
    """(mean, std) over the users that have comparisons (population std, as np.std); NaN when none."""
    accuracy = np.asarray(per_user, dtype=np.float64)
    accuracy = accuracy[~np.isnan(accuracy)]
    return (float(accuracy.mean()), float(accuracy.std())) if len(accuracy) else (math.nan, math.nan)


def accuracy_mean_std(X, V, W) -> tuple[float, float]:
    """(mean, std) over users of per-user accuracy (raw std; users without comparisons left out).
    Multiply the std by STD_BAND_FACTOR for the original's plot band."""
    return _mean_and_std(per_user_accuracy(X, V, W))


def eval_multiple(W_list, V_list, test_features) -> list[float]:
    """The original's API: per-user accuracies of users test_features[i] with V_list[i] and W_list[i]."""
    V = V_list[0] if isinstance(V_list, (list, tuple)) else V_list      # the original passed N copies of V
    return per_user_accuracy(test_features, V, W_list).tolist()


def evaluate_model(X, V, w) -> float:
    """The original's API: accuracy of one user, X [m, d], V [d, B], w [B]."""
    return float(per_user_accuracy([torch.as_tensor(X)], V, [w])[0])


# =============================================================================
# results and plots: JSON (settings, seed, means, raw stds), markdown tables, PNG plots

RESULT_COLUMNS = ("seen users: train", "seen users: unseen prompts", "unseen users: few-shot train",
                  "unseen users: test")


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


def percent(mean, std) -> str:
    """"mean ± std" in % (one decimal), or "n/a"."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def rank_label(K) -> str:
    return "ref" if K == 0 else str(K)


def selected_K(rows: list, alpha) -> int | None:
    """The K >= 1 with the best seen-user / unseen-prompt accuracy at `alpha`: LoRe's rank chosen on
    seen users only, so the unseen-user figure reported at it is not the one it was chosen by."""
    candidates = [r for r in rows if r["alpha"] == alpha and r["K"] >= 1 and r["seen_test"]["mean"] is not None]
    return max(candidates, key=lambda r: (r["seen_test"]["mean"], -r["K"]))["K"] if candidates else None


def save_results(results_dir, name, settings, K_list, alpha_list, results, *, plot_name=None, title=None,
                 extra=None, reference_lines=None, user_ids=None, method_rows=()) -> dict:
    """Write the result files of a `run`/`run_regularized` sweep into results_dir (created if missing).

    results: what run/run_regularized returned (alpha-major over alpha_list x K_list). settings: the
    script's `configure` snapshot (with seed). reference_lines: {label: accuracy} drawn as horizontal
    lines (e.g. the planted Bayes-optimal accuracy). user_ids {"seen": [...], "unseen": [...]}: the groups'
    users, to record every user's accuracy per (alpha, K) and group (when results carry them).
    method_rows: rows of other methods (baselines.make_row format) added under every alpha's K rows.
    With the combination of several seeds (combine_seeds) every std is the std over seeds. Writes
      `<name>.json`: settings, seed, per (alpha, K) the mean and RAW std over users of the four
                     accuracies, the basis size and cosines to V_ref, the K chosen on seen users per
                     alpha, + `extra`;
      `<name>.md`:   per alpha a table, rows K ("ref" for K = 0), columns RESULT_COLUMNS, "mean ± std" %;
      a PNG per alpha: accuracy vs rank (4 lines, x tick "ref" for K = 0, shaded ± 0.25 std as the
                     original), named plot_name.format(alpha=alpha) (default "<name>_alpha_{alpha}.png").
    Returns {"json": Path, "markdown": Path, "plots": [Path, ...], "rows": [...]}.
    """
    results_dir = Path(results_dir)
    K_list, alpha_list = list(K_list), list(alpha_list)
    if len(results) != 8 or any(len(r) != len(K_list) * len(alpha_list) for r in results):
        raise ValueError(f"results must be the 8 lists of run()/run_regularized(), each of length "
                         f"len(alpha_list) * len(K_list) = {len(K_list) * len(alpha_list)}")
    means, stds = [list(map(float, r)) for r in results[:4]], [[b / STD_BAND_FACTOR for b in r] for r in results[4:]]
    details = getattr(results, "runs", None) or [{}] * len(means[0])
    rows, markdown = [], [f"# {title or name}", ""]
    for i, (alpha, K) in enumerate((a, K) for a in alpha_list for K in K_list):
        row = {"alpha": alpha, "K": K, **{key: {"mean": means[j][i], "std": stds[j][i]} for j, key in enumerate(GROUP_NAMES)}}
        if user_ids is not None and "per_user" in details[i]:
            row["per_user"] = {group: dict(zip(user_ids[group.split("_")[0]], details[i]["per_user"][group].tolist()))
                               for group in GROUP_NAMES}
        cosine = details[i].get("cosine_to_ref")
        if cosine is not None and K >= 1:
            row.update(basis_size=details[i]["basis_size"], cosine_to_ref=cosine,
                       mean_cosine_to_ref=float(np.mean(cosine)))
        rows.append(row)
    chosen = {alpha: selected_K(rows, alpha) for alpha in alpha_list}
    for alpha in alpha_list:
        show_cosine = any("mean_cosine_to_ref" in r for r in rows if r["alpha"] == alpha)
        markdown += [f"## alpha = {alpha}", "", "| K | " + " | ".join(RESULT_COLUMNS) + " |"
                     + (" mean cos(V_b, V_ref) |" if show_cosine else ""),
                     "|---" * (len(RESULT_COLUMNS) + 1 + show_cosine) + "|"]
        for row in (r for r in rows if r["alpha"] == alpha):
            cells = [percent(row[key]["mean"], row[key]["std"]) for key in GROUP_NAMES]
            if show_cosine:
                # 5 decimals: at alpha = 1e4 the basis sits within 1e-4 of the head, which .3f shows as 1
                cells.append(f"{row['mean_cosine_to_ref']:.5f}" if "mean_cosine_to_ref" in row else "1")
            label = rank_label(row["K"]) + (" (chosen on seen users)" if row["K"] == chosen[alpha] else "")
            markdown.append(f"| {label} | " + " | ".join(cells) + " |")
        for method in method_rows:
            cells = [percent(method["groups"][key]["mean"], method["groups"][key]["std"]) for key in GROUP_NAMES]
            markdown.append(f"| {method['label']} | " + " | ".join(cells) + " |" + (" |" if show_cosine else ""))
        markdown.append("")
    over = getattr(results, "std_over", "users")
    markdown.append(f"Accuracy in %, mean ± std over {over}" + (f" ({len(results.runs[0]['per_seed']['seen_test'])} "
                    f"seeds) of the mean over users" if over == "seeds" else "")
                    + f" (plots shade ± {STD_BAND_FACTOR} std, as the original). The chosen K is the best on "
                    "seen users / unseen prompts.")
    payload = {"name": name, "settings": settings, "seed": settings.get("seed"), "K_list": K_list,
               "alpha_list": alpha_list, "std_band_factor": STD_BAND_FACTOR, "std_over": over, "results": rows,
               "K_chosen_on_seen_users": {str(a): k for a, k in chosen.items()},
               **({"methods": list(method_rows)} if method_rows else {}), **(extra or {})}
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    write_json_atomic(json_path, payload)
    write_text_atomic(md_path, "\n".join(markdown) + "\n")
    plots = []
    for a, alpha in enumerate(alpha_list):
        section = slice(a * len(K_list), (a + 1) * len(K_list))
        path = results_dir / (plot_name or f"{name}_alpha_{{alpha}}.png").format(alpha=alpha)
        _plot_lines(path, [rank_label(K) for K in K_list],
                    [(label, m[section], [STD_BAND_FACTOR * s for s in sd[section]])
                     for label, m, sd in zip(RESULT_COLUMNS, means, stds)],
                    xlabel="rank K", title=f"{title or name} (alpha = {alpha})",
                    band=f"± {STD_BAND_FACTOR} std over {over}", reference_lines=reference_lines)
        plots.append(path)
    return {"json": json_path, "markdown": md_path, "plots": plots, "rows": rows}



def save_train_basis(results_dir, dataset: str, settings, K_list, alpha_list, results, extra: dict, *,
                     user_ids=None, method_rows=()) -> dict:
    """Every folder's train_basis.py outputs under the same names: save_results as train_basis.{json,md} and
    generalization_accuracy_vs_rank_lore_alpha_{alpha}.png, with the planted rate on unseen users as a
    line when `extra` has the offline data's "planted_accuracy"; prints that rate, the table and the files."""
    planted = extra.get("planted_accuracy")
    if planted:
        print("planted (true) user rewards: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in planted.items()))
    files = save_results(results_dir, "train_basis", settings, K_list, alpha_list, results,
                         plot_name="generalization_accuracy_vs_rank_lore_alpha_{alpha}.png",
                         title=f"{dataset}: LoRe accuracy vs rank", extra=extra, user_ids=user_ids,
                         method_rows=method_rows,
                         reference_lines={"planted reward, unseen users": (planted or {}).get("unseen_test")})
    print(files["markdown"].read_text())
    print(f"wrote {files['json']}, {files['markdown']}, {', '.join(str(p) for p in files['plots'])} and the bases "
          f"per K in {results_dir}")
    return files

def save_fewshot_results(results_dir, name, settings, num_shots, K_list, alpha_list, results, *, plot_name=None,
                         title=None, extra=None, reference_lines=None) -> dict:
    """Write the result files of `run_few_shot_vary_shots` (its FewShotCurves) into results_dir.

    Writes `<name>.json` (settings, seed, per (alpha, K, shots) the mean, the original's std over
    trials and the std over users of both accuracies, + `extra`), `<name>.md` (per (alpha, K) a table,
    rows = shots, a shot count beyond every user's pool marked as capped) and one PNG of accuracy vs
    number of shots (a line pair per (alpha, K), shaded ± the std over trials), named plot_name
    (default "<name>.png"). Returns {"json": Path, "markdown": Path, "plots": [Path]}.
    """
    results_dir = Path(results_dir)
    num_shots, K_list, alpha_list = list(num_shots), list(K_list), list(alpha_list)
    runs = getattr(results, "runs", None)
    if runs is None or len(runs) != len(alpha_list) * len(K_list) or list(results.num_shots) != num_shots:
        raise ValueError("results must be what run_few_shot_vary_shots() returned for these num_shots, "
                         "K_list and alpha_list")
    capped = set(results.capped)
    groups = (("fewshot_train", "unseen users: few-shot train"), ("unseen_test", "unseen users: test"))
    rows, lines, markdown = [], [], [f"# {title or name}", ""]
    for run in runs:
        alpha, K = run["alpha"], run["K"]
        markdown += [f"## alpha = {alpha}, K = {rank_label(K)}", "",
                     "| shots | " + " | ".join(label for _, label in groups) + " |", "|---|---|---|"]
        for j, s in enumerate(num_shots):
            entry = {"alpha": alpha, "K": K, "shots": s, "capped": s in capped}
            cells = []
            for key, _ in groups:
                figures = {k: run[key][k][j] for k in ("mean", "std_trials", "std_users")}
                entry[key] = figures
                cells.append(f"{percent(figures['mean'], figures['std_trials'])} ({100 * figures['std_users']:.1f})")
            rows.append(entry)
            markdown.append(f"| {s}{' (capped)' if s in capped else ''} | " + " | ".join(cells) + " |")
        markdown.append("")
        tag = f"K={rank_label(K)}" + (f", alpha={alpha}" if len(alpha_list) > 1 else "")
        lines += [(f"{label.split(': ')[1]} ({tag})", run[key]["mean"], run[key]["std_trials"])
                  for key, label in groups]
    markdown.append("Accuracy in %: mean over trials of the mean over users ± the std over trials (the "
                    "original's figure), then in parentheses the std over users."
                    + (" Capped: more shots than any user has; every trial then uses a user's whole pool."
                       if capped else ""))
    payload = {"name": name, "settings": settings, "seed": settings.get("seed"), "num_shots": num_shots,
               "K_list": K_list, "alpha_list": alpha_list, "capped_shots": sorted(capped), "results": rows,
               **(extra or {})}
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    write_json_atomic(json_path, payload)
    write_text_atomic(md_path, "\n".join(markdown) + "\n")
    plot_path = results_dir / (plot_name or f"{name}.png")
    _plot_lines(plot_path, [f"{s}*" if s in capped else str(s) for s in num_shots], lines,
                xlabel="shots per unseen user" + (" (* capped: the whole pool)" if capped else ""),
                title=title or name, band="± std over trials", reference_lines=reference_lines)
    return {"json": json_path, "markdown": md_path, "plots": [plot_path]}


def _plot_lines(path: Path, x_labels, lines, xlabel: str, title: str, band: str, reference_lines=None) -> None:
    """Accuracy lines with shaded bands (lines = [(label, means, band half-widths)]) over the x_labels,
    dashed horizontal reference lines ({label: accuracy}), the legend outside the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(x_labels))
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    for label, mean, half in lines:
        mean, half = np.asarray(mean, dtype=float), np.asarray(half, dtype=float)
        ax.plot(x, 100 * mean, marker="o", label=label)
        ax.fill_between(x, 100 * (mean - half), 100 * (mean + half), alpha=0.2)
    for label, value in (reference_lines or {}).items():
        if value is not None and math.isfinite(value):
            ax.axhline(100 * value, linestyle="--", color="grey", linewidth=1)
            ax.annotate(label, (x[-1], 100 * value), textcoords="offset points", xytext=(0, 3), ha="right",
                        fontsize=7, color="grey")
    ax.set_xticks(x, [str(v) for v in x_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=f"bands: {band}",
              title_fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

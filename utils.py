"""Shared machinery of every LoRe script: settings override, paths, and the LoRe models and pipelines.

LoRe (Bose et al., 2025, arXiv:2504.14439) learns a shared basis V (d x B) of reward directions over
frozen reward-model embeddings and one weight vector w_i = softmax(W_i) per user. The reward margin of
a comparison with feature x = e(chosen) - e(rejected) for user i is x . V . w_i / 100.
"""
from __future__ import annotations

import ast
import contextlib
import ctypes
import hashlib
import json
import math
import os
import sys
import tempfile
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# settings: one commented block of module globals per script, overridden as --name=value


class SettingsError(SystemExit):
    """A bad command-line setting: exits with the message (and is catchable in tests)."""


_SETTING_TYPES = (bool, int, float, str, list, tuple, type(None))


def _is_setting(name: str, value) -> bool:
    return not name.startswith("_") and not name.isupper() and isinstance(value, _SETTING_TYPES) and not isinstance(
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


class Settings(dict):
    """A script's settings after the command line: {name: value}; `.overridden` holds the names given."""
    overridden: frozenset = frozenset()


def configure(settings: dict, argv: list[str] | None = None) -> Settings:
    """Override a script's settings in place from `--name=value` arguments (nanoGPT style).

    `settings` is the script's `globals()`, called right after its settings block: the settings are
    the lower-case public globals of a plain type defined by then (constants are upper-case). Values
    are Python literals (`--K_list=[0,1,5]`, `--alpha=1e4`, `--offline=True`; a bare `--offline` sets a
    bool to True). An unknown name, a positional argument or a value of the wrong type is an error.
    `--help` prints the script's docstring and settings. Returns a snapshot of the settings (for result
    files), with `.overridden` the names given on the command line.
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
    snapshot = Settings({k: (list(settings[k]) if isinstance(settings[k], tuple) else settings[k]) for k in known})
    snapshot.overridden = frozenset(overridden)
    return snapshot


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


# -----------------------------------------------------------------------------
# files and the network: shared by every prepare, embedding and result-writing step


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one rename.

    A crash or an exception leaves the old file (or none) and no half-written one:
    `with atomic_path(out) as tmp: frame.to_parquet(tmp)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path, rows) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connection test of the Hugging Face hub, so an offline machine fails in seconds
    (transformers and datasets would retry for ~30 s). False when HF_HUB_OFFLINE is set."""
    import socket
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


# =============================================================================
# LoRe core (SPEC 1.1-1.5)
#
# Shapes used throughout: N comparisons, d feature size, C users, B basis vectors. A comparison of user
# i with feature x = e(chosen) - e(rejected) has margin s = x . V . w_i / 100 with w_i = softmax(W_i);
# its Bradley-Terry loss is -log sigmoid(s). It is predicted correctly iff x . V . w_i > 0 (a tie is
# wrong). Margins are computed as rowsum((X @ V) * w[user_of_row]): N.d.B work, never the N x C logit
# matrix X @ (V @ w.T) of the original formulation.

TEMPERATURE = 100.0        # the method's 1/100 temperature on every margin
STD_BAND_FACTOR = 0.25     # plotted/returned band = STD_BAND_FACTOR * (std of per-user accuracy)
PRUNE_THRESHOLD = 1e-2     # LoRe_regularized keeps basis column b iff max_i softmax(W)_ib >= this
WARMUP_START, WARMUP_END = 0.2, 0.8  # cosine regulariser: 0 before int(0.2 T), alpha from int(0.8 T)
_FLOAT_DTYPES = (torch.float32, torch.float64)


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


_CPU_MATMUL = os.environ.get("LORE_CPU_MATMUL", "numpy")  # "numpy" or "torch" (benchmark switch)
_NUMPY_MIN_ELEMENTS = 1 << 22  # below ~16 MB of features torch's own kernels are as fast (and spin less)
_STREAM_ROWS = 256             # rows of X per BLAS call when streaming: 4 MB at d = 4096, cache-sized
_stream_pool = None            # (ThreadPoolExecutor, workers) while a training loop streams X itself


def _use_numpy(X: torch.Tensor, other: torch.Tensor) -> bool:
    return (_CPU_MATMUL == "numpy" and X.device.type == "cpu" and other.device.type == "cpu"
            and X.dtype == other.dtype and X.dtype in _FLOAT_DTYPES and X.numel() >= _NUMPY_MIN_ELEMENTS)


def _openblas_thread_controls():
    """(get, set) of the thread count of NumPy's OpenBLAS through ctypes (as threadpoolctl does), or
    None where it cannot be found (another BLAS, another OS): then products stay plain NumPy calls."""
    global _OPENBLAS
    if _OPENBLAS is False:
        _OPENBLAS = None
        try:
            with open("/proc/self/maps") as maps:
                paths = dict.fromkeys(line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line)
            for path in paths:
                library = ctypes.CDLL(path)
                for name in ("scipy_openblas{}_num_threads64_", "openblas{}_num_threads64_", "openblas{}_num_threads"):
                    get, put = (getattr(library, name.format(verb), None) for verb in ("_get", "_set"))
                    if get is not None and put is not None:
                        get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                        _OPENBLAS = (get, put)
                        return _OPENBLAS
        except OSError:
            pass
    return _OPENBLAS


_OPENBLAS = False  # not looked up yet


@contextlib.contextmanager
def _lean_threads(comparisons: "Comparisons"):
    """Thread layout of a CPU training loop. Its small O(N.B) tensor ops run on one intra-op thread
    (fork/join of a thread team costs more than they do, and on a shared CPU a descheduled team member
    stalls every op for a time slice). When the big products go through NumPy, OpenBLAS is set to one
    thread too and X is streamed by our own pool of as many workers as torch had threads, each over its
    own contiguous rows in cache-sized blocks: two passes over X per iteration at close to memory speed
    (one multi-threaded BLAS call over the whole of X runs about 2x slower here)."""
    global _stream_pool
    store = comparisons._store
    threads = torch.get_num_threads()
    if store.device.type != "cpu" or not (store.numel() < _NUMPY_MIN_ELEMENTS or _use_numpy(store, store)):
        yield
        return
    controls = _openblas_thread_controls() if _use_numpy(store, store) and _stream_pool is None else None
    blas_threads = controls[0]() if controls else None
    torch.set_num_threads(1)
    if controls:
        controls[1](1)
        _stream_pool = (ThreadPoolExecutor(threads), threads) if threads > 1 else (None, 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if controls:
            if _stream_pool[0] is not None:
                _stream_pool[0].shutdown()
            _stream_pool = None
            controls[1](blas_threads)


def _blas_layout(array: np.ndarray) -> np.ndarray:
    # NumPy hands only C- or Fortran-ordered operands to BLAS; anything else (e.g. autograd's expanded
    # gradients) would take its slow generic loop
    return array if array.flags.c_contiguous or array.flags.f_contiguous else np.ascontiguousarray(array)


def _row_ranges(n: int, workers: int):
    bounds = np.linspace(0, n, workers + 1).astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


def _streamed(work, n: int):
    """Run work(lo, hi) over `workers` contiguous row ranges of [0, n) in the stream pool."""
    pool, workers = _stream_pool
    ranges = _row_ranges(n, workers)
    return [work(*ranges[0])] if pool is None else list(pool.map(lambda r: work(*r), ranges))


def _x_v(X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """X @ V for a large row-major X [N, d] and a skinny V [d, B] (no autograd).

    On CPU, large products go through NumPy's BLAS (OpenBLAS): on this AMD CPU torch's MKL runs the
    same skinny products 2-4x slower (bench/lore_speed.py measures both back ends)."""
    if not _use_numpy(X, V):
        return X.detach() @ V.detach()
    Xn, Vn = X.detach().numpy(), _blas_layout(V.detach().numpy())
    if _stream_pool is None:
        return torch.from_numpy(np.matmul(Xn, Vn))
    out = np.empty((Xn.shape[0], Vn.shape[1]), dtype=Xn.dtype)

    def work(lo, hi):
        for start in range(lo, hi, _STREAM_ROWS):
            stop = min(start + _STREAM_ROWS, hi)
            np.matmul(Xn[start:stop], Vn, out=out[start:stop])
    _streamed(work, Xn.shape[0])
    return torch.from_numpy(out)


def _xt_g(X: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """X^T @ G [d, B] for a large row-major X [N, d] and G [N, B] (no autograd), in the layout each
    back end streams fastest: one OpenBLAS call X^T @ G; streamed blocks and MKL (G^T @ X)^T (MKL's
    X^T @ G is several times slower)."""
    if not _use_numpy(X, G):
        return (G.detach().t() @ X.detach()).t()
    Xn = X.detach().numpy()
    if _stream_pool is None:
        return torch.from_numpy(np.matmul(Xn.T, np.ascontiguousarray(G.detach().numpy())))
    Gt = np.ascontiguousarray(G.detach().numpy().T)                     # [B, N]

    def work(lo, hi):
        total, block = np.zeros((Gt.shape[0], Xn.shape[1]), dtype=Xn.dtype), None
        for start in range(lo, hi, _STREAM_ROWS):
            stop = min(start + _STREAM_ROWS, hi)
            block = np.matmul(Gt[:, start:stop], Xn[start:stop], out=block)
            total += block
        return total
    return torch.from_numpy(sum(_streamed(work, Xn.shape[0])).T)


class _Project(torch.autograd.Function):
    """x_n @ V for every comparison, differentiable in V; the backward is `Comparisons.project_T`."""

    @staticmethod
    def forward(ctx, V, comparisons):
        ctx.comparisons = comparisons
        return comparisons._project(V)

    @staticmethod
    def backward(ctx, grad_out):
        return ctx.comparisons.project_T(grad_out), None


class Comparisons:
    """One packed set of N comparisons of C users.

    Dense form: `features` [N, d], row n is x_n = e(chosen) - e(rejected). Indexed form: an embedding
    `table` [T, d] and row indices `chosen` [N], `rejected` [N], with x_n = table[chosen_n] -
    table[rejected_n]; it is never materialised as [N, d] (PersonalLLM reuses 8 responses per prompt
    across all users). `users` [N] (long, 0..n_users-1) is the user of each comparison. Every trainer and
    evaluation touches the features only through `project` (X @ V) and `project_T` (X^T @ G).
    """

    def __init__(self, users, n_users: int, features=None, table=None, chosen=None, rejected=None):
        users = torch.as_tensor(users)
        if users.dim() != 1:
            raise ValueError(f"users must be 1-D [N], got shape {tuple(users.shape)}")
        self.users = users.long()
        self.n_users = int(n_users)
        if (features is None) == (table is None):
            raise ValueError("give either features [N, d] or table [T, d] with chosen/rejected indices")
        if features is not None:
            features = torch.as_tensor(features)
            if features.dim() != 2 or features.shape[0] != users.shape[0]:
                raise ValueError(f"features must be [N, d] with N = len(users) = {users.shape[0]}, "
                                 f"got shape {tuple(features.shape)}")
            self.features, self.table, self.chosen, self.rejected = features.contiguous(), None, None, None
        else:
            table = torch.as_tensor(table)
            if table.dim() != 2:
                raise ValueError(f"table must be [T, d], got shape {tuple(table.shape)}")
            if chosen is None or rejected is None:
                raise ValueError("an indexed Comparisons needs both chosen and rejected indices")
            chosen, rejected = torch.as_tensor(chosen).long(), torch.as_tensor(rejected).long()
            if chosen.shape != users.shape or rejected.shape != users.shape:
                raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must "
                                 f"have the shape of users {tuple(users.shape)}")
            if len(chosen) and (min(chosen.min(), rejected.min()) < 0
                                or max(chosen.max(), rejected.max()) >= table.shape[0]):
                raise ValueError(f"chosen/rejected indices must lie in [0, {table.shape[0]})")
            self.features, self.table = None, table.contiguous()
            self.chosen, self.rejected = chosen.to(table.device), rejected.to(table.device)
        self.users = self.users.to(self._store.device)
        if len(self.users) and (self.users.min() < 0 or self.users.max() >= self.n_users):
            raise ValueError(f"user indices must lie in [0, {self.n_users})")
        self._counts = None

    # --- shape and bookkeeping ---------------------------------------------------------------
    @property
    def _store(self) -> torch.Tensor:
        return self.features if self.features is not None else self.table

    @property
    def dense(self) -> bool:
        return self.features is not None

    @property
    def N(self) -> int:
        return int(self.users.shape[0])

    @property
    def d(self) -> int:
        return int(self._store.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self._store.dtype

    @property
    def device(self) -> torch.device:
        return self._store.device

    def __len__(self) -> int:
        return self.N

    def __repr__(self) -> str:
        form = "dense" if self.dense else f"indexed, table {tuple(self.table.shape)}"
        return f"Comparisons(N={self.N}, d={self.d}, n_users={self.n_users}, {form}, {self.dtype}, {self.device})"

    def counts(self) -> torch.Tensor:
        """[C] number of comparisons of each user."""
        if self._counts is None:
            self._counts = torch.bincount(self.users, minlength=self.n_users)
        return self._counts

    @classmethod
    def from_user_list(cls, user_tensors, device=None, dtype=None) -> "Comparisons":
        """Pack a list of per-user feature tensors [m_i, d] (the original's format) into one dense set."""
        if isinstance(user_tensors, torch.Tensor) or not hasattr(user_tensors, "__len__"):
            raise ValueError("expected a list of per-user tensors [m_i, d] (or a Comparisons)")
        tensors = [torch.as_tensor(x) for x in user_tensors]
        if not tensors:
            raise ValueError("expected at least one user's features")
        for i, x in enumerate(tensors):
            if x.dim() != 2:
                raise ValueError(f"user {i}: features must be 2-D [m_i, d], got shape {tuple(x.shape)}")
            if x.shape[1] != tensors[0].shape[1]:
                raise ValueError(f"user {i}: features have d = {x.shape[1]}, user 0 has d = {tensors[0].shape[1]}"
                                 f" (shape {tuple(x.shape)}); every user needs the same d")
        device = tensors[0].device if device is None else torch.device(device)
        if dtype is None:
            dtype = tensors[0].dtype if tensors[0].dtype in _FLOAT_DTYPES else torch.float32
        counts = torch.tensor([x.shape[0] for x in tensors])
        users = torch.repeat_interleave(torch.arange(len(tensors)), counts)
        features = torch.cat([x.to(device=device, dtype=dtype) for x in tensors])
        return cls(users.to(device), len(tensors), features=features)

    def to(self, device=None, dtype=None) -> "Comparisons":
        """The same comparisons on another device / float dtype (self when nothing changes)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if device == self.device and dtype == self.dtype:
            return self
        store = self._store.to(device=device, dtype=dtype)
        if self.dense:
            return Comparisons(self.users.to(device), self.n_users, features=store)
        return Comparisons(self.users.to(device), self.n_users, table=store, chosen=self.chosen.to(device),
                           rejected=self.rejected.to(device))

    def select(self, index, users=None, n_users=None) -> "Comparisons":
        """The comparisons at `index` (long indices or bool mask [N]); optionally relabel their users.
        The indexed form keeps its table (no copy of features)."""
        index = torch.as_tensor(index, device=self.device)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        users = self.users[index] if users is None else torch.as_tensor(users, device=self.device)
        n_users = self.n_users if n_users is None else n_users
        if self.dense:
            return Comparisons(users, n_users, features=self.features[index])
        return Comparisons(users, n_users, table=self.table, chosen=self.chosen[index],
                           rejected=self.rejected[index])

    def compact(self) -> "Comparisons":
        """Indexed form: drop the table rows no comparison uses, so each pass reads only live rows."""
        if self.dense:
            return self
        rows, inverse = torch.unique(torch.cat([self.chosen, self.rejected]), return_inverse=True)
        if len(rows) == self.table.shape[0]:
            return self
        return Comparisons(self.users, self.n_users, table=self.table[rows], chosen=inverse[: self.N],
                           rejected=inverse[self.N:])

    def user_list(self) -> list[torch.Tensor]:
        """Per-user feature tensors [m_i, d] (materialises rows; for small sets and the original API)."""
        order = torch.argsort(self.users, stable=True)
        rows = self.features[order] if self.dense else self.table[self.chosen[order]] - self.table[self.rejected[order]]
        return list(torch.split(rows, self.counts().tolist()))

    # --- the two products every trainer needs --------------------------------------------------
    def _project(self, V: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return _x_v(self.features, V)
        projected = _x_v(self.table, V)                       # [T, B]: one pass over the table
        return projected[self.chosen] - projected[self.rejected]

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """[N, B] = x_n @ V for every comparison; differentiable in V (backward = project_T)."""
        if V.dim() != 2 or V.shape[0] != self.d:
            raise ValueError(f"V must be [d, B] with d = {self.d}, got shape {tuple(V.shape)}")
        if V.requires_grad and torch.is_grad_enabled():
            return _Project.apply(V, self)
        return self._project(V)

    def project_T(self, G: torch.Tensor) -> torch.Tensor:
        """[d, B] = sum_n x_n G_n^T = X^T @ G for G [N, B] (indexed form: scatter G onto the table rows,
        then table^T @ scattered), one streaming pass over the features."""
        if self.dense:
            return _xt_g(self.features, G)
        scattered = torch.zeros(self.table.shape[0], G.shape[1], dtype=G.dtype, device=G.device)
        scattered.index_add_(0, self.chosen, G).index_add_(0, self.rejected, G, alpha=-1)
        return _xt_g(self.table, scattered)


def create_sparse_tensor(user_tensors, device=None) -> Comparisons:
    """The original's packing of per-user features [m_i, d] for batched evaluation: a Comparisons."""
    if isinstance(user_tensors, Comparisons):
        return user_tensors if device is None else user_tensors.to(device)
    return Comparisons.from_user_list(user_tensors, device=device)


def as_comparisons(X, device=None, dtype=None) -> Comparisons:
    """A Comparisons from a list of per-user tensors [m_i, d] or a Comparisons, on `device`/`dtype`."""
    comparisons = X if isinstance(X, Comparisons) else Comparisons.from_user_list(X)
    if dtype is None and comparisons.dtype not in _FLOAT_DTYPES:
        dtype = torch.float32
    return comparisons.to(device=device, dtype=dtype)


def _as_basis(V, d: int | None = None, name: str = "V") -> torch.Tensor:
    """V as [d, B]; a reward head [d] becomes [d, 1]."""
    V = torch.as_tensor(V)
    if V.dim() == 1:
        V = V[:, None]
    if V.dim() != 2 or (d is not None and V.shape[0] != d):
        want = f"[{d}, B] or [{d}]" if d is not None else "[d, B] or [d]"
        raise ValueError(f"{name} must be {want}, got shape {tuple(V.shape)}")
    return V


def _as_user_weights(W, n_users: int, B: int) -> torch.Tensor:
    """User weights as [C, B] from a [C, B] tensor or a list of C weight vectors [B]."""
    if not isinstance(W, torch.Tensor):
        W = torch.stack([torch.as_tensor(w).reshape(-1) for w in W])
    if W.dim() == 1 and B == 1:
        W = W[:, None]
    if W.dim() != 2 or W.shape[0] != n_users or W.shape[1] != B:
        raise ValueError(f"user weights must be [{n_users}, {B}] (one row per user, one column per basis "
                         f"vector), got shape {tuple(W.shape)}")
    return W


def bradley_terry_nll(margins: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(s) per comparison, for margins s [N] already divided by the temperature."""
    return F.softplus(-margins)


def margins(P: torch.Tensor, weights: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """s [N] = rowsum(P * weights[users]) / 100 for P = X @ V [N, B], weights [C, B], users [N]."""
    return (P * weights[users]).sum(1) / TEMPERATURE


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


def cosine_regularizer(V: torch.Tensor, V_sft: torch.Tensor) -> torch.Tensor:
    """mean_b (1 - cos(V_b, V_sft)) for V [d, B] and V_sft [d, 1]."""
    return torch.mean(1 - (F.normalize(V, dim=0) * F.normalize(V_sft, dim=0)).sum(0))


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


# -----------------------------------------------------------------------------
# trainers (SPEC 1.3): names and signatures of the original; seed/device/dtype/progress are keywords


class _Adam:
    """torch.optim.Adam's update (defaults: betas 0.9/0.999, eps 1e-8, no weight decay) on one tensor
    whose gradient the caller computes in closed form: the same arithmetic as torch's single-tensor
    Adam, without the optimizer's per-step Python overhead (it dominates small O(N.B) iterations)."""

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
    """Loss sum_n row_weight_n * (-log sigmoid(s_n)), s_n = P_n . softmax(W)_{users n} / 100, and its
    closed-form gradients: dL/dW [C, B] (through the softmax) and dL/dP [N, B]. P = X @ V [N, B]."""
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


class _Trainer:
    def __init__(self, V_sft, alpha, num_classes, num_features, num_iterations, learning_rate, seed, device,
                 dtype, progress):
        self.device, self.dtype, self.progress = _resolve_device(device), dtype, progress
        self.alpha, self.seed = float(alpha), int(seed)
        self.num_iterations, self.learning_rate = int(num_iterations), float(learning_rate)
        self.num_classes, self.num_features = int(num_classes), int(num_features)
        self.V_sft = None if V_sft is None else _as_basis(V_sft, self.num_features, "V_sft").to(self.device, dtype)
        if self.V_sft is not None and self.V_sft.shape[1] != 1:
            raise ValueError(f"V_sft must be [{self.num_features}, 1], got shape {tuple(self.V_sft.shape)}")
        if self.alpha > 0 and self.V_sft is None:
            raise ValueError("alpha > 0 needs V_sft (the reference reward head, [d, 1])")
        self.loss_history = None

    def _check(self, X) -> Comparisons:
        comparisons = as_comparisons(X, self.device, self.dtype).compact()
        if comparisons.d != self.num_features or comparisons.n_users != self.num_classes:
            raise ValueError(f"data have {comparisons.n_users} users and d = {comparisons.d}; the model was "
                             f"built for num_classes = {self.num_classes}, num_features = {self.num_features}")
        return comparisons

    def train(self, X):
        """Fit on X (a list of per-user tensors [m_i, d] or a Comparisons); see the subclass for what
        it returns."""
        comparisons = self._check(X)
        with _lean_threads(comparisons):
            return self._fit(comparisons)


class LoRe(_Trainer):
    """Joint LoRe fit: W ~ N(0,1) [C, B], V ~ N(0,1) [d, B], Adam over both (one optimiser's update).

    Loss = sum over users of the mean Bradley-Terry NLL over that user's comparisons
    + alpha * sum_b ||V_b - V_sft||^2 (when alpha > 0). Per iteration one P = X @ V and one X^T @ dL/dP.
    `.train(X)` takes a list of per-user tensors [m_i, d] or a Comparisons and returns
    (softmax(W) [C, B], V [d, B]).
    """

    def __init__(self, V_sft, alpha, num_classes, num_features, num_basis_vectors, num_iterations,
                 learning_rate, *, seed: int = 0, device=None, dtype=torch.float32, progress: bool = True):
        super().__init__(V_sft, alpha, num_classes, num_features, num_iterations, learning_rate, seed, device,
                         dtype, progress)
        g = _generator(seed)
        self.W = torch.randn(num_classes, num_basis_vectors, generator=g, dtype=dtype).to(self.device)
        self.V = torch.randn(num_features, num_basis_vectors, generator=g, dtype=dtype).to(self.device)

    def loss(self, X) -> torch.Tensor:
        """Sum over users of their mean NLL (+ alpha * sum_b ||V_b - V_sft||^2) at the current W, V."""
        comparisons = self._check(X)
        row_weight = (1.0 / comparisons.counts().clamp(min=1).to(self.dtype))[comparisons.users]
        loss = _bradley_terry_step(comparisons.project(self.V), self.W, comparisons.users, row_weight, False)[0]
        return loss + self.alpha * ((self.V - self.V_sft) ** 2).sum() if self.alpha > 0 else loss

    def _fit(self, comparisons: Comparisons):
        users = comparisons.users
        row_weight = (1.0 / comparisons.counts().clamp(min=1).to(self.dtype))[users]   # per-user means
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

    def __init__(self, V_sft, alpha, num_classes, num_features, num_basis_vectors, num_iterations,
                 learning_rate, *, seed: int = 0, device=None, dtype=torch.float32, progress: bool = True):
        super().__init__(V_sft, alpha, num_classes, num_features, num_iterations, learning_rate, seed, device,
                         dtype, progress)
        g = _generator(seed)
        self.W = torch.rand(num_classes, num_basis_vectors, generator=g, dtype=dtype).to(self.device)
        self.V = torch.randn(num_features, num_basis_vectors, generator=g, dtype=dtype).to(self.device)

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
    """Few-shot personalisation with V frozen: per-user logits W ~ N(0,1) [C, B], Adam on
    sum over users of their mean NLL. X @ V is computed once; every iteration after that is O(N.B),
    for all users at once. `.train(X, V)` returns a list of C weight vectors softmax(w_i) [B]
    (`.weights` holds them as [C, B]; `.train_weights` returns that tensor).
    """

    def __init__(self, num_classes, num_features, num_basis_vectors, num_iterations, learning_rate, *,
                 seed: int = 0, device=None, dtype=torch.float32, progress: bool = True):
        self.device = _resolve_device(device)
        self.dtype = dtype
        self.num_classes, self.num_features = int(num_classes), int(num_features)
        self.num_iterations, self.learning_rate, self.progress = int(num_iterations), float(learning_rate), progress
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
        users = comparisons.users
        P = comparisons.project(V)                                             # once: V is frozen
        row_weight = (1.0 / comparisons.counts().clamp(min=1).to(self.dtype))[users]
        adam = _Adam(self.W, self.learning_rate)
        with _lean_threads(comparisons):
            for _ in _progress(range(self.num_iterations), "PersonalizeBatch", self.progress):
                adam.step(_bradley_terry_step(P, self.W, users, row_weight, need_loss=False)[1])
        self.weights = torch.softmax(self.W, 1)
        return self.weights

    def train(self, X, V) -> list[torch.Tensor]:
        return list(self.train_weights(X, V))


def solve_regularized(V_sft, alpha, X, K, num_iterations, learning_rate, *, seed=0, device=None, dtype=None,
                      progress=True):
    """Fit `LoRe` with K basis vectors on X (d and the number of users from the data): (softmax(W), V)."""
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


# -----------------------------------------------------------------------------
# evaluation: per-user accuracy (correct iff x . V . w > 0, a tie is wrong), mean and std over users


def per_user_accuracy(X, V, W) -> torch.Tensor:
    """[C] fraction of each user's comparisons with x . V . w_user > 0 (NaN for a user with none).
    X: list of [m_i, d] or Comparisons; V [d, B] (or a head [d]); W [C, B] or a list of C vectors [B]."""
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


def eval_multiple(X, V, W) -> tuple[float, float]:
    """(mean, std) over users of per-user accuracy (raw std, population form; users without comparisons
    are left out). Multiply the std by STD_BAND_FACTOR for the original's plot band."""
    accuracy = per_user_accuracy(X, V, W).numpy()
    accuracy = accuracy[~np.isnan(accuracy)]
    if len(accuracy) == 0:
        return float("nan"), float("nan")
    return float(accuracy.mean()), float(accuracy.std())


def evaluate_model(X, V, w) -> float:
    """Accuracy of one user: X [m, d] features, V [d, B], w [B]: the fraction with x . V . w > 0."""
    X = torch.as_tensor(X)
    if X.dim() != 2:
        raise ValueError(f"X must be one user's features [m, d], got shape {tuple(X.shape)}")
    V = _as_basis(V, X.shape[1]).to(X.device, X.dtype)
    w = torch.as_tensor(w).reshape(-1).to(X.device, X.dtype)
    if w.shape[0] != V.shape[1]:
        raise ValueError(f"w must have {V.shape[1]} entries (one per basis vector), got shape {tuple(w.shape)}")
    with torch.no_grad():
        return float(((X @ (V @ w)) > 0).float().mean()) if X.shape[0] else float("nan")


def sample_shots(X, num_shots: int, seed: int = 0, generator: torch.Generator | None = None):
    """min(m_i, num_shots) comparisons of each user drawn without replacement (seeded), in their
    original order. Returns the same kind as X: a Comparisons (same users) or a list of tensors."""
    as_list = not isinstance(X, Comparisons)
    comparisons = as_comparisons(X)
    index = _shot_index(comparisons, num_shots, _generator(seed) if generator is None else generator)
    chosen = comparisons.select(index)
    return chosen.user_list() if as_list else chosen


def _shot_index(comparisons: Comparisons, num_shots: int, generator: torch.Generator) -> torch.Tensor:
    users = comparisons.users.cpu()
    order = torch.randperm(comparisons.N, generator=generator)       # random order within each user...
    order = order[torch.argsort(users[order], stable=True)]           # ...grouped by user
    counts = comparisons.counts().cpu()
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(comparisons.N) - starts[users[order]]
    return order[rank < num_shots].sort().values.to(comparisons.device)


# -----------------------------------------------------------------------------
# the planted population in feature space (tests, benchmarks): B* latent reward directions in R^d,
# users as Dirichlet mixtures, Bradley-Terry labels with the 1/100 temperature


def generate_population(num_users: int, num_features: int, num_basis_vectors: int, *, concentration: float = 0.3,
                        margin_std: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Planted truth: (V_star [d, B*], W_star [C, B*]). Directions are orthogonal, each of norm
    margin_std * 100, so a pure user's margin x . V_star . w / 100 over x ~ N(0, I_d) has std margin_std;
    user weights are Dirichlet(concentration) rows on the simplex (small = users differ more)."""
    rng = np.random.default_rng(seed)
    directions, _ = np.linalg.qr(rng.standard_normal((num_features, num_basis_vectors)))
    V_star = torch.tensor(directions * margin_std * TEMPERATURE, dtype=torch.float32)
    W_star = torch.tensor(rng.dirichlet(concentration * np.ones(num_basis_vectors), size=num_users),
                          dtype=torch.float32)
    return V_star, W_star


generate_popupulation = generate_population  # the original's spelling


def simulate_population(V_star, W_star, num_comparisons, *, seed: int = 0) -> tuple[Comparisons, torch.Tensor]:
    """Comparisons of every planted user, batched: x ~ N(0, I_d), user i prefers x's first side with
    probability p = sigmoid(x . V_star . w_i / 100); the feature is oriented chosen - rejected.
    `num_comparisons`: one int for all users or one per user. Returns (dense Comparisons, the
    Bayes-optimal probability of a correct prediction max(p, 1 - p) [N])."""
    V_star, W_star = torch.as_tensor(V_star, dtype=torch.float32), torch.as_tensor(W_star, dtype=torch.float32)
    n_users = W_star.shape[0]
    counts = torch.as_tensor(num_comparisons).long().reshape(-1).expand(n_users) if np.ndim(num_comparisons) == 0 \
        else torch.as_tensor(num_comparisons).long()
    users = torch.repeat_interleave(torch.arange(n_users), counts)
    g = _generator(seed)
    x = torch.randn(len(users), V_star.shape[0], generator=g)
    p = torch.sigmoid((x @ V_star * W_star[users]).sum(1) / TEMPERATURE)
    first_wins = torch.rand(len(users), generator=g) < p
    features = torch.where(first_wins[:, None], x, -x)
    return Comparisons(users, n_users, features=features), torch.maximum(p, 1 - p)


def simulate_user(V_star, w_star, num_comparisons: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One planted user's comparisons: (features [m, d] oriented chosen - rejected, Bayes probability [m])."""
    comparisons, bayes = simulate_population(V_star, torch.as_tensor(w_star).reshape(1, -1), num_comparisons,
                                             seed=seed)
    return comparisons.features, bayes


def bayes_accuracy(comparisons: Comparisons, bayes_probability: torch.Tensor) -> float:
    """Expected accuracy of the planted (Bayes-optimal) model, averaged per user then over users, as
    the reported accuracies are."""
    per_user = torch.zeros(comparisons.n_users, dtype=torch.float64)
    per_user.index_add_(0, comparisons.users.cpu(), bayes_probability.double().cpu())
    per_user = per_user / comparisons.counts().cpu()
    return float(per_user[~per_user.isnan()].mean())


# -----------------------------------------------------------------------------
# pipelines (SPEC 1.4)


def _save_tensor(path: Path, tensor: torch.Tensor, key: str) -> None:
    """Atomically write `path` (.pt: a plain tensor, loadable with weights_only=True) and its
    .safetensors sibling (one entry named `key`)."""
    from safetensors.torch import save_file
    path = Path(path)
    tensor = tensor.detach().cpu().contiguous().clone()
    with atomic_path(path) as tmp:
        torch.save(tensor, tmp)
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file({key: tensor}, str(tmp))


def lore_file_names(dataset_name: str | None, K: int, alpha) -> tuple[str, str]:
    """File names of a fitted basis and its seen-user weights, as the original named them."""
    prefix = f"{dataset_name}_" if dataset_name else ""
    return f"{prefix}V_lore_K_{K}_alpha_{alpha}.pt", f"{prefix}W_lore_seen_{K}_{alpha}.pt"


def _check_groups(N, N_unseen, *groups):
    train, test, train_unseen, test_unseen = groups
    for name, group, want in (("train_features", train, N), ("test_features_sparse", test, N),
                              ("train_features_unseen", train_unseen, N_unseen),
                              ("test_features_sparse_unseen", test_unseen, N_unseen)):
        if group.n_users != want:
            raise ValueError(f"{name} has {group.n_users} users, expected {want} (N = {N}, N_unseen = {N_unseen})")
    if len({g.d for g in groups}) != 1:
        raise ValueError(f"every feature group needs the same d, got {[g.d for g in groups]}")


def _prepare(V_final, groups, N, N_unseen, device):
    device = _resolve_device(device)
    first = as_comparisons(groups[0], device)
    dtype = first.dtype
    groups = [first] + [as_comparisons(g, device, dtype) for g in groups[1:]]
    _check_groups(N, N_unseen, *groups)
    if V_final is not None:
        V_final = _as_basis(V_final, groups[0].d, "V_final").to(device, dtype)
        if V_final.shape[1] != 1:
            raise ValueError(f"V_final (the reference reward head) must be [{groups[0].d}, 1] or "
                             f"[{groups[0].d}], got shape {tuple(V_final.shape)}")
    return V_final, groups, device


def _pipeline(fit, K_list, alpha_list, V_final, groups, N, N_unseen, device, fewshot_iterations,
              fewshot_learning_rate, seed, results_dir, dataset_name, progress):
    V_final, (train, test, train_unseen, test_unseen), device = _prepare(V_final, groups, N, N_unseen, device)
    means = [[], [], [], []]
    bands = [[], [], [], []]
    runs = [(alpha, K) for alpha in alpha_list for K in K_list]
    for alpha, K in tqdm(runs, desc="alpha, K", disable=None if progress else True):
        if K == 0:
            if V_final is None:
                raise ValueError("K = 0 evaluates the reference head: pass V_final ([d, 1] or [d])")
            V, weights_seen = V_final, torch.ones(N, 1, dtype=V_final.dtype, device=device)
        else:
            weights_seen, V = fit(V_final, alpha, train, K, seed=derived_seed(seed, 0), progress=progress)
            if results_dir is not None:
                v_name, w_name = lore_file_names(dataset_name, K, alpha)
                _save_tensor(Path(results_dir) / v_name, V, "V")
                _save_tensor(Path(results_dir) / w_name, weights_seen, "W")
        if K <= 1:
            weights_unseen = torch.ones(N_unseen, V.shape[1], dtype=V.dtype, device=device)
        else:
            weights_unseen = _few_shot_weights(train_unseen, V, fewshot_iterations, fewshot_learning_rate,
                                               seed=derived_seed(seed, 1), progress=progress)
        for i, (group, weights) in enumerate(((train, weights_seen), (test, weights_seen),
                                              (train_unseen, weights_unseen), (test_unseen, weights_unseen))):
            mean, std = eval_multiple(group, V, weights)
            means[i].append(mean)
            bands[i].append(STD_BAND_FACTOR * std)
    return tuple(means + bands)


def run(K_list, alpha_list, V_final, train_features, test_features_sparse, train_features_unseen,
        test_features_sparse_unseen, N, N_unseen, device, *, num_iterations=1000, learning_rate=0.5,
        fewshot_iterations=500, fewshot_learning_rate=0.1, seed=0, results_dir=None, dataset_name=None,
        progress=True):
    """Sweep alpha x K with the joint `LoRe` trainer; evaluate seen and (few-shot) unseen users.

    Features: lists of per-user tensors [m_i, d] or Comparisons; the two seen groups have N users in
    the same order, the two unseen groups N_unseen. K = 0: V = V_final ([d, 1] or [d]) and every user
    weight [1.0]; K >= 1: `solve_regularized` (num_iterations, learning_rate, V_sft = V_final). Unseen
    users: K <= 1 uses w = [1.0], else `PersonalizeBatch` on train_features_unseen (fewshot_iterations,
    fewshot_learning_rate). device None: CUDA when present. Every fit and every K sees the same seeded
    draws. When results_dir is given, V and W of every K >= 1 are saved there (see run_regularized).

    Returns 8 lists, each of length len(alpha_list) * len(K_list), alpha-major (for alpha: for K:):
    (seen-user train mean, seen-user unseen-prompt test mean, unseen-user few-shot train mean,
    unseen-user test mean, then the same four as bands = STD_BAND_FACTOR * std over users).
    """
    def fit(V_sft, alpha, X, K, seed, progress):
        return solve_regularized(V_sft, alpha, X, K, num_iterations, learning_rate, seed=seed, progress=progress)
    return _pipeline(fit, K_list, alpha_list, V_final, (train_features, test_features_sparse,
                     train_features_unseen, test_features_sparse_unseen), N, N_unseen, device,
                     fewshot_iterations, fewshot_learning_rate, seed, results_dir, dataset_name, progress)


def run_regularized(K_list, alpha_list, V_final, train_features, test_features_sparse, train_features_unseen,
                    test_features_sparse_unseen, N, N_unseen, device, *, num_iterations=20000, learning_rate=0.5,
                    fewshot_iterations=500, fewshot_learning_rate=0.5, seed=0, results_dir=None,
                    dataset_name=None, progress=True):
    """`run` with the alternating, cosine-regularised `LoRe_regularized` trainer (the PRISM pipeline).

    Same arguments and the same 8 returned lists as `run`. Saves, for every K >= 1, the pruned basis
    `<results_dir>/<dataset_name>_V_lore_K_{K}_alpha_{alpha}.pt` [d, B_kept] and the seen-user weights
    `<dataset_name>_W_lore_seen_{K}_{alpha}.pt` [N, B_kept] (plain tensors, loadable with
    weights_only=True), each with a .safetensors sibling (key "V" / "W"). results_dir is required.
    """
    if results_dir is None:
        raise ValueError("run_regularized saves V and W for every K: pass results_dir (a folder; created if missing)")

    def fit(V_sft, alpha, X, K, seed, progress):
        return solve_regularized_simplex(V_sft, alpha, X, K, num_iterations, learning_rate, seed=seed,
                                         progress=progress)
    return _pipeline(fit, K_list, alpha_list, V_final, (train_features, test_features_sparse,
                     train_features_unseen, test_features_sparse_unseen), N, N_unseen, device,
                     fewshot_iterations, fewshot_learning_rate, seed, results_dir, dataset_name, progress)


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
    means, stds = [], []
    for accuracy in per_trial_accuracy:
        accuracy = accuracy[~np.isnan(accuracy)]
        means.append(accuracy.mean() if len(accuracy) else np.nan)
        stds.append(accuracy.std() if len(accuracy) else np.nan)
    return {"mean": float(np.mean(means)), "std_trials": float(np.std(means)), "std_users": float(np.mean(stds))}


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
    # the shot draws depend only on (seed, shots, trial): the same for every alpha and K
    draws = {}
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
                if V_final is None:
                    raise ValueError("K = 0 evaluates the reference head: pass V_final ([d, 1] or [d])")
                V = V_final
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


# -----------------------------------------------------------------------------
# result files shared by the dataset scripts: JSON (settings, seed, means, raw stds), markdown, PNG

RESULT_COLUMNS = ("seen users: train", "seen users: unseen prompts", "unseen users: few-shot train",
                  "unseen users: test")
_RESULT_KEYS = ("seen_train", "seen_test", "unseen_fewshot_train", "unseen_test")


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _json_value(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def _percent(mean, std) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _rank_label(K) -> str:
    return "ref" if K == 0 else str(K)


def save_results(results_dir, name, settings, K_list, alpha_list, results, *, plot_name=None, title=None,
                 extra=None) -> dict:
    """Write the result files of a `run`/`run_regularized` sweep into results_dir (created if missing).

    results: the 8 lists returned by run/run_regularized (4 means, 4 bands = STD_BAND_FACTOR * std,
    alpha-major over alpha_list x K_list). settings: `script_settings(globals())` (must include seed).
    Writes
      `<name>.json`: settings, seed, K_list, alpha_list, std_band_factor and, per (alpha, K), the mean
                     and RAW std over users (band / STD_BAND_FACTOR) of the four accuracies, + `extra`;
      `<name>.md`:   per alpha a table, rows K ("ref" for K = 0), columns RESULT_COLUMNS, "mean ± std" %;
      a PNG per alpha: accuracy vs rank (4 lines, x tick "ref" for K = 0, bands = 0.25 std), named
                     plot_name.format(alpha=alpha) (default "<name>_alpha_{alpha}.png").
    Returns {"json": Path, "markdown": Path, "plots": [Path, ...]}.
    """
    results_dir = Path(results_dir)
    K_list, alpha_list = list(K_list), list(alpha_list)
    if len(results) != 8 or any(len(r) != len(K_list) * len(alpha_list) for r in results):
        raise ValueError(f"results must be the 8 lists of run()/run_regularized(), each of length "
                         f"len(alpha_list) * len(K_list) = {len(K_list) * len(alpha_list)}")
    means, bands = [list(map(float, r)) for r in results[:4]], [list(map(float, r)) for r in results[4:]]
    rows, markdown = [], [f"# {title or name}", ""]
    for a, alpha in enumerate(alpha_list):
        markdown += [f"## alpha = {alpha}", "", "| K | " + " | ".join(RESULT_COLUMNS) + " |",
                     "|---" * (len(RESULT_COLUMNS) + 1) + "|"]
        for k, K in enumerate(K_list):
            i = a * len(K_list) + k
            entry = {"alpha": alpha, "K": K}
            cells = []
            for key, mean, band in zip(_RESULT_KEYS, means, bands):
                entry[key] = {"mean": mean[i], "std": band[i] / STD_BAND_FACTOR}
                cells.append(_percent(mean[i], band[i] / STD_BAND_FACTOR))
            rows.append(entry)
            markdown.append(f"| {_rank_label(K)} | " + " | ".join(cells) + " |")
        markdown.append("")
    markdown.append(f"Accuracy in %, mean ± std over users (plots shade ± {STD_BAND_FACTOR} std).")
    payload = {"name": name, "settings": settings, "seed": settings.get("seed"), "K_list": K_list,
               "alpha_list": alpha_list, "std_band_factor": STD_BAND_FACTOR, "results": rows, **(extra or {})}
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    write_text_atomic(json_path, json.dumps(_json_value(payload), indent=1) + "\n")
    write_text_atomic(md_path, "\n".join(markdown) + "\n")
    plots = []
    for a, alpha in enumerate(alpha_list):
        section = slice(a * len(K_list), (a + 1) * len(K_list))
        path = results_dir / (plot_name or f"{name}_alpha_{{alpha}}.png").format(alpha=alpha)
        _plot_lines(path, [_rank_label(K) for K in K_list],
                    [(label, m[section], b[section]) for label, m, b in zip(RESULT_COLUMNS, means, bands)],
                    xlabel="rank K", title=f"{title or name} (alpha = {alpha})")
        plots.append(path)
    return {"json": json_path, "markdown": md_path, "plots": plots}


def save_fewshot_results(results_dir, name, settings, num_shots, K_list, alpha_list, results, *, plot_name=None,
                         title=None, extra=None) -> dict:
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
        markdown += [f"## alpha = {alpha}, K = {_rank_label(K)}", "",
                     "| shots | " + " | ".join(label for _, label in groups) + " |", "|---|---|---|"]
        for j, s in enumerate(num_shots):
            entry = {"alpha": alpha, "K": K, "shots": s, "capped": s in capped}
            cells = []
            for key, _ in groups:
                figures = {k: run[key][k][j] for k in ("mean", "std_trials", "std_users")}
                entry[key] = figures
                cells.append(f"{_percent(figures['mean'], figures['std_trials'])} "
                             f"({100 * figures['std_users']:.1f})")
            rows.append(entry)
            markdown.append(f"| {s}{' (capped)' if s in capped else ''} | " + " | ".join(cells) + " |")
        markdown.append("")
        tag = f"K={_rank_label(K)}" + (f", alpha={alpha}" if len(alpha_list) > 1 else "")
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
    write_text_atomic(json_path, json.dumps(_json_value(payload), indent=1) + "\n")
    write_text_atomic(md_path, "\n".join(markdown) + "\n")
    plot_path = results_dir / (plot_name or f"{name}.png")
    _plot_lines(plot_path, num_shots, lines, xlabel="shots per unseen user", title=title or name)
    return {"json": json_path, "markdown": md_path, "plots": [plot_path]}


def _plot_lines(path: Path, x_labels, lines, xlabel: str, title: str) -> None:
    """Accuracy lines with shaded bands: lines = [(label, means, bands)] over the x_labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(x_labels))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, mean, band in lines:
        mean, band = np.asarray(mean, dtype=float), np.asarray(band, dtype=float)
        ax.plot(x, 100 * mean, marker="o", label=label)
        ax.fill_between(x, 100 * (mean - band), 100 * (mean + band), alpha=0.2)
    ax.set_xticks(x, [str(v) for v in x_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

"""LoRe, the method: comparisons, the trainers, the sweeps over rank and regularisation, and evaluation
(in that order). Scripts get their settings and files from harness.py and write results with reports.py.

LoRe (Bose et al., 2025, arXiv:2504.14439) learns a shared basis V (d x B) of reward directions over
frozen reward-model embeddings and one weight vector w_i = softmax(W_i) per user. A comparison of user i
has the feature x = e(chosen) - e(rejected) and the reward margin s = x . V . w_i / 100 (the method's
1/100 temperature); its Bradley-Terry loss is -log sigmoid(s). It is predicted correctly iff
x . V . w_i > 0 (strictly: a tie is wrong). Shapes throughout: N comparisons, d embedding size, C users,
B basis vectors. The reference head V_ref [d, 1] is the backbone's own reward head (score.weight.T);
the original's signatures call it V_sft (trainers) and V_final (pipelines), and keep those names.

Speed: margins are rowsum((X @ V) * w[user_of_row]) (N.d.B work), never the N x C logit matrix
X @ (V @ w.T) of the original formulation; one X @ V per iteration serves the W step and the V step;
with V frozen (few-shot fits, evaluation) X @ V is computed once and every iteration is O(N.B).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import evidence
import harness

TEMPERATURE = 100.0         # the method's 1/100 temperature on every margin
STD_BAND_FACTOR = 0.25      # the original's plotted band: 0.25 x the std of per-user accuracy
PRUNE_THRESHOLD = 1e-2      # LoRe_regularized keeps basis column b iff max_i softmax(W)_ib >= this
WARMUP_START, WARMUP_END = 0.2, 0.8  # cosine regulariser: 0 before int(0.2 T), alpha from int(0.8 T)
GROUP_NAMES = ("seen_train", "seen_test", "unseen_train", "unseen_test")   # the four groups every sweep scores

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


def cpu_generator(seed: int) -> torch.Generator:
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
    def by_user(cls, row_user_ids, user_ids, table, chosen, rejected) -> "Comparisons":
        """Rows given with their users' ids (`row_user_ids` [N], each in `user_ids`), user i the i-th of
        `user_ids`; the rows grouped by user, in row order within a user (a stable sort)."""
        position = {u: i for i, u in enumerate(user_ids)}
        users = torch.tensor([position[u] for u in row_user_ids], dtype=torch.long)
        order = torch.argsort(users, stable=True)
        return cls(users[order], len(position), table, torch.as_tensor(chosen)[order],
                   torch.as_tensor(rejected)[order])

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
        self.V_ref = None if V_sft is None else _as_basis(V_sft, self.num_features, "V_sft").to(self.device, dtype)
        if self.V_ref is not None and self.V_ref.shape[1] != 1:
            raise ValueError(f"V_sft must be [{self.num_features}, 1], got shape {tuple(self.V_ref.shape)}")
        if self.alpha > 0 and self.V_ref is None:
            raise ValueError("alpha > 0 needs V_sft (the reference reward head V_ref, [d, 1])")
        self.loss_history = None
        g = cpu_generator(seed)
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
        return loss + self.alpha * ((self.V - self.V_ref) ** 2).sum() if self.alpha > 0 else loss

    def _fit(self, comparisons: Comparisons):
        users, row_weight = comparisons.users, _per_user_mean_weights(comparisons, self.dtype)
        adam_W, adam_V = _Adam(self.W, self.learning_rate), _Adam(self.V, self.learning_rate)
        losses = torch.empty(self.num_iterations, dtype=self.dtype, device=self.device)
        for t in harness.progress(range(self.num_iterations), "LoRe", self.progress):
            P = comparisons.project(self.V)
            loss, grad_W, grad_P = _bradley_terry_step(P, self.W, users, row_weight, need_P=True)
            grad_V = comparisons.project_T(grad_P)
            if self.alpha > 0:
                difference = self.V - self.V_ref
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
        for t in harness.progress(range(self.num_iterations), "LoRe_regularized", self.progress):
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
                    grad_V.add_(torch.autograd.grad(alpha_t * cosine_regularizer(V, self.V_ref), V)[0])
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
        self.W = torch.randn(num_classes, num_basis_vectors, generator=cpu_generator(seed), dtype=dtype).to(self.device)
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
        for _ in harness.progress(range(self.num_iterations), "PersonalizeBatch", self.progress):
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
# sweeps: every (alpha, K) fitted on the seen users, evaluated on the four groups


def sweep_grid(alpha_list, K_list) -> list[tuple[float, int]]:
    """The (alpha, K) of a sweep in the original's order: alpha-major, K_list within each alpha."""
    return [(alpha, K) for alpha in alpha_list for K in K_list]


class Sweep(tuple):
    """What `run` / `run_regularized` return.

    `.records`: one dict per (alpha, K), in sweep_grid order, for the sweep's seed:
      "alpha", "K", "seed", "d", "basis_size" (columns of V after pruning; 1 for K = 0),
      "cosine_to_ref" (cos(V_b, V_ref) per column, or None),
      "groups" {group: {"mean", "std" (over users, population form), "users" (with >= 1 comparison),
                        "comparisons"}},
      "per_user" {group: [C] accuracies, NaN for a user without comparisons};
    for K >= 1 also "diagnostics" (evidence.basis_diagnostics of V and the seen users' weights) and
      "contrasts" (the test groups scored with the shared and with another user's weights: `contrasts`)
      and "basis" {"V", "W" (the seen users' weights), "fit" (its record, when saved)}.
    Unpacked, the original's 8 lists (seen train mean, seen test mean, unseen few-shot train mean, unseen
    test mean, then the same four as 0.25 x the std over users, its plot bands), each of length
    len(alpha_list) * len(K_list): `a, b, ... = run(...)` works as it did.
    """
    records: list

    @classmethod
    def from_records(cls, records: list) -> "Sweep":
        means = [[r["groups"][g]["mean"] for r in records] for g in GROUP_NAMES]
        bands = [[STD_BAND_FACTOR * r["groups"][g]["std"] for r in records] for g in GROUP_NAMES]
        out = cls(means + bands)
        out.records = records
        return out


def choose_K(records: list, alpha) -> int | None:
    """LoRe's rank: the K >= 1 with the best seen-user / unseen-prompt accuracy at `alpha` (the mean over
    the records' seeds; the smaller K on a tie), so a figure reported on new users is never the one K
    was chosen by. None when the sweep has no K >= 1."""
    by_K = {}
    for r in records:
        if r["alpha"] == alpha and r["K"] >= 1 and math.isfinite(r["groups"]["seen_test"]["mean"]):
            by_K.setdefault(r["K"], []).append(r["groups"]["seen_test"]["mean"])
    return max(by_K, key=lambda K: (float(np.mean(by_K[K])), -K)) if by_K else None


def _training_data_record(train: Comparisons) -> dict:
    """The training data's part of a fit record: its sizes and a hash of its comparisons and rows."""
    train = train.compact()
    digest = hashlib.sha256()
    for tensor in (train.users, train.chosen, train.rejected, train.table):
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).data)
    return {"users": train.n_users, "comparisons": train.N, "d": train.d, "data_sha256": digest.hexdigest()}


def lore_file_names(dataset_name: str | None, K: int, alpha) -> tuple[str, str]:
    """File names of a fitted basis and its seen-user weights, as the original named them."""
    prefix = f"{dataset_name}_" if dataset_name else ""
    return f"{prefix}V_lore_K_{K}_alpha_{alpha}.pt", f"{prefix}W_lore_seen_{K}_{alpha}.pt"


def _prepare(V_ref, groups, N, N_unseen, device):
    """The four groups as Comparisons on one device and dtype, checked, and V_ref as [d, 1] (or None)."""
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
    if V_ref is not None:
        V_ref = _as_basis(V_ref, first.d, "V_ref").to(device, first.dtype)
        if V_ref.shape[1] != 1:
            raise ValueError(f"the reference head V_ref must be [{first.d}, 1] or [{first.d}], got shape "
                             f"{tuple(V_ref.shape)}")
    return V_ref, groups, device


def _reference(V_ref, K):
    if V_ref is None:
        raise ValueError(f"K = {K} evaluates the reference head: pass it ([d, 1] or [d])")
    return V_ref


def _groups_fingerprint(groups) -> str:
    """sha256 of the four groups' comparisons and of each distinct embedding table (hashed once)."""
    digest, tables = hashlib.sha256(), {}
    for group in groups:
        if id(group.table) not in tables:
            tables[id(group.table)] = hashlib.sha256(np.ascontiguousarray(group.table.cpu().numpy()).data).hexdigest()
        digest.update(tables[id(group.table)].encode())
        for tensor in (group.users, group.chosen, group.rejected):
            digest.update(np.ascontiguousarray(tensor.cpu().numpy()).data)
    return digest.hexdigest()


def _checkpoint_path(checkpoint_dir, dataset_name, alpha, K, seed) -> Path:
    return Path(checkpoint_dir) / f"{dataset_name or 'lore'}_fit_alpha_{alpha}_K_{K}_seed_{seed}.pt"


def _sweep(fit, fit_settings, K_list, alpha_list, V_ref, groups, N, N_unseen, device, fewshot_iterations,
           fewshot_learning_rate, seed, results_dir, dataset_name, show_progress, overwrite, checkpoint_dir,
           save_bases) -> Sweep:
    """run / run_regularized: every (alpha, K) fitted on the seen users with `fit`, new users fitted on
    their few-shot comparisons with V frozen, all four groups scored. With checkpoint_dir, every finished
    (alpha, K) is saved there and a rerun with the same settings and data takes it instead of fitting."""
    V_ref, prepared, device = _prepare(V_ref, groups, N, N_unseen, device)
    train, test, train_unseen, test_unseen = prepared
    grid = sweep_grid(alpha_list, K_list)
    fits, identity = {}, {}  # what makes each basis (settings, K, alpha, seed, training data) and each record
    if results_dir is not None or checkpoint_dir is not None:
        data = _training_data_record(train)
        fits = {(alpha, K): {**fit_settings, "K": int(K), "alpha": float(alpha), "seed": int(seed), **data}
                for alpha, K in grid}
        scoring = {"fewshot_iterations": int(fewshot_iterations), "fewshot_learning_rate": float(fewshot_learning_rate),
                   "groups_sha256": _groups_fingerprint(prepared),
                   "V_ref": None if V_ref is None else harness.tensor_sha256(V_ref)}
        identity = {key: {**fit, **scoring} for key, fit in fits.items()}
    if results_dir is not None:       # before any fit: a saved basis of another fit is hours of work
        harness.refuse_other_fits({Path(results_dir) / lore_file_names(dataset_name, K, alpha)[0]: fit
                                   for (alpha, K), fit in fits.items() if K >= 1}, overwrite)
    records = []
    for alpha, K in harness.progress(grid, "alpha, K", show_progress):
        checkpoint = None if checkpoint_dir is None else _checkpoint_path(checkpoint_dir, dataset_name, alpha, K, seed)
        record = None if checkpoint is None else harness.load_checkpoint(checkpoint, identity[alpha, K])
        if record is not None:
            records.append(record)
            continue
        if K == 0:
            V, weights_seen = _reference(V_ref, K), torch.ones(N, 1, dtype=train.dtype, device=device)
        else:
            weights_seen, V = fit(V_ref, alpha, train, K, seed=derived_seed(seed, 0), progress=show_progress)
        if K <= 1:
            weights_unseen = torch.ones(N_unseen, V.shape[1], dtype=V.dtype, device=device)
        else:
            weights_unseen = _few_shot_weights(train_unseen, V, fewshot_iterations, fewshot_learning_rate,
                                               seed=derived_seed(seed, 1), progress=show_progress)
        scored = zip(GROUP_NAMES, prepared, (weights_seen, weights_seen, weights_unseen, weights_unseen))
        per_user = {name: per_user_accuracy(group, V, weights) for name, group, weights in scored}
        cosine = None if V_ref is None else (F.normalize(V, dim=0) * F.normalize(V_ref, dim=0)).sum(0)
        record = {"alpha": alpha, "K": K, "seed": int(seed), "d": train.d, "basis_size": int(V.shape[1]),
                  "cosine_to_ref": None if cosine is None else cosine.cpu().tolist(),
                  "groups": {name: group_summary(per_user[name], group) for name, group in zip(GROUP_NAMES, prepared)},
                  "per_user": per_user}
        if K >= 1:
            record["diagnostics"] = evidence.basis_diagnostics(V, weights_seen, V_ref)
            record["contrasts"] = contrasts(V, weights_seen, weights_unseen, test, test_unseen, seed)
            record["basis"] = {"V": V.detach().cpu().clone(), "W": weights_seen.detach().cpu().clone(),
                               "fit": fits.get((alpha, K))}
        if checkpoint is not None:
            harness.save_checkpoint(checkpoint, identity[alpha, K], record)
        records.append(record)
    if results_dir is not None and save_bases:
        write_bases(results_dir, dataset_name, records)
    return Sweep.from_records(records)


def write_bases(results_dir, dataset_name, records) -> list[Path]:
    """The V and W files (lore_file_names, + .safetensors twins with the fit's record) of every K >= 1
    record of one seed that carries its basis; returns the paths written."""
    written = []
    for record in records:
        basis = record.get("basis")
        if record["K"] >= 1 and basis is not None and basis["fit"] is not None:
            v_name, w_name = lore_file_names(dataset_name, record["K"], record["alpha"])
            harness.save_tensor(Path(results_dir) / v_name, basis["V"], "V", basis["fit"])
            # W's record names the very V it goes with: eval_rb2 --rm_weights refuses a W of another fit
            harness.save_tensor(Path(results_dir) / w_name, basis["W"], "W",
                                {**basis["fit"], "basis_sha256": harness.tensor_sha256(basis["V"])})
            written += [Path(results_dir) / v_name, Path(results_dir) / w_name]
    return written


def contrasts(V, weights_seen, weights_unseen, seen_test, unseen_test, seed: int) -> dict:
    """Each user's accuracy with other weights than its own, on its test comparisons:
    {"seen_test" | "unseen_test": {"shared": with the mean of the seen users' weights (the population's
    one reward in this basis), "other": with another user's weights of its own group (a seeded
    derangement; None for a group of one user)}}, each [C] (NaN: no comparison)."""
    shared = weights_seen.mean(0, keepdim=True)
    out = {}
    for name, group, weights, key in (("seen_test", seen_test, weights_seen, 3),
                                      ("unseen_test", unseen_test, weights_unseen, 4)):
        C = group.n_users
        other = weights[torch.as_tensor(evidence.derangement(C, derived_seed(seed, key)))] if C > 1 else None
        out[name] = {"shared": per_user_accuracy(group, V, shared.expand(C, -1)),
                     "other": None if other is None else per_user_accuracy(group, V, other)}
    return out


def run(K_list, alpha_list, V_final, train_features, test_features_sparse, train_features_unseen,
        test_features_sparse_unseen, N, N_unseen, device, *, num_iterations=1000, learning_rate=0.5,
        fewshot_iterations=500, fewshot_learning_rate=0.1, seed=0, results_dir=None, dataset_name=None,
        progress=True, overwrite=False, checkpoint_dir=None, save_bases=True) -> Sweep:
    """Sweep alpha x K with the joint `LoRe` trainer; evaluate seen and (few-shot) unseen users.

    Groups: lists of per-user tensors [m_i, d] or Comparisons; the two seen groups have N users in the
    same order, the two unseen groups N_unseen. V_final: the reference head V_ref ([d, 1] or [d]).
    K = 0: V = V_ref and every user weight [1.0]; K >= 1: `solve_regularized` (num_iterations,
    learning_rate, the L2 pull towards V_ref with weight alpha). Unseen users: K <= 1 uses w = [1.0], else
    `PersonalizeBatch` on train_features_unseen (fewshot_iterations, fewshot_learning_rate). device
    None: CUDA when present. Every fit and every K sees the same seeded draws. When results_dir is given,
    V and W of every K >= 1 are saved there when the sweep ends (see run_regularized; save_bases=False
    leaves that to the caller: write_bases), and a saved basis made by another fit (settings or data) is
    refused before any fit unless overwrite. checkpoint_dir: every finished (alpha, K) is kept there, and
    a rerun with the same settings and data resumes from them (a killed sweep loses only its current fit).
    Returns a Sweep: `.records` per (alpha, K) (K >= 1: with "basis", its V, W and fit record); unpacked,
    the original's 8 lists.
    """
    def fit(V_ref, alpha, X, K, seed, progress):
        return solve_regularized(V_ref, alpha, X, K, num_iterations, learning_rate, seed=seed, progress=progress)
    return _sweep(fit, {"trainer": "LoRe", "num_iterations": num_iterations, "learning_rate": learning_rate},
                  K_list, alpha_list, V_final, (train_features, test_features_sparse, train_features_unseen,
                  test_features_sparse_unseen), N, N_unseen, device, fewshot_iterations, fewshot_learning_rate,
                  seed, results_dir, dataset_name, progress, overwrite, checkpoint_dir, save_bases)


def run_regularized(K_list, alpha_list, V_final, train_features, test_features_sparse, train_features_unseen,
                    test_features_sparse_unseen, N, N_unseen, device, *, num_iterations=20000, learning_rate=0.5,
                    fewshot_iterations=500, fewshot_learning_rate=0.5, seed=0, results_dir=None,
                    dataset_name=None, progress=True, overwrite=False, checkpoint_dir=None, save_bases=True) -> Sweep:
    """`run` with the alternating, cosine-regularised `LoRe_regularized` trainer (the PRISM pipeline).

    Same arguments and returns as `run`. Saves, for every K >= 1, the pruned basis
    `<results_dir>/<dataset_name>_V_lore_K_{K}_alpha_{alpha}.pt` [d, B_kept] and the seen-user weights
    `<dataset_name>_W_lore_seen_{K}_{alpha}.pt` [N, B_kept] (plain tensors, loadable with
    weights_only=True), each with a .safetensors sibling (key "V" / "W"); results_dir None saves none.
    """
    def fit(V_ref, alpha, X, K, seed, progress):
        return solve_regularized_simplex(V_ref, alpha, X, K, num_iterations, learning_rate, seed=seed,
                                         progress=progress)
    return _sweep(fit, {"trainer": "LoRe_regularized", "num_iterations": num_iterations,
                        "learning_rate": learning_rate}, K_list, alpha_list, V_final, (train_features,
                  test_features_sparse, train_features_unseen, test_features_sparse_unseen), N, N_unseen, device,
                  fewshot_iterations, fewshot_learning_rate, seed, results_dir, dataset_name, progress, overwrite,
                  checkpoint_dir, save_bases)


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
    statistics = [mean_and_std(accuracy) for accuracy in per_trial_accuracy]
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
    reference head V_final, V_ref, with w = [1.0]). Then for every shot count s in num_shots, `trials` seeded
    draws of min(m_i, s) comparisons per unseen user (`sample_shots`; draw (s, trial) is the same for
    every alpha and K), a few-shot fit of all trials x users at once (K <= 1: w = [1.0]), and per trial
    the per-user accuracy on those shots and on test_features_sparse_unseen.

    Returns a FewShotCurves: unpacked, the original's (few-shot train means, few-shot train stds, unseen
    test means, unseen test stds) per shot count for the last (alpha, K), std = over trials of the
    per-trial mean over users; `.runs` has every (alpha, K) with the std over users too.
    """
    V_ref, (train, _, train_unseen, test_unseen), device = _prepare(
        V_final, (train_features, train_features, train_features_unseen, test_features_sparse_unseen),
        N, N_unseen, device)
    trials = int(trials)
    fit = solve_regularized_simplex if regularized else solve_regularized
    draws = {}               # depend only on (seed, shots, trial): the same for every alpha and K
    for s in num_shots:
        index, users = [], []
        for trial in range(trials):
            chosen = _shot_index(train_unseen, s, cpu_generator(derived_seed(seed, 2, s, trial)))
            index.append(chosen)
            users.append(train_unseen.users[chosen] + trial * N_unseen)
        draws[s] = train_unseen.select(torch.cat(index), users=torch.cat(users),
                                       n_users=trials * N_unseen).compact()
    pools = train_unseen.counts()
    capped = [s for s in num_shots if len(pools) and s > int(pools.max())]
    runs = []
    for alpha in alpha_list:
        for K in harness.progress(K_list, f"alpha={alpha}: K", progress):
            if K == 0:
                V = _reference(V_ref, K)
            else:
                V = fit(V_ref, alpha, train, K, num_iterations, learning_rate, seed=derived_seed(seed, 0),
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
    chosen = comparisons.select(_shot_index(comparisons, num_shots, generator or cpu_generator(seed)))
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


def mean_and_std(per_user) -> tuple[float, float]:
    """(mean, std) over the users that have comparisons (population std, as np.std); NaN when none."""
    accuracy = np.asarray(torch.as_tensor(per_user).double().cpu() if isinstance(per_user, torch.Tensor)
                          else per_user, dtype=np.float64)
    accuracy = accuracy[~np.isnan(accuracy)]
    return (float(accuracy.mean()), float(accuracy.std())) if len(accuracy) else (math.nan, math.nan)


def group_counts(groups: dict) -> dict:
    """{group: {"users": users with >= 1 comparison, "comparisons": N}} of {name: Comparisons}."""
    return {name: {"users": int((g.counts() > 0).sum()), "comparisons": g.N} for name, g in groups.items()}


def group_summary(per_user, group: Comparisons) -> dict:
    """{"mean", "std" (over users), "users" (with >= 1 comparison), "comparisons"} of one group's scores."""
    mean, std = mean_and_std(per_user)
    return {"mean": mean, "std": std, **group_counts({"group": group})["group"]}


def accuracy_mean_std(X, V, W) -> tuple[float, float]:
    """(mean, std) over users of per-user accuracy (raw std; users without comparisons left out).
    Multiply the std by STD_BAND_FACTOR for the original's plot band."""
    return mean_and_std(per_user_accuracy(X, V, W))


def evaluate_model(X, V, w) -> float:
    """The original's API: accuracy of one user, X [m, d], V [d, B], w [B]."""
    return float(per_user_accuracy([torch.as_tensor(X)], V, [w])[0])

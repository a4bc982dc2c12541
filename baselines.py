"""PAL and VPL on frozen reward-model embeddings: the personalised baselines of the LoRe comparison table
(reports.py writes the table).

Every method here sees exactly what LoRe sees: a `utils.Comparisons` in indexed form (embedding table
[T, d], chosen/rejected row indices [N], user indices [N]), the same users, splits and few-shot data.
A method is fitted on the seen users' training comparisons, evaluated on the seen users' unseen prompts
with their fitted state, personalised to new users from their few-shot comparisons (everything shared
frozen) and evaluated on the new users' test comparisons. A comparison is predicted correctly iff the
method's margin r_u(chosen) - r_u(rejected) is > 0 (strictly: a tie is wrong); per-user accuracy is the
fraction correct over that user's comparisons (NaN for a user without any), reported as the mean over
users, or, with several seeds, the mean over seeds of that mean with its std over seeds.

    import baselines
    model = baselines.fit("PAL", groups["seen_train"], K=5, seed=0)
    new_users = model.personalize(groups["unseen_train"])
    accuracy = model.per_user_accuracy(groups["unseen_test"], new_users)       # [C], NaN: no comparison
    results = baselines.evaluate_methods(["PAL", "VPL"], groups, seeds=[0, 1, 2], K=5)   # reports.paper_row(**r)

Methods (METHODS: name -> class):

PAL (Chen, Chen, Rege, Wang, Vinayak, "PAL: Pluralistic Alignment Framework for Learning from
Heterogeneous Preferences", arXiv:2406.08469; ICLR 2025 as "PAL: Sample-Efficient Personalized Reward
Modeling for Pluralistic Alignment"; code github.com/RamyaLab/pluralistic-alignment at commit fcfc03c).
A learned projection f of an embedding into a preference space (identity, linear, or PAL's "mlp2":
Linear(d, m), act, Linear(m, m), act, Linear(m, m)), K prototypes, user weights w_u = softmax(W_u) on
the simplex (W_u ~ N(0, I) as the code's UserLearner.init_weight).
  "PAL"   (PAL-B, the reward form; src/pal_rm_b/learner.py PrefLearner_angle): user point
          a_u = sum_k w_uk p_k with prototypes p_k in the preference space; reward
          r_u(e) = s * cos(f(e), a_u) with s = exp(logit_scale) clamped at 100, logit_scale learned from
          log(1/0.07) (CLIP's init, the code's); loss -log sigmoid(r_u(chosen) - r_u(rejected)) (the
          code's cross-entropy over the two rewards). similarity="dot" gives r_u(e) = s * f(e) . a_u
          with s fixed (default 1/100, LoRe's temperature): with K = 1 and projection="identity" that is
          exactly a single Bradley-Terry model x . v / 100.
  "PAL-A" (the ideal-point form; src/pal_rm_a, user_learner_type "f(Pw)", pref_learner_type "dist"):
          prototypes p_k in the embedding space, user ideal point a_u = f(sum_k w_uk p_k) (the same
          projector as the items), reward r_u(e) = -||f(e) - a_u||_2 (the closer the better); loss the
          code's hinge max(0, 1 - margin) (config/loss_config/a-*.yaml), loss="logistic" for
          Bradley-Terry.
  Hyperparameters (config/prefLearner_config/b-dim512-k2-opt350m-mlp2.yaml, a-dim512-k2-opt350m-mlp2.yaml,
  config/optim_config/vanilla-e1.yaml and vanilla-e20.yaml): mlp2 projector, GELU for PAL-B and ReLU for
  PAL-A, no dropout; softmax temperature 1; prototypes drawn N(0, I) and normalised to unit length
  (src/tensor_initializer.py, is_expectation_norm_init False); Adam with per-group learning rates:
  projector 1e-4 with weight decay 0.01, prototypes and user weights 5e-3, logit scale 0.1. Each user's
  weights are a parameter of their own there, so Adam moves (and counts steps for) only the users of a
  mini-batch; here a row-wise Adam does the same on one [C, K] tensor. New users (main_pal_b_unseen.py):
  only their weights are fitted, everything else frozen, Adam(W) at lr 5e-3 without weight decay.
  Model selection, as the code's trainer (src/dataset_factory.py: train_test_split(test_size=0.1,
  stratify=user); main_pal_b.py: ModelCheckpoint(monitor="ValLoss"), Lightning's mode "min"): 10% of the
  seen users' training comparisons are held out, per user (a user with fewer than 5 keeps all its
  comparisons; seeded), the rest trains, and the epoch with the lowest validation loss is kept. The same
  split chooses K and the width d_pref from PAL_GRID (the code's README compares k = 1 and 2; its configs
  set the width to the encoder's, 512-1536; a width above the backbone's is not tried): every candidate is
  trained, the lowest validation loss wins.
  The held-out part is never a test set; the choice is recorded per seed (`selection`). A candidate stops
  after 3 epochs without a lower validation loss (`patience`): our departure to 20 epochs (below) times
  an 8-point grid would otherwise cost 160 epochs per fit, and the code's own default trains 1. New users are
  fitted without selection (the code's unseen-user script selects its epoch on the test set itself; here
  the iterations are fixed).
  Departures, for frozen 4096-d embeddings and our data:
  - the width is chosen on the validation split among PAL_GRID's (128, 512) rather than set to the
    backbone's width: at d = 4096 the mlp2 projector would have 50M parameters for a few tens of
    thousands of comparisons. Build with d_pref=4096 for the literal reading.
  - PAL-B's prototypes are functions g_k(prompt) of a separate prompt embedding in the code; our
    embeddings are of whole conversations (no separate prompt), so the prototypes are K free vectors
    (the "K prototype reward directions" of the paper's reward form).
  - PAL-A's configs use a residual projector (x + mlp(x)), which needs m = d: not used (m < d).
  - batch size 32 instead of 4 (4 was set by fine-tuning the backbone on a GPU; with frozen embeddings a
    step costs the same at 32, and VPL's effective batch is 32 too), and 20 epochs for the seen users
    instead of 1: the code's single epoch ran over the ten most active Reddit TL;DR workers
    (src/summary_dataset_utils.py), thousands of comparisons each, so every user's weights got thousands
    of Adam steps; our users have tens, and 20 epochs is the code's own count for its few-shot stage.
  - new users are fitted full-batch (500 Adam steps at lr 5e-3; the code's 20 epochs at batch size 4
    give a user with m shots about 20 m steps: 200 for 10 shots, 1,000 for 50) on the sum over users of
    each user's mean loss, so the fit of every user is independent of the others (batched equals one
    user at a time).
  - the code's bound loss on ideal-point norms is computed but never added to the loss ("reduce
    performance"): left out.

VPL (Poddar, Wan, Ivison, Gupta, Jaques, "Personalizing Reinforcement Learning from Human Feedback with
Variational Preference Learning", arXiv:2408.10075, NeurIPS 2024; code github.com/WEIRDLabUW/vpl_llm at
commit fdfdfa7, hidden_context/vae_utils.py). An encoder maps a user's set of labelled comparisons to a
Gaussian latent: a pair encoder MLP([e_chosen; e_rejected]) (2d -> h -> h -> L, LeakyReLU(0.2)), then
one self-attention layer over the set (q, k, v: Linear(L, L), softmax(q k^T / sqrt(L))) and a mean over
the set (permutation invariant), then Linear heads for the mean and log-variance, both clamped to
[-1, 1]. The decoder is a reward MLP r(e, z) = MLP([e; z]) (d + L -> h -> h -> 1, LeakyReLU(0.2)).
Training maximises the ELBO: for a target comparison of a user, z ~ N(mean, exp(log_var)) from a context
of other comparisons of the same user (reparameterised, then scaled to norm sqrt(L) as the code does), loss = mean over targets of -log sigmoid(r(e_c, z) - r(e_r, z)) + beta * a_t * KL(N(mean,
exp(log_var)) || N(0, I)), a_t the code's cyclical cosine annealing (period 10,000 steps, floor 0.1).
At evaluation z = mean (as the code). A new user's latent is the encoder's output on its few-shot
comparisons: no gradient step.
  Hyperparameters (submit_job_UF_P_4.sh, the four-user UltraFeedback setting, its data script
  generate_llm_embeddings_UF_P_4.sh, and train_llm_vae_preference_model.py; the job scripts use the same
  sizes for GPT-2 and for Llama-2-7b, whose embeddings have d = 4096):
  latent L = 512, hidden h = 512, learning rate 1e-4, beta = 3e-6 with annealing, 2 epochs, batch 32
  (4 per device x 8 accumulation steps), AdamW (weight decay 0.001, none on biases, as the HF Trainer),
  gradient norm clipped at 1.0 (the Trainer's default), cosine schedule with 3% warm-up (VAETrainer).
  The budget: the data script writes every training comparison 4 times (`--num_duplicates 4`), each copy
  with its own context, so an epoch has 4 N targets: 2 x ceil(4 N / 32) optimiser steps in all. The
  context rule (data_utils/add_survey_contexts.py, the pipeline of the cited jobs; not data_processing.py):
  a survey pool of 100 comparisons is drawn once per user type, and every target's context is a random
  2-8 of them (`random.randint(2, 8)` without --fixed_context_length). The code keeps no validation
  split and no best checkpoint: the last step is the model.
  Departures: the decoder reads the frozen embedding itself (the code's fixed_llm_embeddings path; its
  default tunes a LoRA backbone whose 0.01-scaled score head outputs the decoder's input); the survey
  pool is per user (our users are the code's user types), at most 100 of its training comparisons; the
  contexts are drawn at every step rather than written once per copy (the same distribution); the target
  itself is never in its own context (the code may draw it; a context holding the target's own label
  lets the decoder copy it), except for a user whose pool holds nothing else; the code redraws a context
  until it identifies the user type, which our users (one per set) always do; at evaluation a seen
  user's latent is inferred from its whole survey pool and a new user's from its few-shot comparisons (a
  user with none gets the prior mean 0); the annealer steps once per optimiser step (the code steps it
  per micro-batch); float32, not bf16.

Anchored variants ("PAL+ref", "VPL+ref"): the method's reward plus the backbone head's, r(e) + e . V_ref /
100 (the scale LoRe's reference uses), trained, selected and evaluated exactly as the plain method. LoRe
starts from the head (its cosine pull keeps the basis next to it); an anchored baseline starts from the
same prior.

Shapes and cost: nothing materialises one d-vector per comparison per user. Products with the d-wide
first layers are computed once per table row in use (per mini-batch in training, per group in
evaluation; each half only for the rows that need it) and then indexed: [e_c; e_r] @ W =
(E @ W_c)[chosen] + (E @ W_r)[rejected], and the decoder's [e; z] @ W = (E @ W_e)[row] + (z @ W_z)[user].
Training draws mini-batches of comparisons across users; personalisation and evaluation are batched over
all users at once. On a CPU the training and few-shot loops run on one intra-op thread (their tensors
are small), evaluation on the caller's.
"""
from __future__ import annotations

import contextlib
import math
import time
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

import harness
import utils

ANCHORED = "+ref"                               # a method anchored on the backbone's head
EVAL_CHUNK = 1 << 15                            # comparisons per evaluation block (memory: chunk x width)
ROW_CHUNK = 4096                                # table rows per projection block
_INDEXED = weakref.WeakKeyDictionary()          # dense Comparisons -> its indexed view (built once)


# -----------------------------------------------------------------------------
# data access: everything works on (table, chosen, rejected, users)


def _indexed(comparisons: utils.Comparisons):
    """(table [T, d], chosen [N], rejected [N]) of a Comparisons.

    A set built from differences (Comparisons.from_features: the original's per-user lists) keeps only
    x_n = e(chosen) - e(rejected), as x_n against one zero row; here it is viewed as the pair of rows
    e_c = x_n / 2, e_r = -x_n / 2: exact for linear margins, an approximation for the nonlinear
    baselines (real data are indexed: one table row per embedded conversation). Not x_n against the
    zero row: then the rejected side would always be that row, and a nonlinear model would learn the
    label from it."""
    if not comparisons.from_differences:
        return comparisons.table, comparisons.chosen, comparisons.rejected
    view = _INDEXED.get(comparisons)
    if view is None:
        half = (comparisons.table[comparisons.chosen] - comparisons.table[comparisons.rejected]) / 2
        n = half.shape[0]
        index = torch.arange(n, device=half.device)
        view = (torch.cat([half, -half]), index, index + n)
        _INDEXED[comparisons] = view
    return view


def _map_rows(fn, table: torch.Tensor, rows: torch.Tensor, device, dtype) -> torch.Tensor:
    """fn(table[rows]) in blocks of ROW_CHUNK rows (each block moved to device/dtype): [len(rows), ...]."""
    out = [fn(table[rows[i:i + ROW_CHUNK]].to(device, dtype)) for i in range(0, len(rows), ROW_CHUNK)]
    return torch.cat(out) if out else fn(table[:0].to(device, dtype))


def _user_layout(users: torch.Tensor, n_users: int):
    """(order [N]: comparison indices grouped by user, stable; starts [C]; counts [C])."""
    order = torch.argsort(users, stable=True)
    counts = torch.bincount(users, minlength=n_users)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def _per_user_mean(values: torch.Tensor, users: torch.Tensor, n_users: int) -> torch.Tensor:
    """[C] mean of values [N] per user (NaN for a user without any), on CPU in float64."""
    values, users = values.detach().double().cpu(), users.cpu()
    total = torch.zeros(n_users, dtype=torch.float64).index_add_(0, users, values)
    return total / torch.bincount(users, minlength=n_users).double()


@contextlib.contextmanager
def _small_ops(device: torch.device):
    """Mini-batch and few-shot loops on one intra-op thread (CPU): their tensors are small, and a team of
    threads costs more in fork/join than it saves (on a shared CPU a descheduled member stalls every op:
    measured 4-10x slower with 2 threads on this machine). Evaluation keeps the caller's threads."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _seeded_modules(seed: int, build):
    """Build torch modules with a local seed (their default initialisers draw from the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


# -----------------------------------------------------------------------------
# methods: a small common interface


class _Baseline:
    """fit(train) -> self; personalize(fewshot) -> user state; margins / per_user_accuracy(comparisons,
    state); parameter_counts(n_users). `seen_state` holds the state of the training users after fit,
    `optimizer_steps` the steps the fit took.

    anchor: the backbone's reward head V_ref ([d] or [d, 1]) or None. Anchored ("+ref"), the method's
    reward is its own plus the head's, r(e) + e . V_ref / 100 (the scale LoRe's reference uses), in training
    and evaluation alike: the same prior LoRe starts from."""

    name = "?"
    DEFAULTS: dict = {}
    uses_K = True

    def __init__(self, d: int, n_users: int, K: int | None = None, *, seed: int = 0, device=None,
                 dtype=torch.float32, progress: bool = False, anchor=None, **hyper):
        unknown = sorted(set(hyper) - set(self.DEFAULTS))
        if unknown:
            raise harness.SettingsError(f"error: unknown hyperparameter(s) {', '.join(unknown)} for {self.name}; "
                                        f"known: {', '.join(sorted(self.DEFAULTS))}")
        if self.uses_K and (K is None or int(K) < 1):
            raise harness.SettingsError(f"error: {self.name} needs K >= 1 (its number of prototypes), got {K!r}")
        self.d, self.n_users, self.K = int(d), int(n_users), (int(K) if self.uses_K else None)
        self.seed, self.progress = int(seed), progress
        self.device = utils.get_device() if device is None else torch.device(device)
        self.dtype = dtype
        self.hyper = {**self.DEFAULTS, **hyper}
        self.anchor = None
        if anchor is not None:
            anchor = torch.as_tensor(anchor).reshape(-1)
            if anchor.shape[0] != self.d:
                raise ValueError(f"the anchor (reference head) has {anchor.shape[0]} entries, the model d = {self.d}")
            self.anchor = (anchor / utils.TEMPERATURE).to(self.device, dtype)
            self.name = self.name + ANCHORED
        self.seen_state = None
        self.loss_history = None
        self.optimizer_steps = 0

    def head_rewards(self, E: torch.Tensor) -> torch.Tensor:
        """The anchor's reward e . V_ref / 100 [n] of embeddings E [n, d] (zeros when not anchored)."""
        return E @ self.anchor if self.anchor is not None else E.new_zeros(E.shape[0])

    def _check(self, comparisons: utils.Comparisons, what: str) -> None:
        if comparisons.d != self.d:
            raise ValueError(f"{what} has d = {comparisons.d}; the {self.name} model was built for d = {self.d}")

    def _training_data(self, train: utils.Comparisons):
        """(table, chosen, rejected) of `train`, checked to hold this model's d and users."""
        self._check(train, "the training data")
        if train.n_users != self.n_users:
            raise ValueError(f"training data have {train.n_users} users, the model {self.n_users}")
        return _indexed(train)

    def _chunked_margins(self, comparisons: utils.Comparisons, per_user: torch.Tensor, featurize, margin):
        """[N] margins of `comparisons`, for both methods: `featurize` maps each distinct table row in use
        once ([rows, d] -> [rows, f]), then margin(features of chosen [n, f], of rejected [n, f], the
        users' rows of `per_user` [n, ...]) runs in chunks of EVAL_CHUNK comparisons."""
        self._check(comparisons, "the comparisons")
        per_user = per_user.to(self.device, self.dtype)
        if per_user.shape[0] != comparisons.n_users:
            raise ValueError(f"the user state has {per_user.shape[0]} users, the comparisons {comparisons.n_users}")
        table, chosen, rejected = _indexed(comparisons)
        rows, inverse = torch.unique(torch.cat([chosen, rejected]), return_inverse=True)
        features = _map_rows(featurize, table, rows, self.device, self.dtype)      # once per row
        heads = _map_rows(self.head_rewards, table, rows, self.device, self.dtype)
        users, N = comparisons.users.to(self.device), comparisons.N
        inv_c, inv_r = inverse[:N], inverse[N:]
        out = [margin(features[inv_c[i:i + EVAL_CHUNK]], features[inv_r[i:i + EVAL_CHUNK]],
                      per_user[users[i:i + EVAL_CHUNK]]) + heads[inv_c[i:i + EVAL_CHUNK]] - heads[inv_r[i:i + EVAL_CHUNK]]
               for i in range(0, N, EVAL_CHUNK)]
        return torch.cat(out) if out else torch.zeros(0, dtype=self.dtype, device=self.device)

    def per_user_accuracy(self, comparisons: utils.Comparisons, state) -> torch.Tensor:
        """[C] fraction of each user's comparisons with margin > 0 (a tie is wrong; NaN: no comparison).
        C = comparisons.n_users; `state` is `seen_state` or what `personalize` returned for these users."""
        margins = self.margins(comparisons, state)
        return _per_user_mean((margins > 0).double(), comparisons.users, comparisons.n_users)

    def parameter_counts(self, n_users: int) -> dict:
        """{"per_user", "shared", "total" = shared + n_users * per_user, "note"}."""
        shared, per_user = self._shared_parameters(), self._per_user_parameters()
        return {"per_user": per_user, "shared": shared, "total": shared + int(n_users) * per_user,
                "note": self._parameter_note()}


# --- PAL ---------------------------------------------------------------------------------------------


class _RowAdam:
    """Adam (torch defaults: betas 0.9/0.999, eps 1e-8) on the rows of a [C, K] tensor that a step
    touches, each row with its own step count: what torch.optim.Adam does to PAL's one parameter per
    user, of which only the users of a mini-batch have a gradient."""

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, (self.beta1, self.beta2), self.eps = param, float(lr), betas, eps
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
        self.steps = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        self.steps[rows] += 1
        t = self.steps[rows][:, None]
        m = self.exp_avg[rows].lerp_(grad, 1 - self.beta1)
        v = self.exp_avg_sq[rows].mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
        denom = (v / (1 - self.beta2 ** t)).sqrt_().add_(self.eps)
        self.param[rows] -= self.lr * m / (1 - self.beta1 ** t) / denom


class PAL(_Baseline):
    """PAL-B on frozen embeddings (see the module docstring for the model, sources and departures).

    Hyperparameters (DEFAULTS): projection "mlp" | "linear" | "identity"; d_pref (m); activation "gelu" |
    "relu"; similarity "cosine" (PAL's "angle", scale learned from 1/0.07) | "dot" (scale fixed at 1/100,
    LoRe's temperature); loss "logistic" | "hinge"; batch_size, epochs, patience (with a validation set:
    stop after this many epochs without a lower validation loss), max_steps (None: all; else stop after
    that many mini-batches, for benchmarks); lr_projection, weight_decay_projection, lr_prototypes,
    lr_weights, lr_scale; personalize_iterations, personalize_lr.
    User state: {"logits": W [C, K]} (weights = softmax(W)).
    """

    name = "PAL"
    form = "B"
    DEFAULTS = {"projection": "mlp", "d_pref": 512, "activation": "gelu", "similarity": "cosine",
                "loss": "logistic", "batch_size": 32, "epochs": 20, "patience": 3, "max_steps": None,
                "lr_projection": 1e-4,
                "weight_decay_projection": 0.01, "lr_prototypes": 5e-3, "lr_weights": 5e-3, "lr_scale": 0.1,
                "personalize_iterations": 500, "personalize_lr": 5e-3}
    _CHOICES = {"projection": ("mlp", "linear", "identity"), "activation": ("gelu", "relu"),
                "similarity": ("cosine", "dot"), "loss": ("logistic", "hinge")}

    def __init__(self, d, n_users, K=None, **kwargs):
        super().__init__(d, n_users, K, **kwargs)
        h = self.hyper
        for key, choices in self._CHOICES.items():
            if h[key] not in choices:
                raise harness.SettingsError(f"error: {self.name} {key} must be one of {choices}, got {h[key]!r}")
        self.m = self.d if h["projection"] == "identity" else int(h["d_pref"])
        cosine = self.form == "B" and h["similarity"] == "cosine"
        self.learn_scale = cosine            # PAL-B's logit scale is learned (CLIP's); a dot product's is fixed
        scale = 1 / 0.07 if cosine else 1 / utils.TEMPERATURE
        g = utils.cpu_generator(self.seed)
        prototype_dim = self.m if self.form == "B" else self.d     # PAL-A: prototypes in the input space
        prototypes = torch.randn(self.K, prototype_dim, generator=g, dtype=torch.float64)
        self.prototypes = (prototypes / prototypes.norm(dim=1, keepdim=True)).to(self.device, self.dtype)
        self.W = torch.randn(self.n_users, self.K, generator=g, dtype=self.dtype).to(self.device)
        self.log_scale = torch.tensor(math.log(scale), dtype=self.dtype, device=self.device)
        self.layers = _seeded_modules(utils.derived_seed(self.seed, 1), self._build_layers).to(self.device, self.dtype)
        self.selection = None

    def _build_layers(self) -> nn.Sequential:
        h = self.hyper
        if h["projection"] == "identity":
            return nn.Sequential()
        if h["projection"] == "linear":
            return nn.Sequential(nn.Linear(self.d, self.m))
        act = nn.GELU if h["activation"] == "gelu" else nn.ReLU
        return nn.Sequential(nn.Linear(self.d, self.m), act(), nn.Linear(self.m, self.m), act(),
                             nn.Linear(self.m, self.m))                      # PAL's mlp2

    # model pieces -------------------------------------------------------------------------------
    def project(self, E: torch.Tensor) -> torch.Tensor:
        """f(E) [n, m] for embeddings E [n, d]."""
        return self.layers(E)

    def user_points(self, weights: torch.Tensor) -> torch.Tensor:
        """a_u [n, m] for simplex weights [n, K]: PAL-B sum_k w_k p_k; PAL-A f(sum_k w_k p_k), its d-wide
        first layer applied to the K prototypes first (exact: the weights sum to 1, so the bias passes)."""
        mixture = weights @ self.prototypes
        if self.form == "B" or len(self.layers) == 0:
            return mixture
        first = self.layers[0]
        hidden = weights @ (self.prototypes @ first.weight.T) + first.bias
        return self.layers[1:](hidden)

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def margin(self, f_chosen, f_rejected, points) -> torch.Tensor:
        """r_u(chosen) - r_u(rejected) [n] from projected rows [n, m] and each row's user point [n, m]
        (the method's own part; an anchor's head margin is added by the callers)."""
        if self.form == "A":
            return (f_rejected - points).norm(dim=1) - (f_chosen - points).norm(dim=1)
        if self.hyper["similarity"] == "cosine":
            unit = F.normalize(points, dim=1)
            return self.scale() * ((F.normalize(f_chosen, dim=1) - F.normalize(f_rejected, dim=1)) * unit).sum(1)
        return self.scale() * ((f_chosen - f_rejected) * points).sum(1)

    def pair_loss(self, margins: torch.Tensor) -> torch.Tensor:
        """Per-comparison loss [n]: "logistic" -log sigmoid(margin), "hinge" max(0, 1 - margin)."""
        return F.softplus(-margins) if self.hyper["loss"] == "logistic" else F.relu(1 - margins)

    # training -----------------------------------------------------------------------------------
    def batch_loss(self, table, chosen, rejected, W_rows, user_of_row) -> torch.Tensor:
        """The training objective of one mini-batch: the pooled mean loss of comparisons (chosen [b],
        rejected [b] rows of table) whose users have logits W_rows[user_of_row] (differentiable)."""
        rows, inverse = torch.unique(torch.cat([chosen, rejected]), return_inverse=True)
        E = table[rows].to(self.device, self.dtype)
        projected, heads = self.project(E), self.head_rewards(E)                  # once per row in use
        b = len(chosen)
        points = self.user_points(torch.softmax(W_rows, 1))[user_of_row]
        margins = self.margin(projected[inverse[:b]], projected[inverse[b:]], points)
        return self.pair_loss(margins + heads[inverse[:b]] - heads[inverse[b:]]).mean()

    def _state(self) -> dict:
        return {"layers": {k: v.clone() for k, v in self.layers.state_dict().items()},
                "prototypes": self.prototypes.detach().clone(), "W": self.W.clone(),
                "log_scale": self.log_scale.detach().clone()}

    def _restore(self, state: dict) -> None:
        with torch.no_grad():
            self.layers.load_state_dict(state["layers"])
            self.prototypes.copy_(state["prototypes"])
            self.W.copy_(state["W"])
            self.log_scale.copy_(state["log_scale"])

    def fit(self, train: utils.Comparisons, valid: utils.Comparisons | None = None) -> "PAL":
        """Fit projection, prototypes, scale and the training users' weights (mini-batch Adam, pooled
        mean loss per batch, as PAL's code). With `valid` (held-out comparisons of the same users), keep
        the epoch whose validation loss is the lowest, as PAL's trainer does (ModelCheckpoint on ValLoss,
        mode min), and stop once `patience` epochs passed without a lower one; `selection` records it.
        Sets `seen_state`, `loss_history` (one mean per epoch run) and `optimizer_steps`."""
        h = self.hyper
        table, chosen, rejected = self._training_data(train)
        if valid is not None and valid.n_users != self.n_users:
            raise ValueError(f"the validation data have {valid.n_users} users, the model {self.n_users}")
        users = train.users
        groups = [{"params": list(self.layers.parameters()), "lr": h["lr_projection"],
                   "weight_decay": h["weight_decay_projection"]},
                  {"params": [self.prototypes], "lr": h["lr_prototypes"], "weight_decay": 0.0}]
        self.prototypes.requires_grad_(True)
        if self.learn_scale:
            self.log_scale.requires_grad_(True)
            groups.append({"params": [self.log_scale], "lr": h["lr_scale"], "weight_decay": 0.0})
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.Adam(groups, foreach=True)
        row_adam = _RowAdam(self.W, h["lr_weights"])
        g = utils.cpu_generator(utils.derived_seed(self.seed, 2))
        batch, history, validation = int(h["batch_size"]), [], []
        steps = [(epoch, start) for epoch in range(int(h["epochs"])) for start in range(0, train.N, batch)]
        steps = steps[:h["max_steps"]] if h["max_steps"] is not None else steps
        order, total, best, taken = None, 0.0, None, 0
        with _small_ops(self.device):
            for epoch, start in harness.progress(steps, self.name, self.progress):
                if best is not None and epoch - best[0] > int(h["patience"]):
                    break                                # no lower validation loss for `patience` epochs
                taken += 1
                if start == 0:
                    order = torch.randperm(train.N, generator=g).to(users.device)
                    total = 0.0
                index = order[start:start + batch]
                batch_users, user_of_row = torch.unique(users[index], return_inverse=True)
                batch_users = batch_users.to(self.device)
                W_rows = self.W[batch_users].clone().requires_grad_(True)
                loss = self.batch_loss(table, chosen[index], rejected[index], W_rows, user_of_row.to(self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                row_adam.step(batch_users, W_rows.grad)
                total += float(loss.detach()) * len(index)
                if start + batch >= train.N:                            # the end of an epoch
                    history.append(total / train.N)
                    if valid is not None:
                        validation.append(float(self.loss(valid, {"logits": self.W})))
                        if best is None or validation[-1] < best[1]:
                            best = (epoch, validation[-1], self._state())
        self.optimizer_steps = taken
        if best is not None:
            self._restore(best[2])
            self.selection = {"epoch": best[0] + 1, "validation_loss": best[1], "validation_losses": validation}
        self.prototypes.requires_grad_(False)
        self.log_scale.requires_grad_(False)
        for p in self.layers.parameters():
            p.requires_grad_(False)
        self.loss_history = history
        self.seen_state = {"logits": self.W.clone()}
        return self

    def personalize(self, fewshot: utils.Comparisons, *, seed: int = 0, init=None) -> dict:
        """New users' weights from their few-shot comparisons, everything else frozen: W ~ N(0, I) [C, K]
        (or `init`), full-batch Adam on the sum over users of each user's mean loss, so users do not
        interact. Returns {"logits": W [C, K]} for C = fewshot.n_users."""
        self._check(fewshot, "the few-shot data")
        h = self.hyper
        C = fewshot.n_users
        W = (torch.randn(C, self.K, generator=utils.cpu_generator(seed), dtype=self.dtype) if init is None
             else torch.as_tensor(init, dtype=self.dtype).clone()).to(self.device)
        if W.shape != (C, self.K):
            raise ValueError(f"init must be [{C}, {self.K}], got {tuple(W.shape)}")
        table, chosen, rejected = _indexed(fewshot)
        users = fewshot.users.to(self.device)
        with torch.no_grad():
            rows, inverse = torch.unique(torch.cat([chosen, rejected]), return_inverse=True)
            projected = _map_rows(self.project, table, rows, self.device, self.dtype)
            heads = _map_rows(self.head_rewards, table, rows, self.device, self.dtype)
            f_chosen, f_rejected = projected[inverse[:fewshot.N]], projected[inverse[fewshot.N:]]
            head_margin = heads[inverse[:fewshot.N]] - heads[inverse[fewshot.N:]]
            margin_of = self.frozen_margins(f_chosen, f_rejected, users)
        row_weight = (1.0 / fewshot.counts().clamp(min=1).to(self.device, self.dtype))[users]
        W.requires_grad_(True)
        optimizer = torch.optim.Adam([W], lr=h["personalize_lr"], foreach=True)
        with _small_ops(self.device):
            for _ in harness.progress(range(int(h["personalize_iterations"])), f"{self.name} new users",
                                      self.progress):
                loss = (self.pair_loss(margin_of(torch.softmax(W, 1)) + head_margin) * row_weight).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return {"logits": W.detach()}

    def frozen_margins(self, f_chosen: torch.Tensor, f_rejected: torch.Tensor, users: torch.Tensor):
        """weights [C, K] -> the method's own margins [N] of comparisons with projected rows f_chosen,
        f_rejected [N, m] and users [N], everything but the weights frozen (differentiable in the
        weights). PAL-B is linear in a_u = w P, so the m-wide products are taken once: with
        D = (f_c - f_r) P^T [N, K] (f normalised first for the cosine) the margin is s * D_n . w_u, divided
        by |a_u| = sqrt(w_u P P^T w_u) for the cosine: O(N K) per iteration. PAL-A's ideal point is
        nonlinear in w_u: margin(f_c, f_r, user_points(w)[users])."""
        if self.form == "A":
            return lambda weights: self.margin(f_chosen, f_rejected, self.user_points(weights)[users])
        scale = self.scale().detach()
        if self.hyper["similarity"] == "cosine":
            D = (F.normalize(f_chosen, dim=1) - F.normalize(f_rejected, dim=1)) @ self.prototypes.T
            gram = self.prototypes @ self.prototypes.T
            return lambda w: scale * (D * w[users]).sum(1) / ((w @ gram) * w).sum(1).sqrt().clamp_min(1e-12)[users]
        D = (f_chosen - f_rejected) @ self.prototypes.T
        return lambda w: scale * (D * w[users]).sum(1)

    @torch.no_grad()
    def margins(self, comparisons: utils.Comparisons, state: dict) -> torch.Tensor:
        """[N] r_u(chosen) - r_u(rejected) of every comparison for its user's state (no grad)."""
        points = self.user_points(torch.softmax(state["logits"].to(self.device, self.dtype), 1))
        return self._chunked_margins(comparisons, points, self.project, self.margin)

    def loss(self, comparisons: utils.Comparisons, state: dict) -> torch.Tensor:
        """Pooled mean loss of `comparisons` for the users' state (the training objective of one batch)."""
        return self.pair_loss(self.margins(comparisons, state)).mean()

    def _shared_parameters(self) -> int:
        return (sum(p.numel() for p in self.layers.parameters()) + self.prototypes.numel()
                + int(self.learn_scale))

    def _per_user_parameters(self) -> int:
        return self.K

    def _parameter_note(self) -> str:
        return f"{self.name}: projection + {self.K} prototypes (+ scale); per user K simplex weights"


class PAL_A(PAL):
    """PAL-A: the ideal-point form (see the module docstring). Same hyperparameters as PAL; activation
    ReLU and the hinge loss by default (PAL's a-configs); `similarity` does not apply."""

    name = "PAL-A"
    form = "A"
    DEFAULTS = {**PAL.DEFAULTS, "activation": "relu", "loss": "hinge"}


# --- VPL ---------------------------------------------------------------------------------------------


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(log_var)) || N(0, I)) [n] for mean, log_var [n, L]:
    0.5 * sum_l (exp(log_var) + mean^2 - 1 - log_var) (VPL's -0.5 * sum(1 + log_var - mean^2 - exp))."""
    return 0.5 * (log_var.exp() + mean ** 2 - 1 - log_var).sum(-1)


def kl_annealing(step: int, period: int = 10000, floor: float = 0.1) -> float:
    """VPL's cyclical cosine annealing of the KL weight at optimiser step `step` (0-based): from `floor`
    at the start of each period of `period` steps up to 1 at its end."""
    y = (math.cos(math.pi * ((step % period) / period - 1)) + 1) / 2
    return y * (1 - floor) + floor


class VPL(_Baseline):
    """VPL on frozen embeddings (see the module docstring for the model, sources and departures).

    Hyperparameters (DEFAULTS): hidden_dim (h), latent_dim (L), batch_size, epochs, duplicates (each
    comparison is a target this many times per epoch, each time with a fresh context), context_min and
    context_max (a context holds a random number of comparisons in [context_min, context_max]), survey_size
    (the pool of each user's training comparisons its contexts are drawn from, fixed once), max_steps
    (None: all; else stop after that many steps, the schedule still spanning `epochs`), learning_rate,
    weight_decay, warmup_ratio, max_grad_norm, kl_weight (beta), anneal_steps, anneal_floor,
    negative_slope (LeakyReLU). K does not apply (recorded as None).
    User state: {"mean": [C, L], "log_var": [C, L], "context": [C] comparisons each latent was inferred
    from}; the reward uses z = mean.
    """

    name = "VPL"
    uses_K = False
    DEFAULTS = {"hidden_dim": 512, "latent_dim": 512, "batch_size": 32, "epochs": 2, "duplicates": 4,
                "context_min": 2, "context_max": 8, "survey_size": 100, "max_steps": None, "learning_rate": 1e-4,
                "weight_decay": 1e-3, "warmup_ratio": 0.03, "max_grad_norm": 1.0, "kl_weight": 3e-6,
                "anneal_steps": 10000, "anneal_floor": 0.1, "negative_slope": 0.2}

    def __init__(self, d, n_users, K=None, **kwargs):
        super().__init__(d, n_users, K, **kwargs)
        self.h, self.L = int(self.hyper["hidden_dim"]), int(self.hyper["latent_dim"])
        self.net = _seeded_modules(utils.derived_seed(self.seed, 1), self._build).to(self.device, self.dtype)

    def _build(self) -> nn.ModuleDict:
        d, h, L = self.d, self.h, self.L
        return nn.ModuleDict({
            "pair1": nn.Linear(2 * d, h), "pair2": nn.Linear(h, h), "pair3": nn.Linear(h, L),
            "query": nn.Linear(L, L), "key": nn.Linear(L, L), "value": nn.Linear(L, L),
            "mean": nn.Linear(L, L), "log_var": nn.Linear(L, L),
            "dec1": nn.Linear(d + L, h), "dec2": nn.Linear(h, h), "dec3": nn.Linear(h, 1)})

    def _act(self, x):
        return F.leaky_relu(x, self.hyper["negative_slope"])

    # encoder ------------------------------------------------------------------------------------
    def chosen_rows(self, E: torch.Tensor) -> torch.Tensor:
        """[n, h] = E @ W_c^T: the chosen half of the pair encoder's first layer on [e_c; e_r] (once per
        table row used as a chosen response, then indexed)."""
        return E @ self.net["pair1"].weight[:, :self.d].T

    def rejected_rows(self, E: torch.Tensor) -> torch.Tensor:
        """[n, h] = E @ W_r^T: the rejected half of the pair encoder's first layer."""
        return E @ self.net["pair1"].weight[:, self.d:].T

    def pair_embedding(self, rows_chosen: torch.Tensor, rows_rejected: torch.Tensor) -> torch.Tensor:
        """[..., L] pair encoder output from chosen_rows and rejected_rows of a pair ([..., h] each)."""
        net = self.net
        hidden = self._act(rows_chosen + rows_rejected + net["pair1"].bias)
        return net["pair3"](self._act(net["pair2"](hidden)))

    def pool(self, pairs: torch.Tensor, mask: torch.Tensor):
        """Set encoder: pairs [B, M, L] with mask [B, M] (True: a member; every row needs one) -> clamped
        (mean [B, L], log_var [B, L]). One self-attention layer over the members, mean over members."""
        net = self.net
        q, k, v = net["query"](pairs), net["key"](pairs), net["value"](pairs)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(self.L)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attended = torch.softmax(scores, -1) @ v                                   # [B, M, L]
        weight = mask.to(pairs.dtype)[..., None]
        pooled = (attended * weight).sum(1) / weight.sum(1)
        return net["mean"](pooled).clamp(-1, 1), net["log_var"](pooled).clamp(-1, 1)

    # decoder ------------------------------------------------------------------------------------
    def decoder_rows(self, E: torch.Tensor) -> torch.Tensor:
        """[n, h] = E @ W_e^T, the embedding half of the decoder's first layer on [e; z]."""
        return E @ self.net["dec1"].weight[:, :self.d].T

    def latent_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """[n, h] = z @ W_z^T + b, the latent half (with the bias) of the decoder's first layer."""
        return z @ self.net["dec1"].weight[:, self.d:].T + self.net["dec1"].bias

    def reward(self, rows: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """r(e, z) [n] from decoder_rows of e [n, h] and latent_hidden of z [n, h]."""
        net = self.net
        return net["dec3"](self._act(net["dec2"](self._act(rows + latent)))).squeeze(-1)

    def reparameterize(self, mean, log_var, generator):
        """z = mean + std * eps, scaled to norm sqrt(L) (VPL's VAEModel.reparameterization)."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + (0.5 * log_var).exp() * eps
        return F.normalize(z, dim=-1) * math.sqrt(self.L)

    def elbo_loss(self, reward_chosen, reward_rejected, mean, log_var, step: int | None = None):
        """(loss, nll, kl): nll = mean of -log sigmoid(r_c - r_r) over targets [B]; kl = mean over targets
        of gaussian_kl; loss = nll + kl_weight * a_step * kl, a_step = kl_annealing(step) (step None:
        a = 1)."""
        nll = F.softplus(-(reward_chosen - reward_rejected)).mean()
        kl = gaussian_kl(mean, log_var).mean()
        h = self.hyper
        factor = kl_annealing(step, int(h["anneal_steps"]), h["anneal_floor"]) if step is not None else 1.0
        return nll + h["kl_weight"] * factor * kl, nll, kl

    def batch_loss(self, table, chosen, rejected, targets, contexts, mask, step=None, generator=None):
        """ELBO loss of targets [B] (comparison indices) given contexts [B, M] (comparison indices of the
        same users, mask [B, M]); z sampled with `generator`, or z = mean when it is None.
        Returns (loss, nll, kl)."""
        B, members = len(targets), contexts[mask]

        def rows_through(fn, index):          # fn once per distinct table row, then indexed
            rows, inverse = torch.unique(index, return_inverse=True)
            return fn(table[rows].to(self.device, self.dtype))[inverse.to(self.device)]
        pairs = torch.zeros(*mask.shape, self.L, dtype=self.dtype, device=self.device)
        pairs[mask.to(self.device)] = self.pair_embedding(rows_through(self.chosen_rows, chosen[members]),
                                                          rows_through(self.rejected_rows, rejected[members]))
        mean, log_var = self.pool(pairs, mask.to(self.device))
        z = mean if generator is None else self.reparameterize(mean, log_var, generator)
        latent = self.latent_hidden(z)
        sides = torch.cat([chosen[targets], rejected[targets]])
        dec_rows, heads = rows_through(self.decoder_rows, sides), rows_through(self.head_rewards, sides)
        r_c, r_r = self.reward(dec_rows[:B], latent) + heads[:B], self.reward(dec_rows[B:], latent) + heads[B:]
        return self.elbo_loss(r_c, r_r, mean, log_var, step)

    @staticmethod
    def survey_pools(users: torch.Tensor, n_users: int, size: int, generator):
        """Each user's survey pool, drawn once: at most `size` of its comparisons, at random. Returns
        (order [P]: pool members grouped by user, starts [C], counts [C], rank [N]: a comparison's
        position in its user's pool, -1 outside it)."""
        N = len(users)
        shuffled = torch.randperm(N, generator=generator).to(users.device)
        order, starts, counts = _user_layout(users[shuffled], n_users)
        order = shuffled[order]                                          # random order within each user
        position = torch.arange(N, device=users.device) - starts[users[order]]
        keep = position < size
        order, counts = order[keep], counts.clamp(max=size)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.full((N,), -1, dtype=torch.long, device=users.device)
        rank[order] = torch.arange(len(order), device=users.device) - starts[users[order]]
        return order, starts, counts, rank

    @staticmethod
    def sample_contexts(targets, users, pool, size_min: int, size_max: int, generator):
        """For each target comparison, a context of L ~ U{size_min..size_max} other comparisons of its user,
        drawn without replacement from the user's survey pool (fewer when the pool has fewer; the target
        itself is never in its own context, except for a user whose pool holds nothing else, whose one
        comparison is its own context). pool: survey_pools(...). Returns (contexts [B, size_max]
        comparison indices, mask [B, size_max])."""
        order, starts, counts, rank = pool
        B, u = len(targets), users[targets]
        own = rank[targets]                                                  # -1: the target is not in the pool
        available = counts[u] - (own >= 0).long()
        width = max(int(counts[u].max()) if B else 0, 1)
        keys = torch.rand(B, width, generator=generator).to(users.device)
        slot = torch.arange(width, device=users.device)[None, :]
        keys = keys.masked_fill((slot >= counts[u][:, None]) | (slot == own[:, None]), 2.0)
        lengths = torch.randint(size_min, size_max + 1, (B,), generator=generator).to(users.device)
        take = min(size_max, width)
        chosen_slots = torch.topk(keys, take, dim=1, largest=False).indices             # random distinct slots
        mask = (torch.gather(keys, 1, chosen_slots) < 2.0) & (torch.arange(take, device=users.device)[None, :]
                                                               < torch.minimum(lengths, available)[:, None])
        contexts = order[(starts[u][:, None] + chosen_slots).clamp(max=max(len(order) - 1, 0))]
        alone = available <= 0
        contexts[alone, 0] = targets[alone]
        mask[alone, 0] = True
        if take < size_max:                                                  # pad to a fixed width
            pad = size_max - take
            contexts = torch.cat([contexts, contexts.new_zeros(B, pad)], 1)
            mask = torch.cat([mask, mask.new_zeros(B, pad)], 1)
        return contexts, mask

    def steps_for(self, n_comparisons: int) -> int:
        """Optimiser steps of a full fit on n comparisons: epochs x ceil(duplicates x n / batch_size)."""
        h = self.hyper
        return int(h["epochs"]) * math.ceil(int(h["duplicates"]) * n_comparisons / int(h["batch_size"]))

    def fit(self, train: utils.Comparisons) -> "VPL":
        """Train encoder and decoder on the ELBO (AdamW, cosine schedule with warm-up, clipped gradients),
        every comparison a target `duplicates` times per epoch with a fresh context from its user's
        survey pool. Sets `seen_state` (latents of the training users from their survey pools),
        `loss_history` (mean loss per epoch) and `optimizer_steps`."""
        h = self.hyper
        table, chosen, rejected = self._training_data(train)
        users = train.users
        g = utils.cpu_generator(utils.derived_seed(self.seed, 2))
        pool = self.survey_pools(users, train.n_users, int(h["survey_size"]), g)
        decay = [p for n, p in self.net.named_parameters() if not n.endswith("bias")]
        no_decay = [p for n, p in self.net.named_parameters() if n.endswith("bias")]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": h["weight_decay"]},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=h["learning_rate"], betas=(0.9, 0.999), eps=1e-8, foreach=True)
        batch, targets_per_epoch = int(h["batch_size"]), int(h["duplicates"]) * train.N
        per_epoch = math.ceil(targets_per_epoch / batch)
        total_steps = self.steps_for(train.N)
        warmup = int(h["warmup_ratio"] * total_steps)

        def schedule(step):                    # transformers' get_cosine_schedule_with_warmup
            if step < warmup:
                return step / max(1, warmup)
            progress = (step - warmup) / max(1, total_steps - warmup)
            return max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        history, total, perm = [], 0.0, None
        self.net.train()
        run_steps = total_steps if h["max_steps"] is None else min(total_steps, int(h["max_steps"]))
        with _small_ops(self.device):
            for step in harness.progress(range(run_steps), self.name, self.progress):
                start = (step % per_epoch) * batch
                if start == 0:             # every comparison `duplicates` times, shuffled together
                    perm = (torch.randperm(targets_per_epoch, generator=g) % train.N).to(users.device)
                    total = 0.0
                targets = perm[start:start + batch]
                contexts, mask = self.sample_contexts(targets, users, pool, int(h["context_min"]),
                                                      int(h["context_max"]), g)
                loss, _, _ = self.batch_loss(table, chosen, rejected, targets, contexts, mask, step, g)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if h["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), h["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(targets)
                if start + batch >= targets_per_epoch:
                    history.append(total / targets_per_epoch)
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.loss_history = history
        self.optimizer_steps = run_steps
        self.seen_state = self.encode(train.select(pool[0]))
        return self

    @torch.no_grad()
    def encode(self, comparisons: utils.Comparisons, user_chunk: int = 256) -> dict:
        """Each user's latent from all of its comparisons (one set per user, batched with masks):
        {"mean": [C, L], "log_var": [C, L], "context": [C]}; a user without comparisons gets the prior
        (mean 0, log_var 0)."""
        self._check(comparisons, "the comparisons")
        table, chosen, rejected = _indexed(comparisons)
        C, N = comparisons.n_users, comparisons.N
        rows_c, inv_c = torch.unique(chosen, return_inverse=True)
        rows_r, inv_r = torch.unique(rejected, return_inverse=True)
        hidden_c = _map_rows(self.chosen_rows, table, rows_c, self.device, self.dtype)
        hidden_r = _map_rows(self.rejected_rows, table, rows_r, self.device, self.dtype)
        pairs = torch.cat([self.pair_embedding(hidden_c[inv_c[i:i + EVAL_CHUNK]], hidden_r[inv_r[i:i + EVAL_CHUNK]])
                           for i in range(0, N, EVAL_CHUNK)]) if N else None
        order, starts, counts = _user_layout(comparisons.users, C)
        order, starts, counts = order.to(self.device), starts.to(self.device), counts.to(self.device)
        mean = torch.zeros(C, self.L, dtype=self.dtype, device=self.device)
        log_var = torch.zeros_like(mean)
        present = (counts > 0).nonzero().squeeze(1)
        for i in range(0, len(present), user_chunk):
            block = present[i:i + user_chunk]
            width = int(counts[block].max())
            slot = torch.arange(width, device=self.device)
            mask = slot[None, :] < counts[block][:, None]
            index = order[(starts[block][:, None] + slot).clamp(max=N - 1)]
            mean[block], log_var[block] = self.pool(pairs[index], mask)
        return {"mean": mean, "log_var": log_var, "context": counts.cpu()}

    def personalize(self, fewshot: utils.Comparisons, *, seed: int = 0, init=None) -> dict:
        """New users' latents: the encoder on their few-shot comparisons (no gradient step; `seed` and
        `init` are unused: kept for the common interface)."""
        return self.encode(fewshot)

    @torch.no_grad()
    def margins(self, comparisons: utils.Comparisons, state: dict) -> torch.Tensor:
        """[N] r(e_c, z_u) - r(e_r, z_u) with z_u = the user's latent mean (no grad)."""
        latent = self.latent_hidden(state["mean"].to(self.device, self.dtype))     # [C, h]
        return self._chunked_margins(comparisons, latent, self.decoder_rows,
                                     lambda chosen, rejected, lat: self.reward(chosen, lat) - self.reward(rejected, lat))

    def _shared_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _per_user_parameters(self) -> int:
        return self.L

    def _parameter_note(self) -> str:
        return ("VPL: encoder + decoder; per user the latent z (L numbers, inferred by the encoder, "
                "not fitted)")


METHODS = {"PAL": PAL, "PAL-A": PAL_A, "VPL": VPL}
PAL_GRID = {"K": (1, 2, 4, 8), "d_pref": (128, 512)}   # PAL's K and width, chosen on the validation split
VALIDATION_FRACTION = 0.1     # PAL's held-out share of the training comparisons (dataset_factory.py)
MIN_VALIDATION_USER = 5       # a user with fewer training comparisons keeps them all for training


def selection_grid(grid: dict | None = None) -> dict:
    """PAL's selection grid: PAL_GRID with the keys `grid` gives replaced ({"K": [2]} keeps the default
    widths), checked: only K and d_pref, each a non-empty list of positive integers, else a SettingsError."""
    grid = {} if grid is None else grid
    if not isinstance(grid, dict) or set(grid) - set(PAL_GRID):
        raise harness.SettingsError(f"error: PAL's grid takes {{{', '.join(map(repr, PAL_GRID))}}} (each a list of "
                                    f"positive integers), got {grid!r}")
    merged = {**PAL_GRID, **grid}
    for name, values in merged.items():
        if (not isinstance(values, (list, tuple)) or not values
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)):
            raise harness.SettingsError(f"error: PAL's grid {name!r} must be a non-empty list of positive integers, "
                                        f"got {values!r}")
    return {name: tuple(values) for name, values in merged.items()}


def check_methods(methods, hyper: dict | None = None) -> list[str]:
    """The method names, checked: an unknown one is a SettingsError that lists the known ones; so is a
    hyperparameter in `hyper` ({method: {name: value}}) for a method not run or unknown to its method."""
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods or [])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise harness.SettingsError(f"error: unknown baseline(s) {', '.join(map(repr, unknown))}; known: "
                                    f"{', '.join(METHODS)} (each is also run anchored on the head, as "
                                    f"<name>{ANCHORED})")
    if len(set(methods)) != len(methods):
        raise harness.SettingsError(f"error: a baseline is listed twice in {methods}")
    for method, values in (hyper or {}).items():
        if method not in methods:
            raise harness.SettingsError(f"error: hyperparameters given for {method}, which is not among the "
                                        f"baselines run ({', '.join(methods) or 'none'})")
        unknown = sorted(set(values) - set(METHODS[method].DEFAULTS) - ({"grid"} if METHODS[method].uses_K else set()))
        if unknown:
            raise harness.SettingsError(f"error: unknown hyperparameter(s) {', '.join(unknown)} for {method}; known: "
                                        f"{', '.join(sorted(METHODS[method].DEFAULTS))}")
        _check_values(method, values)
    return methods


def _check_values(method: str, values: dict) -> None:
    """Each hyperparameter value of the kind its default is (sizes and counts: integers >= 1, None where
    the default is None; rates and weights: finite numbers >= 0; names: text), and the names among the
    method's choices (a throwaway model is built on d = 2), so a bad value stops a run before any fit."""
    for name, value in values.items():
        if name == "grid":
            selection_grid(value)
            continue
        default = METHODS[method].DEFAULTS[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, str):
            ok, kind = isinstance(value, str), "text"
        elif default is None or isinstance(default, int):
            ok = (value is None and default is None) or (isinstance(value, int) and not isinstance(value, bool)
                                                         and value >= 1)
            kind = "an integer >= 1" + (" or null" if default is None else "")
        else:
            ok, kind = number and math.isfinite(value) and value >= 0, "a finite number >= 0"
        if not ok:
            raise harness.SettingsError(f"error: {method}'s {name} must be {kind}, got {value!r}")
    build(method, 2, 1, K=1, device="cpu", **{k: v for k, v in values.items() if k != "grid"})


def build(method: str, d: int, n_users: int, *, K=None, seed=0, device=None, dtype=torch.float32,
          progress=False, anchor=None, **hyper) -> _Baseline:
    """An unfitted model of `method` (its parameters drawn from `seed`; anchored on `anchor`, the head
    V_ref, when given)."""
    (method,) = check_methods([method])
    return METHODS[method](d, n_users, K, seed=seed, device=device, dtype=dtype, progress=progress, anchor=anchor,
                           **hyper)


def fit(method: str, train: utils.Comparisons, *, K=None, seed=0, device=None, dtype=None, progress=False,
        anchor=None, **hyper) -> _Baseline:
    """Fit `method` ("PAL", "PAL-A" or "VPL") on the seen users' training comparisons, without selection.

    K: PAL's number of prototypes (VPL ignores it: its latent size is `latent_dim`). anchor: the head
    V_ref for the "+ref" variant. hyper: the method's DEFAULTS to override. dtype None: the data's.
    Returns the fitted model (`seen_state` holds the training users' state)."""
    dtype = train.dtype if dtype is None else dtype
    model = build(method, train.d, train.n_users, K=K, seed=seed, device=device, dtype=dtype,
                  progress=progress, anchor=anchor, **hyper)
    return model.fit(train)


def validation_split(train: utils.Comparisons, seed: int, fraction: float = VALIDATION_FRACTION):
    """(fit part, validation part) of the seen users' training comparisons: of each user with at least
    MIN_VALIDATION_USER comparisons, round(fraction x m) (at least 1) held out at random (seeded), as PAL's
    train_test_split stratified by user; both parts keep every user's index."""
    g = utils.cpu_generator(seed)
    users = train.users.cpu()
    order = torch.randperm(train.N, generator=g)
    order = order[torch.argsort(users[order], stable=True)]               # random within each user
    counts = torch.bincount(users, minlength=train.n_users)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(train.N) - starts[users[order]]
    held = torch.where(counts >= MIN_VALIDATION_USER, (fraction * counts.double()).round().long().clamp(min=1), 0)
    valid = torch.zeros(train.N, dtype=torch.bool)
    valid[order[rank < held[users[order]]]] = True
    valid = valid.to(train.device)
    return train.select(~valid), train.select(valid)


def fit_selected(method: str, train: utils.Comparisons, *, seed: int, grid: dict | None = None, device=None,
                 dtype=None, progress=False, anchor=None, **hyper) -> _Baseline:
    """PAL (or PAL-A) with the code's model selection: a validation split of `train` (validation_split),
    every (K, d_pref) of `grid` (selection_grid: PAL_GRID, the keys given replaced) trained on the rest
    with its best epoch kept, and the candidate with the lowest validation loss returned; its `selection`
    records the grid, every candidate's loss and epoch, and the choice."""
    grid = selection_grid(grid)
    fit_part, valid = validation_split(train, utils.derived_seed(seed, 7))
    if valid.N == 0:
        raise SystemExit(f"error: no seen user has {MIN_VALIDATION_USER} or more training comparisons, so {method} "
                         f"has no validation split to select its epoch, K and width on")
    best, candidates = None, []
    # never wider than the backbone: the code's configs set the width to the encoder's own
    widths = sorted({min(int(w), train.d) for w in grid["d_pref"]})
    for K, width in harness.progress([(K, w) for K in grid["K"] for w in widths], f"{method} selection"):
        model = build(method, train.d, train.n_users, K=K, seed=seed, device=device,
                      dtype=train.dtype if dtype is None else dtype, progress=progress, anchor=anchor,
                      **{**hyper, "d_pref": width}).fit(fit_part, valid)
        candidates.append({"K": K, "d_pref": width, **{k: model.selection[k] for k in ("epoch", "validation_loss")}})
        if best is None or model.selection["validation_loss"] < best.selection["validation_loss"]:
            best = model
    best.selection = {"chosen": {"K": best.K, "d_pref": best.hyper["d_pref"], "epoch": best.selection["epoch"]},
                      "validation_loss": best.selection["validation_loss"], "candidates": candidates,
                      "validation": {"comparisons": valid.N, "users": int((valid.counts() > 0).sum()),
                                     "fit_comparisons": fit_part.N}}
    return best


# -----------------------------------------------------------------------------
# the comparison: every method fitted and scored on LoRe's groups and seeds


def _check_groups(groups: dict, methods, dataset=None) -> dict:
    missing = [g for g in utils.GROUP_NAMES if g not in groups]
    if missing:
        raise ValueError(f"groups needs {', '.join(utils.GROUP_NAMES)}; missing {', '.join(missing)}")
    where = f" on {dataset}" if dataset else ""
    for name in ("unseen_train", "unseen_test"):
        group = groups[name]
        if group.n_users == 0 or group.N == 0:
            raise SystemExit(
                f"error: the baselines {', '.join(methods)}{where} are evaluated on unseen users after "
                f"few-shot fitting, but the {name} group is empty ({group.n_users} users, {group.N} "
                f"comparisons): this data set needs unseen users with few-shot (unseen_train) and test "
                f"(unseen_test) comparisons; set baselines = [] to run without them")
    if groups["seen_train"].N == 0:
        raise SystemExit(f"error: the seen_train group{where} has no comparisons to fit the baselines on")
    for a, b in (("seen_train", "seen_test"), ("unseen_train", "unseen_test")):
        if groups[a].n_users != groups[b].n_users:
            raise ValueError(f"{a} has {groups[a].n_users} users and {b} {groups[b].n_users}: the two groups "
                             f"must index the same users")
    if len({g.d for g in groups.values()}) != 1:
        raise ValueError(f"every group needs the same d, got {[g.d for g in groups.values()]}")
    return groups


def evaluate_methods(methods, groups: dict, seeds=(0,), *, V_ref=None, grid=None, hyper=None, device=None,
                     dtype=None, progress=False, dataset=None) -> list[dict]:
    """Fit, personalise and evaluate every method for every seed on the same groups; one result each, and
    with V_ref (the backbone's head) each method again anchored on it ("<name>+ref").

    groups: {"seen_train", "seen_test", "unseen_train", "unseen_test"} Comparisons with the user indexing
    of the LoRe pipeline (seen groups share their users, unseen groups theirs). For each method and seed
    s: fit on seen_train with seed utils.derived_seed(s, 0) (the seed of LoRe's fits; PAL with its model
    selection on a validation split of seen_train, fit_selected over `grid`; VPL for its cited budget,
    no selection), evaluate seen_train and seen_test with the seen users' state, personalise on
    unseen_train (seed utils.derived_seed(s, 1)) and evaluate unseen_train and unseen_test. hyper:
    {method: {name: value}} (for PAL also "grid": its selection grid {"K": [...], "d_pref": [...]}). Returns per method {"method", "K", "seeds", "per_seed": [{group: per-user
    accuracy [C]}], "counts" (utils.group_counts), "parameters" (for the seen users), "hyperparameters"
    (effective, of the first seed's model), "optimizer_steps" [per seed], "selected_on" (what was chosen
    on which split), "selection" [per seed], "seconds"}: the arguments of reports.paper_row."""
    hyper = dict(hyper or {})
    methods = check_methods(methods, hyper)
    groups = _check_groups(groups, methods, dataset)
    results = []
    for method in methods:
        own = dict(hyper.get(method, {}))
        method_grid = own.pop("grid", grid)
        for anchor in [None] + ([V_ref] if V_ref is not None else []):
            per_seed, models, start = [], [], time.time()
            for seed in seeds:
                print(f"{METHODS[method].name}{ANCHORED if anchor is not None else ''}: seed {seed}", flush=True)
                options = dict(seed=utils.derived_seed(seed, 0), device=device, dtype=dtype, progress=progress,
                               anchor=anchor, **own)
                model = (fit_selected(method, groups["seen_train"], grid=method_grid, **options)
                         if METHODS[method].uses_K else fit(method, groups["seen_train"], **options))
                new_users = model.personalize(groups["unseen_train"], seed=utils.derived_seed(seed, 1))
                per_seed.append({
                    "seen_train": model.per_user_accuracy(groups["seen_train"], model.seen_state),
                    "seen_test": model.per_user_accuracy(groups["seen_test"], model.seen_state),
                    "unseen_train": model.per_user_accuracy(groups["unseen_train"], new_users),
                    "unseen_test": model.per_user_accuracy(groups["unseen_test"], new_users)})
                models.append(model)
            first = models[0]
            selected_on = (f"validation: {VALIDATION_FRACTION:.0%} of each seen user's training comparisons (users "
                           f"with >= {MIN_VALIDATION_USER}), seeded per seed; the epoch, K and d_pref with the lowest "
                           f"validation loss over the grid {selection_grid(method_grid)}"
                           if METHODS[method].uses_K else
                           "nothing: the cited trainer keeps the last step (no validation split, no checkpoint choice)")
            chosen_K = "/".join(str(k) for k in dict.fromkeys(m.K for m in models))
            label = f"{first.name} (K = {chosen_K}, chosen on validation)" if first.uses_K else first.name
            results.append({"method": first.name, "label": label, "K": first.K, "seeds": list(seeds),
                            "per_seed": per_seed,
                            "counts": utils.group_counts(groups),
                            "parameters": first.parameter_counts(groups["seen_train"].n_users),
                            # seeds may select different K / widths: each seed's counts (the table shows all)
                            "parameters_per_seed": [m.parameter_counts(groups["seen_train"].n_users)
                                                    for m in models],
                            "hyperparameters": {**first.hyper, **({"K": first.K} if first.uses_K else {})},
                            "optimizer_steps": [m.optimizer_steps for m in models], "selected_on": selected_on,
                            "selection": [m.selection if first.uses_K else None for m in models],
                            "seconds": round(time.time() - start, 2)})
    return results

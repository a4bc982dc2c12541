"""The planted world of the offline default: a general reward, and users who deviate from it in a few
directions (the method's premise, not a finding), in the tiny backbone's own embedding space. Every
choice and its reason is listed in offline/__init__.py; this module builds the population.

Every planted user i scores a conversation with embedding e as

    r_i(e) = e . (g + U* w_i) / 100          (the method's 1/100 temperature, utils.TEMPERATURE)

- g, the general-quality direction, is the backbone's own reward head (score.weight.T of the tiny
  model, offline/tiny_model.py) rescaled, so "ref" (K = 0) reads exactly the general part.
- U* [d, B*]: N_PERSONAL personal directions drawn at random in R^d (isotropic: no preferred subspace),
  orthogonal to the head and to each other. w_i ~ Dirichlet(concentration).
- The balance: over random pairs of responses to the same prompt, the general part's margin
  (e_a - e_b) . g / 100 has standard deviation GENERAL_MARGIN_STD and a pure user's personal part
  (w_i a vertex of the simplex) PERSONAL_MARGIN_STD x personal_scale. personal_scale = 0 is the null
  world: every user's reward is g alone, with the same Bradley-Terry label noise, and an honest pipeline
  finds no personal gain there.
Since w_i sums to one, r_i(e) = e . D w_i / 100 with D = g 1^T + U* (columns g + U*_k): the planted
world is itself a LoRe model of rank B*. `PlantedPopulation.directions` stores D; `.general` stores g.

Labels are Bradley-Terry draws from r_i (PRISM: a softmax choice among a turn's candidates), so the
Bayes-optimal accuracy is known and below 1. PersonalLLM's 10 reward models are built the same way (head
+ deviation) and its simulated users mix them (offline/personalllm.py). The same g decides the correct
answers of the offline RewardBench 2 rows (offline/rewardbench2.py, with noise).

Whether alpha = 1e4 (PRISM's real default) can improve on the head here is not built in: the cosine pull
keeps a basis within an angle of ~1e-2 of the head, and whether so small a turn changes rankings depends
on how loud the embedding's channels are (the tiny model copies a measured profile) and where the users'
tastes lie (isotropic here: an assumption). The pipelines measure what it does and report it with its
interval.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import harness
from utils import TEMPERATURE, Comparisons, cpu_generator

GENERAL_MARGIN_STD = 2.5     # std of the general part's margin over random same-prompt pairs (after 1/100)
PERSONAL_MARGIN_STD = 3.0    # ... and of a pure user's personal part (times personal_scale)
N_PERSONAL = 3               # planted personal directions (B*)
CONCENTRATION = 0.1          # users' Dirichlet concentration over them


def generator_version(own: int) -> str:
    """A generator's version string: its own number and the tiny model's version, whose head and
    embeddings the planted labels depend on (a change of either must rebuild the offline data)."""
    from offline.tiny_model import VERSION
    return f"{own}+tiny-model-v{VERSION}"


def pair_std(centred: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Std of (e_a - e_b) . u over random pairs, for each column u of directions [d, B], from
    embeddings already centred within their groups (responses to one prompt): sqrt(2) * std(e . u)."""
    return np.sqrt(2.0) * (np.asarray(centred, dtype=np.float64) @ directions).std(0)


class PlantedPopulation:
    """Directions D [d, B*] (columns: general + one personal direction each), user weights [n_users, B*]
    (rows on the simplex) and the general direction g [d] (None for a population without one)."""

    def __init__(self, directions: np.ndarray, user_weights: np.ndarray, general: np.ndarray | None = None):
        self.directions = np.asarray(directions, dtype=np.float64)
        self.user_weights = np.asarray(user_weights, dtype=np.float64)
        self.general = None if general is None else np.asarray(general, dtype=np.float64)

    @classmethod
    def plant(cls, embeddings: np.ndarray, head: np.ndarray, n_directions: int, n_users: int, seed: int,
              general_margin_std: float = GENERAL_MARGIN_STD, personal_margin_std: float = PERSONAL_MARGIN_STD,
              concentration: float = 0.1) -> "PlantedPopulation":
        """The general direction g = head rescaled so its margin over random pairs of `embeddings` [n, d]
        (centred within their groups by the caller) has std `general_margin_std`; `n_directions` personal
        directions drawn at random in R^d (isotropic: no preferred subspace), orthogonal to the head and to
        each other, each with margin std `personal_margin_std` (0: no personal part, every user's reward
        is g); user weights Dirichlet(`concentration`)."""
        rng = np.random.default_rng(seed)
        E = np.asarray(embeddings, dtype=np.float64)
        h = np.asarray(head, dtype=np.float64).reshape(-1)
        if h.shape[0] != E.shape[1]:
            raise ValueError(f"the head has dimension {h.shape[0]}, the embeddings {E.shape[1]}")
        h = h / np.linalg.norm(h)
        general = h * (general_margin_std * TEMPERATURE / pair_std(E, h[:, None])[0])
        U = rng.standard_normal((E.shape[1], n_directions))              # [d, B*], isotropic
        U -= np.outer(h, h @ U)                                          # personal: orthogonal to the head
        U, _ = np.linalg.qr(U)                                           # and to each other
        U = U * (personal_margin_std * TEMPERATURE / pair_std(E, U))
        weights = rng.dirichlet(concentration * np.ones(n_directions), size=n_users)
        return cls(general[:, None] + U, weights, general)

    def rewards(self, embeddings: np.ndarray, users: np.ndarray) -> np.ndarray:
        """r[n] = e_n . D w_{users[n]} / 100 for embeddings [n, d] and user indices [n]."""
        E = np.asarray(embeddings, dtype=np.float64)
        return np.einsum("nb,nb->n", E @ self.directions, self.user_weights[users]) / TEMPERATURE

    def general_rewards(self, embeddings: np.ndarray) -> np.ndarray:
        """The general part alone, e . g / 100 [n] (what the backbone's head ranks by)."""
        return np.asarray(embeddings, dtype=np.float64) @ self.general / TEMPERATURE

    def preference_probability(self, emb_a: np.ndarray, emb_b: np.ndarray, users: np.ndarray) -> np.ndarray:
        """P(user prefers a over b) = sigmoid(r(a) - r(b)) under Bradley-Terry."""
        return 1.0 / (1.0 + np.exp(-(self.rewards(emb_a, users) - self.rewards(emb_b, users))))

    def draw_labels(self, emb_a, emb_b, users, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Bradley-Terry draws: (a_wins [n] bool, Bayes-optimal correctness probability [n])."""
        p = self.preference_probability(emb_a, emb_b, users)
        return rng.random(len(p)) < p, np.maximum(p, 1.0 - p)

    def save(self, path: Path, extra_arrays: dict | None = None, **extra) -> None:
        """Ground truth beside the data: safetensors arrays (with `extra_arrays`) + JSON summary (with
        `extra`), written as one set (harness.atomic_paths) with the umask's permissions."""
        from safetensors.numpy import save_file
        arrays = {"directions": self.directions, "user_weights": self.user_weights, **(extra_arrays or {})}
        if self.general is not None:
            arrays["general"] = self.general
        summary = {"n_directions": self.directions.shape[1], "n_users": self.user_weights.shape[0],
                   "temperature": TEMPERATURE, **extra}
        with harness.atomic_paths(*truth_files(path)) as (arrays_tmp, summary_tmp):
            save_file(arrays, str(arrays_tmp))
            summary_tmp.write_text(json.dumps(summary, indent=1))

    @classmethod
    def load(cls, path: Path) -> "PlantedPopulation":
        from safetensors.numpy import load_file
        return cls.from_arrays(load_file(str(Path(path).with_suffix(".safetensors"))))

    @classmethod
    def from_arrays(cls, arrays: dict) -> "PlantedPopulation":
        return cls(arrays["directions"], arrays["user_weights"], arrays.get("general"))


def truth_files(stem) -> list[Path]:
    """The files of a population saved at `stem` (PlantedPopulation.save): its arrays and its summary."""
    return [Path(stem).with_suffix(".safetensors"), Path(stem).with_suffix(".json")]


def read_truth(stem, made_by: str) -> tuple[dict, dict]:
    """(arrays, summary) of a population saved at `stem`; an exit naming the file and `made_by` (the
    prepare command, which rebuilds a damaged generated file) when either is missing or damaged."""
    from safetensors.numpy import load_file
    arrays_file, summary_file = truth_files(stem)
    try:
        return load_file(str(arrays_file)), json.loads(summary_file.read_text())
    except Exception as e:
        raise SystemExit(f"error: the planted ground truth {arrays_file} (with {summary_file.name}) is missing or "
                         f"damaged ({type(e).__name__}); run `{made_by}` to rebuild it") from None


def centred_within(embeddings: np.ndarray, group_sizes) -> np.ndarray:
    """Embeddings [n, d] minus the mean of their group (consecutive rows, `group_sizes` summing to n):
    comparisons are differences within a group (responses to one prompt), so plant in that variation."""
    E = np.asarray(embeddings, dtype=np.float64).copy()
    start = 0
    for m in group_sizes:
        E[start:start + m] -= E[start:start + m].mean(0)
        start += m
    if start != len(E):
        raise ValueError(f"group sizes sum to {start}, not to the {len(E)} embeddings")
    return E


def tiny_head() -> np.ndarray:
    """The tiny backbone's reward head score.weight.T as a vector [d] (float64)."""
    from safetensors.numpy import load_file

    from offline.tiny_model import tiny_model_path

    weights = load_file(str(Path(tiny_model_path()) / "model.safetensors"))
    return weights["score.weight"].astype(np.float64).reshape(-1)


def embed_for_planting(conversations: list[list[dict]], batch_size: int = 64) -> np.ndarray:
    """Embeddings [n, d] of conversations with the tiny model, through the shared engine."""
    from embedding import embed_conversations, load_reward_model
    from offline.tiny_model import tiny_model_path

    torch.manual_seed(0)
    model, tokenizer = load_reward_model(tiny_model_path(), device="cpu")
    return embed_conversations(model, tokenizer, conversations, batch_size=batch_size).numpy()


# -----------------------------------------------------------------------------
# the same population in a plain feature space (tests and benchmarks): x ~ N(0, I_d), no model


def random_population(num_users: int, num_features: int, num_directions: int, *, concentration: float = 0.3,
                      margin_std: float = 4.0, seed: int = 0) -> PlantedPopulation:
    """Orthogonal directions U* [d, B*] in R^d, each of norm margin_std * 100, so that a pure user's
    margin x . U* w / 100 over x ~ N(0, I_d) has std margin_std; users Dirichlet(concentration) rows
    (small: users differ more)."""
    rng = np.random.default_rng(seed)
    directions, _ = np.linalg.qr(rng.standard_normal((num_features, num_directions)))
    return PlantedPopulation(directions * margin_std * TEMPERATURE,
                             rng.dirichlet(concentration * np.ones(num_directions), size=num_users))


def simulate_comparisons(population: PlantedPopulation, num_comparisons, *, seed: int = 0):
    """Comparisons of every planted user in feature space: x ~ N(0, I_d), the user prefers x's first side
    with p = sigmoid(x . U* w_i / 100), and the feature is oriented chosen - rejected. num_comparisons:
    one int for all users or one per user. Returns (Comparisons, the Bayes-optimal probability of a
    correct prediction max(p, 1 - p) [N])."""
    V_star = torch.as_tensor(population.directions, dtype=torch.float32)
    W_star = torch.as_tensor(population.user_weights, dtype=torch.float32)
    n_users = len(W_star)
    counts = torch.as_tensor(num_comparisons).long().reshape(-1).expand(n_users) if np.ndim(num_comparisons) == 0 \
        else torch.as_tensor(num_comparisons).long()
    users = torch.repeat_interleave(torch.arange(n_users), counts)
    g = cpu_generator(seed)
    x = torch.randn(len(users), V_star.shape[0], generator=g)
    p = torch.sigmoid((x @ V_star * W_star[users]).sum(1) / TEMPERATURE)
    first_wins = torch.rand(len(users), generator=g) < p
    features = torch.where(first_wins[:, None], x, -x)
    return Comparisons.from_features(users, n_users, features), torch.maximum(p, 1 - p)


def bayes_accuracy(comparisons: Comparisons, bayes_probability: torch.Tensor) -> float:
    """Expected accuracy of the planted (Bayes-optimal) model, averaged per user then over users, as
    the reported accuracies are."""
    per_user = torch.zeros(comparisons.n_users, dtype=torch.float64)
    per_user.index_add_(0, comparisons.users.cpu(), bayes_probability.double().cpu())
    per_user = per_user / comparisons.counts().cpu()
    return float(per_user[~per_user.isnan()].mean())


def planted_accuracy(truth: Path, ids_key: str, groups: dict, users: dict, made_by: str) -> dict:
    """The offline report every train_basis.py prints: the accuracy of the planted (true) reward of every
    user on each comparison group, computed as the LoRe accuracies are (per user, then the mean over
    users), {group: mean}: the ceiling a learned reward can reach on the same comparisons. `truth`: a
    saved PlantedPopulation whose JSON lists the user ids under `ids_key` in its row order; `groups`
    {name: Comparisons}; `users` {"seen" | "unseen": [ids]} in the groups' user order (group names start
    with "seen" or "unseen"); made_by: the command that rebuilds it (read_truth)."""
    import utils

    arrays, summary = read_truth(truth, made_by)
    population = PlantedPopulation.from_arrays(arrays)
    position = {u: i for i, u in enumerate(summary[ids_key])}
    out = {}
    for name, comparisons in groups.items():
        weights = population.user_weights[[position[u] for u in users["seen" if name.startswith("seen") else "unseen"]]]
        out[name] = utils.accuracy_mean_std(comparisons, torch.tensor(population.directions, dtype=comparisons.dtype),
                                            torch.tensor(weights, dtype=comparisons.dtype))[0]
    return out

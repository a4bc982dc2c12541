"""A planted population in the tiny model's own embedding space, shared by every offline generator.

Latent reward directions U* (d x B*) span high-variance directions of the embeddings, users are
Dirichlet mixtures w ~ Dir(concentration), and user i prefers a over b with the Bradley-Terry
probability sigmoid((e(a) - e(b)) . U* w_i / 100), the method's own 1/100 temperature. So LoRe has a
real low-rank structure to recover, and the Bayes-optimal accuracy is known exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from utils import TEMPERATURE, Comparisons, _generator


class PlantedPopulation:
    """Directions U* [d, B*] and user weights [n_users, B*] (rows on the simplex)."""

    def __init__(self, directions: np.ndarray, user_weights: np.ndarray):
        self.directions = np.asarray(directions, dtype=np.float64)
        self.user_weights = np.asarray(user_weights, dtype=np.float64)

    @classmethod
    def plant(cls, embeddings: np.ndarray, n_directions: int, n_users: int, seed: int,
              margin_std: float = 4.0, concentration: float = 0.3) -> "PlantedPopulation":
        """Directions drawn in the top principal subspace of `embeddings` [n, d], each scaled so that
        its margin over a random pair of embeddings has std `margin_std` after the 1/100 temperature.
        A small Dirichlet concentration makes users differ (mostly one or two directions each)."""
        rng = np.random.default_rng(seed)
        E = np.asarray(embeddings, dtype=np.float64)
        centred = E - E.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        top = vt[: max(2 * n_directions, n_directions + 2)]              # [m, d] high-variance subspace
        U = (rng.standard_normal((n_directions, top.shape[0])) @ top).T  # [d, B*]
        U, _ = np.linalg.qr(U)                                           # orthonormal, distinct tastes
        pair_std = np.sqrt(2.0) * (centred @ U).std(0)                   # std of (e_a - e_b) . u
        U = U * (margin_std * TEMPERATURE / pair_std)
        weights = rng.dirichlet(concentration * np.ones(n_directions), size=n_users)
        return cls(U, weights)

    def rewards(self, embeddings: np.ndarray, users: np.ndarray) -> np.ndarray:
        """r[n] = e_n . U* w_{users[n]} / 100 for embeddings [n, d] and user indices [n]."""
        E = np.asarray(embeddings, dtype=np.float64)
        return np.einsum("nb,nb->n", E @ self.directions, self.user_weights[users]) / TEMPERATURE

    def preference_probability(self, emb_a: np.ndarray, emb_b: np.ndarray, users: np.ndarray) -> np.ndarray:
        """P(user prefers a over b) = sigmoid(r(a) - r(b)) under Bradley-Terry."""
        return 1.0 / (1.0 + np.exp(-(self.rewards(emb_a, users) - self.rewards(emb_b, users))))

    def draw_labels(self, emb_a, emb_b, users, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Bradley-Terry draws: (a_wins [n] bool, Bayes-optimal correctness probability [n])."""
        p = self.preference_probability(emb_a, emb_b, users)
        return rng.random(len(p)) < p, np.maximum(p, 1.0 - p)

    def save(self, path: Path, **extra) -> None:
        """Ground truth beside the data: safetensors arrays + JSON summary."""
        from safetensors.numpy import save_file
        path = Path(path)
        save_file({"directions": self.directions, "user_weights": self.user_weights},
                  str(path.with_suffix(".safetensors")))
        summary = {"n_directions": self.directions.shape[1], "n_users": self.user_weights.shape[0],
                   "temperature": TEMPERATURE, **extra}
        path.with_suffix(".json").write_text(json.dumps(summary, indent=1))

    @classmethod
    def load(cls, path: Path) -> "PlantedPopulation":
        from safetensors.numpy import load_file
        arrays = load_file(str(Path(path).with_suffix(".safetensors")))
        return cls(arrays["directions"], arrays["user_weights"])


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
    g = _generator(seed)
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


def planted_accuracy(truth: Path, ids_key: str, groups: dict, users: dict) -> dict:
    """The offline report every train_basis.py prints: the accuracy of the planted (true) reward of every
    user on each comparison group, computed as the LoRe accuracies are (per user, then the mean over
    users), {group: mean}: the ceiling a learned reward can reach on the same comparisons. `truth`: a
    saved PlantedPopulation whose JSON lists the user ids under `ids_key` in its row order; `groups`
    {name: Comparisons}; `users` {"seen" | "unseen": [ids]} in the groups' user order (group names start
    with "seen" or "unseen")."""
    import utils

    population = PlantedPopulation.load(truth)
    position = {u: i for i, u in enumerate(json.loads(Path(truth).with_suffix(".json").read_text())[ids_key])}
    out = {}
    for name, comparisons in groups.items():
        weights = population.user_weights[[position[u] for u in users["seen" if name.startswith("seen") else "unseen"]]]
        out[name] = utils.accuracy_mean_std(comparisons, torch.tensor(population.directions, dtype=comparisons.dtype),
                                            torch.tensor(weights, dtype=comparisons.dtype))[0]
    return out

"""The simulated PersonalLLM population, vectorised over users, as indices into the embedding table.

PersonalLLM has no human labels: a user is a Dirichlet(0.1) mixture w of the 10 reward models, and on
a prompt p the user prefers the best of the 8 responses over the worst under its scores
rewards[p] @ w ([8]). A comparison is stored as (user, chosen row, rejected row) with row = p * 8 + j
in the split's embedding table [P * 8, d] (response j + 1 of prompt p), never as a d-vector per user.

Tie rule: `argmax` / `argmin` take the FIRST response among equal scores. When all 8 scores are equal
(best == worst) the prompt gives that user no comparison; such cases are skipped and counted.

Also the embedding script's conversations and the loader of what both trainers read (user_groups).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import harness  # noqa: E402
import utils  # noqa: E402

CHUNK_ELEMENTS = 1 << 24  # users per chunk such that the gathered scores stay ~128 MB (float64)


def prompts_per_user(fraction: float, n_prompts: int, what: str, setting: str) -> int:
    """int(fraction * n_prompts) as the original; a count of 0 or above n_prompts is a settings error."""
    count = int(fraction * n_prompts)
    if count < 1 or count > n_prompts:
        raise harness.SettingsError(
            f"error: --{setting}={fraction} gives int({fraction} * {n_prompts}) = {count} train prompts per "
            f"{what} user (the split has {n_prompts} prompts); choose a fraction in "
            f"[{1 / n_prompts:.4g}, 1]")
    return count


def sample_prompts(rng: np.random.Generator, n_users: int, n_prompts: int, per_user: int) -> np.ndarray:
    """[n_users, per_user] prompt indices, a uniform random subset (without replacement) per user,
    sorted within each user. One [n_users, n_prompts] draw, no loop over users."""
    keys = rng.random((n_users, n_prompts))
    subset = np.argpartition(keys, per_user - 1, axis=1)[:, :per_user] if per_user < n_prompts \
        else np.broadcast_to(np.arange(n_prompts), (n_users, n_prompts))
    return np.sort(subset, axis=1)


@dataclass
class ComparisonIndex:
    """Comparisons of one group as indices: users [N], chosen [N], rejected [N] (rows of the split's
    table), n_users; plus what was skipped (best == worst) and how many best / worst picks were ties."""
    users: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    n_users: int
    n_skipped: int = 0
    n_tied_best: int = 0
    n_tied_worst: int = 0

    @property
    def N(self) -> int:
        return int(len(self.users))

    def counts(self) -> dict:
        return {"users": self.n_users, "comparisons": self.N, "skipped_all_equal": self.n_skipped,
                "tied_best_first_taken": self.n_tied_best, "tied_worst_first_taken": self.n_tied_worst}

    def comparisons(self, table: torch.Tensor) -> utils.Comparisons:
        """The indexed utils.Comparisons over `table` [P * 8, d] (the table is shared, not copied)."""
        return utils.Comparisons(torch.from_numpy(self.users), self.n_users, table=table,
                                 chosen=torch.from_numpy(self.chosen), rejected=torch.from_numpy(self.rejected))


def best_worst_comparisons(rewards: np.ndarray, user_weights: np.ndarray, prompts: np.ndarray | None = None
                           ) -> ComparisonIndex:
    """Each user's (best, worst) response on each of its prompts.

    rewards [P, R, M] (R responses per prompt scored by M reward models), user_weights [C, M],
    prompts [C, m] prompt indices per user, or None for every prompt for every user. User c's score of
    response j on prompt p is rewards[p, j] @ user_weights[c]; chosen = p * R + argmax_j,
    rejected = p * R + argmin_j (first index among ties). Batched over chunks of users.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    weights = np.asarray(user_weights, dtype=np.float64)
    n_prompts, n_responses, n_models = rewards.shape
    if weights.ndim != 2 or weights.shape[1] != n_models:
        raise ValueError(f"user_weights must be [C, {n_models}], got shape {weights.shape}")
    n_users = weights.shape[0]
    per_user = n_prompts if prompts is None else prompts.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // max(1, per_user * n_responses * (1 if prompts is None else n_models)))
    users, chosen, rejected = [], [], []
    skipped = tied_best = tied_worst = 0
    for start in range(0, n_users, chunk):
        w = weights[start:start + chunk]                                       # [c, M]
        if prompts is None:
            p = np.broadcast_to(np.arange(n_prompts), (len(w), n_prompts))
            scores = np.einsum("prm,cm->cpr", rewards, w)                      # [c, P, R]
        else:
            p = prompts[start:start + chunk]
            scores = np.einsum("cprm,cm->cpr", rewards[p], w)                  # [c, m, R]
        best, worst = scores.argmax(-1), scores.argmin(-1)                    # first among ties
        top, bottom = scores.max(-1, keepdims=True), scores.min(-1, keepdims=True)
        valid = best != worst                                                  # False iff all R equal
        skipped += int((~valid).sum())
        tied_best += int(((scores == top).sum(-1) > 1)[valid].sum())
        tied_worst += int(((scores == bottom).sum(-1) > 1)[valid].sum())
        u = np.broadcast_to(np.arange(start, start + len(w))[:, None], p.shape)
        users.append(u[valid])
        chosen.append((p * n_responses + best)[valid])
        rejected.append((p * n_responses + worst)[valid])
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return ComparisonIndex(cat(users), cat(chosen), cat(rejected), n_users, skipped, tied_best, tied_worst)


@dataclass
class Population:
    """The four groups (seen/unseen x train/test) plus the users' mixture weights (rows on the simplex)."""
    weights_seen: np.ndarray          # [N, M]
    weights_unseen: np.ndarray        # [N_unseen, M]
    seen_train: ComparisonIndex       # rows of the train table
    seen_test: ComparisonIndex        # rows of the test table
    unseen_train: ComparisonIndex     # few-shot data, rows of the train table
    unseen_test: ComparisonIndex      # rows of the test table
    settings: dict = field(default_factory=dict)

    def counts(self) -> dict:
        return {name: getattr(self, name).counts()
                for name in ("seen_train", "seen_test", "unseen_train", "unseen_test")}


def simulate_population(rewards_train: np.ndarray, rewards_test: np.ndarray, n_seen: int, n_unseen: int,
                        seen_per_user: int, unseen_per_user: int, concentration: float = 0.1,
                        seed: int = 0) -> Population:
    """User weights w ~ Dirichlet(concentration * ones(M)), seen users first then unseen;
    each seen user gets `seen_per_user` random train prompts (without replacement) as training data,
    each unseen user `unseen_per_user` as few-shot data; every user is tested on all test prompts.
    Draw order (one numpy Generator(seed)): seen weights, unseen weights, seen prompts, unseen prompts,
    so changing the unseen users' prompt count leaves the seen users' data unchanged."""
    rewards_train, rewards_test = np.asarray(rewards_train), np.asarray(rewards_test)
    if rewards_train.ndim != 3 or rewards_test.ndim != 3 or rewards_train.shape[1:] != rewards_test.shape[1:]:
        raise ValueError(f"rewards must be [P, R, M] with the same R, M in both splits, got "
                         f"{rewards_train.shape} and {rewards_test.shape}")
    n_models = rewards_train.shape[2]
    rng = np.random.default_rng(seed)
    weights_seen = rng.dirichlet(concentration * np.ones(n_models), size=n_seen)
    weights_unseen = rng.dirichlet(concentration * np.ones(n_models), size=n_unseen)
    prompts_seen = sample_prompts(rng, n_seen, rewards_train.shape[0], seen_per_user)
    prompts_unseen = sample_prompts(rng, n_unseen, rewards_train.shape[0], unseen_per_user)
    return Population(
        weights_seen, weights_unseen,
        seen_train=best_worst_comparisons(rewards_train, weights_seen, prompts_seen),
        seen_test=best_worst_comparisons(rewards_test, weights_seen),
        unseen_train=best_worst_comparisons(rewards_train, weights_unseen, prompts_unseen),
        unseen_test=best_worst_comparisons(rewards_test, weights_unseen),
        settings={"n_seen": n_seen, "n_unseen": n_unseen, "seen_prompts_per_user": seen_per_user,
                  "unseen_prompts_per_user": unseen_per_user, "dirichlet_concentration": concentration,
                  "seed": seed})


def per_user_copy_bytes(population: Population, d: int, itemsize: int = 4) -> int:
    """Memory the original's layout would need: one d-vector per comparison (x = e(chosen) - e(rejected))
    for every group, i.e. users x prompts x d x itemsize bytes (computed, never allocated)."""
    n = sum(g.N + g.n_skipped for g in (population.seen_train, population.seen_test,
                                        population.unseen_train, population.unseen_test))
    return n * d * itemsize


SPLITS = ("train", "test")
REWARDS_FILE = "rewards.safetensors"


def embedding_inputs(data_path: Path, made_by: str) -> tuple[list, dict]:
    """(the 8 conversations of every prompt of the train split, then of the test split, row-major:
    row offset[split] + p * 8 + j is [user: prompt p, assistant: response j + 1]; {split: offset})."""
    import pandas as pd

    import embedding
    from offline.personalllm import N_RESPONSES, response_columns

    conversations, offsets = [], {}
    for split in SPLITS:
        path = harness.require_file(Path(data_path) / f"{split}.parquet", made_by)
        try:
            frame = pd.read_parquet(path, columns=["prompt"] + response_columns())
        except Exception as e:
            raise SystemExit(f"error: {path} is unreadable ({type(e).__name__}); run `{made_by}`") from None
        offsets[split] = len(conversations)
        responses = frame[response_columns()].to_numpy()
        conversations += [embedding.conversation(prompt, response)
                          for prompt, row in zip(frame["prompt"], responses) for response in row]
        if len(conversations) - offsets[split] != N_RESPONSES * len(frame):
            raise SystemExit(f"error: {path} does not have {N_RESPONSES} responses per prompt; run `{made_by}`")
    return conversations, offsets


def load_rewards(data_path: Path, made_by: str) -> tuple[dict, list]:
    """({split: rewards [P, 8, M] float64}, reward-model names) written by prepare.py."""
    from safetensors import safe_open

    path = harness.require_file(Path(data_path) / REWARDS_FILE, made_by)
    try:
        with safe_open(str(path), framework="np") as f:
            rewards = {split: f.get_tensor(split).astype(np.float64) for split in SPLITS}
            reward_models = json.loads((f.metadata() or {}).get("reward_models", "[]"))
    except Exception as e:
        raise SystemExit(f"error: {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); run `{made_by}`") from None
    return rewards, reward_models


def user_groups(data_path: Path, population_settings: dict, prepare_command: str, embed_command: str):
    """The simulated population's four groups as utils.Comparisons over the one embedding table.

    population_settings: n_seen, n_unseen, seen_prompt_fraction, unseen_prompt_fraction (int(fraction *
    P_train) train prompts per user, as the original), concentration, seed (simulate_population).
    Returns (groups {name: Comparisons}, Population, V_ref [d, 1], reward-model names)."""
    import embedding

    rewards, reward_models = load_rewards(data_path, prepare_command)
    conversations, offsets = embedding_inputs(data_path, prepare_command)
    for split in SPLITS:
        P, R, _ = rewards[split].shape
        stored = (offsets["test"] if split == "train" else len(conversations) - offsets["test"]) // R
        if stored != P:
            raise SystemExit(f"error: {REWARDS_FILE} has {P} {split} prompts but {split}.parquet {stored}; run "
                             f"`{prepare_command}`")
    table, V_ref = embedding.load_embedded(data_path, conversations, embed_command)
    settings = dict(population_settings)
    P = rewards["train"].shape[0]
    seen_per_user = prompts_per_user(settings.pop("seen_prompt_fraction"), P, "seen", "seen_prompt_fraction")
    unseen_key = "unseen_prompt_fraction" if "unseen_prompt_fraction" in settings else "unseen_pool_fraction"
    unseen_per_user = prompts_per_user(settings.pop(unseen_key), P, "unseen", unseen_key)
    population = simulate_population(rewards["train"], rewards["test"], seen_per_user=seen_per_user,
                                     unseen_per_user=unseen_per_user, **settings)
    groups = {}
    for name, split in (("seen_train", "train"), ("seen_test", "test"), ("unseen_train", "train"),
                        ("unseen_test", "test")):
        index = getattr(population, name)
        groups[name] = utils.Comparisons(torch.from_numpy(index.users), index.n_users, table,
                                         torch.from_numpy(index.chosen) + offsets[split],
                                         torch.from_numpy(index.rejected) + offsets[split])
    return groups, population, V_ref, reward_models

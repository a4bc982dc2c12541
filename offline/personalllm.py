"""Generated PersonalLLM rows in the published format (namkoong-lab/PersonalLLM), from a planted model.

The real dataset has, per prompt, 8 responses from different LLMs and the raw scores of 10 reward
models on each (80 columns `response_{i}_{rm}`). Here the 10 "reward models" are linear in the tiny
model's embedding space, built on the offline world's premise (offline/planted.py): each is the
backbone's own head g (the general part, shared by all) plus its own deviation U* a_r, a Dirichlet
mixture |a_r| of a few personal directions U* whose entries get random signs, with its own scale and
offset (raw scores of real reward models differ in both) and a little noise:

    score[p, j, r] = offset_r + scale_r * (e(prompt_p, response_j) . (g + U* a_r) / 100 + noise_std * z)

(PlantedPopulation.plant with the 10 models as its "users"; margins measured over pairs of responses
to one prompt). The signs matter: the simulated comparisons are best-vs-worst of 8 responses, the
extremes of a user's reward, and with same-sign deviations every user's extremes are those of the
common mean deviation, so one shared reward (K = 1) would already get ~100%. A simulated PersonalLLM
user (w ~ Dirichlet over the 10 models) then ranks responses by the head plus a personal part in the
span of U*. Ground
truth ([g | U*] as directions, [1 | a_r] as user_weights, scales, offsets, g) is saved beside the data
with the generator's version. Same seed -> byte-identical files.

Size: N_TRAIN_PROMPTS train prompts, so that the real simulation fractions (0.5% and 0.1% of the train
prompts per seen / unseen user) give 25 and 5 prompts per user (the real 9,402 prompts give 47 and 9).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedding import conversation
from offline.planted import (
    CONCENTRATION,
    GENERAL_MARGIN_STD,
    N_PERSONAL,
    PERSONAL_MARGIN_STD,
    TEMPERATURE,
    PlantedPopulation,
    centred_within,
    embed_for_planting,
    generator_version,
    read_truth,
    tiny_head,
)
from offline.text import sentence

# The published format of namkoong-lab/PersonalLLM. The order of REWARD_MODELS defines the reward tensor's last axis.
REWARD_MODELS = ("gemma_2b", "gemma_7b", "mistral_raft", "llama3_sfairx", "oasst_deberta_v3",
                 "beaver_7b", "oasst_pythia_7b", "oasst_pythia_1b", "mistral_ray", "mistral_weqweasdas")
N_RESPONSES = 8
SPLITS = ("train", "test")
RAW_FILES = {split: f"{split}-00000-of-00001.parquet" for split in SPLITS}  # the hub's parquet layout

# Stand-ins for the generating LLMs and prompt sources of the real rows (names only).
RESPONSE_MODELS = ("offline-gen-alpha", "offline-gen-bravo", "offline-gen-charlie", "offline-gen-delta",
                   "offline-gen-echo", "offline-gen-foxtrot", "offline-gen-golf", "offline-gen-hotel")
SUBSETS = ("offline_chat", "offline_advice", "offline_code", "offline_facts")

GROUND_TRUTH = "ground_truth"  # .safetensors + .json beside the data
GENERATOR_VERSION = generator_version(3)  # bump the number when the output for a seed and settings changes
N_TRAIN_PROMPTS = 5000         # real: 9,402
N_TEST_PROMPTS = 100           # real: 1,000


def response_columns() -> list[str]:
    return [f"response_{i}" for i in range(1, N_RESPONSES + 1)]


def model_columns() -> list[str]:
    return [f"response_{i}_model" for i in range(1, N_RESPONSES + 1)]


def score_columns(reward_models=REWARD_MODELS) -> list[list[str]]:
    """score_columns()[j][r] is the column of response j+1 scored by reward model r."""
    return [[f"response_{i}_{rm}" for rm in reward_models] for i in range(1, N_RESPONSES + 1)]


def columns() -> list[str]:
    """Every column of a PersonalLLM row (prompt, subset, prompt_id, 8 responses, 8 models, 80 scores)."""
    scores = [c for row in score_columns() for c in row]
    return ["prompt", "subset", "prompt_id"] + response_columns() + model_columns() + scores


def _texts(rng: np.random.Generator, n_prompts: int) -> tuple[list[str], list[list[str]]]:
    prompts = [sentence(rng, 4, 14) for _ in range(n_prompts)]
    responses = [[sentence(rng, 3, 14) for _ in range(N_RESPONSES)] for _ in range(n_prompts)]
    return prompts, responses


def oracle_accuracy(clean: np.ndarray, noisy: np.ndarray, n_users: int, rng: np.random.Generator) -> float:
    """Fraction of (user, prompt) best-vs-worst comparisons the planted noise-free linear reward gets
    right (strictly), for `n_users` Dirichlet(0.1) users; clean, noisy: [P, 8, 10] model scores without
    and with noise/offset. An upper reference for what a learned linear reward can reach."""
    w = rng.dirichlet(0.1 * np.ones(clean.shape[-1]), size=n_users)   # [U, 10]
    user_noisy = np.einsum("pjr,ur->upj", noisy, w)                  # [U, P, 8]
    user_clean = np.einsum("pjr,ur->upj", clean, w)
    best, worst = user_noisy.argmax(-1), user_noisy.argmin(-1)       # [U, P]
    valid = best != worst
    margin = (np.take_along_axis(user_clean, best[..., None], -1)
              - np.take_along_axis(user_clean, worst[..., None], -1))[..., 0]
    return float((margin[valid] > 0).mean())


def write_raw(data_path: Path, n_train: int = N_TRAIN_PROMPTS, n_test: int = N_TEST_PROMPTS, seed: int = 0,
              n_directions: int = N_PERSONAL, noise_std: float = 0.05,
              general_margin_std: float = GENERAL_MARGIN_STD,
              personal_margin_std: float = PERSONAL_MARGIN_STD, concentration: float = CONCENTRATION,
              personal_scale: float = 1.0) -> dict:
    """Write `data_path/raw/{train,test}-00000-of-00001.parquet` (exactly the published columns) and
    the ground truth `data_path/ground_truth.{safetensors,json}`; returns the summary.

    n_train, n_test: prompts per split (8 responses each). The 10 reward models are the planted
    population's "users": the tiny model's head (margin std `general_margin_std`) plus a
    Dirichlet(`concentration`) mixture of `n_directions` personal directions (margin std
    `personal_margin_std` x `personal_scale`; 0: every reward model is the head, up to its score noise).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if n_train < 1 or n_test < 1:
        raise ValueError(f"need at least one prompt per split, got n_train={n_train}, n_test={n_test}")
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "test": n_test}
    texts = {split: _texts(rng, sizes[split]) for split in SPLITS}
    conversations = [conversation(prompt, response)
                     for split in SPLITS for prompt, responses in zip(*texts[split]) for response in responses]
    embeddings = embed_for_planting(conversations)                   # [(n_train + n_test) * 8, d]

    planted = PlantedPopulation.plant(centred_within(embeddings, [N_RESPONSES] * (len(embeddings) // N_RESPONSES)),
                                      tiny_head(), n_directions=n_directions, n_users=len(REWARD_MODELS),
                                      seed=seed, general_margin_std=general_margin_std,
                                      personal_margin_std=personal_margin_std * personal_scale,
                                      concentration=concentration)
    signs = rng.choice([-1.0, 1.0], planted.user_weights.shape)     # reward models deviate both ways
    # stored as directions [g | U*] [d, 1 + B*] and weights [1 | a_r] [10, 1 + B*]: model r's direction
    # is directions @ weights_r (g + U* a_r; the signed a_r do not sum to one)
    personal = planted.directions - planted.general[:, None]
    planted = PlantedPopulation(np.concatenate([planted.general[:, None], personal], 1),
                                np.concatenate([np.ones((len(REWARD_MODELS), 1)), planted.user_weights * signs], 1),
                                planted.general)
    clean = (embeddings.astype(np.float64) @ planted.directions @ planted.user_weights.T) / TEMPERATURE  # [n, 10]
    scales = np.exp(rng.uniform(np.log(0.5), np.log(2.0), len(REWARD_MODELS)))
    offsets = rng.normal(0.0, 3.0, len(REWARD_MODELS))
    noise = noise_std * rng.standard_normal(clean.shape)
    scores = offsets + scales * (clean + noise)                      # raw scores, [n, 10]

    raw_path = Path(data_path) / "raw"
    raw_path.mkdir(parents=True, exist_ok=True)
    start = 0
    summary = {"version": GENERATOR_VERSION, "seed": seed, "n_prompts": sizes, "n_responses": N_RESPONSES,
               "reward_models": list(REWARD_MODELS), "n_directions": n_directions, "noise_std": noise_std,
               "general_margin_std": general_margin_std, "personal_margin_std": personal_margin_std,
               "personal_scale": personal_scale,
               "concentration": concentration, "scales": scales.tolist(), "offsets": offsets.tolist(),
               "score_formula": "offset_r + scale_r * (e . directions . user_weights_r / 100 + noise_std * z)",
               "directions_are": "[g | U*]: the general direction (the tiny head, rescaled), then the personal ones",
               "user_weights_are": "[1 | a_r] per reward model (rows, REWARD_MODELS order), a_r signed mixtures"}
    for split in SPLITS:
        prompts, responses = texts[split]
        n = sizes[split] * N_RESPONSES
        split_scores = scores[start:start + n].reshape(sizes[split], N_RESPONSES, len(REWARD_MODELS))
        split_clean = (scales * clean[start:start + n]).reshape(split_scores.shape)
        start += n
        table = {"prompt": prompts,
                 "subset": [SUBSETS[k] for k in rng.integers(0, len(SUBSETS), sizes[split])],
                 "prompt_id": list(range(len(prompts))) if split == "train"
                 else list(range(n_train, n_train + len(prompts)))}
        for j, col in enumerate(response_columns()):
            table[col] = [r[j] for r in responses]
        order = np.stack([rng.permutation(N_RESPONSES) for _ in prompts])  # each response from another LLM
        for j, col in enumerate(model_columns()):
            table[col] = [RESPONSE_MODELS[k] for k in order[:, j]]
        for j, row in enumerate(score_columns()):
            for r, col in enumerate(row):
                table[col] = split_scores[:, j, r].tolist()
        pq.write_table(pa.table({c: table[c] for c in columns()}), raw_path / RAW_FILES[split])
        summary[f"oracle_accuracy_{split}"] = oracle_accuracy(split_clean, split_scores, 500,
                                                              np.random.default_rng(seed + 1))
    summary["oracle_accuracy_note"] = (
        "fraction of best-vs-worst comparisons (500 Dirichlet(0.1) users x all prompts of the split) "
        "that the noise-free planted linear reward orders correctly: a ceiling for a linear reward")
    gt = Path(data_path) / GROUND_TRUTH
    planted.save(gt, extra_arrays={"scales": scales, "offsets": offsets}, **summary)
    return json.loads(gt.with_suffix(".json").read_text())


def planted_accuracy(data_path: Path, groups: dict, population, made_by: str) -> dict:
    """{group: accuracy of the planted rewards of the simulated users}, as the LoRe accuracies are
    computed (per user, then the mean over users). A user mixing the 10 reward models with weights w
    has the noise-free reward e . U* (sum_r w_r scale_r a_r) / 100: the ceiling of a learned linear
    reward on the same comparisons. `population`: PersonalLLM's simulated Population; made_by: the prepare
    command (a damaged ground truth names it)."""
    import torch

    import utils

    truth = read_truth(Path(data_path) / GROUND_TRUTH, made_by)[0]
    directions = torch.tensor(truth["directions"])
    out = {}
    for name, comparisons in groups.items():
        w = population.weights_seen if name.startswith("seen") else population.weights_unseen
        planted = torch.tensor((w * truth["scales"]) @ truth["user_weights"])          # [C, B*]
        out[name] = utils.accuracy_mean_std(comparisons, directions.to(comparisons.dtype),
                                            planted.to(comparisons.dtype))[0]
    return out

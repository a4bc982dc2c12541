"""Generated comparisons for CustomData in its default schema: one JSON line per comparison,
{"user_id", "prompt", "chosen", "rejected"}, the prompt text or (for about a quarter of the prompts) a
list of chat messages, as a user's own file would hold.

A shared pool of prompts, each with a few candidate responses; every user compares pairs of candidates
of random prompts (no pair twice). Labels come from a planted population (offline/planted.py) in the
tiny model's own embedding space: each user's reward is the backbone's head (the general part) plus a
Dirichlet mixture of a few personal directions, and the user prefers a over b with the Bradley-Terry
probability of its planted reward on the (prompt, response) conversations. `personal_scale` scales the
personal part (0: every user's reward is the general part alone). A few extra rows exercise each drop
reason of CustomData/prepare.py (EXTRA_ROWS): a row without a user, one with an empty response, one
whose chosen equals its rejected response, an exact repeat of an earlier row, and a user with too few
comparisons. The ground truth (directions, user weights, user ids, the Bayes-optimal accuracy) is saved
beside the file. Same seed and settings, byte-identical files.

    python -m offline.custom /tmp/custom-raw    # writes comparisons.jsonl and the ground truth
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import harness
from embedding import conversation
from offline.planted import CONCENTRATION, GENERAL_MARGIN_STD, N_PERSONAL, PERSONAL_MARGIN_STD, generator_version
from offline.text import paragraph, sentence

COMPARISONS = "comparisons.jsonl"
GROUND_TRUTH = "ground_truth"
GENERATOR_VERSION = generator_version(2)  # bump the number when the output for a seed and settings changes
TINY_USER_COMPARISONS = 3                 # below any sensible min_comparisons: dropped by the split
# drop reason: rows of that kind in the file (what prepare.json must count, with the default min_comparisons)
EXTRA_ROWS = {"missing_user": 1, "empty_text": 1, "chosen_equals_rejected": 1, "duplicate_row": 1,
              "below_min_comparisons": TINY_USER_COMPARISONS}


def _prompt(rng: np.random.Generator, multi_turn_fraction: float):
    if rng.random() < multi_turn_fraction:
        return [{"role": "user", "content": sentence(rng, 5, 14)},
                {"role": "assistant", "content": paragraph(rng, 1, 2)},
                {"role": "user", "content": sentence(rng, 4, 12)}]
    return paragraph(rng, 1, 2)


def generate(out_dir: Path, seed: int = 0, n_users: int = 60, personal_scale: float = 1.0, n_prompts: int = 400,
             responses_per_prompt: int = 4, comparisons_range=(40, 120), multi_turn_fraction: float = 0.25,
             n_directions: int = N_PERSONAL, concentration: float = CONCENTRATION) -> dict:
    """Write `out_dir/comparisons.jsonl` and `out_dir/ground_truth.*`; return the summary (also in
    ground_truth.json). `n_users` regular users with `comparisons_range` (inclusive) comparisons each (about
    80 on average: the Community Alignment dataset's median annotator, 26 conversations of about 3
    comparisons each, per its card), plus the tiny user and the extra rows of EXTRA_ROWS. The balance and the
    users' concentration are the planted world's (offline/planted.py)."""
    from offline.planted import PlantedPopulation, centred_within, embed_for_planting, tiny_head

    generator_args = dict(seed=seed, n_users=n_users, personal_scale=personal_scale, n_prompts=n_prompts,
                          responses_per_prompt=responses_per_prompt, comparisons_range=list(comparisons_range),
                          multi_turn_fraction=multi_turn_fraction, n_directions=n_directions,
                          concentration=concentration)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    R = responses_per_prompt
    prompts = [_prompt(rng, multi_turn_fraction) for _ in range(n_prompts)]
    responses = [[sentence(rng, 6, 24) for _ in range(R)] for _ in range(n_prompts)]
    conversations = [conversation(p, r) for p, rs in zip(prompts, responses) for r in rs]
    print(f"offline custom: embedding {len(conversations)} (prompt, response) conversations to plant labels")
    emb = embed_for_planting(conversations)
    # one planted user per regular user, then the tiny one (dropped by the split, planted all the same)
    user_ids = [f"annotator_{k:03d}" for k in range(n_users + 1)]
    population = PlantedPopulation.plant(
        centred_within(emb, [R] * n_prompts), tiny_head(), n_directions, len(user_ids), seed,
        general_margin_std=GENERAL_MARGIN_STD, personal_margin_std=PERSONAL_MARGIN_STD * personal_scale,
        concentration=concentration)

    pairs = [(a, b) for a in range(R) for b in range(a + 1, R)]
    counts = [int(rng.integers(comparisons_range[0], comparisons_range[1] + 1)) for _ in range(n_users)]
    counts.append(TINY_USER_COMPARISONS)
    users, where = [], []
    for u, m in enumerate(counts):
        for item in rng.choice(n_prompts * len(pairs), m, replace=False):   # no (prompt, pair) twice per user
            p, (a, b) = int(item) // len(pairs), pairs[int(item) % len(pairs)]
            if rng.random() < 0.5:
                a, b = b, a
            users.append(u)
            where.append((p, a, b))
    a_rows = [p * R + a for p, a, _ in where]
    b_rows = [p * R + b for p, _, b in where]
    a_wins, bayes = population.draw_labels(emb[a_rows], emb[b_rows], np.array(users), rng)
    rows = []
    for (p, a, b), u, won in zip(where, users, a_wins):
        chosen, rejected = (a, b) if won else (b, a)
        rows.append({"user_id": user_ids[u], "prompt": prompts[p], "chosen": responses[p][chosen],
                     "rejected": responses[p][rejected]})
    # rows that prepare.py must drop, one reason each
    repeat = dict(rows[int(rng.integers(sum(counts[:n_users])))])   # a regular user's row, repeated last
    p = int(rng.integers(n_prompts))
    rows.append({"user_id": None, "prompt": prompts[p], "chosen": responses[p][0], "rejected": responses[p][1]})
    rows.append({"user_id": user_ids[1], "prompt": prompts[p], "chosen": responses[p][2], "rejected": ""})
    rows.append({"user_id": user_ids[2], "prompt": prompts[p], "chosen": responses[p][3], "rejected": responses[p][3]})
    rows = [rows[i] for i in rng.permutation(len(rows))]
    rows.append(repeat)
    harness.write_jsonl_atomic(out_dir / COMPARISONS, rows)

    users = np.array(users)
    bayes_by_user = {user_ids[u]: float(bayes[users == u].mean()) for u in range(n_users)}
    summary = {"generator": "offline.custom", "version": GENERATOR_VERSION, "generator_args": generator_args,
               "user_ids": user_ids, "rows": len(rows), "regular_comparisons": int(sum(counts[:n_users])),
               "extra_rows": EXTRA_ROWS, "bayes_accuracy": float(np.mean(list(bayes_by_user.values()))),
               "bayes_accuracy_by_user": bayes_by_user}
    population.save(out_dir / GROUND_TRUTH, **summary)
    return summary


def planted_accuracy(data_path: Path, groups: dict, users: dict, made_by: str) -> dict:
    """{group: accuracy of the planted user rewards} (see offline.planted.planted_accuracy)."""
    from offline.planted import planted_accuracy as accuracy
    return accuracy(Path(data_path) / "raw" / GROUND_TRUTH, "user_ids", groups, users, made_by)


if __name__ == "__main__":
    out = generate(Path(sys.argv[1] if len(sys.argv) > 1 else "custom-offline-raw"))
    print(json.dumps({k: out[k] for k in ("rows", "regular_comparisons", "extra_rows", "bayes_accuracy")}, indent=1))

"""Generated Reddit TLDR comparisons in the published format of `openai/summarize_from_feedback`.

The rows are those of the hub's parquet conversion of the `comparisons` config (one file per HF split,
`comparisons/{train,validation}/0000.parquet`): `info` {id, post, title, subreddit, site, article},
`summaries` [2 x {text, policy, note}], `choice` (index of the preferred summary), `worker` (30-char id),
`batch`, `split` ("train" | "valid1" | "valid2"), `extra` {confidence}. Some rows are CNN/DM articles
with `post` null, as in the real validation data, so the consumer's skip-and-count path is exercised.

Labels come from a planted population (offline/planted.py) in the tiny model's own embedding space:
every worker is a planted user (the backbone's head as the general part plus a Dirichlet mixture of a
few personal directions), and worker w prefers summary a over b of the same post with the
Bradley-Terry probability of its planted reward on the (user = post, assistant = summary)
conversations. The worker layout mirrors what the RedditTLDR split has to cope with: regular workers
in both HF splits, two tiny workers (the "two smallest per split" that the split drops), and workers
present in only one split (skipped for lacking a side). Same seed, byte-identical files.

    python -m offline.tldr /tmp/tldr-raw     # writes the two parquet files and the ground truth
"""
from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import numpy as np

import harness
from embedding import conversation
from offline.planted import CONCENTRATION, GENERAL_MARGIN_STD, N_PERSONAL, PERSONAL_MARGIN_STD, generator_version
from offline.text import paragraph, sentence

SUBREDDITS = ["relationships", "AskReddit", "relationship_advice", "tifu", "dating_advice",
              "personalfinance", "Advice", "legaladvice", "offmychest", "loseit"]
POLICIES = ["ref", "sup2", "sup4_ppo_rm3_kl10", "sup4_6b_ppo_rm4_6b_kl14", "pretrain_6b_t.7",
            "sup4_t.7", "sup1", "bo8_rm3"]
HF_SPLITS = ("train", "validation")
GENERATOR_VERSION = generator_version(3)  # bump the number when the output for a seed and settings changes

# Layout of the extra (non-regular) workers: counts per HF split; 0 = absent from that split.
TINY_WORKERS = [{"train": 2, "validation": 1}, {"train": 3, "validation": 2}]   # dropped as smallest
ONE_SIDED_WORKERS = [{"train": 40, "validation": 0}, {"train": 35, "validation": 0},
                     {"train": 0, "validation": 20}]                          # lack a side: skipped

GROUND_TRUTH = "ground_truth"   # .safetensors + .json beside the parquet files


def _schema():
    import pyarrow as pa
    s = pa.string()
    return pa.schema([
        ("info", pa.struct([("id", s), ("post", s), ("title", s), ("subreddit", s), ("site", s),
                            ("article", s)])),
        ("summaries", pa.list_(pa.struct([("text", s), ("policy", s), ("note", s)]))),
        ("choice", pa.int32()),
        ("worker", s),
        ("batch", s),
        ("split", s),
        ("extra", pa.struct([("confidence", pa.int32())])),
    ])


def _token(rng: np.random.Generator, n: int, alphabet: str) -> str:
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


def _write_parquet_atomic(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    with harness.atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp, compression="snappy")


def generate(out_dir: Path, seed: int = 0, n_workers: int = 60, train_posts: int = 200,
             validation_posts: int = 80, summaries_per_post: int = 6, train_range=(60, 200),
             validation_range=(20, 50), cnndm_fraction: float = 0.05, n_directions: int = N_PERSONAL,
             concentration: float = CONCENTRATION, general_margin_std: float = GENERAL_MARGIN_STD,
             personal_margin_std: float = PERSONAL_MARGIN_STD, personal_scale: float = 1.0) -> dict:
    """Write `out_dir/comparisons/{train,validation}/0000.parquet` and `out_dir/ground_truth.*`.

    `n_workers` regular workers have `train_range` / `validation_range` (inclusive) comparisons per HF
    split; the extra workers of TINY_WORKERS and ONE_SIDED_WORKERS are added. Tastes: the tiny model's
    head (margin std `general_margin_std`) plus Dirichlet(`concentration`) mixtures of `n_directions`
    personal directions (margin std `personal_margin_std` x `personal_scale`; 0: the null world), margins
    over pairs of summaries of a post.
    Returns a summary dict (also in ground_truth.json, with "version") with "data_files" {split: [path]}.
    """
    from offline.planted import PlantedPopulation, centred_within, embed_for_planting, tiny_head

    generator_args = dict(seed=seed, n_workers=n_workers, train_posts=train_posts,
                          validation_posts=validation_posts, summaries_per_post=summaries_per_post,
                          train_range=list(train_range), validation_range=list(validation_range),
                          cnndm_fraction=cnndm_fraction, n_directions=n_directions,
                          concentration=concentration, general_margin_std=general_margin_std,
                          personal_margin_std=personal_margin_std, personal_scale=personal_scale)

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    alnum = string.ascii_letters + string.digits

    # Workers: regular ones, then the tiny and one-sided ones. Planted user index = position here.
    layout = [{"train": int(rng.integers(train_range[0], train_range[1] + 1)),
               "validation": int(rng.integers(validation_range[0], validation_range[1] + 1))}
              for _ in range(n_workers)] + TINY_WORKERS + ONE_SIDED_WORKERS
    workers = []
    while len(workers) < len(layout):
        w = _token(rng, 30, alnum)
        if w not in workers:
            workers.append(w)

    # Posts and candidate summaries per HF split (validation posts are new posts, as in the real data).
    posts = {}
    for split, n_posts in (("train", train_posts), ("validation", validation_posts)):
        posts[split] = [{"id": "t3_" + _token(rng, 6, string.ascii_lowercase + string.digits),
                         "title": sentence(rng, 4, 12), "subreddit": str(rng.choice(SUBREDDITS)),
                         "post": paragraph(rng, 2, 5),
                         "summaries": [(sentence(rng, 6, 24), str(rng.choice(POLICIES)))
                                       for _ in range(summaries_per_post)]}
                        for _ in range(n_posts)]

    # Embed every (post, summary) once with the tiny model; plant in the within-post variation,
    # which is what a comparison of two summaries of one post measures.
    conversations, post_of = [], []
    for split in HF_SPLITS:
        for p, post in enumerate(posts[split]):
            for text, _ in post["summaries"]:
                conversations.append(conversation(post["post"], text))
                post_of.append((split, p))
    print(f"offline TLDR: embedding {len(conversations)} (post, summary) conversations to plant labels")
    emb = embed_for_planting(conversations)
    emb_index = {key: i for i, key in enumerate((s, p, j) for s in HF_SPLITS
                                                 for p in range(len(posts[s])) for j in range(summaries_per_post))}
    population = PlantedPopulation.plant(
        centred_within(emb, [summaries_per_post] * (len(emb) // summaries_per_post)), tiny_head(), n_directions,
        len(workers), seed, general_margin_std=general_margin_std,
        personal_margin_std=personal_margin_std * personal_scale,
        concentration=concentration)

    data_files, bayes_by_worker, counts = {}, {}, {}
    for split in HF_SPLITS:
        rows, a_idx, b_idx, users, where = [], [], [], [], []
        for u, worker in enumerate(workers):
            for _ in range(layout[u][split]):
                p = int(rng.integers(len(posts[split])))
                a, b = (int(j) for j in rng.choice(summaries_per_post, 2, replace=False))
                a_idx.append(emb_index[(split, p, a)])
                b_idx.append(emb_index[(split, p, b)])
                users.append(u)
                where.append((p, a, b))
        a_wins, bayes = population.draw_labels(emb[a_idx], emb[b_idx], np.array(users), rng)
        for (p, a, b), u, won in zip(where, users, a_wins):
            post = posts[split][p]
            rows.append({
                "info": {"id": post["id"], "post": post["post"], "title": post["title"],
                         "subreddit": post["subreddit"], "site": None, "article": None},
                "summaries": [{"text": post["summaries"][j][0], "policy": post["summaries"][j][1],
                               "note": None} for j in (a, b)],
                "choice": 0 if won else 1,
                "worker": workers[u],
                "batch": f"batch{int(rng.integers(3, 23))}",
                "split": "train" if split == "train" else str(rng.choice(["valid1", "valid2"])),
                "extra": {"confidence": int(rng.integers(1, 10)) if rng.random() < 0.8 else None},
            })
        bayes_by_worker[split] = {}
        for u in sorted(set(users)):
            mask = np.array(users) == u
            bayes_by_worker[split][workers[u]] = float(bayes[mask].mean())
        # CNN/DM rows: an article and no post; the TLDR pipeline skips and counts them.
        n_cnndm = int(round(cnndm_fraction * len(rows)))
        for _ in range(n_cnndm):
            site = str(rng.choice(["dailymail", "cnn"]))
            rows.append({
                "info": {"id": _token(rng, 40, "0123456789abcdef"), "post": None, "title": sentence(rng, 4, 12),
                         "subreddit": None, "site": site, "article": paragraph(rng, 3, 6)},
                "summaries": [{"text": sentence(rng, 6, 24), "policy": str(rng.choice(POLICIES)), "note": None}
                              for _ in range(2)],
                "choice": int(rng.integers(2)),
                "worker": workers[int(rng.integers(n_workers))],
                "batch": f"cnndm{int(rng.integers(1, 4))}",
                "split": "train" if split == "train" else str(rng.choice(["valid1", "valid2"])),
                "extra": {"confidence": None},
            })
        rows = [rows[i] for i in rng.permutation(len(rows))]
        path = out_dir / "comparisons" / split / "0000.parquet"
        _write_parquet_atomic(rows, path)
        data_files[split] = [str(path)]
        counts[split] = {"rows": len(rows), "missing_post_rows": n_cnndm,
                         "workers": len(bayes_by_worker[split])}

    summary = {
        "generator": "offline.tldr", "version": GENERATOR_VERSION, "generator_args": generator_args,
        "counts": counts,
        "workers": workers, "worker_layout": layout,
        "bayes_accuracy": {s: float(np.mean(list(bayes_by_worker[s].values()))) for s in HF_SPLITS},
        "bayes_accuracy_by_worker": bayes_by_worker,
    }
    population.save(out_dir / GROUND_TRUTH, **summary)
    summary["data_files"] = data_files
    return summary


def planted_accuracy(data_path: Path, groups: dict, users: dict, made_by: str) -> dict:
    """{group: accuracy of the planted worker rewards} (see offline.planted.planted_accuracy)."""
    from offline.planted import planted_accuracy as accuracy
    return accuracy(Path(data_path) / "raw" / GROUND_TRUTH, "workers", groups, users, made_by)


if __name__ == "__main__":
    out = generate(Path(sys.argv[1] if len(sys.argv) > 1 else "tldr-offline-raw"))
    print(json.dumps({k: out[k] for k in ("counts", "bayes_accuracy", "data_files")}, indent=1))

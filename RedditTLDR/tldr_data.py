"""Reddit TLDR data machinery shared by this folder's scripts (prepare, embeddings, train_basis,
vary_fewshot) and its tests: raw rows -> per-worker comparisons, the seen/unseen worker split, features.

Raw rows are those of `openai/summarize_from_feedback` (config `comparisons`), from the hub's parquet
conversion or from the offline generator (offline/tldr.py) in the same format; both go through
`comparisons_from_rows`.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import embedding
import harness
import utils

HUB_DATASET = "openai/summarize_from_feedback"
HUB_CONFIG = "comparisons"
HUB_REVISION = "refs/convert/parquet"   # the script-based hub dataset's parquet conversion
HF_SPLITS = ("train", "validation")
COLUMNS = ["worker", "post_id", "post", "winning", "losing", "split"]

COMPARISONS_FILE = "comparisons_{split}.parquet"    # written by prepare.py, one per HF split
PREPARE_SUMMARY_FILE = "prepare_summary.json"


def embedding_inputs(frames: dict) -> tuple[list, dict]:
    """(distinct (post, summary) conversations in first-seen order, train then validation, user = post and
    assistant = summary; {"{split}_winning" / "{split}_losing": [N] int64 rows into them, in row order})
    of the prepared comparisons (load_comparisons)."""
    import torch

    row_of, conversations, index = {}, [], {}
    for split in HF_SPLITS:
        for side in ("winning", "losing"):
            rows = []
            for post, summary in zip(frames[split]["post"], frames[split][side]):
                if (post, summary) not in row_of:
                    row_of[post, summary] = len(conversations)
                    conversations.append(embedding.conversation(post, summary))
                rows.append(row_of[post, summary])
            index[f"{split}_{side}"] = torch.tensor(rows, dtype=torch.long)
    return conversations, index


# -----------------------------------------------------------------------------
# loading raw rows


def load_raw_splits(data_files: dict | None = None, dataset: str = HUB_DATASET, config: str = HUB_CONFIG,
                    revision: str = HUB_REVISION, offline_command: str = "python prepare.py --offline") -> dict:
    """The HF splits {"train", "validation"} as `datasets.Dataset`s.

    data_files None: the hub's parquet conversion, `load_dataset(dataset, config, revision=revision)`;
    otherwise local files {split: [paths]} in the same row format (.parquet, or .json/.jsonl).
    """
    import datasets

    if data_files is not None:
        suffixes = {Path(p).suffix for paths in data_files.values() for p in paths}
        builder = "parquet" if suffixes == {".parquet"} else "json" if suffixes <= {".json", ".jsonl"} else None
        if builder is None:
            raise SystemExit(f"error: raw TLDR files must be all .parquet or all .json/.jsonl, got {suffixes}")
        try:
            loaded = datasets.load_dataset(builder, data_files={s: [str(p) for p in v] for s, v in data_files.items()})
        except Exception as error:   # pyarrow, json and datasets errors share no base class
            raise SystemExit(f"error: the raw TLDR files {sorted(str(p) for v in data_files.values() for p in v)} "
                             f"are unreadable ({type(error).__name__}: {str(error)[:200]}); replace the damaged "
                             f"file (offline: `{offline_command}` rebuilds them)") from None
    else:
        what = f"{dataset} ({config}, revision {revision})"
        cached_only = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        if not cached_only and not harness.hub_reachable():
            raise harness.hub_unreachable(what, offline_command)
        try:
            loaded = _load_hub(dataset, config, revision)
        except (ConnectionError, OSError) as e:
            raise harness.hub_unreachable(what, offline_command, e) from None
    missing = [s for s in HF_SPLITS if s not in loaded]
    if missing:
        raise SystemExit(f"error: the TLDR data lacks the split(s) {missing}; found {list(loaded)}")
    return {s: loaded[s] for s in HF_SPLITS}


REQUIRED_COLUMNS = {"info", "summaries", "choice", "worker"}


def _load_hub(dataset: str, config: str, revision: str):
    """The hub's parquet conversion: by config name, else the config's files named explicitly.

    `load_dataset(dataset, config, revision=...)` needs the branch to declare its configs; when it
    does not (or infers a config that mixes in the `axis` files), read `<config>/<split>/*.parquet`
    of that branch directly.
    """
    from urllib.parse import quote

    import datasets

    try:
        loaded = datasets.load_dataset(dataset, config, revision=revision)
        if all(s in loaded and REQUIRED_COLUMNS <= set(loaded[s].column_names) for s in HF_SPLITS):
            return loaded
        problem = f"splits/columns {({s: loaded[s].column_names for s in loaded})}"
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as e:
        problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    base = f"hf://datasets/{dataset}@{quote(revision, safe='')}/{config}"
    print(f"load_dataset({dataset!r}, {config!r}, revision={revision!r}) gave {problem}; reading {base}/<split>/*.parquet")
    return datasets.load_dataset("parquet", data_files={s: f"{base}/{s}/*.parquet" for s in HF_SPLITS})


def comparisons_from_rows(rows, batch_size: int = 10_000):
    """Per-worker comparisons of one HF split: (DataFrame with COLUMNS in row order, counts).

    A row gives (worker, post, winning = summaries[choice].text, losing = the other summary). A row
    without a post (CNN/DM articles: info.post null or empty) takes info.article as its text, counted;
    a row with neither is skipped and counted; so are rows that are not a valid two-summary comparison (choice not 0/1, not two summaries, missing text or
    worker). `rows` is a `datasets.Dataset` or any iterable of row dicts.
    """
    import pandas as pd

    out = {c: [] for c in COLUMNS}
    counts = {"rows": 0, "article_as_text": 0, "skipped_no_text": 0, "skipped_malformed": 0}

    def batches():
        if hasattr(rows, "iter") and hasattr(rows, "column_names"):
            cols = [c for c in ("info", "summaries", "choice", "worker", "split") if c in rows.column_names]
            for b in rows.select_columns(cols).iter(batch_size=batch_size):
                n = len(b[cols[0]])
                yield [{c: b[c][i] for c in cols} for i in range(n)]
        else:
            yield list(rows)

    for batch in batches():
        for row in batch:
            counts["rows"] += 1
            info = row.get("info") or {}
            post = info.get("post")
            if post is None or not str(post).strip():
                # CNN/DM rows carry the text as info.article (the original embedded the word "None")
                post = info.get("article")
                if post is None or not str(post).strip():
                    counts["skipped_no_text"] += 1
                    continue
                counts["article_as_text"] += 1
            summaries, choice, worker = row.get("summaries") or [], row.get("choice"), row.get("worker")
            texts = [(s or {}).get("text") for s in summaries]
            if len(texts) != 2 or choice not in (0, 1) or any(t is None for t in texts) or not worker:
                counts["skipped_malformed"] += 1
                continue
            out["worker"].append(str(worker))
            out["post_id"].append(str(info.get("id") or ""))
            out["post"].append(str(post))
            out["winning"].append(texts[choice])
            out["losing"].append(texts[1 - choice])
            out["split"].append(str(row.get("split") or ""))
    frame = pd.DataFrame(out, columns=COLUMNS)
    counts["comparisons"] = len(frame)
    counts["workers"] = int(frame["worker"].nunique())
    return frame, counts


def write_parquet_atomic(frame, path: Path) -> None:
    """Write a DataFrame so that a crash never leaves a half-written file under the final name."""
    with harness.atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def load_comparisons(data_path: Path, made_by: str) -> dict:
    """The prepared per-split DataFrames {"train", "validation"} (see prepare.py, the `made_by` command)."""
    import pandas as pd

    frames = {}
    for split in HF_SPLITS:
        path = harness.require_file(data_path / COMPARISONS_FILE.format(split=split), made_by)
        try:
            frames[split] = pd.read_parquet(path)
        except Exception as e:
            raise SystemExit(f"error: {path} is unreadable ({type(e).__name__}); run `{made_by}`") from None
        if list(frames[split].columns) != COLUMNS:
            raise SystemExit(f"error: {path} has the columns {list(frames[split].columns)}, not {COLUMNS}; "
                             f"run `{made_by}`")
    return frames


# -----------------------------------------------------------------------------
# the seen/unseen worker split


def indices_by_user(users) -> dict:
    """{user: [row indices in row order]} for a sequence of user ids."""
    groups = {}
    for i, u in enumerate(users):
        groups.setdefault(u, []).append(i)
    return groups


def split_users(train_rows: dict, test_rows: dict, seed: int = 0, drop_smallest: int = 2,
                seen_train_size: int = 150, unseen_train_size: int = 50) -> dict:
    """The seen/unseen user split of Reddit TLDR, reproducible across processes.

    train_rows / test_rows: {user: [row indices]} of the train and the test (validation) split.
    Per split, users are sorted by count ascending (ties by id) and the `drop_smallest` smallest are
    dropped. Users kept in one split but not the other lack a side: skipped and counted. The rest are
    sorted by id (the original shuffled a list made from a set, so its split changed with Python's
    hash seed), shuffled by `random.Random(seed)` (the stream of `random.seed(seed); random.shuffle`)
    and halved: the first len // 2 are seen, the rest unseen. From the same stream, each seen user
    gets `min(len, seen_train_size)` random train rows (its test rows: all of its test split), each
    unseen user `min(len, unseen_train_size)` random train rows as few-shot data (test: all).
    Returns {"seen", "unseen": [ids], "seen_train", "seen_test", "unseen_train", "unseen_test":
    [[row indices] per user, in that order], "counts": {...}}.
    """
    def kept(rows):
        order = sorted(rows, key=lambda u: (len(rows[u]), u))
        return order[:drop_smallest], set(order[drop_smallest:])

    dropped_train, kept_train = kept(train_rows)
    dropped_test, kept_test = kept(test_rows)
    only_train, only_test = sorted(kept_train - kept_test), sorted(kept_test - kept_train)
    both = sorted(kept_train & kept_test)
    rng = random.Random(seed)
    rng.shuffle(both)
    half = len(both) // 2
    seen, unseen = both[:half], both[half:]

    def draw(users, size):
        return [rng.sample(train_rows[u], min(len(train_rows[u]), size)) for u in users]

    out = {"seen": seen, "unseen": unseen,
           "seen_train": draw(seen, seen_train_size), "seen_test": [list(test_rows[u]) for u in seen]}
    out["unseen_train"] = draw(unseen, unseen_train_size)
    out["unseen_test"] = [list(test_rows[u]) for u in unseen]
    out["counts"] = {
        "users_train": len(train_rows), "users_test": len(test_rows),
        "dropped_smallest_train": dropped_train, "dropped_smallest_test": dropped_test,
        "skipped_lacking_a_side": len(only_train) + len(only_test),
        "skipped_only_train": only_train, "skipped_only_test": only_test,
        "seen": len(seen), "unseen": len(unseen),
        "seen_train_comparisons": sum(map(len, out["seen_train"])),
        "seen_test_comparisons": sum(map(len, out["seen_test"])),
        "unseen_train_comparisons": sum(map(len, out["unseen_train"])),
        "unseen_test_comparisons": sum(map(len, out["unseen_test"])),
    }
    return out


def user_groups(data_path: Path, split_settings: dict, prepare_command: str, embed_command: str):
    """The four groups of train_basis.py as utils.Comparisons over the conversation embeddings.

    The worker split (split_users with `split_settings`: seed, drop_smallest, seen_train_size,
    unseen_train_size) of the prepared comparisons, printed; seen-train and unseen-train rows come
    from the train split, the test groups from the validation split. Returns (groups {name:
    Comparisons}, {"seen": [ids], "unseen": [ids]}, V_ref [d, 1], the split's counts).
    """
    import torch

    frames = load_comparisons(data_path, prepare_command)
    split = split_users(indices_by_user(frames["train"]["worker"]), indices_by_user(frames["validation"]["worker"]),
                        **split_settings)
    print(split_summary(split))
    if not split["seen"] or not split["unseen"]:
        raise SystemExit(f"error: no seen or no unseen workers are left after the split of {data_path}; check "
                         f"the prepared data (`{prepare_command}`)")
    conversations, index = embedding_inputs(frames)
    table, V_ref = embedding.load_embedded(data_path, conversations, embed_command)
    groups = {}
    for name, hf_split in (("seen_train", "train"), ("seen_test", "validation"), ("unseen_train", "train"),
                           ("unseen_test", "validation")):
        rows_per_user = split[name]
        users = torch.repeat_interleave(torch.arange(len(rows_per_user)), torch.tensor([len(r) for r in rows_per_user]))
        rows = torch.tensor([row for user_rows in rows_per_user for row in user_rows], dtype=torch.long)
        groups[name] = utils.Comparisons(users, len(rows_per_user), table, index[f"{hf_split}_winning"][rows],
                                         index[f"{hf_split}_losing"][rows])
    return groups, {"seen": split["seen"], "unseen": split["unseen"]}, V_ref, split["counts"]


def split_summary(split: dict) -> str:
    c = split["counts"]
    return (f"workers: {c['users_train']} in train, {c['users_test']} in validation; dropped as the "
            f"{len(c['dropped_smallest_train'])} smallest per split: train {c['dropped_smallest_train']}, "
            f"validation {c['dropped_smallest_test']}; skipped for lacking a side: "
            f"{c['skipped_lacking_a_side']} (train only {len(c['skipped_only_train'])}, validation only "
            f"{len(c['skipped_only_test'])}); seen {c['seen']} (train {c['seen_train_comparisons']}, test "
            f"{c['seen_test_comparisons']} comparisons), unseen {c['unseen']} (few-shot "
            f"{c['unseen_train_comparisons']}, test {c['unseen_test_comparisons']})")

"""Your own population: the data machinery of this folder's scripts (prepare, embeddings, train_basis,
vary_fewshot) and its tests. Any multi-user comparisons -> checked comparisons -> the seeded split ->
the four groups LoRe trains and evaluates on.

Input: one comparison per row, from a local file (.jsonl, .json, .parquet, .csv) or a hub dataset, in
one of two forms (columns renamed with --columns='{"user_id": "annotator_id", ...}'):
- chosen/rejected: `user_id`, `prompt`, `chosen`, `rejected`;
- A/B: `user_id`, `prompt`, `response_a`, `response_b`, `preference` ("a", "b" or "tie", any case; ties
  are dropped and counted).
The form is read from the first row's columns (chosen/rejected wins when a file has both). `prompt` is
text (one user message) or a list of {"role", "content"} chat messages (a multi-turn conversation so
far); a prompt given as text that is a JSON list of objects is read as such messages (a .csv or
.parquet column of text can then mix both kinds), any other text as text. A .json file holds one JSON
list of row objects (a .json written one object per line, as `datasets`' to_json writes, is read as
JSON lines). Or a preset (PRESETS) turns the rows of a public multi-annotator dataset into comparisons.

Where a bad row is named: .jsonl and .csv by `line N` of the file (csv: the header is line 1, so the
first data row is line 2; a quoted cell spanning lines: the line its row starts on); .json, .parquet and
hub datasets by `row N` (1-based, the header not counted).

Every comparison read is kept or dropped for exactly one reason, checked in this order (DROP_REASONS):
missing_user, empty_text (an empty prompt or response), tie, chosen_equals_rejected (equal after
stripping whitespace), duplicate_row (an exact repeat of (user, prompt, chosen, rejected) after its
first), then below_min_comparisons and single_prompt_seen_user at the split (split_population). A row
that is malformed (a prompt neither text nor chat messages, a preference other than a/b/tie, a
non-text response) is an error naming the file and the row, never a silent drop.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import embedding
import harness
import utils

FORMATS = (".jsonl", ".json", ".parquet", ".csv")
PAIRWISE = ("user_id", "prompt", "chosen", "rejected")
AB = ("user_id", "prompt", "response_a", "response_b", "preference")
CANONICAL = tuple(dict.fromkeys(PAIRWISE + AB))
ROW_FORMAT = ('{"user_id": "alice", "prompt": "..." or [{"role": "user", "content": "..."}, ...], "chosen": "...", '
              '"rejected": "..."} (or "response_a", "response_b", "preference": "a" | "b" | "tie")')
PREFERENCES = {"a": "a", "b": "b", "tie": "tie"}
DROP_REASONS = ("missing_user", "empty_text", "tie", "chosen_equals_rejected", "duplicate_row",
                "below_min_comparisons", "single_prompt_seen_user")

SPLITS = ("train", "test")
COMPARISONS_FILE = "{split}.parquet"           # written by prepare.py: train.parquet, test.parquet
# prompt: the JSON encoding of the prompt (a JSON string for text, a JSON list for chat messages), so one
# column holds both kinds losslessly; source: where the row was read (`line N` / `row N`)
COLUMNS = ["split", "seen", "user_id", "prompt", "chosen", "rejected", "source"]
PREPARE_FILE = "prepare.json"                  # written last: counts, drops, the input's sha256, file hashes
RAW_FILE = "raw/comparisons.jsonl"             # offline: the generated comparisons (offline/custom.py)

GROUPS = {  # name: (seen, split)
    "seen_train": (True, "train"),      # LoRe training data
    "seen_test": (True, "test"),        # seen users, unseen prompts
    "unseen_train": (False, "train"),   # few-shot data of new users
    "unseen_test": (False, "test"),     # new users, their other comparisons
}


class BadRow(SystemExit):
    """A malformed row: exits naming the file (or dataset) and the row."""


# -----------------------------------------------------------------------------
# presets: the public multi-annotator datasets, as (row -> comparisons) with their hub defaults


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text_or_empty(value, where: str, what: str) -> str:
    if _is_missing(value):
        return ""
    if not isinstance(value, str):
        raise BadRow(f"error: {where}: {what} must be text, got {type(value).__name__} {str(value)[:60]!r}")
    return value


MULTIPREF_PREFERENCES = {"A-is-clearly-better": "a", "A-is-slightly-better": "a", "Tie": "tie",
                         "B-is-slightly-better": "b", "B-is-clearly-better": "b"}


def multipref_comparisons(row: dict, where: str, counts: dict) -> list[dict]:
    """allenai/multipref: one A/B comparison per annotation (normal crowdworkers and experts alike).

    Mapping from the dataset card (huggingface.co/datasets/allenai/multipref): `text` is the prompt,
    `completion_a` / `completion_b` the two responses, `normal_worker_annotations` and
    `expert_worker_annotations` lists of dicts whose `evaluator` is a pseudonymous annotator id (the
    user) and `overall_pref` the judgement. Its five values (A-is-clearly-better, A-is-slightly-better,
    Tie, B-is-slightly-better, B-is-clearly-better) are from third-party loaders and the card's
    example; A-is-* -> a, B-is-* -> b, Tie -> tie (dropped, counted).
    """
    out = []
    for key in ("normal_worker_annotations", "expert_worker_annotations"):
        annotations = row.get(key)
        if _is_missing(annotations):
            continue
        if not isinstance(annotations, (list, tuple)):
            raise BadRow(f"error: {where}: {key} must be a list of annotation objects, got "
                         f"{type(annotations).__name__}")
        for annotation in annotations:
            if not isinstance(annotation, dict):
                raise BadRow(f"error: {where}: an entry of {key} is not an annotation object")
            counts["annotations"] += 1
            value = annotation.get("overall_pref")
            preference = MULTIPREF_PREFERENCES.get(value.strip()) if isinstance(value, str) else None
            if preference is None:
                raise BadRow(f"error: {where}: an overall_pref of {key} is {value!r}; multipref's values are "
                             f"{', '.join(MULTIPREF_PREFERENCES)}")
            out.append({"user_id": annotation.get("evaluator"), "prompt": row.get("text"),
                        "response_a": row.get("completion_a"), "response_b": row.get("completion_b"),
                        "preference": preference})
    if not out:
        counts["rows_without_annotations"] += 1
    return out


CA_TURNS = ("first", "second", "third", "fourth")
CA_RESPONSES = ("response_a", "response_b", "response_c", "response_d")


def community_alignment_comparisons(row: dict, where: str, counts: dict) -> list[dict]:
    """facebook/community-alignment-dataset: per conversation row and per turn t with a prompt and a
    preferred response, the preferred response against each other non-empty response of that turn (up
    to 3 comparisons per turn, no ties in this dataset).

    Columns from third-party loaders of the dataset, not from its card: `annotator_id` (the user),
    `{first,second,third,fourth}_turn_prompt`, `..._turn_response_{a,b,c,d}` and
    `..._turn_preferred_response` ("response_a" .. "response_d"). The prompt of turn t is the chat so
    far: earlier turns' prompts as user messages and, an assumption the card does not state, earlier
    turns' PREFERRED responses as the assistant messages, then turn t's prompt. A missing turn (empty
    prompt) ends the conversation; so does a turn without a preferred response (its history cannot go
    on; counted as turns_without_preference).
    """
    history, out = [], []
    for turn in CA_TURNS:
        prompt = _text_or_empty(row.get(f"{turn}_turn_prompt"), where, f"{turn}_turn_prompt")
        if not prompt.strip():
            break
        value = row.get(f"{turn}_turn_preferred_response")
        preferred = value.strip().lower() if isinstance(value, str) else None
        if not preferred:
            counts["turns_without_preference"] += 1
            break
        if preferred not in CA_RESPONSES:
            raise BadRow(f"error: {where}: {turn}_turn_preferred_response is {value!r}, not one of {CA_RESPONSES}")
        counts["turns"] += 1
        history = history + [{"role": "user", "content": prompt}]
        chosen = _text_or_empty(row.get(f"{turn}_turn_{preferred}"), where, f"{turn}_turn_{preferred}")
        for other in CA_RESPONSES:
            text = _text_or_empty(row.get(f"{turn}_turn_{other}"), where, f"{turn}_turn_{other}")
            if other != preferred and text.strip():
                out.append({"user_id": row.get("annotator_id"), "prompt": list(history), "chosen": chosen,
                            "rejected": text})
        if not chosen.strip():
            break        # an empty preferred response cannot be the next turn's history
        history = history + [{"role": "assistant", "content": chosen}]
    if not out:
        counts["rows_without_comparisons"] += 1
    return out


PRESETS = {
    "multipref": {
        "hub_dataset": "allenai/multipref", "hub_config": "default", "hub_split": "train",
        "required": ("text", "completion_a", "completion_b"),
        "any_of": ("normal_worker_annotations", "expert_worker_annotations"),
        "counts": ("annotations", "rows_without_annotations"),
        "comparisons": multipref_comparisons,
    },
    "community_alignment": {
        "hub_dataset": "facebook/community-alignment-dataset", "hub_config": None, "hub_split": "train",
        "required": ("annotator_id", "first_turn_prompt", "first_turn_preferred_response"),
        "any_of": (),
        "counts": ("turns", "turns_without_preference", "rows_without_comparisons"),
        "comparisons": community_alignment_comparisons,
    },
}


# -----------------------------------------------------------------------------
# reading rows: (where, row dict) from a file or a hub dataset


def parse_columns(text: str | None) -> dict:
    """--columns: a JSON object {our column: your column}, ours among CANONICAL; {} for None."""
    if text is None:
        return {}
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --columns is not valid JSON ({e.msg}); give an object such as "
                         f"--columns='{{\"user_id\": \"annotator_id\", \"chosen\": \"winner\"}}'") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise SystemExit("error: --columns must be a JSON object of column names, such as "
                         "--columns='{\"user_id\": \"annotator_id\"}'")
    unknown = sorted(set(mapping) - set(CANONICAL))
    if unknown:
        raise SystemExit(f"error: --columns renames {unknown}, which are not columns of ours; the keys are ours "
                         f"({', '.join(CANONICAL)}), the values the names in your data")
    return mapping


def read_file(path: Path):
    """The (row label, row dict) pairs of a local file, by its extension (FORMATS); a missing, empty or
    unknown file exits at once, a bad row when it is reached."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise SystemExit(f"error: {path}: unknown format {path.suffix or '(no extension)'!r}; give a "
                         f"{', '.join(FORMATS)} file")
    if not path.is_file():
        raise SystemExit(f"error: the comparisons file {path} does not exist")
    if path.stat().st_size == 0:
        raise SystemExit(f"error: the comparisons file {path} is empty; it needs one comparison per row: {ROW_FORMAT}")
    reader = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows, ".csv": _csv_rows}
    return reader[path.suffix.lower()](path)


def _jsonl_rows(path: Path):
    for number, row in harness.read_jsonl(path, f"fix or remove that line; each line one comparison: {ROW_FORMAT}"):
        yield f"line {number}", row


def _json_rows(path: Path):
    text = path.read_bytes()
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip()[:1] == b"{":     # one object per line: JSON lines
            yield from _jsonl_rows(path)
            return
        raise SystemExit(f"error: {path} is not valid JSON ({e.msg}, line {e.lineno}); a .json file holds one list "
                         f"of row objects (or one object per line)") from None
    except UnicodeDecodeError:
        raise SystemExit(f"error: {path} is not UTF-8 JSON") from None
    if not isinstance(rows, list):
        raise SystemExit(f"error: {path} holds a JSON {type(rows).__name__}, not a list of row objects: "
                         f"[{ROW_FORMAT}, ...]")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BadRow(f"error: {path}, row {number}, is not a JSON object; each row: {ROW_FORMAT}")
        yield f"row {number}", row


def _parquet_rows(path: Path):
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", row
    except (OSError, ValueError) as e:          # pyarrow's errors derive from these
        raise SystemExit(f"error: {path} is not a readable parquet file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None


def _csv_rows(path: Path):
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))      # long responses: past the 128 KiB default
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise SystemExit(f"error: {path} has no header line; its first line names the columns")
            start = reader.line_num + 1
            for cells in reader:
                if cells:
                    if len(cells) != len(header):
                        raise BadRow(f"error: {path}, line {start}, has {len(cells)} cells, the header "
                                     f"{len(header)}")
                    yield f"line {start}", dict(zip(header, cells))
                start = reader.line_num + 1
    except UnicodeDecodeError:
        raise SystemExit(f"error: {path} is not UTF-8 text") from None
    except csv.Error as e:
        raise SystemExit(f"error: {path}, line {reader.line_num}, is not valid CSV ({e})") from None


def hub_source(hub_dataset: str | None, hub_config: str | None, hub_split: str | None, preset: str | None) -> dict:
    """The hub input {"kind": "hub", "dataset", "config", "split"}: what is given, else the preset's
    (dataset, config, split), else the dataset's default config and split "train"."""
    spec = PRESETS.get(preset) or {}
    return {"kind": "hub", "dataset": hub_dataset or spec["hub_dataset"],
            "config": hub_config if hub_config is not None else spec.get("hub_config"),
            "split": hub_split if hub_split is not None else spec.get("hub_split", "train")}


def load_hub(dataset: str, config: str | None, split: str, offline_command: str):
    """(the `datasets.Dataset` of that split, its fingerprint or None); errors name the dataset and
    the offline switch."""
    import datasets

    what = f"{dataset} (config {config or 'default'}, split {split})"
    cached_only = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not cached_only and not harness.hub_reachable():
        raise harness.hub_unreachable(what, offline_command)
    try:
        loaded = datasets.load_dataset(dataset, config, split=split)
    except (ConnectionError, OSError) as e:
        raise harness.hub_unreachable(what, offline_command, e) from None
    except (ValueError, KeyError) as e:      # an unknown config or split
        raise SystemExit(f"error: cannot load {what}: {str(e).splitlines()[0][:300]}") from None
    return loaded, getattr(loaded, "_fingerprint", None)


def hub_rows(loaded, batch_size: int = 1000):
    """(row label, row dict) of a `datasets.Dataset` (or a list of row dicts, in tests)."""
    if isinstance(loaded, list):
        yield from ((f"row {n}", row) for n, row in enumerate(loaded, 1))
        return
    number = 0
    for batch in loaded.iter(batch_size=batch_size):
        columns = list(batch)
        for i in range(len(batch[columns[0]]) if columns else 0):
            number += 1
            yield f"row {number}", {c: batch[c][i] for c in columns}


# -----------------------------------------------------------------------------
# rows -> checked comparisons, every row counted


def _user(value, where: str) -> str | None:
    """The user id as text; None when missing or blank (an integer id, even one read as a float, is kept)."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)          # integer ids read as floats (a parquet column with nulls)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return str(value).strip() or None
    raise BadRow(f"error: {where}: the user id must be text or an integer, got {type(value).__name__} "
                 f"{str(value)[:60]!r}")


def _prompt(value, where: str):
    """The prompt as text or a list of {role, content} messages (only those two keys kept)."""
    if _is_missing(value):
        return ""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                return value
            if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
                return _prompt(parsed, where)
        return value
    if isinstance(value, (list, tuple)) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise BadRow(f"error: {where}: the prompt must be text or a list of {{\"role\", \"content\"}} messages "
                 f"(strings), got {json.dumps(value, default=str)[:100]}")


def _empty_prompt(prompt) -> bool:
    return not prompt.strip() if isinstance(prompt, str) else not any(m["content"].strip() for m in prompt)


def prompt_key(prompt) -> str:
    """The prompt's JSON encoding: the `prompt` column of the prepared files and a hashable key."""
    return json.dumps(prompt, ensure_ascii=False, separators=(",", ":"))


def read_comparisons(rows, source: str, preset: str | None = None,
                     columns: dict | None = None) -> tuple[list[dict], dict]:
    """Checked comparisons of `rows` ((row label, row dict) pairs; `source` names the file or dataset).

    Returns (comparisons [{user_id, prompt, chosen, rejected, source}] in row order, report {"rows_read",
    "comparisons_read", "rows_dropped": {reason: count}, "form", and a preset's own counts under
    "preset_counts"}). Without a preset every row is one comparison (comparisons_read == rows_read);
    with one, a row gives several. Every comparison read is kept or counted under one drop reason.
    """
    columns = columns or {}
    if preset is not None and columns:
        raise SystemExit("error: --columns cannot be combined with --preset (a preset knows its dataset's columns)")
    spec = PRESETS[preset] if preset is not None else None
    dropped = {reason: 0 for reason in DROP_REASONS}
    preset_counts = {name: 0 for name in spec["counts"]} if spec else {}
    kept, seen_keys = [], set()
    rows_read = comparisons_read = 0
    form = None
    try:
        for label, row in rows:
            where = f"{source}, {label}"
            rows_read += 1
            if form is None:
                form = _form(row, source, spec, columns)
            if spec:
                candidates = spec["comparisons"](row, where, preset_counts)
            else:
                candidates = [{c: row.get(columns.get(c, c)) for c in (PAIRWISE if form == "chosen/rejected" else AB)}]
            for candidate in candidates:
                comparisons_read += 1
                reason, comparison = _check(candidate, where)
                if reason is None:
                    key = (comparison["user_id"], prompt_key(comparison["prompt"]), comparison["chosen"],
                           comparison["rejected"])
                    if key in seen_keys:
                        reason = "duplicate_row"
                    else:
                        seen_keys.add(key)
                        kept.append(dict(comparison, source=label))
                if reason is not None:
                    dropped[reason] += 1
    finally:
        if hasattr(rows, "close"):
            rows.close()        # a reader stopped by a bad row closes its file now
    if rows_read == 0:
        raise SystemExit(f"error: {source} has no rows; it needs one comparison per row: {ROW_FORMAT}")
    report = {"rows_read": rows_read, "comparisons_read": comparisons_read, "rows_dropped": dropped, "form": form}
    if spec:
        report["preset_counts"] = preset_counts
    return kept, report


def _form(row: dict, source: str, spec: dict | None, columns: dict) -> str:
    """The input's form from its first row's columns: a preset's, chosen/rejected, or A/B."""
    present = set(row)
    if spec:
        missing = [c for c in spec["required"] if c not in present]
        if spec["any_of"] and not present & set(spec["any_of"]):
            missing.append(" or ".join(spec["any_of"]))
        if missing:
            raise SystemExit(f"error: {source} lacks the column(s) {missing} of the preset's dataset; its columns "
                             f"are {sorted(present)[:30]}")
        return "preset"
    name = {c: columns.get(c, c) for c in CANONICAL}
    for form, needed in (("chosen/rejected", PAIRWISE), ("a/b", AB)):
        if all(name[c] in present for c in needed):
            return form
    want = (f"{', '.join(name[c] for c in PAIRWISE)} (or {', '.join(name[c] for c in AB[2:])} instead of "
            f"{name['chosen']}, {name['rejected']})")
    raise SystemExit(f"error: {source}: its first row has the columns {sorted(present)[:30]}, not {want}. Name "
                     f"yours with --columns='{{\"user_id\": \"<your user column>\", \"prompt\": \"...\", ...}}'")


def _check(candidate: dict, where: str) -> tuple[str | None, dict | None]:
    """(drop reason or None, the comparison {user_id, prompt, chosen, rejected}); a malformed value exits."""
    user = _user(candidate["user_id"], where)
    prompt = _prompt(candidate["prompt"], where)
    if "preference" in candidate:
        a = _text_or_empty(candidate["response_a"], where, "response_a")
        b = _text_or_empty(candidate["response_b"], where, "response_b")
        value = candidate["preference"]
        preference = PREFERENCES.get(value.strip().lower()) if isinstance(value, str) else None
        if preference is None:
            raise BadRow(f"error: {where}: the preference is {value!r}, not a, b or tie")
        texts = (a, b)
        chosen, rejected = (a, b) if preference == "a" else (b, a)
    else:
        chosen = _text_or_empty(candidate["chosen"], where, "chosen")
        rejected = _text_or_empty(candidate["rejected"], where, "rejected")
        preference, texts = None, (chosen, rejected)
    if user is None:
        return "missing_user", None
    if _empty_prompt(prompt) or any(not t.strip() for t in texts):
        return "empty_text", None
    if preference == "tie":
        return "tie", None
    if chosen.strip() == rejected.strip():
        return "chosen_equals_rejected", None
    return None, {"user_id": user, "prompt": prompt, "chosen": chosen, "rejected": rejected}


# -----------------------------------------------------------------------------
# the seeded split


def split_population(comparisons: list[dict], *, seed: int = 0, min_comparisons: int = 20,
                     unseen_fraction: float = 0.5, seen_test_fraction: float = 0.5, num_shots: int = 10,
                     source: str = "the input") -> tuple[list[dict], dict]:
    """The seen/new user split, reproducible (numpy default_rng(seed) over sorted user ids, never hash
    order). Rounding is half up.

    1. Users with fewer than `min_comparisons` comparisons are dropped (below_min_comparisons).
    2. The n remaining users, sorted by id and shuffled, are cut: the first round(unseen_fraction * n)
       (at least 1, at most n - 2) are new (unseen) users, the rest seen users.
    3. Each seen user (sorted by id): its distinct prompts shuffled, the first round(seen_test_fraction
       * P) (at least 1, at most P - 1) are its test prompts, the others its train prompts; all its
       comparisons of a prompt go to that prompt's side, so a prompt is never in both. A seen user with a
       single distinct prompt cannot be split: dropped (single_prompt_seen_user).
    4. Each new user (sorted by id): its comparisons shuffled, the first min(num_shots, m - 1) are its
       few-shot train part, the rest (at least 1) its test part.
    Fewer than 2 seen or 1 new user left is an error naming the counts.
    Returns (the comparisons with "split" and "seen", seen users then new users, each sorted by id, each
    user's rows in input order; report {"users", "comparisons", "dropped", "seen_users", "unseen_users"}).
    """
    import numpy as np

    if min_comparisons < 2:
        raise SystemExit(f"error: --min_comparisons={min_comparisons}: a user needs at least 2 comparisons (a train "
                         f"and a test one)")
    if num_shots < 1:
        raise SystemExit(f"error: --num_shots={num_shots}: a new user needs at least 1 few-shot "
                         f"comparison")
    by_user: dict[str, list[int]] = {}
    for i, c in enumerate(comparisons):
        by_user.setdefault(c["user_id"], []).append(i)
    all_users = sorted(by_user)
    users = [u for u in all_users if len(by_user[u]) >= min_comparisons]
    dropped = {"below_min_comparisons": sum(len(by_user[u]) for u in all_users if len(by_user[u]) < min_comparisons),
               "single_prompt_seen_user": 0}
    n = len(users)
    counts = (f"{len(all_users)} users with a kept comparison, {len(all_users) - n} of them below "
              f"min_comparisons = {min_comparisons}, {n} left")
    if n < 3:
        raise SystemExit(f"error: {source}: too few users to split ({counts}); the split needs at least 3 (2 seen, "
                         f"1 new). Lower --min_comparisons or add users; nothing was written")
    rng = np.random.default_rng(seed)
    shuffled = [users[i] for i in rng.permutation(n)]
    n_unseen = min(max(1, int(unseen_fraction * n + 0.5)), n - 2)
    unseen, seen = sorted(shuffled[:n_unseen]), sorted(shuffled[n_unseen:])

    # Prompts and comparisons are sorted by content before they are shuffled, so the split depends on the
    # comparisons, never on the order of the rows (a comparison is unique per user: duplicates are dropped).
    out, kept_seen = [], []
    for u in seen:
        rows = by_user[u]
        prompts = sorted({prompt_key(comparisons[i]["prompt"]) for i in rows})
        if len(prompts) < 2:
            dropped["single_prompt_seen_user"] += len(rows)
            continue
        kept_seen.append(u)
        n_test = min(max(1, int(seen_test_fraction * len(prompts) + 0.5)), len(prompts) - 1)
        test_prompts = {prompts[j] for j in rng.permutation(len(prompts))[:n_test]}
        for i in rows:
            split = "test" if prompt_key(comparisons[i]["prompt"]) in test_prompts else "train"
            out.append(dict(comparisons[i], split=split, seen=True))
    if len(kept_seen) < 2:
        raise SystemExit(f"error: {source}: too few users to split ({counts}; {len(seen)} drawn as seen users, "
                         f"{len(seen) - len(kept_seen)} of them with a single distinct prompt, which cannot be split "
                         f"into train and test prompts); the split needs 2 seen users. Nothing was written")
    for u in unseen:
        rows = sorted(by_user[u], key=lambda i: _content(comparisons[i]))
        shots = set(rng.permutation(len(rows))[:min(num_shots, len(rows) - 1)].tolist())
        out.extend(dict(comparisons[i], split="train" if j in shots else "test", seen=False)
                   for j, i in enumerate(rows))
    group_sizes = {name: sum(1 for r in out if r["seen"] == s and r["split"] == split)
                   for name, (s, split) in GROUPS.items()}
    report = {"users": {"with_a_kept_comparison": len(all_users), "kept": len(kept_seen) + len(unseen),
                        "seen": len(kept_seen), "unseen": len(unseen)},
              "comparisons": {"kept": len(out), **group_sizes}, "dropped": dropped,
              "seen_users": kept_seen, "unseen_users": unseen}
    return out, report


def _content(comparison: dict) -> tuple:
    return prompt_key(comparison["prompt"]), comparison["chosen"], comparison["rejected"]


SPLIT_RULES = ("users with fewer than min_comparisons comparisons dropped; the rest sorted by id, shuffled "
               "(numpy default_rng(seed)), the first round(unseen_fraction * n) (at least 1, at most n - 2) new "
               "users, the others seen; a seen user's distinct prompts shuffled, round(seen_test_fraction * P) "
               "(at least 1, at most P - 1) test prompts, the others train (a prompt never in both; a seen user "
               "with one distinct prompt dropped); a new user's comparisons shuffled, the first "
               "min(num_shots, m - 1) few-shot train, the rest test")


# -----------------------------------------------------------------------------
# files


def write_comparisons(rows: list[dict], path: Path) -> None:
    """Prepared rows (COLUMNS; prompt as its JSON encoding) as parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = pa.string()
    schema = pa.schema([("split", s), ("seen", pa.bool_()), ("user_id", s), ("prompt", s), ("chosen", s),
                        ("rejected", s), ("source", s)])
    table = pa.Table.from_pylist([dict(r, prompt=prompt_key(r["prompt"])) for r in rows], schema=schema)
    with harness.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def load_prepared(data_path: Path, made_by: str) -> tuple[dict, dict]:
    """({"train": rows, "test": rows} with prompts decoded, prepare.json) of a prepared data folder; the
    files must be the ones prepare.json recorded (an interrupted prepare leaves others)."""
    import pyarrow.parquet as pq

    summary_path = harness.require_file(Path(data_path) / PREPARE_FILE, made_by)
    try:
        summary = json.loads(summary_path.read_text())
        recorded = summary["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {summary_path} is unreadable ({type(e).__name__}); run `{made_by}`") from None
    rows = {}
    for split in SPLITS:
        name = COMPARISONS_FILE.format(split=split)
        path = harness.require_file(Path(data_path) / name, made_by)
        if harness.file_sha256(path) != recorded.get(name):
            raise SystemExit(f"error: {path} is not the file {PREPARE_FILE} records (changed or damaged since, or "
                             f"an interrupted prepare); run `{made_by}`")
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise SystemExit(f"error: {path} is unreadable ({type(e).__name__}); run `{made_by}`") from None
        if table.column_names != COLUMNS:
            raise SystemExit(f"error: {path} has the columns {table.column_names}, not {COLUMNS}; run `{made_by}`")
        rows[split] = [dict(r, prompt=json.loads(r["prompt"])) for r in table.to_pylist()]
    return rows, summary


def embedding_inputs(rows: dict) -> tuple[list, dict]:
    """(distinct conversations in first-seen order, train then test, chosen then rejected; {"{split}_chosen"
    / "{split}_rejected": [N] int64 rows into them}) of the prepared comparisons (load_prepared)."""
    import torch

    parts = [(f"{split}_{side}", [embedding.conversation(r["prompt"], r[side]) for r in rows[split]])
             for split in SPLITS for side in ("chosen", "rejected")]
    conversations, position = embedding.distinct_conversations(c for _, part in parts for c in part)
    index, start = {}, 0
    for name, part in parts:
        index[name] = torch.tensor(position[start:start + len(part)], dtype=torch.long)
        start += len(part)
    return conversations, index


def user_groups(data_path: Path, prepare_command: str, embed_command: str):
    """The four groups of train_basis.py and vary_fewshot.py as utils.Comparisons over the embeddings.

    Seen groups hold the seen users, unseen groups the new users, each sorted by id, rows grouped by
    user. Returns (groups {name: Comparisons}, {"seen": [ids], "unseen": [ids]}, V_ref [d, 1],
    prepare.json's counts). The commands name what remakes a missing or stale input.
    """
    import torch

    rows, summary = load_prepared(data_path, prepare_command)
    users = {"seen": sorted({r["user_id"] for s in SPLITS for r in rows[s] if r["seen"]}),
             "unseen": sorted({r["user_id"] for s in SPLITS for r in rows[s] if not r["seen"]})}
    conversations, index = embedding_inputs(rows)
    table, V_ref = embedding.load_embedded(data_path, conversations, embed_command)
    groups = {}
    for name, (seen, split) in GROUPS.items():
        picked = torch.tensor([i for i, r in enumerate(rows[split]) if bool(r["seen"]) == seen], dtype=torch.long)
        groups[name] = utils.Comparisons.by_user([rows[split][i]["user_id"] for i in picked.tolist()],
                                                 users["seen" if seen else "unseen"], table,
                                                 index[f"{split}_chosen"][picked], index[f"{split}_rejected"][picked])
    counts = {k: summary.get(k) for k in ("input", "rows_read", "comparisons_read", "rows_dropped", "users",
                                          "comparisons")}
    return groups, users, V_ref, counts

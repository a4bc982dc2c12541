"""PRISM data machinery shared by this folder's scripts (prepare, embeddings, train_basis, vary_fewshot)
and its tests: download, parse, split, comparisons, per-user features (SPEC 2.1).

Raw files are those of `HannahRoseKirk/prism-alignment` (survey.jsonl, conversations.jsonl,
utterances.jsonl), downloaded or written by the offline generator (offline/prism.py) in the same format;
both go through the same parsing code.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict

import utils

HUB_URL = "https://huggingface.co/datasets/HannahRoseKirk/prism-alignment/resolve/main/"
RAW_FILES = ("survey.jsonl", "conversations.jsonl", "utterances.jsonl")

USER_FILE = "prism_data_user.json"
DIALOG_FILE = "prism_data_dialog.json"
SPLIT_FILE = "prism_split_ids_50.json"
COMPARISONS_FILE = "{split}.parquet"                          # train.parquet, test.parquet
SPLITS = ("train", "test")
PREPARE_SUMMARY_FILE = "prepare_summary.json"
EMBEDDINGS_FILE = "conversation_embeddings.safetensors"       # one row per distinct conversation
INDEX_FILE = "comparison_index.safetensors"                   # {split}_chosen / {split}_rejected rows
COLUMNS = ["split", "seen", "user_id", "dialog_id", "turn_nb", "total_turn_nb", "prompt", "chosen",
           "rejected"]

# The nine slider attributes of `stated_prefs` in the survey's own order (ties in the top three are
# broken by this order, never by the key order of a row).
PREFERENCE_KEYS = ("values", "creativity", "fluency", "factuality", "diversity", "safety",
                   "personalisation", "helpfulness", "other")
DEMOGRAPHIC_KEYS = ("age", "gender", "education", "employment_status", "marital_status",
                    "english_proficiency", "religion", "ethnicity", "location")

OFFLINE_HINT = ("run `python prepare.py --offline` to use the built-in generated PRISM data instead "
                "(no network needed)")


# -----------------------------------------------------------------------------
# downloading (SPEC 2.1): retries only for rate limiting, atomic writes, valid files reused


class DownloadError(SystemExit):
    """A download that cannot succeed now: exits with the message (catchable in tests)."""


class RateLimited(Exception):
    """HTTP 429, or an HTML page served instead of the JSON lines."""


def invalid_jsonl_reason(path: Path) -> Optional[str]:
    """Why `path` is not a complete JSON-lines file, or None when it is.

    Checks that the file is not empty and not an HTML page, and that its first and its last non-empty
    lines each parse as a JSON object (a truncated download ends mid-line, so its last line fails).
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        if head.lstrip()[:1] == b"<":
            return "an HTML page, not JSON lines"
        f.seek(0)
        first = next((line for line in f if line.strip()), b"")   # the first non-empty line
        # the last non-empty line: read ever larger tails until one holds a newline before it
        chunk = 1 << 16
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            tail = f.read(size - start).rstrip(b"\r\n")
            if b"\n" in tail or start == 0:
                last = tail.rsplit(b"\n", 1)[-1]
                break
            chunk *= 4
    for name, line in (("first", first), ("last", last)):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"its {name} line is not valid JSON (truncated or not JSON lines)"
        if not isinstance(row, dict):
            return f"its {name} line is not a JSON object"
    return None


def _fetch_once(url: str, tmp: Path, opener, timeout: float) -> None:
    """One GET of `url` streamed into `tmp`. Raises RateLimited, DownloadError."""
    request = urllib.request.Request(url, headers={"User-Agent": "LoRe-prepare/1.0"})
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 429:
            raise RateLimited(f"HTTP 429 from {url}")
        raise DownloadError(f"error: downloading {url} failed with HTTP {e.code} ({e.reason}); "
                            f"check the URL or try later, or {OFFLINE_HINT}")
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"error: cannot reach {url} ({reason}): no network? Nothing here retries a "
                            f"connection failure; {OFFLINE_HINT}")
    try:
        with response:
            ctype = (response.headers.get("Content-Type") or "") if response.headers else ""
            expected = response.headers.get("Content-Length") if response.headers else None
            received = 0
            with open(tmp, "wb") as f:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    if received == 0 and block.lstrip()[:1] == b"<":
                        raise RateLimited(f"an HTML page instead of JSON lines from {url}")
                    f.write(block)
                    received += len(block)
    except (socket.timeout, ConnectionError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"error: the download of {url} broke off ({type(e).__name__}: {e}); the "
                            f"existing file (if any) is untouched; run again, or {OFFLINE_HINT}")
    if "text/html" in ctype.lower():
        raise RateLimited(f"an HTML page (Content-Type {ctype}) instead of JSON lines from {url}")
    if expected is not None and str(expected).isdigit() and int(expected) != received:
        raise DownloadError(f"error: the download of {url} is truncated ({received} of {expected} bytes); "
                            f"the existing file (if any) is untouched; run again")


def download(url: str, dest: Path, retries: int = 10, wait_s: float = 30.0, opener=None,
             sleep=time.sleep, timeout: float = 60.0) -> str:
    """Download `url` to `dest` unless a valid file is already there. Returns "reused" or "downloaded".

    Rate limiting (HTTP 429, or an HTML page instead of JSON lines) waits `wait_s` seconds and retries,
    up to `retries` times; any other failure stops at once (a connection failure names the offline
    switch). The body goes to a temp file in the same folder and replaces `dest` (os.replace) only
    once it is valid, so a failed or bad download never replaces a good file.
    """
    dest = Path(dest)
    if invalid_jsonl_reason(dest) is None:
        print(f"{dest.name}: valid file already present, reused")
        return "reused"
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = opener or urllib.request.urlopen
    tmp = dest.with_name(f".{dest.name}.download{os.getpid()}")
    try:
        for attempt in range(retries + 1):
            try:
                print(f"{dest.name}: downloading {url}" + (f" (retry {attempt} of {retries})" if attempt else ""))
                _fetch_once(url, tmp, opener, timeout)
            except RateLimited as e:
                if attempt == retries:
                    raise DownloadError(f"error: still rate limited after {retries} retries ({e}); "
                                        f"try again later, or {OFFLINE_HINT}")
                print(f"{dest.name}: rate limited ({e}); waiting {wait_s:g} s")
                sleep(wait_s)
                continue
            reason = invalid_jsonl_reason(tmp)
            if reason is not None:
                raise DownloadError(f"error: the download of {url} is not valid JSON lines ({reason}); "
                                    f"the existing file (if any) is untouched; run again")
            os.replace(tmp, dest)
            return "downloaded"
    finally:
        if tmp.exists():
            tmp.unlink()
    raise AssertionError("unreachable")


# -----------------------------------------------------------------------------
# parsing: raw rows (extra keys ignored, any key order) -> users and dialogs


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SurveyRow(_Row):
    user_id: str
    num_completed_conversations: int
    self_description: Optional[str] = None
    system_string: Optional[str] = None
    age: Optional[str] = None
    gender: Optional[str] = None
    education: Optional[str] = None
    employment_status: Optional[str] = None
    marital_status: Optional[str] = None
    english_proficiency: Optional[str] = None
    religion: Optional[dict[str, Any]] = None
    ethnicity: Optional[dict[str, Any]] = None
    location: Optional[dict[str, Any]] = None
    stated_prefs: dict[str, Any] = {}
    order_stated_prefs: dict[str, Any] = {}


class HistoryItem(_Row):
    turn: int
    role: str
    content: Optional[str] = None
    if_chosen: Optional[bool] = None
    within_turn_id: Optional[int] = None
    model_name: Optional[str] = None
    model_provider: Optional[str] = None
    score: Optional[float] = None


class ConversationRow(_Row):
    conversation_id: str
    user_id: str
    conversation_type: Optional[str] = None
    opening_prompt: Optional[str] = None
    conversation_turns: Optional[int] = None
    open_feedback: Optional[str] = None
    conversation_history: list[HistoryItem]


class Turn(BaseModel):
    turn_nb: int
    user_utterance: list[str] = []
    chosen_utterance: list[str] = []
    rejected_utterance: list[str] = []

    def usable(self) -> bool:
        """A turn yields comparisons: a user utterance, a chosen and a rejected response."""
        return bool(self.user_utterance and self.chosen_utterance and self.rejected_utterance)


class Dialog(BaseModel):
    dialog_id: str
    user_id: str
    conversation_type: Optional[str] = None
    opening_prompt: Optional[str] = None
    open_feedback: Optional[str] = None
    total_turn_nb: int
    turns: list[Turn]


class User(BaseModel):
    user_id: str
    num_completed_conversations: int
    dialog_ids: list[str] = []
    preferences: list[str] = []          # the three highest stated_prefs sliders
    stated_prefs: dict[str, Any] = {}
    self_description: Optional[str] = None
    system_string: Optional[str] = None
    demographics: dict[str, Any] = {}


def read_jsonl(path: Path):
    """Rows of a JSON-lines file (blank lines skipped), with the line number in errors."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"error: {path}:{n} is not valid JSON ({e}); delete the file and run "
                                     f"prepare.py again")


def top_preferences(stated_prefs: dict, k: int = 3) -> list[str]:
    """The `k` attributes with the highest stated_prefs values (numeric sliders only; ties by the
    survey's attribute order). Fix of SPEC 2.1: not the first three of order_stated_prefs."""
    rank = {key: i for i, key in enumerate(PREFERENCE_KEYS)}
    scored = [(float(v), key) for key, v in stated_prefs.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    scored.sort(key=lambda x: (-x[0], rank.get(x[1], len(rank)), x[1]))
    return [key for _, key in scored[:k]]


def parse_turns(history: list[HistoryItem]) -> list[Turn]:
    """Group a conversation_history into turns (ascending turn number; model responses in
    within_turn_id order): user utterances, chosen and rejected responses. A non-user item is a model
    response, chosen when if_chosen is true (as in the original). Items without content are skipped.
    "EMPTY STRING" responses are kept: it is the literal text the model gave."""
    turns: dict[int, Turn] = {}
    models = []
    for pos, item in enumerate(history):
        if item.content is None:
            continue
        turn = turns.setdefault(item.turn, Turn(turn_nb=item.turn))
        if item.role == "user":
            turn.user_utterance.append(item.content)
        else:
            models.append((item.turn, item.within_turn_id if item.within_turn_id is not None else pos, pos, item))
    for t, _, _, item in sorted(models, key=lambda m: m[:3]):
        (turns[t].chosen_utterance if item.if_chosen else turns[t].rejected_utterance).append(item.content)
    return [turns[t] for t in sorted(turns)]


def parse_raw(raw_dir: Path) -> tuple[dict, dict, dict]:
    """Users and dialogs from the raw files: ({user_id: User dict}, {dialog_id: Dialog dict}, counts).

    Users with 0 completed conversations are skipped; dialogs without any usable turn are dropped; a user
    whose every dialog was dropped is dropped, while a user with no row in conversations.jsonl is kept
    (with no dialogs, as in the original: it moves the split's permutation). Users keep survey order,
    their dialog ids conversations.jsonl order.
    """
    raw_dir = Path(raw_dir)
    counts = {"survey_rows": 0, "users_zero_conversations": 0, "conversations": 0,
              "conversations_of_unknown_users": 0, "dialogs_dropped_no_usable_turn": 0,
              "users_dropped_no_dialog": 0}
    users: dict[str, User] = {}
    for row in read_jsonl(raw_dir / "survey.jsonl"):
        counts["survey_rows"] += 1
        s = SurveyRow.model_validate(row)
        if s.num_completed_conversations == 0:
            counts["users_zero_conversations"] += 1
            continue
        users[s.user_id] = User(
            user_id=s.user_id, num_completed_conversations=s.num_completed_conversations,
            preferences=top_preferences(s.stated_prefs), stated_prefs=s.stated_prefs,
            self_description=s.self_description, system_string=s.system_string,
            demographics={k: getattr(s, k) for k in DEMOGRAPHIC_KEYS})
    dialogs: dict[str, Dialog] = {}
    lost_dialogs = set()        # users with at least one unusable (deleted) dialog
    for row in read_jsonl(raw_dir / "conversations.jsonl"):
        counts["conversations"] += 1
        c = ConversationRow.model_validate(row)
        if c.user_id not in users:
            counts["conversations_of_unknown_users"] += 1
            continue
        turns = parse_turns(c.conversation_history)
        if not any(t.usable() for t in turns):
            counts["dialogs_dropped_no_usable_turn"] += 1
            lost_dialogs.add(c.user_id)
            continue
        dialogs[c.conversation_id] = Dialog(
            dialog_id=c.conversation_id, user_id=c.user_id, conversation_type=c.conversation_type,
            opening_prompt=c.opening_prompt, open_feedback=c.open_feedback,
            total_turn_nb=c.conversation_turns if c.conversation_turns is not None else len(turns),
            turns=turns)
        users[c.user_id].dialog_ids.append(c.conversation_id)
    # As the original: a user is dropped only when the deletion of unusable dialogs removed its last one.
    # A user with completed conversations but no row in conversations.jsonl stays: it never qualifies
    # for the split, but it is one more id in the list that the split shuffles.
    for uid in [u for u, user in users.items() if not user.dialog_ids and u in lost_dialogs]:
        del users[uid]
        counts["users_dropped_no_dialog"] += 1
    counts["users_without_conversation_rows"] = sum(1 for u in users.values() if not u.dialog_ids)
    counts["users"] = len(users)
    counts["dialogs"] = len(dialogs)
    return ({u: x.model_dump() for u, x in users.items()}, {d: x.model_dump() for d, x in dialogs.items()},
            counts)


# -----------------------------------------------------------------------------
# the seen/unseen split (SPEC 2.1, reproduced exactly)


def split_users(data_user: dict, seed: int = 123, seen_fraction: float = 0.8, min_dialogs: int = 5,
                train_fraction: float = 0.5) -> dict:
    """The original split, draw for draw.

    `np.random.seed(seed)`; the user ids (in `data_user` order: survey order after the drops) are
    shuffled with `np.random.shuffle`; the first int(0.8 n) are seen candidates, the rest unseen
    candidates. Walking the seen candidates, then the unseen ones, a user qualifies with more than
    `min_dialogs` dialogs; its dialog ids (conversations.jsonl order) are shuffled with
    `np.random.shuffle` and the first int(0.5 m) go to train, the rest to test. Returns
    {"train_dialog_ids", "test_dialog_ids", "seen_user_ids": {id: i + 1}, "unseen_user_ids": {id: 0}}.
    Note: this reseeds numpy's global generator (as the original did).
    """
    np.random.seed(seed)
    user_ids = list(data_user)
    np.random.shuffle(user_ids)
    cut = int(len(user_ids) * seen_fraction)
    train, test, seen, unseen = [], [], [], []
    for candidates, qualified in ((user_ids[:cut], seen), (user_ids[cut:], unseen)):
        for uid in candidates:
            to_choose_from = np.array(data_user[uid]["dialog_ids"])
            if len(to_choose_from) > min_dialogs:
                qualified.append(uid)
                np.random.shuffle(to_choose_from)
                n_train = int(len(to_choose_from) * train_fraction)
                train += [str(x) for x in to_choose_from[:n_train]]
                test += [str(x) for x in to_choose_from[n_train:]]
    return {"train_dialog_ids": train, "test_dialog_ids": test,
            "seen_user_ids": {u: i + 1 for i, u in enumerate(seen)},
            "unseen_user_ids": {u: 0 for u in unseen}}


# -----------------------------------------------------------------------------
# comparisons: one row per (chosen, rejected) response, the dialog so far as the prompt


def dialog_comparisons(dialog: dict) -> list[dict]:
    """Comparison rows (turn_nb, prompt, chosen, rejected) of one dialog, in turn order.

    The prompt of turn t is the chat so far (user messages and the chosen responses of earlier turns,
    roles "user"/"assistant") plus the user message(s) of turn t. One row per (chosen, rejected) pair
    (fix of the original, which embedded the list of rejected responses as one string). A turn without
    a chosen or a rejected response yields no row; a turn without a chosen response (or without a user
    message) ends the usable history; with several chosen responses (not in the real data) the first
    one continues the history. A pair with identical texts (say two "EMPTY STRING" responses) is kept,
    as the data give it: its feature is 0, which the strict tie rule counts as wrong for every method.
    """
    history, rows = [], []
    for turn in dialog["turns"]:
        if not turn["user_utterance"] or not turn["chosen_utterance"]:
            break
        history = history + [{"role": "user", "content": u} for u in turn["user_utterance"]]
        for chosen in turn["chosen_utterance"]:
            for rejected in turn["rejected_utterance"]:
                rows.append({"turn_nb": turn["turn_nb"], "prompt": list(history), "chosen": chosen,
                             "rejected": rejected})
        history = history + [{"role": "assistant", "content": turn["chosen_utterance"][0]}]
    return rows


def build_comparisons(data_dialog: dict, split_ids: dict) -> dict:
    """{"train": rows, "test": rows} (COLUMNS), walking each split's dialogs in split order."""
    seen = split_ids["seen_user_ids"]
    out = {}
    for split in SPLITS:
        rows = []
        for dialog_id in split_ids[f"{split}_dialog_ids"]:
            dialog = data_dialog[dialog_id]
            for r in dialog_comparisons(dialog):
                rows.append({"split": split, "seen": dialog["user_id"] in seen, "user_id": dialog["user_id"],
                             "dialog_id": dialog_id, "turn_nb": r["turn_nb"],
                             "total_turn_nb": dialog["total_turn_nb"], "prompt": r["prompt"],
                             "chosen": r["chosen"], "rejected": r["rejected"]})
        out[split] = rows
    return out


def conversation(prompt, response: str) -> list[dict]:
    """The conversation embedded for one side of a comparison: the prompt + the response."""
    return [{"role": m["role"], "content": m["content"]} for m in prompt] + \
        [{"role": "assistant", "content": response}]


def json_key(conversation) -> str:
    """A hashable key of a conversation's content (to embed every distinct conversation once)."""
    return json.dumps(conversation, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def embedding_inputs(rows: dict) -> tuple[list, dict]:
    """(distinct conversations in first-seen order, train then test; {"{split}_chosen" / "{split}_rejected":
    [N] int64 rows into them}) of the prepared comparisons `rows` (load_prepared)."""
    import torch

    conversations, row_of, index = [], {}, {}

    def index_of(conv) -> int:
        key = json_key(conv)
        if key not in row_of:
            row_of[key] = len(conversations)
            conversations.append(conv)
        return row_of[key]

    for split in SPLITS:
        for side in ("chosen", "rejected"):
            index[f"{split}_{side}"] = torch.tensor([index_of(conversation(r["prompt"], r[side]))
                                                     for r in rows[split]], dtype=torch.long)
    return conversations, index


# -----------------------------------------------------------------------------
# files


def write_comparisons(rows: list[dict], path: Path) -> None:
    """Write comparison rows (COLUMNS; prompt = list of {role, content}) as parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = pa.string()
    schema = pa.schema([("split", s), ("seen", pa.bool_()), ("user_id", s), ("dialog_id", s),
                        ("turn_nb", pa.int32()), ("total_turn_nb", pa.int32()),
                        ("prompt", pa.list_(pa.struct([("role", s), ("content", s)]))),
                        ("chosen", s), ("rejected", s)])
    with utils.atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def read_comparisons(path: Path) -> list[dict]:
    """The rows of train.parquet / test.parquet as plain dicts (prompt: list of {role, content})."""
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def load_prepared(data_path: Path, made_by: str = "python prepare.py") -> dict:
    """{"train": rows, "test": rows} written by prepare.py."""
    return {s: read_comparisons(utils.require_file(data_path / COMPARISONS_FILE.format(split=s), made_by))
            for s in SPLITS}


def load_embedded(data_path: Path, made_by: str = "python generate-prism-embeddings.py"):
    """(rows {split: list}, table [U, d] float32, {split: (chosen [N], rejected [N]) long}, head [d, 1]),
    after checking that the embeddings were made from the current train/test parquet files."""
    import embedding
    from safetensors import safe_open
    from safetensors.torch import load_file

    index_path = utils.require_file(data_path / INDEX_FILE, made_by)
    with safe_open(str(index_path), "pt") as f:
        meta = f.metadata() or {}
    for s in SPLITS:
        comp = utils.require_file(data_path / COMPARISONS_FILE.format(split=s), "python prepare.py")
        if meta.get(f"{s}_sha256") != utils.file_sha256(comp):
            raise SystemExit(f"error: {index_path.name} was made from another version of {comp.name}; "
                             f"rerun `{made_by}`")
    with safe_open(str(utils.require_file(data_path / EMBEDDINGS_FILE, made_by)), "pt") as f:
        manifest = json.loads((f.metadata() or {}).get("manifest") or "{}")
    if manifest.get("conversations_sha256") != meta.get("conversations_sha256"):
        raise SystemExit(f"error: {EMBEDDINGS_FILE} and {INDEX_FILE} come from different runs; rerun `{made_by}`")
    index = load_file(str(index_path))
    table = embedding.load_embeddings(data_path / EMBEDDINGS_FILE, made_by).float()
    head = embedding.load_reward_head(data_path / embedding.REWARD_HEAD_FILE, made_by).float()
    rows = load_prepared(data_path)
    pairs = {s: (index[f"{s}_chosen"].long(), index[f"{s}_rejected"].long()) for s in SPLITS}
    return rows, table, pairs, head.reshape(table.shape[1], -1)


# -----------------------------------------------------------------------------
# the four (seen, split) groups of train_basis.py


GROUPS = {  # name: (seen, split)
    "seen_train": (True, "train"),      # LoRe training data
    "seen_test": (True, "test"),        # seen users, unseen prompts
    "unseen_train": (False, "train"),   # few-shot data of new users
    "unseen_test": (False, "test"),     # new users, unseen prompts
}


def user_groups(data_path: Path, made_by: str = "python generate-prism-embeddings.py"):
    """The four groups of train_basis.py as dense utils.Comparisons, plus what goes with them.

    Seen groups have the split's seen users, unseen groups its unseen users, each sorted by id (as the
    original); a user with no comparison in a group keeps its index (and counts as no user there).
    Returns (groups {name: Comparisons}, {"seen": [ids], "unseen": [ids]}, reward head [d, 1]).
    """
    import torch

    split_ids = json.loads(utils.require_file(data_path / SPLIT_FILE, "python prepare.py").read_text())
    rows, table, pairs, head = load_embedded(data_path, made_by)
    users = {"seen": sorted(split_ids["seen_user_ids"]), "unseen": sorted(split_ids["unseen_user_ids"])}
    groups = {}
    for name, (seen, split) in GROUPS.items():
        position = {u: i for i, u in enumerate(users["seen" if seen else "unseen"])}
        picked = [i for i, r in enumerate(rows[split]) if bool(r["seen"]) == seen]
        for i in picked:
            if rows[split][i]["user_id"] not in position:
                raise SystemExit(f"error: {COMPARISONS_FILE.format(split=split)} row {i} has user "
                                 f"{rows[split][i]['user_id']} outside the {SPLIT_FILE} split; rerun prepare.py")
        user_index = torch.tensor([position[rows[split][i]["user_id"]] for i in picked], dtype=torch.long)
        order = torch.argsort(user_index, stable=True)          # rows grouped by user, in row order
        idx = torch.tensor(picked, dtype=torch.long)[order]
        chosen, rejected = pairs[split]
        features = table[chosen[idx]] - table[rejected[idx]]
        groups[name] = utils.Comparisons(user_index[order], len(position), features=features)
    return groups, users, head

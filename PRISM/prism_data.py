"""PRISM data machinery shared by this folder's scripts and its tests: raw files, parsing, the split,
comparisons and the four (seen, split) comparison groups.

Raw files are those of `HannahRoseKirk/prism-alignment` (survey.jsonl, conversations.jsonl,
utterances.jsonl), downloaded or written by the offline generator (offline/prism.py) in the same format;
both go through the same parsing code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict

import embedding
import harness
import utils

HUB_DATASET = "HannahRoseKirk/prism-alignment"
RAW_FILES = ("survey.jsonl", "conversations.jsonl", "utterances.jsonl")

USER_FILE = "prism_data_user.json"
DIALOG_FILE = "prism_data_dialog.json"
SPLIT_FILE = "prism_split_ids_50.json"
COMPARISONS_FILE = "{split}.parquet"                          # train.parquet, test.parquet
SPLITS = ("train", "test")
PREPARE_SUMMARY_FILE = "prepare_summary.json"
COLUMNS = ["split", "seen", "user_id", "dialog_id", "turn_nb", "total_turn_nb", "prompt", "chosen",
           "rejected"]

# The nine slider attributes of `stated_prefs` in the survey's own order (ties in the top three are
# broken by this order, never by the key order of a row).
PREFERENCE_KEYS = ("values", "creativity", "fluency", "factuality", "diversity", "safety",
                   "personalisation", "helpfulness", "other")
DEMOGRAPHIC_KEYS = ("age", "gender", "education", "employment_status", "marital_status",
                    "english_proficiency", "religion", "ethnicity", "location")


# -----------------------------------------------------------------------------
# the raw files: downloaded once through huggingface_hub, validated before use


def invalid_jsonl_reason(path: Path) -> Optional[str]:
    """Why `path` is not a complete JSON-lines file, or None when it is: not empty, not an HTML page,
    and its first and last non-empty lines each parse as a JSON object (a truncated file ends mid-line)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    with open(path, "rb") as f:
        if f.read(1 << 16).lstrip()[:1] == b"<":
            return "an HTML page, not JSON lines"
        f.seek(0)
        first = next((line for line in f if line.strip()), b"")
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        last = next((line for line in reversed(f.read().splitlines()) if line.strip()), b"")
    for name, line in (("first", first), ("last", last)):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"its {name} line is not valid JSON (truncated or not JSON lines)"
        if not isinstance(row, dict):
            return f"its {name} line is not a JSON object"
    return None


def download_raw(data_path: Path, repo_id: str, offline_command: str) -> None:
    """The three raw files into `data_path` with huggingface_hub (it retries rate limits, caches and
    writes atomically); a valid file already there is reused, a bad download is deleted, not used."""
    from huggingface_hub import hf_hub_download

    for name in RAW_FILES:
        dest = Path(data_path) / name
        if invalid_jsonl_reason(dest) is None:
            print(f"{name}: valid file already present, reused")
            continue
        if not harness.hub_reachable():
            raise harness.hub_unreachable(f"{repo_id}/{name}", offline_command)
        try:
            hf_hub_download(repo_id, name, repo_type="dataset", local_dir=data_path)
        except Exception as e:          # network, HTTP and file errors alike: say what to do
            raise harness.hub_unreachable(f"{repo_id}/{name}", offline_command, e) from None
        reason = invalid_jsonl_reason(dest)
        if reason is not None:
            dest.unlink()
            raise SystemExit(f"error: the download of {repo_id}/{name} is not valid JSON lines ({reason}); it "
                             f"was deleted. Run the same command again.")


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


def read_rows(path: Path, model: type[BaseModel], remade_by: str = "prepare.py"):
    """The rows of a JSON-lines file parsed into `model` (blank lines skipped); a line that is not JSON
    or not such a row exits naming the file and the line."""
    from pydantic import ValidationError

    hint = f"delete the file and run {remade_by} again"
    for n, row in harness.read_jsonl(path, hint):
        try:
            yield model.model_validate(row)
        except ValidationError as e:
            raise SystemExit(f"error: {path}, line {n}, is not a valid {model.__name__} "
                             f"({str(e).splitlines()[1:3]}); {hint}") from None


def top_preferences(stated_prefs: dict, k: int = 3) -> list[str]:
    """The `k` attributes with the highest stated_prefs values (numeric sliders only; ties by the
    survey's attribute order). The original took the first three of order_stated_prefs, which is the
    random order the sliders were shown in, not a ranking."""
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
    for s in read_rows(raw_dir / "survey.jsonl", SurveyRow):
        counts["survey_rows"] += 1
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
    for c in read_rows(raw_dir / "conversations.jsonl", ConversationRow):
        counts["conversations"] += 1
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
# the seen/unseen split of the original, reproduced exactly


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
            index[f"{split}_{side}"] = torch.tensor([index_of(embedding.conversation(r["prompt"], r[side]))
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
    with harness.atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def load_prepared(data_path: Path, made_by: str) -> dict:
    """{"train": rows, "test": rows} written by prepare.py (`made_by`: the command that writes them)."""
    import pyarrow.parquet as pq

    rows = {}
    for split in SPLITS:
        path = harness.require_file(data_path / COMPARISONS_FILE.format(split=split), made_by)
        try:
            rows[split] = pq.read_table(path).to_pylist()
        except Exception as e:
            raise SystemExit(f"error: {path} is unreadable ({type(e).__name__}); run `{made_by}`") from None
    return rows


# -----------------------------------------------------------------------------
# the four (seen, split) groups of train_basis.py and vary_fewshot.py


GROUPS = {  # name: (seen, split)
    "seen_train": (True, "train"),      # LoRe training data
    "seen_test": (True, "test"),        # seen users, unseen prompts
    "unseen_train": (False, "train"),   # few-shot data of new users
    "unseen_test": (False, "test"),     # new users, unseen prompts
}


def user_groups(data_path: Path, prepare_command: str, embed_command: str):
    """The four groups as utils.Comparisons over the conversation embeddings, plus what goes with them.

    Seen groups hold the split's seen users, unseen groups its unseen users, each sorted by id (as the
    original), their rows grouped by user; a user with no comparison in a group keeps its index (and
    counts as no user there). Returns (groups {name: Comparisons}, {"seen": [ids], "unseen": [ids]},
    V_ref [d, 1]). The commands name what remakes a missing or stale input.
    """
    import torch

    split_path = harness.require_file(data_path / SPLIT_FILE, prepare_command)
    try:
        split_ids = json.loads(split_path.read_text())
        users = {"seen": sorted(split_ids["seen_user_ids"]), "unseen": sorted(split_ids["unseen_user_ids"])}
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {split_path} is unreadable ({type(e).__name__}); run `{prepare_command}`") from None
    rows = load_prepared(data_path, prepare_command)
    conversations, index = embedding_inputs(rows)
    table, V_ref = embedding.load_embedded(data_path, conversations, embed_command)
    groups = {}
    for name, (seen, split) in GROUPS.items():
        picked = torch.tensor([i for i, r in enumerate(rows[split]) if bool(r["seen"]) == seen], dtype=torch.long)
        row_users = [rows[split][i]["user_id"] for i in picked.tolist()]
        strangers = set(row_users) - set(users["seen" if seen else "unseen"])
        if strangers:
            raise SystemExit(f"error: {COMPARISONS_FILE.format(split=split)} has users outside {SPLIT_FILE} "
                             f"({sorted(strangers)[:3]}); run `{prepare_command}`")
        groups[name] = utils.Comparisons.by_user(row_users, users["seen" if seen else "unseen"], table,
                                                 index[f"{split}_chosen"][picked], index[f"{split}_rejected"][picked])
    return groups, users, V_ref

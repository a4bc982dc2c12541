"""Your own reward model: fit new users' weights against a trained LoRe basis, export a user's
personalized reward model, and score responses for many users in one backbone pass.

    python personalize.py --command=fit --basis=PRISM/results/PRISM_V_lore_K_5_alpha_10000.0.pt \\
        --comparisons=my_users.jsonl     # every user's weights at once, V frozen
    python personalize.py --command=export --user=alice     # alice's reward model: a from_pretrained folder
    python personalize.py --command=export --head_only      # only the heads: one small file per user
    python personalize.py --command=score --responses=my_responses.jsonl --users=alice,bob

A user's reward is linear in the backbone's embedding e (final-norm hidden state at the last real token):
e . V . w / 100, with V [d, K] a basis from any folder's train_basis.py and w the user's weights on the
simplex. So the user's reward model is the backbone with the bias-free head score.weight = (V @ w / 100).T.

fit     --basis: a V file, a plain tensor [d, K] (.pt, loaded with weights_only=True, or .safetensors with
        one tensor or "V"); --comparisons: a .jsonl, one {"user_id": "alice", "prompt": "..." or [{"role":
        ..., "content": ...}, ...], "chosen": "...", "rejected": "..."} per line. Each distinct conversation
        is embedded once by the shared engine; all users' weights are fitted at once with V frozen
        (utils.PersonalizeBatch, seeded; by default with the few-shot iterations and learning rate of the
        train_basis.json beside the basis; K = 1: w = [1.0]). A numeric user_id is its string (7: "7"). A
        row with chosen == rejected is skipped (warned, counted); a row repeating an earlier one of the same
        user is kept, as real data may repeat a judgement (warned, counted in user_weights.json). Writes user_weights.safetensors ("weights" [users, K], "basis" [d, K]; the user
        ids, the basis's sha256 and the backbone in its metadata) and user_weights.json (the same with the
        settings, each user's comparisons and few-shot accuracy). A user_weights file there of other
        users, another basis or another backbone is refused unless --overwrite (exports name its users).
export  reward_model_<user>/ (config, tokenizer, model.safetensors with the user's head, personalization.json,
        README.md: a model card with the transformers recipe to score a conversation):
        AutoModelForSequenceClassification.from_pretrained loads it with nothing else. --head_only: only
        reward_head_<user>.safetensors ("score.weight" [1, d]) per user; swap_head(model, file) puts one into
        a loaded backbone without copying it. A path that holds a different model is refused unless --overwrite.
score   --responses: a .jsonl, one {"prompt": ..., "response": "...", "id": optional} per line. One backbone
        forward per distinct conversation, then E @ V @ W.T / 100 for all users: scores.csv (rows x users; a
        user's column is its exported model's logit) and scores.json. --users: ids as alice,bob, a JSON
        list for ids with commas (--users='["a,b","c"]') or @file (one id per line).
The demo of all three on new PRISM users is PRISM/personalize_demo.py.

Backbone: --model_name in --dtype; export and score use the one fit recorded unless given. --offline: the
tiny model in float32 and PRISM/results-offline/'s basis. Paths given on the command line
are relative to the working folder, defaults to this script's. Results: results/personalize(-offline)/.
"""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sys
from pathlib import Path

import torch

import embedding
import harness
import utils
from offline import script_model

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
command: str | None = None    # fit | export | score
offline = False               # True: the built-in tiny model and the PRISM offline basis, no network
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"  # export, score: the one fit recorded unless given
dtype = "bfloat16"            # offline: float32 unless given
attn_implementation: str | None = None  # None: the library default (sdpa)
device: str | None = None     # None: cuda if available, else cpu (the weights are fitted on the cpu)
basis: str | None = None      # fit: a V file; None: PRISM/results/PRISM_V_lore_K_5_alpha_10000.0.pt (export,
                              # score use the weights file's basis: one given must be that one)
results_dir = "results/personalize"
comparisons: str | None = None  # fit: the comparisons .jsonl
weights: str | None = None    # export, score: a user_weights.safetensors; None: the results folder's
user: str | None = None       # export: the user; None: the only one (--head_only: every user)
head_only = False             # export: only the head file(s), no model folder
export_dir: str | None = None  # export: the model folder (head_only: the folder of the head files)
overwrite = False             # fit: replace the weights of other users, basis or backbone; export: a different model
responses: str | None = None  # score: the responses .jsonl
users: str | None = None      # score: ids "alice,bob", a JSON list '["a,b","c"]' or @file (one id per line);
                              # None: every user of the weights file
seed = 0
num_iterations: int | None = None  # None: the pipeline's few-shot iterations (train_basis.json), else 500
learning_rate: float | None = None  # None: the pipeline's few-shot learning rate, else 0.5
batch_size = 16               # conversations per forward pass (at most)
max_tokens: int | None = 32768  # padded tokens per forward pass (at most); None: rows only
max_length: int | None = None  # tokens per conversation, oldest dropped (BOS and the end kept); None: all
# -----------------------------------------------------------------------------

BASIS_FILE = "PRISM_V_lore_K_5_alpha_10000.0.pt"   # the default basis, in PRISM/results(-offline)/
WEIGHTS_FILE, WEIGHTS_JSON = "user_weights.safetensors", "user_weights.json"
MODEL_FOLDER, HEAD_FILE = "reward_model_{user}", "reward_head_{user}.safetensors"
PERSONALIZATION_FILE = "personalization.json"       # in an exported folder: whose model it is
MODEL_CARD = "README.md"                            # in an exported folder: what it is and how to score with it
CARD_EXAMPLE = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris is the capital of France."}]
SCORES_FILE, SCORES_JSON = "scores.csv", "scores.json"
WEIGHTS_FORMAT, HEAD_FORMAT = "lore-user-weights-1", "lore-user-head-1"
COMPARISON_ROW = ('{"user_id": "alice", "prompt": "..." or [{"role": "user", "content": "..."}, ...], '
                  '"chosen": "...", "rejected": "..."}')
RESPONSE_ROW = '{"prompt": "..." or [{"role": ..., "content": ...}, ...], "response": "...", "id": optional}'


# -----------------------------------------------------------------------------
# inputs, each checked before anything is written


def read_basis(path) -> torch.Tensor:
    """The basis V [d, K] float32 of a V file; anything else exits with a message naming the file."""
    path = Path(path)
    hint = ("give a V file written by a train_basis.py (<folder>/results/<DATASET>_V_lore_K_<K>_alpha_<alpha>.pt, "
            "a plain tensor [d, K]) as --basis=...")
    if not path.is_file():
        raise SystemExit(f"error: the basis file {path} does not exist; {hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            tensors = load_file(str(path))
            V = tensors["V"] if len(tensors) != 1 else next(iter(tensors.values()))
        else:
            V = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"error: cannot read the basis file {path} ({type(e).__name__}); {hint}") from None
    if not isinstance(V, torch.Tensor) or V.ndim != 2 or 0 in V.shape or not V.is_floating_point() \
            or not torch.isfinite(V).all():
        held = f"shape {tuple(V.shape)} ({V.dtype})" if isinstance(V, torch.Tensor) else f"a {type(V).__name__}"
        raise SystemExit(f"error: the basis file {path} holds {held}, not a basis: finite floats [d, K] (d the "
                         f"backbone's hidden size, K basis vectors); {hint}")
    return V.float().contiguous()


def model_error(model_name: str, error: Exception) -> SystemExit:
    """The hub error, naming this script's offline switch (a local folder that does not load: its own)."""
    if Path(model_name).expanduser().is_dir():
        return SystemExit(str(error))
    return harness.hub_unreachable(f"the model {model_name!r}", "python personalize.py --offline", error.__cause__)


def check_basis(V: torch.Tensor, where: str, model_name: str, backbone=None) -> None:
    """Exit unless V has one row per hidden dimension of the backbone (read from its config alone)."""
    try:
        hidden = (backbone[0].config if backbone else embedding.load_config(model_name)).hidden_size
    except embedding.ModelNotAvailable as e:
        raise model_error(model_name, e) from None
    if V.shape[0] != hidden:
        transposed = " (it looks transposed: save it as [d, K])" if V.shape[1] == hidden else ""
        raise SystemExit(f"error: the basis {where} has d = {V.shape[0]} rows but the backbone {model_name} has "
                         f"hidden size {hidden}{transposed}; a basis works only with the backbone whose embeddings "
                         f"trained it: give that backbone as --model_name=... or a basis trained on this one")


def read_jsonl(path, what: str, row_format: str, keys: tuple) -> list[tuple[int, dict]]:
    """(line number, row) of every non-empty line of a .jsonl whose `keys` and "prompt" are valid; a
    missing or empty file, or any other line, exits naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: the {what} file {path} does not exist; give a .jsonl, one row per line: "
                         f"{row_format}")
    rows = []
    for number, row in harness.read_jsonl(path, f"each line: {row_format}"):
        where = f"error: {path}, line {number},"
        if isinstance(row.get("user_id"), (int, float)) and not isinstance(row["user_id"], bool):
            row["user_id"] = str(row["user_id"])      # a numeric id (JSON 7) is the user "7"
        missing = [k for k in keys if not isinstance(row.get(k), str)]
        if missing:
            raise SystemExit(f"{where} has no {missing[0]!r} (a string); fix or remove that row. Each line: "
                             f"{row_format}")
        prompt = row.get("prompt")
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt)):
            raise SystemExit(f"{where} 'prompt' must be a string or a non-empty list of {{\"role\", \"content\"}} "
                             f"messages (strings). Each line: {row_format}")
        rows.append((number, row))
    if not rows:
        raise SystemExit(f"error: the {what} file {path} is empty; it needs one row per line: {row_format}")
    return rows


def read_comparisons(path) -> tuple[list[dict], list[int], list[int]]:
    """(the comparison rows, the line numbers skipped because chosen == rejected, the line numbers that
    repeat an earlier row: kept). Exits naming the file on bad rows (read_jsonl) and on a user left with
    no comparison."""
    rows = read_jsonl(path, "comparisons", COMPARISON_ROW, ("user_id", "chosen", "rejected"))
    skipped = [number for number, r in rows if r["chosen"] == r["rejected"]]
    kept = [r for _, r in rows if r["chosen"] != r["rejected"]]
    if skipped:
        print(f"warning: {path}: skipped {len(skipped)} row(s) whose chosen response equals the rejected one (no "
              f"preference to learn), line(s) {', '.join(map(str, skipped[:20]))}", file=sys.stderr)
    first_seen, repeated = set(), []
    for number, r in rows:
        key = (r["user_id"], json.dumps(r["prompt"], sort_keys=True), r["chosen"], r["rejected"])
        if r["chosen"] != r["rejected"] and key in first_seen:
            repeated.append(number)
        first_seen.add(key)
    if repeated:   # kept: a user may really have judged the same pair twice (it then weighs twice in the fit)
        print(f"warning: {path}: {len(repeated)} row(s) repeat an earlier row of the same user (same prompt, chosen "
              f"and rejected), line(s) {', '.join(map(str, repeated[:20]))}; kept, as real data may repeat a "
              f"judgement (remove them if they are copies)", file=sys.stderr)
    empty = [u for u in dict.fromkeys(r["user_id"] for _, r in rows) if u not in {r["user_id"] for r in kept}]
    if empty:
        raise SystemExit(f"error: {path}: user(s) {', '.join(map(repr, empty[:10]))} have no comparisons left (every "
                         f"row of theirs has chosen == rejected); add real comparisons for them or remove their rows")
    return kept, skipped, repeated


def load_backbone(model_name: str, dtype: str, attn_implementation=None, device=None):
    """(model, tokenizer) of the reward model (embedding.load_reward_model), or a clear exit."""
    try:
        return embedding.load_reward_model(str(model_name), dtype, attn_implementation, device)
    except embedding.ModelNotAvailable as e:
        raise model_error(model_name, e) from None


def write_safetensors(tensors: dict, path: Path, info: dict, fmt: str) -> None:
    """A plain (not atomic) write of the format read_safetensors reads."""
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata={"format": fmt, "info": json.dumps(info)})


def save_safetensors(tensors: dict, path: Path, info: dict, fmt: str) -> None:
    with harness.atomic_path(path) as tmp:
        write_safetensors(tensors, tmp, info, fmt)


def read_safetensors(path, fmt: str, made_by: str) -> tuple[dict, dict]:
    """(tensors, info) of a file written by save_safetensors with format `fmt`, or a clear exit naming
    `made_by`, the command that writes it."""
    from safetensors import safe_open
    if not Path(path).is_file():
        raise SystemExit(f"error: {path} does not exist; run `{made_by}` first (or give another path)")
    why = f"its format is not {fmt}"
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") == fmt:
                return {k: f.get_tensor(k) for k in f.keys()}, json.loads(metadata["info"])
    except Exception as e:
        why = f"unreadable: {type(e).__name__}"
    raise SystemExit(f"error: {path} is damaged or not a file of `{made_by}` ({why}); run that again (or give "
                     f"another path)")


# -----------------------------------------------------------------------------
# fit: every user's weights at once, V frozen


def fewshot_settings(basis_path, num_iterations=None, learning_rate=None) -> tuple[int, float]:
    """(iterations, learning rate) of the fit: as given, else those with which train_basis.py fitted its
    new users against this basis (the train_basis.json beside it), else 500 and 0.5."""
    pipeline = Path(basis_path).parent / "train_basis.json"
    try:
        saved = json.loads(pipeline.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        saved = {}
        if pipeline.exists() and (num_iterations is None or learning_rate is None):   # not silently
            print(f"warning: cannot read the pipeline's few-shot settings from {pipeline} ({type(e).__name__}); "
                  f"using 500 iterations at learning rate 0.5 unless given (--num_iterations, --learning_rate)",
                  file=sys.stderr)
    return (num_iterations if num_iterations is not None else int(saved.get("fewshot_iterations", 500)),
            learning_rate if learning_rate is not None else float(saved.get("fewshot_learning_rate", 0.5)))


def fit(comparisons_path, basis_path, results_path, *, model_name: str, dtype: str = "float32",
        attn_implementation=None, device=None, seed: int = 0, num_iterations=None, learning_rate=None,
        settings=None, backbone=None, overwrite: bool = False, **engine) -> Path:
    """Fit every user of a comparisons file against the frozen basis; write WEIGHTS_FILE and WEIGHTS_JSON
    into results_path and return the first. A WEIGHTS_FILE there of other users, another basis or another
    backbone is refused before any work unless overwrite (check_weights_to_replace). backbone:
    model_name's (model, tokenizer), if loaded; engine: batch_size, max_tokens, max_length of
    embedding.embed_conversations."""
    basis_path, comparisons_path, results_path = Path(basis_path), Path(comparisons_path), Path(results_path)
    V = read_basis(basis_path)
    rows, skipped, repeated = read_comparisons(comparisons_path)
    check_basis(V, str(basis_path), model_name, backbone)
    num_iterations, learning_rate = fewshot_settings(basis_path, num_iterations, learning_rate)
    user_ids = list(dict.fromkeys(r["user_id"] for r in rows))          # in the order the file names them
    basis_sha256 = harness.file_sha256(basis_path)
    check_weights_to_replace(results_path / WEIGHTS_FILE, user_ids, basis_sha256, str(model_name), overwrite)
    print(f"{len(rows)} comparisons of {len(user_ids)} user(s) from {comparisons_path}; basis {basis_path.name} "
          f"{tuple(V.shape)}; {num_iterations} iterations at learning rate {learning_rate}")
    conversations, index = embedding.distinct_conversations(
        [embedding.conversation(r["prompt"], r[side]) for side in ("chosen", "rejected") for r in rows])
    model, tokenizer = backbone or load_backbone(model_name, dtype, attn_implementation, device)
    table, truncated = embedding.embed_conversations(model, tokenizer, conversations, progress=True,
                                                     return_truncated=True, **engine)
    position = {u: i for i, u in enumerate(user_ids)}
    data = utils.Comparisons([position[r["user_id"]] for r in rows], len(user_ids), table, index[:len(rows)],
                             index[len(rows):])
    if V.shape[1] == 1:                              # one direction: nothing to weigh (the pipelines' rule)
        W = torch.ones(len(user_ids), 1)
    else:
        W = utils.PersonalizeBatch(len(user_ids), V.shape[0], V.shape[1], num_iterations, learning_rate, seed=seed,
                                   device="cpu", progress=True).train_weights(data, V)
    accuracy, counts = utils.per_user_accuracy(data, V, W), data.counts()
    info = {"user_ids": user_ids, "model_name": str(model_name), "dtype": dtype, "basis_path": str(basis_path),
            "basis_sha256": basis_sha256, "seed": seed, "num_iterations": num_iterations,
            "learning_rate": learning_rate, "comparisons_sha256": harness.file_sha256(comparisons_path)}
    users_json = [{"user_id": u, "comparisons": int(counts[i]), "fewshot_accuracy": float(accuracy[i]),
                   "weights": W[i].tolist()} for i, u in enumerate(user_ids)]
    # one set: the summary is never left describing another fit than the weights beside it
    with harness.atomic_paths(results_path / WEIGHTS_FILE, results_path / WEIGHTS_JSON) as (weights_tmp, json_tmp):
        write_safetensors({"weights": W.float().contiguous(), "basis": V}, weights_tmp, info, WEIGHTS_FORMAT)
        json_tmp.write_text(harness.json_text({
            **info, "settings": settings or {}, "comparisons_path": str(comparisons_path), "users": users_json,
            "skipped_rows": {"chosen_equals_rejected": len(skipped), "lines": skipped},
            "duplicate_rows": {"count": len(repeated), "lines": repeated, "kept": True},
            "truncated_to_positions": truncated}), encoding="utf-8")
    print("| user | comparisons | few-shot accuracy | weights |\n|---|---|---|---|")
    for u in users_json:
        print(f"| {u['user_id']} | {u['comparisons']} | {100 * u['fewshot_accuracy']:.1f}% | "
              + " ".join(f"{x:.3f}" for x in u["weights"]) + " |")
    print(f"wrote {results_path / WEIGHTS_FILE} and {WEIGHTS_JSON}")
    return results_path / WEIGHTS_FILE


def check_weights_to_replace(path: Path, user_ids: list[str], basis_sha256: str, model_name: str,
                             overwrite: bool) -> None:
    """Exit unless `path` is absent, overwrite is set, or it holds weights of the same users, basis and
    backbone (a refit of the same users): exported models and scores.csv name the users of the file
    they were made from, and a fit of other users would leave them pointing at users no longer there."""
    if overwrite or not path.exists():
        return
    try:
        old = load_user_weights(path)
    except SystemExit:
        old = None
    if old is not None:
        added = [u for u in user_ids if u not in old["user_ids"]]
        removed = [u for u in old["user_ids"] if u not in user_ids]
        differs = []
        if added:
            differs.append(f"users added: {', '.join(map(repr, added[:10]))}")
        if removed:
            differs.append(f"users removed: {', '.join(map(repr, removed[:10]))}")
        if old["basis_sha256"] != basis_sha256:
            differs.append(f"basis sha256 {old['basis_sha256'][:12]}... -> {basis_sha256[:12]}...")
        if old["model_name"] != model_name:
            differs.append(f"backbone {old['model_name']!r} -> {model_name!r}")
        if not differs:
            return
        what = f"the weights of another fit ({'; '.join(differs)}); exported models and scores made from it name its users"
    else:
        what = "something else (not a user_weights file of personalize.py)"
    raise SystemExit(f"error: {path} already holds {what}. Pass --overwrite to replace it, or give another "
                     f"--results_dir; nothing was written")


def load_user_weights(path, made_by: str = "python personalize.py --command=fit") -> dict:
    """fit's info ({"user_ids", "model_name", "dtype", "basis_sha256", ...}) with "weights" [C, K] and
    "basis" [d, K], from a user_weights.safetensors; made_by: the fit command named when it is missing or
    damaged."""
    tensors, info = read_safetensors(path, WEIGHTS_FORMAT, made_by)
    return {**info, **tensors}


def check_given_basis(weights_path, basis_path) -> None:
    """export and score use the basis stored in the weights file: exit when a basis given with them is
    another one (it used to be silently ignored). The same tensor in another file (the .safetensors twin of
    the .pt fitted with) is the same basis."""
    record = load_user_weights(weights_path)
    V = read_basis(basis_path)                  # a missing or unreadable file: its own clear exit
    given = harness.file_sha256(basis_path)
    if given != record["basis_sha256"] and not torch.equal(V, record["basis"].float()):
        raise SystemExit(f"error: --basis={basis_path} (sha256 {given[:12]}...) is not the basis {weights_path} was "
                         f"fitted on ({record.get('basis_path')}, sha256 {record['basis_sha256'][:12]}...); export "
                         f"and score use the weights file's own basis: drop --basis, or fit these users against "
                         f"this basis first (--command=fit --basis=...)")


def backbone_in_force(record: dict, model_name=None, dtype=None) -> tuple[str, str]:
    """(backbone, dtype) of export and score: as given, else those the weights file's fit recorded."""
    return str(model_name or record["model_name"]), dtype or record["dtype"]


def safe_name(user_id: str) -> str:
    return re.sub(r"[^\w.-]", "_", user_id)


def parse_users(value: str) -> list[str]:
    """The user ids of --users: comma-separated ("alice,bob"), a JSON list for ids with commas
    ('["a,b","c"]'), or @file: one id per line (surrounding spaces and blank lines ignored)."""
    form = "give ids as alice,bob, a JSON list '[\"a,b\",\"c\"]' or @file with one id per line"
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"error: --users={value}: cannot read {path} ({type(e).__name__}); {form}") from None
    elif value.lstrip().startswith("["):
        try:
            ids = json.loads(value)
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not all(isinstance(u, (str, int)) and not isinstance(u, bool) for u in ids):
            raise SystemExit(f"error: --users={value} is not a JSON list of ids; {form}")
        ids = [str(u) for u in ids]
    else:
        ids = [u.strip() for u in value.split(",")]
    if not ids or not all(ids):
        raise SystemExit(f"error: --users={value} names no user, or an empty one; {form}")
    return ids


def pick_users(record: dict, wanted: list[str], path) -> list[int]:
    missing = [u for u in wanted if u not in record["user_ids"]]
    if missing:
        raise SystemExit(f"error: user(s) {', '.join(map(repr, missing))} are not in {path}; its users: "
                         f"{', '.join(record['user_ids'][:20])}")
    return [record["user_ids"].index(u) for u in wanted]


# -----------------------------------------------------------------------------
# export: a whole model folder, or only the head


def user_head(V: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The user's score.weight = (V @ w / 100).T [1, d]: its logit on embedding e is e . V . w / 100."""
    return (V.float() @ w.float() / utils.TEMPERATURE)[None, :].contiguous()


def swap_head(model, head):
    """Put a user's head (a reward_head_<user>.safetensors or a tensor with d entries) into a loaded
    sequence-classification reward model in place, bias zeroed: one backbone serves every user in turn.

        model, tokenizer = embedding.load_reward_model("Skywork/Skywork-Reward-Llama-3.1-8B-v0.2", "bfloat16")
        swap_head(model, "results/personalize/reward_head_alice.safetensors")   # model(...).logits: alice's
    """
    if isinstance(head, (str, Path)):
        head = read_safetensors(head, HEAD_FORMAT, "python personalize.py --command=export --head_only")[0]
        head = head["score.weight"]
    head = torch.as_tensor(head, dtype=torch.float32).reshape(1, -1)
    if model.score.weight.shape != head.shape:
        raise ValueError(f"error: the model's score head is {tuple(model.score.weight.shape)}, the user's "
                         f"{tuple(head.shape)}: load the backbone the user was fitted on, with num_labels=1")
    with torch.no_grad():
        model.score.weight.copy_(head)
        if model.score.bias is not None:
            model.score.bias.zero_()
    return model


def identity(record: dict, i: int, backbone: str) -> dict:
    """What an exported model is: the user, its weights, the basis (hash) and the backbone."""
    return {"user_id": record["user_ids"][i], "weights": record["weights"][i].tolist(),
            "basis_sha256": record["basis_sha256"], "backbone": str(backbone),
            "reward": "logit = e . V . w / 100 (e: final-norm hidden state at the last token)"}


def model_card(identity: dict, record: dict, folder_name: str) -> str:
    """The README.md of an exported folder: whose model it is, its basis and backbone, how to score a
    conversation with transformers alone, and the double-BOS pitfall (tests run its code block)."""
    user, weights = identity["user_id"], ", ".join(f"{x:.4f}" for x in identity["weights"])
    d, K = record["basis"].shape
    return f"""# Personalized reward model of user {user!r}

The backbone `{identity['backbone']}` with one new head, fitted to the comparisons of user {user!r} by LoRe
(`personalize.py`): `score.weight = (V @ w / 100).T`, with V the basis `{record.get('basis_path')}`
(d = {d}, K = {K}; sha256 {record['basis_sha256']}) and w = [{weights}] the user's weights on its K
directions. The backbone's layers are unchanged; `{PERSONALIZATION_FILE}` records the same. The logit is
the user's reward: of two responses to one prompt, the user prefers the one with the higher logit.

## Score a conversation

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder = "{folder_name}"    # this folder
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
messages = {CARD_EXAMPLE!r}
inputs = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
with torch.no_grad():
    reward = model(**inputs).logits[0, 0].item()
print(reward)
```

## The double-BOS pitfall

Do not render the chat template to text (`apply_chat_template(messages, tokenize=False)`) and tokenize that
text again: the text already starts with the BOS token, the tokenizer adds a second one, and the logit
changes. Tokenize with the template in one step, as above (or tokenize the rendered text with
`add_special_tokens=False`).
"""


def refuse_to_replace(target: Path, new: dict, read_identity, overwrite: bool) -> None:
    """Exit unless `target` is absent (or an empty folder), holds this very model (read_identity(target)
    == new), or overwrite is set."""
    if overwrite or not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    try:
        existing = read_identity(target)
    except (OSError, ValueError, SystemExit):
        existing = None
    if existing == new:
        return
    what = (f"the personalized model of user {existing.get('user_id')!r}" if isinstance(existing, dict)
            else "something else (not a model of personalize.py)")
    raise SystemExit(f"error: the export path {target} already holds {what}; choose another --export_dir or pass "
                     f"--overwrite to replace it")


def export_model(weights_path, user_id: str, folder, *, model_name=None, dtype=None, attn_implementation=None,
                 device=None, overwrite: bool = False, backbone=None) -> Path:
    """Write user_id's reward model as a folder AutoModelForSequenceClassification.from_pretrained loads
    (config, tokenizer, model.safetensors, PERSONALIZATION_FILE), renamed into place when complete. The
    backbone and dtype: those fit recorded unless given. Returns the folder."""
    record, folder = load_user_weights(weights_path), Path(folder)
    model_name, dtype = backbone_in_force(record, model_name, dtype)
    i = pick_users(record, [user_id], weights_path)[0]
    check_basis(record["basis"], f"in {weights_path}", model_name, backbone)
    new = identity(record, i, model_name)
    refuse_to_replace(folder, new, lambda path: json.loads((path / PERSONALIZATION_FILE).read_text()), overwrite)
    model, tokenizer = backbone or load_backbone(model_name, dtype, attn_implementation, device)
    own_head = {k: v.clone() for k, v in model.score.state_dict().items()}
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    try:
        swap_head(model, user_head(record["basis"], record["weights"][i]))
        if model.config.pad_token_id is None:         # batched consumers find the last real token by it
            model.config.pad_token_id = tokenizer.pad_token_id
        shutil.rmtree(tmp, ignore_errors=True)
        with harness.clear_full_disk(folder):
            tmp.mkdir(parents=True)                   # not mkdtemp: the folder gets the umask's permissions
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            harness.write_json_atomic(tmp / PERSONALIZATION_FILE, new)
            harness.write_text_atomic(tmp / MODEL_CARD, model_card(new, record, folder.name))
        harness.umask_permissions(tmp)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    finally:
        model.score.load_state_dict(own_head)         # a caller's backbone keeps its own head
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
    print(f"wrote {folder}: {model_name} with the head of user {user_id!r}")
    return folder


def export_heads(weights_path, user_ids: list[str], folder, *, model_name=None, overwrite=False) -> list[Path]:
    """The light form: HEAD_FILE ("score.weight" [1, d] float32, the identity in its metadata) for each of
    user_ids ([]: every user) into folder; load the backbone once and swap_head(model, file) per user."""
    record, folder = load_user_weights(weights_path), Path(folder)
    ids = list(user_ids or record["user_ids"])
    owner = {}                           # file name -> user: two ids may map to one name (a/b and a_b)
    for user in ids:
        name = HEAD_FILE.format(user=safe_name(user))
        if owner.setdefault(name, user) != user:
            raise SystemExit(f"error: users {owner[name]!r} and {user!r} both map to the head file {name} (characters "
                             f"other than letters, digits, '.', '-' become '_'); nothing was written. Export them "
                             f"one at a time into different folders: --head_only --user=... --export_dir=...")
    plans = []
    for i in pick_users(record, ids, weights_path):
        target = folder / HEAD_FILE.format(user=safe_name(record["user_ids"][i]))
        new = identity(record, i, model_name or record["model_name"])
        refuse_to_replace(target, new, lambda path: read_safetensors(path, HEAD_FORMAT, "")[1], overwrite)
        plans.append((target, user_head(record["basis"], record["weights"][i]), new))
    for target, head, new in plans:
        save_safetensors({"score.weight": head}, target, new, HEAD_FORMAT)
    print(f"wrote {len(plans)} head file(s) [1, {record['basis'].shape[0]}] into {folder}")
    return [target for target, _, _ in plans]


# -----------------------------------------------------------------------------
# score: one backbone pass, every user's reward


def score(responses_path, weights_path, user_ids=None, *, model_name=None, dtype=None, attn_implementation=None,
          device=None, backbone=None, **engine) -> tuple[list[dict], list[str], torch.Tensor, dict]:
    """(rows, user ids, scores [rows, users], what was in force) of a responses file for user_ids (None:
    every user): one backbone forward per distinct conversation, then (E @ V) @ W.T / 100 (n.d.K + n.K.C
    work). What was in force: the backbone and dtype (the weights file's unless given), the users, the
    weights file, its basis and the conversations truncated to the backbone's positions."""
    rows = [r for _, r in read_jsonl(responses_path, "responses", RESPONSE_ROW, ("response",))]
    record = load_user_weights(weights_path)
    ids = list(user_ids or record["user_ids"])
    W = record["weights"][pick_users(record, ids, weights_path)]
    model_name, dtype = backbone_in_force(record, model_name, dtype)
    check_basis(record["basis"], f"in {weights_path}", model_name, backbone)
    conversations, index = embedding.distinct_conversations(
        [embedding.conversation(r["prompt"], r["response"]) for r in rows])
    model, tokenizer = backbone or load_backbone(model_name, dtype, attn_implementation, device)
    E, truncated = embedding.embed_conversations(model, tokenizer, conversations, progress=True,
                                                 return_truncated=True, **engine)
    in_force = {"backbone": model_name, "dtype": dtype, "users": ids, "weights": str(weights_path),
                "basis_path": record.get("basis_path"), "basis_sha256": record["basis_sha256"],
                "responses": str(responses_path), "truncated_to_positions": truncated, **engine}
    return rows, ids, ((E @ record["basis"]) @ W.T / utils.TEMPERATURE)[index], in_force


def write_scores(rows: list[dict], ids: list[str], scores: torch.Tensor, results_path, info: dict) -> Path:
    """SCORES_FILE (row, id, one column per user) and SCORES_JSON (info, users, rows) into results_path."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "id", *ids])
    for k, (row, values) in enumerate(zip(rows, scores.tolist())):
        writer.writerow([k, row.get("id", ""), *(f"{x:.6g}" for x in values)])
    with harness.atomic_paths(Path(results_path) / SCORES_FILE, Path(results_path) / SCORES_JSON) as (table, about):
        table.write_text(text.getvalue(), encoding="utf-8")
        about.write_text(harness.json_text({**info, "users": ids, "rows": len(rows)}), encoding="utf-8")
    return Path(results_path) / SCORES_FILE


# -----------------------------------------------------------------------------
# an exported folder as any reward-model consumer sees it


def reloaded_logits(folder, conversations: list, device=None) -> torch.Tensor:
    """Logits [n] of a folder loaded with from_pretrained alone, one conversation per forward, tokenised
    by its own chat template: what any reward-model consumer sees."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    device = device or str(utils.get_device())
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.inference_mode():
        return torch.tensor([float(model(**tokenizer.apply_chat_template(
            c, return_dict=True, return_tensors="pt").to(device)).logits[0, 0]) for c in conversations])


# -----------------------------------------------------------------------------
# the command line

if __name__ == "__main__":
    settings = harness.configure(globals())
    if command not in ("fit", "export", "score"):
        raise harness.SettingsError(f"error: --command must be fit, export or score, got {command!r} (the demo of "
                                    f"all three on new PRISM users: cd PRISM && python personalize_demo.py)")
    # an export into --export_dir writes there, not into the results folder
    _, results_path = harness.script_dirs(__file__, settings, check_writable=not (command == "export" and export_dir))
    model_name, dtype = script_model(settings)

    def path_of(name: str) -> Path:    # a path setting: from the working folder when given there, else from here
        return Path(settings[name]).expanduser().resolve() if name in settings.overridden else ROOT / settings[name]

    if command == "export" and export_dir:      # head files go into it; a model folder is renamed into place
        harness.require_writable(path_of("export_dir") if head_only else path_of("export_dir").parent,
                                 "--export_dir=...")

    basis_path = path_of("basis") if basis else ROOT / "PRISM" / f"results{'-offline' * offline}" / BASIS_FILE
    weights_path = path_of("weights") if weights else results_path / WEIGHTS_FILE
    recorded = dict(model_name=model_name if "model_name" in settings.overridden else None,  # export, score:
                    dtype=dtype if "dtype" in settings.overridden else None)   # else the backbone fit recorded
    load = dict(attn_implementation=attn_implementation, device=device)
    engine = dict(batch_size=batch_size, max_tokens=max_tokens, max_length=max_length)
    fewshot = dict(seed=seed, num_iterations=num_iterations, learning_rate=learning_rate, settings=settings)
    if command == "fit" and comparisons is None:
        raise harness.SettingsError(f"error: fit needs --comparisons=<file.jsonl>, one per line: {COMPARISON_ROW}")
    if command == "score" and responses is None:
        raise harness.SettingsError(f"error: score needs --responses=<file.jsonl>, one per line: {RESPONSE_ROW}")
    if command in ("export", "score"):       # the weights file first: a missing or damaged one names its fit
        load_user_weights(weights_path, harness.command_line("personalize.py", settings, keep=(
            "offline", "results_dir", "basis", "model_name", "dtype")) + " --command=fit --comparisons=<file.jsonl>")
    if command in ("export", "score") and "basis" in settings.overridden:
        check_given_basis(weights_path, basis_path)
    if command == "fit":
        fit(path_of("comparisons"), basis_path, results_path, model_name=model_name, dtype=dtype, **fewshot, **load,
            overwrite=overwrite, **engine)
    elif command == "export" and head_only:
        export_heads(weights_path, [user] if user else [], path_of("export_dir") if export_dir else results_path,
                     model_name=recorded["model_name"], overwrite=overwrite)
    elif command == "export":
        all_users = load_user_weights(weights_path)["user_ids"]
        if user is None and len(all_users) != 1:
            raise SystemExit(f"error: {weights_path} holds {len(all_users)} users; name the one to export with "
                             f"--user=... ({', '.join(all_users[:20])})")
        user = user or all_users[0]
        export_model(weights_path, user, path_of("export_dir") if export_dir else
                     results_path / MODEL_FOLDER.format(user=safe_name(user)), **recorded, **load,
                     overwrite=overwrite)
    else:
        wanted = parse_users(users) if users else None
        rows, ids, table, in_force = score(path_of("responses"), weights_path, wanted, **recorded, **load, **engine)
        # the settings in force, not the defaults: score uses the weights file's backbone, dtype and basis
        out = write_scores(rows, ids, table, results_path, {**in_force, "settings": {
            **settings, "model_name": in_force["backbone"], "dtype": in_force["dtype"], "users": ids,
            "weights": in_force["weights"], "basis": in_force["basis_path"], "responses": in_force["responses"]}})
        print("\n".join(out.read_text().splitlines()[:6]) + f"\n...\nwrote {out}: {len(rows)} rows x {len(ids)} "
              f"users")

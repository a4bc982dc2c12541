"""Your own reward model: fit new users from a handful of comparisons, export a user's personalized
reward model, and score responses for many users in one backbone pass.

    python personalize.py --offline                  # the demonstration: fit 5 new PRISM users, export one,
                                                     # reload it with from_pretrained, score (tiny model)
    python personalize.py --command=fit --basis=PRISM/results/PRISM_V_lore_K_5_alpha_10000.0.pt \\
        --comparisons=my_users.jsonl                 # every user's weights, V frozen
    python personalize.py --command=export --user=alice          # a folder from_pretrained loads
    python personalize.py --command=export --head_only           # only the heads, one small file per user
    python personalize.py --command=score --responses=my_responses.jsonl [--users=alice,bob]

A user's reward is linear in the backbone's embedding e (final-layer hidden state after the final norm
at the last real token): reward_user(conversation) = e . V . w_user / 100, with V [d, K] a basis trained
by any folder's train_basis.py and w_user on the simplex. So a user's personalized reward model is the
backbone with one new bias-free head, score.weight = (V @ w_user / 100).T [1, d]; its logit is that reward.

fit    reads --basis (a V file: a plain tensor [d, K] in .pt, loaded with weights_only=True, or
       .safetensors with one tensor, e.g. key "V") and --comparisons, a .jsonl with one comparison per
       line: {"user_id": "alice", "prompt": "..." or [{"role": "user", "content": "..."}, ...],
       "chosen": "...", "rejected": "..."}. Every distinct conversation (prompt + response) is embedded
       once by the shared engine (chat template, exactly one BOS, a shared prompt run once); all users'
       weights are fitted at once with V frozen (utils.PersonalizeBatch: num_iterations Adam steps at
       the few-shot rate of the pipeline that wrote the basis, seeded; a user's weights depend on the
       seed and its position in the file, not on the other users; K = 1: w = [1.0], no fit). A row
       whose chosen equals its rejected response is skipped with a warning (counted). Writes
       <results>/user_weights.safetensors ("weights" [users, K], "basis" [d, K]; user ids, basis
       sha256 and backbone in its metadata) and user_weights.json (the same, with settings, seed,
       comparisons per user, few-shot accuracy, skipped rows).
export reads user_weights.safetensors and writes <results>/reward_model_<user>/: config, tokenizer,
       model.safetensors whose `score` is that user's head (in the backbone's dtype: a bf16 head keeps
       ~3 significant digits) and personalization.json. Any reward-model consumer (TRL, ...) loads it
       with AutoModelForSequenceClassification.from_pretrained.
       --head_only writes only <results>/reward_head_<user>.safetensors ("score.weight" [1, d]) for
       every user (or --user): load the backbone once and swap heads in with swap_head(model, file).
       An export path that holds a different model is refused unless --overwrite.
score  reads --responses, a .jsonl of {"prompt": ..., "response": "..."} rows (an optional "id" is
       carried over), runs the backbone once per conversation and writes <results>/scores.csv (one row
       per response, one column per user: e . V . w_user / 100 = that user's exported model's logit)
       and scores.json (settings, files, users).

Backbone: --model_name (default Skywork-Reward-Llama-3.1-8B-v0.2 in bf16); export and score use the
one (and the dtype) recorded by fit unless --model_name (--dtype) is given. --offline: the built-in
tiny model (float32) and, for fit and the demo, the basis the PRISM offline run saves
(PRISM/results-offline/PRISM_V_lore_K_5_alpha_0.0.pt; made by `cd PRISM && python prepare.py --offline
&& python generate-prism-embeddings.py --offline && python train_basis.py --offline`). Paths given on
the command line are relative to the current folder; the defaults are relative to this script's
folder. Results: results/personalize/ (results/personalize-offline/ with --offline) unless --results_dir.

The demo (--command=demo, the default) takes the first 5 unseen PRISM users (by id) with train and
test comparisons, writes their train comparisons to demo_comparisons.jsonl, fits them, exports the
first one, reloads it with from_pretrained alone and prints its accuracy on its held-out (test)
comparisons from the reloaded model's own logits, next to the PRISM pipeline's figure for the same user
(train_basis.py's few-shot fit of all unseen users on the stored embeddings, utils.per_user_accuracy),
and every demo user's held-out accuracy from `score`. The weights of the two fits differ only by their
seeded starting draw: the demo also fits every unseen user in the pipeline's order and seed and reports
the largest weight difference (float rounding). Writes, besides the files of the three commands,
demo_comparisons.jsonl, demo_heldout.jsonl, demo_responses.jsonl, same_start/ and personalize_demo.json / .md.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import utils

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
command = "demo"              # "fit" | "export" | "score" | "demo" (fit + export + reload + score on PRISM users)
offline = False               # True: the built-in tiny model (and the PRISM offline basis), no network
model_name = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"  # the backbone; export/score: default the one fit used
dtype = "bfloat16"            # offline default: float32
attn_implementation = None    # None: the library default (sdpa)
device = None                 # None: cuda if available, else cpu (the weights fit runs on the cpu)
basis = ""                    # fit/demo: a V file [d, K]; "" = the PRISM basis K = 5 (see DEFAULT_BASIS)
comparisons = ""              # fit: the comparisons .jsonl
weights = ""                  # export/score: user_weights.safetensors; "" = the one in results_dir
user = ""                     # export: the user; "" = the only user (--head_only: every user)
head_only = False             # export: only the head file(s), not a whole model folder
export_dir = ""               # export: the model folder (head_only: the folder of head files); "" = default
overwrite = False             # export: replace a different model already at the export path
responses = ""                # score: the responses .jsonl
users = ""                    # score: comma-separated user ids; "" = every user in the weights file
results_dir = "results/personalize"
seed = 0
num_iterations = 500          # PersonalizeBatch iterations (as the pipelines' few-shot fit)
learning_rate = None          # None: 0.5 for a PRISM basis (as PRISM/train_basis.py), else 0.1 (as utils.run)
batch_size = 16               # conversations per forward pass (at most)
max_tokens = 32768            # padded tokens per forward pass (at most); None: rows only
max_length = None             # tokens per conversation, oldest dropped (keeps BOS and the end); None: all
demo_users = 5                # demo: how many unseen PRISM users to fit
demo_same_start_check = True  # demo: also fit every unseen user in the pipeline's order and seed (embeds all
                              # their train conversations): the pipeline's weights to float rounding
# -----------------------------------------------------------------------------

DEFAULT_BASIS = "PRISM/results/PRISM_V_lore_K_5_alpha_10000.0.pt"       # the real PRISM default (alpha = 1e4)
# Offline, alpha = 1e4 pins every basis vector to the tiny model's head (see PRISM/train_basis.py), so
# the basis with something personal in it is alpha = 0; the main job's PRISM run writes both.
OFFLINE_BASIS = "PRISM/results-offline/PRISM_V_lore_K_5_alpha_0.0.pt"
PRISM_MADE_BY = ("cd PRISM && python prepare.py{o} && python generate-prism-embeddings.py{o} && "
                 "python train_basis.py{o}")
WEIGHTS_FILE = "user_weights.safetensors"
WEIGHTS_JSON = "user_weights.json"
MODEL_FOLDER = "reward_model_{user}"
HEAD_FILE = "reward_head_{user}.safetensors"
PERSONALIZATION_FILE = "personalization.json"       # in an exported folder: whose head it is
SCORES_FILE, SCORES_JSON = "scores.csv", "scores.json"
DEMO_NAME = "personalize_demo"
WEIGHTS_FORMAT, HEAD_FORMAT = "lore-user-weights-1", "lore-user-head-1"
LEARNING_RATE = {"PRISM": 0.5, None: 0.1}           # few-shot rate of the pipeline that wrote the basis
COMPARISON_ROW = '{"user_id": "alice", "prompt": "..." (or a list of messages), "chosen": "...", "rejected": "..."}'
RESPONSE_ROW = '{"prompt": "..." (or a list of messages), "response": "..."} (an "id" is optional)'


# -----------------------------------------------------------------------------
# inputs: the basis, comparisons and responses files, each checked before anything is written


def read_basis(path) -> torch.Tensor:
    """The basis V [d, K] float32 of a V file: a plain tensor in .pt/.pth (torch.load, weights_only) or
    the single tensor (or "V") of a .safetensors file; a [d] vector is one column. Anything else exits
    with a message naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: the basis file {path} does not exist; give a V file written by a "
                         f"train_basis.py (<folder>/results/<DATASET>_V_lore_K_<K>_alpha_<alpha>.pt) as --basis=...")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            tensors = load_file(str(path))
        except Exception as e:
            raise SystemExit(f"error: cannot read the basis file {path} as safetensors ({e}); give a V file "
                             f"written by a train_basis.py") from None
        if "V" in tensors or len(tensors) == 1:
            V = tensors.get("V", next(iter(tensors.values()), None))
        else:
            raise SystemExit(f"error: the basis file {path} holds {len(tensors)} tensors {sorted(tensors)[:10]} "
                             f"and none is named 'V'; save the basis alone (a [d, K] tensor)")
    else:
        try:
            V = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SystemExit(f"error: cannot read the basis file {path} with torch.load(weights_only=True) "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); it must "
                             f"hold a plain tensor [d, K], as train_basis.py saves it") from None
        if not isinstance(V, torch.Tensor):
            raise SystemExit(f"error: the basis file {path} holds a {type(V).__name__}, not a tensor; save the "
                             f"basis itself (torch.save(V, path) with V [d, K]), as train_basis.py does")
    if V.ndim == 1:
        V = V[:, None]
    if V.ndim != 2 or min(V.shape) == 0:
        raise SystemExit(f"error: the basis in {path} has shape {tuple(V.shape)}; a basis is [d, K] (d the "
                         f"backbone's hidden size, K basis vectors): give a V file written by a train_basis.py")
    if not V.is_floating_point() or not torch.isfinite(V).all():
        raise SystemExit(f"error: the basis in {path} is not finite floats ({V.dtype}); retrain or re-save it")
    return V.float().contiguous()


def check_hidden_size(V: torch.Tensor, hidden_size: int, basis_name, backbone: str) -> None:
    """Exit unless V has one row per hidden dimension of the backbone."""
    if V.shape[0] != hidden_size:
        hint = (" (it looks transposed: save it as [d, K])" if V.shape[1] == hidden_size else "")
        raise SystemExit(f"error: the basis {basis_name} has d = {V.shape[0]} rows (shape {tuple(V.shape)}) but "
                         f"the backbone {backbone} has hidden size {hidden_size}{hint}; a basis works only "
                         f"with the backbone whose embeddings trained it: give that backbone as "
                         f"--model_name=... or a basis trained on this one")


def _read_jsonl(path, what: str, row_format: str) -> list[tuple[int, dict]]:
    """(line number, row) of every non-empty line; exits naming the file and line on anything else."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: the {what} file {path} does not exist; give a .jsonl file, one row per "
                         f"line: {row_format}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: {path} line {number} is not valid JSON ({e.msg}); each line must be "
                                 f"one JSON object: {row_format}") from None
            if not isinstance(row, dict):
                raise SystemExit(f"error: {path} line {number} is a JSON {type(row).__name__}, not an object; "
                                 f"each line must be {row_format}")
            rows.append((number, row))
    if not rows:
        raise SystemExit(f"error: the {what} file {path} is empty; it needs one row per line: {row_format}")
    return rows


def _messages(prompt, where: str, row_format: str) -> list[dict]:
    """A prompt as chat messages: a string is one user message; a list must be {role, content} strings."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise SystemExit(f"error: {where}: 'prompt' must be a string or a non-empty list of "
                     f"{{\"role\": ..., \"content\": ...}} messages (strings); each line: {row_format}")


def conversation(prompt_messages: list[dict], response: str) -> list[dict]:
    """The conversation a reward model scores: the prompt's messages + the response as the assistant."""
    return list(prompt_messages) + [{"role": "assistant", "content": response}]


def read_comparisons(path) -> tuple[list[dict], list[int]]:
    """The comparisons of a .jsonl file: ([{user_id, prompt (messages), chosen, rejected, line}], the
    line numbers skipped because chosen == rejected). Exits naming the file on a missing file, an empty
    file, a row without user_id/chosen/rejected or a bad prompt, and a user left with no comparison."""
    path = Path(path)
    out, skipped, users_seen = [], [], []
    for number, row in _read_jsonl(path, "comparisons", COMPARISON_ROW):
        where = f"{path} line {number}"
        for key in ("chosen", "rejected"):
            if not isinstance(row.get(key), str):
                raise SystemExit(f"error: {where} has no {key!r} response (a string); fix or remove that row "
                                 f"(each line: {COMPARISON_ROW})")
        user_id = row.get("user_id")
        if isinstance(user_id, bool) or not isinstance(user_id, (str, int)) or str(user_id) == "":
            raise SystemExit(f"error: {where} has no 'user_id' (a string or an integer); each line: {COMPARISON_ROW}")
        user_id = str(user_id)
        messages = _messages(row.get("prompt"), where, COMPARISON_ROW)
        if user_id not in users_seen:
            users_seen.append(user_id)
        if row["chosen"] == row["rejected"]:
            skipped.append(number)
            continue
        out.append({"user_id": user_id, "prompt": messages, "chosen": row["chosen"], "rejected": row["rejected"],
                    "line": number})
    if skipped:
        print(f"warning: {path}: skipped {len(skipped)} row(s) whose chosen response equals the rejected one "
              f"(no preference to learn from), line(s) {', '.join(map(str, skipped[:20]))}"
              + (" ..." if len(skipped) > 20 else ""), file=sys.stderr)
    kept = {r["user_id"] for r in out}
    empty = [u for u in users_seen if u not in kept]
    if empty:
        raise SystemExit(f"error: {path}: user(s) {', '.join(map(repr, empty[:10]))} have no comparisons left "
                         f"(every row of theirs has chosen == rejected); add real comparisons for them or "
                         f"remove their rows")
    return out, skipped


def read_responses(path) -> list[dict]:
    """The rows of a responses .jsonl: [{id, prompt (messages), response, line}]; exits naming the file
    and line on a missing/empty file or a row without a prompt or a response."""
    path = Path(path)
    out = []
    for number, row in _read_jsonl(path, "responses", RESPONSE_ROW):
        where = f"{path} line {number}"
        if not isinstance(row.get("response"), str):
            raise SystemExit(f"error: {where} has no 'response' (a string); each line: {RESPONSE_ROW}")
        out.append({"id": row.get("id", ""), "prompt": _messages(row.get("prompt"), where, RESPONSE_ROW),
                    "response": row["response"], "line": number})
    return out


# -----------------------------------------------------------------------------
# the backbone and the engine


def backbone_hidden_size(model_name: str) -> int:
    """The hidden size of a checkpoint from its config alone (no weights loaded)."""
    import embedding
    from transformers import AutoConfig
    try:
        config = embedding._from_pretrained(AutoConfig, str(model_name))
    except embedding.ModelNotAvailable as e:
        raise SystemExit(str(e)) from None
    return int(getattr(config, "hidden_size", 0) or getattr(config.get_text_config(), "hidden_size"))


def load_backbone(model_name: str, dtype: str, attn_implementation=None, device=None):
    """(model, tokenizer) of a sequence-classification reward model (embedding.load_reward_model), with a
    clear exit when it cannot be loaded."""
    import embedding
    try:
        return embedding.load_reward_model(str(model_name), dtype, attn_implementation, device)
    except embedding.ModelNotAvailable as e:
        raise SystemExit(str(e)) from None


def embed(backbone, conversations: list, batch_size: int = 16, max_tokens=32768, max_length=None) -> torch.Tensor:
    """Embeddings [n, d] float32 of conversations through the shared engine (one BOS, shared prompts once)."""
    import embedding
    model, tokenizer = backbone
    return embedding.embed_conversations(model, tokenizer, conversations, batch_size, max_length,
                                         max_tokens=max_tokens, progress=True)


def _distinct(conversations: list) -> tuple[list, list[int]]:
    """(distinct conversations in first-seen order, the row of each input among them)."""
    row_of, distinct, index = {}, [], []
    for c in conversations:
        key = json.dumps(c, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        if key not in row_of:
            row_of[key] = len(distinct)
            distinct.append(c)
        index.append(row_of[key])
    return distinct, index


# -----------------------------------------------------------------------------
# fit: every user's weights at once, V frozen


def fewshot_learning_rate(basis_path, learning_rate=None) -> float:
    """learning_rate, or (None) the few-shot rate of the pipeline that wrote the basis: 0.5 for a PRISM
    basis (PRISM/train_basis.py, run_regularized), else 0.1 (utils.run: Reddit TLDR, PersonalLLM)."""
    if learning_rate is not None:
        return float(learning_rate)
    return LEARNING_RATE["PRISM"] if Path(basis_path).name.startswith("PRISM_") else LEARNING_RATE[None]


def fit_weights(comparisons: utils.Comparisons, V: torch.Tensor, *, num_iterations: int = 500,
                learning_rate: float = 0.5, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """User weights [C, K] on the simplex, V [d, K] frozen: utils.PersonalizeBatch (seeded). A basis of
    one column (K = 1) has w = [1.0] for every user, as the pipelines' K <= 1 rule.

    The starting logits are one seeded N(0, 1) draw [C, K] whose row i is user i's, and a user's loss
    and Adam update involve only its own row: its weights depend on the seed and its position among
    the users, not on the others (appending users to a file leaves the earlier users' weights as they
    were). With ~10 comparisons the fit is not unique (flat directions), so another start (seed, or
    position) can give other weights of about the same loss."""
    if V.shape[1] <= 1:
        return torch.ones(comparisons.n_users, V.shape[1])
    model = utils.PersonalizeBatch(comparisons.n_users, comparisons.d, V.shape[1], num_iterations, learning_rate,
                                   seed=seed, device="cpu", dtype=torch.float32, progress=progress)
    return model.train_weights(comparisons, V).detach().cpu()


def fit(comparisons_path, basis_path, model_name: str, results_path, *, dtype: str = "float32",
        attn_implementation=None, device=None, seed: int = 0, num_iterations: int = 500, learning_rate=None,
        batch_size: int = 16, max_tokens=32768, max_length=None, settings: dict | None = None,
        backbone=None) -> Path:
    """Fit every user of a comparisons file against a frozen basis; write user_weights.safetensors and
    user_weights.json into results_path. Returns the .safetensors path. `backbone`: an already loaded
    (model, tokenizer) of model_name (else it is loaded). Every input is checked before anything is
    written."""
    basis_path, comparisons_path, results_path = Path(basis_path), Path(comparisons_path), Path(results_path)
    V = read_basis(basis_path)
    rows, skipped = read_comparisons(comparisons_path)
    hidden = (int(backbone[0].config.hidden_size) if backbone is not None else backbone_hidden_size(model_name))
    check_hidden_size(V, hidden, basis_path, model_name)
    user_ids = list(dict.fromkeys(r["user_id"] for r in rows))            # in the order the file names them
    position = {u: i for i, u in enumerate(user_ids)}
    lr = fewshot_learning_rate(basis_path, learning_rate)
    print(f"{len(rows)} comparisons of {len(user_ids)} user(s) from {comparisons_path}"
          + (f" ({len(skipped)} skipped: chosen == rejected)" if skipped else "")
          + f"; basis {basis_path.name} {tuple(V.shape)}; backbone {model_name}")

    conversations, index = _distinct([conversation(r["prompt"], r[side]) for side in ("chosen", "rejected")
                                      for r in rows])
    backbone = backbone or load_backbone(model_name, dtype, attn_implementation, device)
    table = embed(backbone, conversations, batch_size, max_tokens, max_length)
    n = len(rows)
    data = utils.Comparisons(torch.tensor([position[r["user_id"]] for r in rows]), len(user_ids), table=table,
                             chosen=torch.tensor(index[:n]), rejected=torch.tensor(index[n:]))
    W = fit_weights(data, V, num_iterations=num_iterations, learning_rate=lr, seed=seed)
    accuracy = utils.per_user_accuracy(data, V, W)
    counts = data.counts().tolist()

    basis_sha = utils.file_sha256(basis_path)
    info = {"format": WEIGHTS_FORMAT, "user_ids": user_ids, "model_name": str(model_name), "dtype": str(dtype),
            "basis_path": str(basis_path.resolve()), "basis_sha256": basis_sha, "basis_shape": list(V.shape),
            "comparisons_path": str(comparisons_path.resolve()),
            "comparisons_sha256": utils.file_sha256(comparisons_path), "seed": seed,
            "num_iterations": num_iterations, "learning_rate": lr}
    users_json = [{"user_id": u, "comparisons": counts[i], "weights": W[i].tolist(),
                   "fewshot_accuracy": float(accuracy[i])} for i, u in enumerate(user_ids)]
    payload = {**info, "settings": settings or {}, "skipped_rows": {"chosen_equals_rejected": len(skipped),
                                                                    "lines": skipped},
               "distinct_conversations": len(conversations), "users": users_json}
    out = results_path / WEIGHTS_FILE
    _save_safetensors({"weights": W.float().contiguous(), "basis": V.contiguous()}, out,
                      _encode(info))
    utils.write_json_atomic(results_path / WEIGHTS_JSON, payload)
    print(_weights_table(users_json))
    print(f"wrote {out} and {results_path / WEIGHTS_JSON}")
    return out


def _weights_table(users_json: list[dict]) -> str:
    lines = ["| user | comparisons | few-shot accuracy | weights |", "|---|---|---|---|"]
    for u in users_json:
        lines.append(f"| {u['user_id']} | {u['comparisons']} | {100 * u['fewshot_accuracy']:.1f}% | "
                     + " ".join(f"{w:.3f}" for w in u["weights"]) + " |")
    return "\n".join(lines)


def _encode(metadata: dict) -> dict:
    """safetensors metadata (str -> str): every value as JSON."""
    return {k: json.dumps(v) for k, v in metadata.items()}


def _decode(metadata: dict) -> dict:
    decoded = {}
    for k, v in metadata.items():
        try:
            decoded[k] = json.loads(v)
        except json.JSONDecodeError:   # written by another tool: keep the text
            decoded[k] = v
    return decoded


def _save_safetensors(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file
    with utils.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


# -----------------------------------------------------------------------------
# the user weights file and a user's head


def load_user_weights(path) -> dict:
    """{"user_ids", "weights" [C, K], "basis" [d, K], "meta" {...}} of a user_weights.safetensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: the user weights {path} do not exist; run `python personalize.py --command=fit "
                         f"--basis=... --comparisons=...` first (or give --weights=...)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = _decode(f.metadata() or {})
        tensors = load_file(str(path))
    except Exception as e:
        raise SystemExit(f"error: cannot read {path} ({e}); it must be a user_weights.safetensors written by "
                         f"`personalize.py --command=fit`") from None
    if meta.get("format") != WEIGHTS_FORMAT or not {"weights", "basis"} <= set(tensors):
        raise SystemExit(f"error: {path} is not a user weights file of personalize.py (format "
                         f"{meta.get('format')!r}); run `python personalize.py --command=fit` to make one")
    return {"user_ids": meta["user_ids"], "weights": tensors["weights"], "basis": tensors["basis"], "meta": meta}


def user_head(V: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A user's reward head score.weight = (V @ w / 100).T [1, d] float32: its logit on a conversation
    with embedding e is e . V . w / 100, the user's LoRe reward."""
    V, w = torch.as_tensor(V, dtype=torch.float32), torch.as_tensor(w, dtype=torch.float32).reshape(-1)
    return (V @ w / utils.TEMPERATURE)[None, :].contiguous()


def swap_head(model, head) -> torch.nn.Module:
    """Put a user's head into a loaded sequence-classification reward model, in place (the backbone is
    not copied): one base model serves every user in turn. `head`: a reward_head_<user>.safetensors
    file (export --head_only) or a tensor [1, d] / [d] / [d, 1]. A bias of the base head is zeroed (the
    personal reward has none). Returns the model.

        model, tokenizer = embedding.load_reward_model("Skywork/Skywork-Reward-Llama-3.1-8B-v0.2", "bfloat16")
        swap_head(model, "results/personalize/reward_head_alice.safetensors")   # model(...).logits: alice's
    """
    if isinstance(head, (str, Path)):
        head = load_head_file(head)[0]
    head = torch.as_tensor(head, dtype=torch.float32).reshape(1, -1)
    score = getattr(model.get_base_model() if hasattr(model, "get_base_model") else model, "score", None)
    if score is None or score.weight.shape != (1, head.shape[1]):
        got = None if score is None else tuple(score.weight.shape)
        raise ValueError(f"error: the model's score head is {got}, a user head is [1, {head.shape[1]}]: load the "
                         f"backbone the user was fitted on as a sequence-classification model with num_labels=1")
    with torch.no_grad():
        score.weight.copy_(head.to(score.weight.dtype))
        if getattr(score, "bias", None) is not None:
            score.bias.zero_()
    return model


def load_head_file(path) -> tuple[torch.Tensor, dict]:
    """(score.weight [1, d] float32, metadata) of a reward_head_<user>.safetensors (export --head_only)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: the head file {path} does not exist; run `python personalize.py --command=export "
                         f"--head_only` first")
    with safe_open(str(path), "pt") as f:
        meta = _decode(f.metadata() or {})
        if meta.get("format") != HEAD_FORMAT or "score.weight" not in f.keys():
            raise SystemExit(f"error: {path} is not a head file of `personalize.py --command=export --head_only`")
        return f.get_tensor("score.weight").float(), meta


# -----------------------------------------------------------------------------
# export: a whole model folder, or only the head


def _safe_name(user_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", user_id)


def _pick_users(ids: list[str], wanted: list[str], path) -> list[int]:
    missing = [u for u in wanted if u not in ids]
    if missing:
        raise SystemExit(f"error: user(s) {', '.join(map(repr, missing))} are not in {path}; its users: "
                         f"{', '.join(ids[:20])}" + (" ..." if len(ids) > 20 else ""))
    return [ids.index(u) for u in wanted]


def _personalization(user_id: str, w: torch.Tensor, record: dict, backbone: str) -> dict:
    meta = record["meta"]
    return {"format": HEAD_FORMAT, "user_id": user_id, "weights": [float(x) for x in w],
            "basis_sha256": meta["basis_sha256"], "basis_path": meta["basis_path"],
            "basis_shape": list(record["basis"].shape), "backbone": str(backbone),
            "reward": "logit = e . V . w / 100 (e: final-norm hidden state at the last token)"}


def _same_model(existing: dict, new: dict) -> bool:
    keys = ("user_id", "basis_sha256", "backbone")
    return (all(existing.get(k) == new.get(k) for k in keys)
            and len(existing.get("weights", [])) == len(new["weights"])
            and all(math.isclose(a, b, rel_tol=0, abs_tol=1e-7) for a, b in zip(existing["weights"], new["weights"])))


def _check_target_folder(target: Path, new: dict, overwrite: bool, backbone: str) -> None:
    """Exit unless `target` is absent, empty, or holds this very model (or overwrite is set)."""
    if Path(backbone).expanduser().exists() and target.resolve() == Path(backbone).expanduser().resolve():
        raise SystemExit(f"error: the export path {target} is the backbone's own folder; choose another "
                         f"--export_dir (the backbone is read from there)")
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not target.is_dir():
        raise SystemExit(f"error: the export path {target} is a file; choose another --export_dir")
    try:
        existing = json.loads((target / PERSONALIZATION_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        existing = None
    if existing is not None and _same_model(existing, new):
        return
    if not overwrite:
        what = (f"the personalized model of user {existing.get('user_id')!r} "
                f"(basis {str(existing.get('basis_sha256', ''))[:12]})"
                if isinstance(existing, dict) else "something else (no personalization.json)")
        raise SystemExit(f"error: the export path {target} already holds {what}, not this model; choose another "
                         f"--export_dir or pass --overwrite to replace it")


def export_model(weights_path, user_id: str, out_dir, *, model_name: str | None = None, dtype: str | None = None,
                 overwrite: bool = False, backbone=None) -> Path:
    """Write user_id's personalized reward model as a folder that
    AutoModelForSequenceClassification.from_pretrained loads (config, tokenizer, model.safetensors with
    score.weight = (V @ w / 100).T, personalization.json). model_name, dtype: the backbone and its dtype
    (default: those fit recorded). Refuses a folder holding a different model unless overwrite. Returns
    the folder."""
    record = load_user_weights(weights_path)
    model_name = str(model_name or record["meta"]["model_name"])
    dtype = dtype or record["meta"].get("dtype", "float32")
    i = _pick_users(record["user_ids"], [user_id], weights_path)[0]
    V, w = record["basis"], record["weights"][i]
    hidden = int(backbone[0].config.hidden_size) if backbone is not None else backbone_hidden_size(model_name)
    check_hidden_size(V, hidden, f"in {weights_path}", model_name)
    out_dir = Path(out_dir)
    new = _personalization(user_id, w, record, model_name)
    _check_target_folder(out_dir, new, overwrite, model_name)

    model, tokenizer = backbone or load_backbone(model_name, dtype, device="cpu")
    base_head = {k: v.detach().clone() for k, v in model.score.state_dict().items()}
    swap_head(model, user_head(V, w))
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id      # batched consumers pool at the last real token
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))   # renamed into place when complete
    try:
        tmp.chmod(0o755)                        # mkdtemp's 0o700 would hide the model from other accounts
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / PERSONALIZATION_FILE).write_text(json.dumps(new, indent=1) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        model.score.load_state_dict(base_head)       # a caller's backbone keeps its own head
    print(f"wrote {out_dir}: {model_name} with the head of user {user_id!r} (weights "
          + " ".join(f"{x:.3f}" for x in w.tolist()) + ")")
    return out_dir


def export_heads(weights_path, user_ids: list[str], out_dir, *, overwrite: bool = False,
                 model_name: str | None = None) -> list[Path]:
    """The light form: reward_head_<user>.safetensors ("score.weight" [1, d] float32; user, weights,
    basis hash and backbone in its metadata) for each user, into out_dir. Load the backbone once and
    swap_head(model, file) per user. Refuses a file holding another head unless overwrite."""
    record = load_user_weights(weights_path)
    backbone = str(model_name or record["meta"]["model_name"])
    ids = user_ids or record["user_ids"]
    picked = _pick_users(record["user_ids"], ids, weights_path)
    names = [HEAD_FILE.format(user=_safe_name(u)) for u in ids]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: user ids {ids} give clashing file names; export them one at a time with --user")
    out_dir, plans = Path(out_dir), []
    for u, i, name in zip(ids, picked, names):
        target, new = out_dir / name, _personalization(u, record["weights"][i], record, backbone)
        if target.exists():
            try:
                existing = load_head_file(target)[1]
            except SystemExit:
                existing = None
            if not (existing and _same_model(existing, new)) and not overwrite:
                raise SystemExit(f"error: {target} already holds another head ("
                                 + (f"user {existing.get('user_id')!r}" if existing else "not a personalize.py head")
                                 + "); choose another --export_dir or pass --overwrite to replace it")
        plans.append((target, user_head(record["basis"], record["weights"][i]), new))
    for target, head, new in plans:
        _save_safetensors({"score.weight": head}, target, _encode(new))
    print(f"wrote {len(plans)} head file(s) [1, {record['basis'].shape[0]}] to {out_dir}: "
          + ", ".join(t.name for t, _, _ in plans[:5]) + (" ..." if len(plans) > 5 else ""))
    return [t for t, _, _ in plans]


# -----------------------------------------------------------------------------
# score: one backbone pass, every user's reward


def user_scores(embeddings: torch.Tensor, V: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Rewards [n, C] = embeddings [n, d] @ V [d, K] @ W.T [K, C] / 100 (each user's exported logit);
    (E @ V) first: n.d.K + n.K.C work, not n.d.C."""
    return (embeddings.float() @ V.float()) @ W.float().T / utils.TEMPERATURE


def score(responses_path, weights_path, user_ids: list[str] | None = None, *, model_name: str | None = None,
          dtype: str | None = None, attn_implementation=None, device=None, batch_size: int = 16, max_tokens=32768,
          max_length=None, backbone=None) -> tuple[list[dict], list[str], torch.Tensor]:
    """(rows, user ids, scores [rows, users]) of a responses file for the chosen users (None/[]: all),
    with one backbone forward per distinct conversation. model_name, dtype: default those fit recorded."""
    rows = read_responses(responses_path)
    record = load_user_weights(weights_path)
    model_name = str(model_name or record["meta"]["model_name"])
    dtype = dtype or record["meta"].get("dtype", "float32")
    ids = list(user_ids or record["user_ids"])
    picked = _pick_users(record["user_ids"], ids, weights_path)
    hidden = int(backbone[0].config.hidden_size) if backbone is not None else backbone_hidden_size(model_name)
    check_hidden_size(record["basis"], hidden, f"in {weights_path}", model_name)
    conversations, index = _distinct([conversation(r["prompt"], r["response"]) for r in rows])
    backbone = backbone or load_backbone(model_name, dtype, attn_implementation, device)
    E = embed(backbone, conversations, batch_size, max_tokens, max_length)
    scores = user_scores(E, record["basis"], record["weights"][picked])[torch.tensor(index)]
    return rows, ids, scores


def write_scores(rows: list[dict], ids: list[str], scores: torch.Tensor, results_path, info: dict) -> Path:
    """scores.csv (row, id, one column per user) and scores.json (info, users, shape) into results_path."""
    results_path = Path(results_path)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["row", "id", *ids])
    for k, (r, s) in enumerate(zip(rows, scores.tolist())):
        writer.writerow([k, r["id"], *(f"{x:.6g}" for x in s)])
    out = results_path / SCORES_FILE
    utils.write_text_atomic(out, buffer.getvalue())
    utils.write_json_atomic(results_path / SCORES_JSON, {**info, "users": ids, "rows": len(rows),
                                                         "scores_file": str(out)})
    return out


# -----------------------------------------------------------------------------
# the demonstration on PRISM users the basis never saw


def _prism_data():
    """The PRISM folder's data module (train_basis.py's groups, the parquet rows)."""
    if str(ROOT / "PRISM") not in sys.path:
        sys.path.insert(0, str(ROOT / "PRISM"))
    import prism_data
    return prism_data


def _prism_files(data_path: Path, basis_path: Path, offline: bool) -> None:
    prism_data = _prism_data()
    made_by = PRISM_MADE_BY.format(o=" --offline" if offline else "")
    for path in (data_path / prism_data.SPLIT_FILE, data_path / "train.parquet", data_path / "test.parquet",
                 data_path / prism_data.EMBEDDINGS_FILE, data_path / prism_data.INDEX_FILE, basis_path):
        if not path.exists():
            raise SystemExit(f"error: {path} is missing; the demo needs the PRISM data, embeddings and basis: "
                             f"run `{made_by}` first")


def _jsonl_row(r: dict, **extra) -> dict:
    return {"user_id": r["user_id"], "prompt": [dict(m) for m in r["prompt"]], **extra}


def reloaded_logits(folder, conversations: list, device=None) -> torch.Tensor:
    """Logits [n] of an exported folder loaded with from_pretrained alone (no project code), one
    conversation per forward, tokenised by its own chat template: what a reward-model consumer sees."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    out = []
    with torch.inference_mode():
        for c in conversations:
            ids = tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
            out.append(float(model(input_ids=ids.to(device)).logits[0, 0]))
    return torch.tensor(out)


def pipeline_weights(data_path: Path, V: torch.Tensor, *, num_iterations: int, learning_rate: float, seed: int):
    """The PRISM pipeline's few-shot path for its unseen users, as PRISM/train_basis.py runs it on the
    stored embeddings: PersonalizeBatch over all unseen users at once (seed derived_seed(seed, 1)) on
    their train comparisons, per-user accuracy on their test comparisons. Returns (unseen user ids,
    weights [C, K], test accuracy [C])."""
    prism_data = _prism_data()
    groups, users, _ = prism_data.user_groups(data_path)
    train, test = groups["unseen_train"], groups["unseen_test"]
    if V.shape[1] <= 1:
        W = torch.ones(train.n_users, V.shape[1])
    else:
        model = utils.PersonalizeBatch(train.n_users, train.d, V.shape[1], num_iterations, learning_rate,
                                       seed=utils.derived_seed(seed, 1), device="cpu", progress=False)
        W = model.train_weights(train, V)
    return users["unseen"], W, utils.per_user_accuracy(test, V, W)


def demo(data_path: Path, basis_path: Path, model_name: str, results_path: Path, *, offline: bool,
         n_users: int = 5, dtype: str = "float32", attn_implementation=None, device=None, seed: int = 0,
         num_iterations: int = 500, learning_rate=None, batch_size: int = 16, max_tokens=32768, max_length=None,
         same_start_check: bool = True, settings: dict | None = None) -> dict:
    """fit, export, reload and score on unseen PRISM users; compare with the pipeline's figure."""
    prism_data = _prism_data()

    _prism_files(data_path, basis_path, offline)
    split = json.loads((data_path / prism_data.SPLIT_FILE).read_text())
    rows = prism_data.load_prepared(data_path)
    by_user = {s: {} for s in prism_data.SPLITS}
    for s in prism_data.SPLITS:
        for r in rows[s]:
            if not r["seen"]:
                by_user[s].setdefault(r["user_id"], []).append(r)
    chosen_users = [u for u in sorted(split["unseen_user_ids"]) if by_user["test"].get(u)
                    and any(r["chosen"] != r["rejected"] for r in by_user["train"].get(u, []))][:n_users]
    if not chosen_users:
        raise SystemExit(f"error: no unseen user in {data_path} has both train and test comparisons")
    print(f"demo: {len(chosen_users)} unseen PRISM users {', '.join(chosen_users)}; basis {basis_path.name}")

    comparisons_file, heldout_file = results_path / "demo_comparisons.jsonl", results_path / "demo_heldout.jsonl"
    responses_file = results_path / "demo_responses.jsonl"
    utils.write_jsonl_atomic(comparisons_file, [_jsonl_row(r, chosen=r["chosen"], rejected=r["rejected"])
                                                for u in chosen_users for r in by_user["train"][u]])
    heldout = [r for u in chosen_users for r in by_user["test"][u]]
    utils.write_jsonl_atomic(heldout_file, [_jsonl_row(r, chosen=r["chosen"], rejected=r["rejected"]) for r in heldout])
    # the held-out responses for `score`: the chosen then the rejected side of each held-out comparison
    utils.write_jsonl_atomic(responses_file, [
        {"id": f"{r['user_id']}:{k}:{side}", "prompt": [dict(m) for m in r["prompt"]], "response": r[side]}
        for side in ("chosen", "rejected") for k, r in enumerate(heldout)])

    backbone = load_backbone(model_name, dtype, attn_implementation, device)
    engine = dict(batch_size=batch_size, max_tokens=max_tokens, max_length=max_length)
    weights_path = fit(comparisons_file, basis_path, model_name, results_path, dtype=dtype, seed=seed,
                       num_iterations=num_iterations, learning_rate=learning_rate, settings=settings,
                       backbone=backbone, **engine)
    record = load_user_weights(weights_path)

    # export the first user and reload the folder with from_pretrained alone (the demo owns this folder)
    first = chosen_users[0]
    folder = export_model(weights_path, first, results_path / MODEL_FOLDER.format(user=_safe_name(first)),
                          model_name=model_name, overwrite=True, backbone=backbone)
    first_heldout = [r for r in heldout if r["user_id"] == first]
    logits = reloaded_logits(folder, [conversation(r["prompt"], r[side]) for side in ("chosen", "rejected")
                                      for r in first_heldout], device)
    m = len(first_heldout)
    exported_accuracy = float((logits[:m] > logits[m:]).float().mean())    # strict: a tie is wrong

    # score every demo user's held-out responses in one pass; accuracy from each user's own comparisons
    score_rows, ids, table = score(responses_file, weights_path, chosen_users, model_name=model_name,
                                   backbone=backbone, **engine)
    write_scores(score_rows, ids, table, results_path, {"settings": settings or {}, "weights": str(weights_path),
                                                       "responses": str(responses_file)})
    n = len(heldout)
    owner = torch.tensor([ids.index(r["user_id"]) for r in heldout])
    margin = (table[:n] - table[n:]).gather(1, owner[:, None]).squeeze(1)
    score_accuracy = {u: float((margin[owner == j] > 0).float().mean()) for j, u in enumerate(ids)}

    # the pipeline's figure for the same users: PRISM/train_basis.py's few-shot path on stored embeddings
    V = read_basis(basis_path)
    lr = fewshot_learning_rate(basis_path, learning_rate)
    unseen, W_pipe, acc_pipe = pipeline_weights(data_path, V, num_iterations=num_iterations, learning_rate=lr,
                                                seed=seed)
    reproduced = _train_basis_figure(basis_path, acc_pipe, num_iterations, lr, seed)

    # Why the weights above differ from the pipeline's: only the starting draw (the pipeline draws the
    # starting logits of all unseen users, row i for the i-th by id; fit draws those of its 5). Fitting
    # every unseen user in the pipeline's order with its seed starts both alike: then they must agree.
    same_start = None
    if same_start_check:
        everyone = [r for u in unseen for r in by_user["train"].get(u, [])]
        usable = {r["user_id"] for r in everyone if r["chosen"] != r["rejected"]}
        if usable == set(unseen):
            check_file = results_path / "same_start" / "all_unseen_comparisons.jsonl"
            utils.write_jsonl_atomic(check_file, [_jsonl_row(r, chosen=r["chosen"], rejected=r["rejected"])
                                                  for r in everyone])
            W_all = load_user_weights(fit(check_file, basis_path, model_name, check_file.parent, dtype=dtype,
                                          seed=utils.derived_seed(seed, 1), num_iterations=num_iterations,
                                          learning_rate=learning_rate, settings=settings, backbone=backbone,
                                          **engine))["weights"]
            same_start = {"users": len(unseen), "max_weight_difference": float((W_all - W_pipe).abs().max())}
        else:
            print(f"same-start check skipped: {len(set(unseen) - usable)} unseen user(s) have no usable train "
                  f"comparison, so fit cannot give every user its pipeline row")

    table_rows = []
    for j, u in enumerate(chosen_users):
        p = unseen.index(u)
        w_fit, w_pipe = record["weights"][j], W_pipe[p]
        table_rows.append({
            "user_id": u, "fewshot_comparisons": len(by_user["train"][u]),
            "heldout_comparisons": len(by_user["test"][u]),
            "pipeline_accuracy": float(acc_pipe[p]), "personalize_score_accuracy": score_accuracy[u],
            "exported_model_accuracy": exported_accuracy if u == first else None,
            "weights_personalize": w_fit.tolist(), "weights_pipeline": w_pipe.tolist(),
            "max_weight_difference": float((w_fit - w_pipe).abs().max())})
    result = {"name": DEMO_NAME, "settings": settings or {}, "seed": seed, "basis": str(basis_path),
              "basis_sha256": record["meta"]["basis_sha256"], "backbone": str(model_name),
              "exported_user": first, "exported_folder": str(folder), "learning_rate": lr,
              "num_iterations": num_iterations, "train_basis_unseen_test_mean": reproduced,
              "same_start": same_start, "users": table_rows}
    markdown = _demo_markdown(result)
    utils.write_json_atomic(results_path / f"{DEMO_NAME}.json", result)
    utils.write_text_atomic(results_path / f"{DEMO_NAME}.md", markdown)
    print("\n" + markdown)
    print(f"wrote {results_path / (DEMO_NAME + '.json')}, {results_path / (DEMO_NAME + '.md')}, {folder}, "
          f"{weights_path} and {results_path / SCORES_FILE}")
    return result


def _train_basis_figure(basis_path: Path, acc_pipe: torch.Tensor, num_iterations, lr, seed) -> dict | None:
    """The unseen-user test mean train_basis.py reported for this basis, next to the one recomputed here
    (they are equal when train_basis ran with the same few-shot settings): proof the path is the pipeline's."""
    found = re.match(r"PRISM_V_lore_K_(\d+)_alpha_(.+)\.(pt|safetensors)$", basis_path.name)
    results = basis_path.parent / "prism_lore_results.json"
    if not found or not results.exists():
        return None
    saved = json.loads(results.read_text())
    s = saved.get("settings", {})
    if (s.get("fewshot_iterations"), s.get("fewshot_learning_rate"), s.get("seed")) != (num_iterations, lr, seed):
        return None
    for entry in saved.get("results", []):
        if entry["K"] == int(found.group(1)) and str(float(entry["alpha"])) == found.group(2):
            valid = acc_pipe[~acc_pipe.isnan()]
            return {"train_basis": entry["unseen_test"]["mean"], "recomputed": float(valid.mean())}
    return None


def _demo_markdown(result: dict) -> str:
    pct = (lambda x: "-" if x is None else f"{100 * x:.1f}")
    lines = [f"# Your own reward model: {len(result['users'])} new PRISM users", "",
             f"Basis {Path(result['basis']).name}, backbone {result['backbone']}; accuracy (%) on each user's "
             f"held-out comparisons (strict: a tie is wrong).", "",
             "| user | few-shot comparisons | held-out comparisons | pipeline (train_basis path) | "
             "personalize score | exported model, reloaded |", "|---|---|---|---|---|---|"]
    for u in result["users"]:
        lines.append(f"| {u['user_id']} | {u['fewshot_comparisons']} | {u['heldout_comparisons']} | "
                     f"{pct(u['pipeline_accuracy'])} | {pct(u['personalize_score_accuracy'])} | "
                     f"{pct(u['exported_model_accuracy'])} |")
    diff = max(u["max_weight_difference"] for u in result["users"])
    lines += ["", f"Exported: user {result['exported_user']} -> {result['exported_folder']} (loaded with "
              f"AutoModelForSequenceClassification.from_pretrained; its own logits).", "",
              f"Largest difference between a user's weights from personalize.py and from the pipeline: {diff:.2g}. "
              f"The two fits start from different seeded draws (the pipeline draws the starting logits of all "
              f"unseen users, fit those of its {len(result['users'])}), and with a few comparisons the fit has "
              f"flat directions: the weights differ, and so can a held-out prediction close to a tie."]
    if result["same_start"]:
        r = result["same_start"]
        lines.append(f"From the same start (all {r['users']} unseen users fitted by personalize.py in the "
                     f"pipeline's order and seed) the weights differ by at most {r['max_weight_difference']:.2g}.")
    if result["train_basis_unseen_test_mean"]:
        r = result["train_basis_unseen_test_mean"]
        lines.append(f"The pipeline path reproduces train_basis.py's unseen-user test mean for this basis: "
                     f"{pct(r['recomputed'])} (train_basis.py: {pct(r['train_basis'])}).")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# the command line


def _path(value: str, name: str, overridden) -> Path:
    """A path setting: relative to the current folder when given on the command line, else to this script's."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else ((Path.cwd() if name in overridden else ROOT) / path)


def main() -> None:
    global model_name, dtype
    settings = utils.configure(globals())
    given = settings.overridden
    if command not in ("fit", "export", "score", "demo"):
        raise utils.SettingsError(f"error: --command must be fit, export, score or demo, got {command!r}")
    if offline:
        from offline import tiny_model_path
        if "model_name" not in given:
            model_name = tiny_model_path()
        if "dtype" not in given:
            dtype = "float32"
    if "results_dir" in given:
        results_path = _path(results_dir, "results_dir", given)
    else:
        results_path = utils.script_dirs(__file__, "data", results_dir, offline)[1]
    basis_path = _path(basis or (OFFLINE_BASIS if offline else DEFAULT_BASIS), "basis", given if basis else ())
    weights_path = _path(weights, "weights", given) if weights else results_path / WEIGHTS_FILE
    # export/score: the backbone (and dtype) fit recorded, unless named (or --offline picks the tiny model)
    backbone_name = model_name if ("model_name" in given or offline) else None
    backbone_dtype = dtype if ("dtype" in given or offline) else None
    engine = dict(batch_size=batch_size, max_tokens=max_tokens, max_length=max_length)
    snapshot = utils.script_settings(globals())

    if command == "fit":
        if not comparisons:
            raise utils.SettingsError("error: fit needs --comparisons=<file.jsonl> (one comparison per line: "
                                      f"{COMPARISON_ROW})")
        if not basis and not basis_path.exists():
            raise SystemExit(f"error: no --basis given and the default basis {basis_path} is missing; give a V file "
                             f"written by a train_basis.py as --basis=..., or make the default with "
                             f"`{PRISM_MADE_BY.format(o=' --offline' if offline else '')}`")
        fit(_path(comparisons, "comparisons", given), basis_path, model_name, results_path, dtype=dtype,
            attn_implementation=attn_implementation, device=device, seed=seed, num_iterations=num_iterations,
            learning_rate=learning_rate, settings=snapshot, **engine)
    elif command == "export":
        record_users = load_user_weights(weights_path)["user_ids"]
        wanted = [user] if user else ([] if head_only else record_users)
        if not head_only and len(wanted) != 1:
            raise SystemExit(f"error: {weights_path} holds {len(record_users)} users; name the one to export "
                             f"with --user=... (users: {', '.join(record_users[:20])})")
        if head_only:
            export_heads(weights_path, wanted, _path(export_dir, "export_dir", given) if export_dir else results_path,
                         overwrite=overwrite, model_name=backbone_name)
        else:
            folder = (_path(export_dir, "export_dir", given) if export_dir
                      else results_path / MODEL_FOLDER.format(user=_safe_name(wanted[0])))
            export_model(weights_path, wanted[0], folder, model_name=backbone_name, dtype=backbone_dtype,
                         overwrite=overwrite)
    elif command == "score":
        if not responses:
            raise utils.SettingsError(f"error: score needs --responses=<file.jsonl> (one row per line: {RESPONSE_ROW})")
        responses_path = _path(responses, "responses", given)
        wanted = [u.strip() for u in users.split(",") if u.strip()]
        rows, ids, table = score(responses_path, weights_path, wanted, model_name=backbone_name,
                                 dtype=backbone_dtype, attn_implementation=attn_implementation, device=device,
                                 **engine)
        out = write_scores(rows, ids, table, results_path,
                           {"settings": snapshot, "weights": str(weights_path), "responses": str(responses_path),
                            "responses_sha256": utils.file_sha256(responses_path)})
        preview = ["| row | id | " + " | ".join(ids[:8]) + " |", "|---" * (min(len(ids), 8) + 2) + "|"]
        for k in range(min(len(rows), 10)):
            preview.append(f"| {k} | {rows[k]['id']} | " + " | ".join(f"{x:.4f}" for x in table[k, :8].tolist()) + " |")
        print("\n".join(preview) + ("\n..." if len(rows) > 10 else ""))
        print(f"wrote {out} ({len(rows)} rows x {len(ids)} users) and {results_path / SCORES_JSON}")
    else:
        data_path = ROOT / "PRISM" / "data" / ("prism-offline" if offline else "prism")
        demo(data_path, basis_path, model_name, results_path, offline=offline, n_users=demo_users, dtype=dtype,
             attn_implementation=attn_implementation, device=device, seed=seed, num_iterations=num_iterations,
             learning_rate=learning_rate, same_start_check=demo_same_start_check, settings=snapshot, **engine)


if __name__ == "__main__":
    main()

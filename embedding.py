"""The shared embedding engine: conversations -> final-layer hidden state at the last real token.

Every dataset folder embeds through this module, with the real Skywork checkpoint or the built-in tiny
model alike.

    model, tokenizer = load_reward_model(name, dtype="bfloat16")        # LlamaForSequenceClassification
    E = embed_conversations(model, tokenizer, conversations)             # [n, d] float32, input order
    S = score_conversations(model, tokenizer, conversations)             # [n, 1] = E @ V_ref: its own logits
    S = score_conversations(model, tokenizer, conversations, head=V)     # [n, B] = E @ V (+ bias)
    embed_to_file(name, conversations, "data/x/conversation_embeddings.safetensors")   # sharded, resumable
    export_reward_head(name, "data/x/reward_head.safetensors")           # V_ref = score.weight.T [d, 1]
    E, V_ref = load_embedded(data_path, conversations, made_by="python generate-...-embeddings.py")

A conversation is a list of {"role", "content"} messages (rendered with the tokenizer's chat template)
or a string that is already rendered text. Rules every function here keeps:
- Tokenised once, from the template, with exactly one BOS (a rendered template already starts with BOS;
  tokenising that text with special tokens would add a second one).
- Truncation to `max_length` tokens keeps the BOS; side "left" (default) drops the oldest tokens, so a
  multi-turn dialog keeps its end and its final token (the one that is embedded); "right" keeps the
  start and cuts the end.
- Batched by length (longest first, so an out-of-memory shows at once), capped by `batch_size` rows
  and optionally `max_tokens` padded tokens per batch; padded on the right, whatever the tokenizer's
  padding side: in a causal model no real token attends to a later pad, so no mask is needed and SDPA /
  flash attention run their causal kernels; other models get the mask. Batched == one at a time (to
  float tolerance). The last real token is read from the lengths, never from pad ids.
- A prompt shared by several conversations (chosen and rejected responses, a dialog's history, a
  PersonalLLM prompt's 8 responses, an RB2 prompt's answers) runs once: conversations are grouped by
  common token prefix (shared_prefix_groups), the prefix's key/value cache is computed once and each
  member runs only its own tokens on it. Causal models only (no sliding window); the result equals
  the whole conversation's to float rounding (tested); share_prefixes=False turns it off.
- The embedding is the final-layer hidden state AFTER the final norm at the last real token, so
  `embedding @ reward_head(model) == model(conversation).logits` (tested).
- Output is float32 on the CPU; files are safetensors (no pickle).

Data parallel: under `accelerate launch`, `embed_to_file` gives process k the shards k, k+P, ... and
the main process merges them in the original order. Under plain `python` it is one process.

    accelerate launch --multi_gpu --num_processes 4 embed.py ...      # 4 GPUs, one process each
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no embed.py ...                              # 2 CPU processes (gloo), for tests

(`accelerate launch --cpu --num_processes 2` starts only ONE process without mpirun; on a machine
without a GPU the torchrun launcher behind --multi_gpu works, the engine then asks for the CPU backend.)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Sequence

import torch

import harness
import utils

REWARD_HEAD_FILE = "reward_head.safetensors"  # V_ref beside the embeddings (export_reward_head)
FORMAT_VERSION = "lore-embeddings-1"          # bump when the rendering rules change (stale shards refused)


class ModelNotAvailable(OSError):
    """The model path is neither a local folder nor a checkpoint reachable on (or cached from) the hub."""


# -----------------------------------------------------------------------------
# loading


def _not_available(model_name: str, cause: BaseException | None = None) -> ModelNotAvailable:
    return ModelNotAvailable(harness.hub_unreachable(
        f"the model {model_name!r} (neither a local folder nor a reachable hub id)",
        "<the same script> --offline", cause).code)


def _cached_snapshot(model_name: str) -> str | None:
    """The local hub-cache folder of `model_name` when its config is cached, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model_name, "config.json")
    except Exception:  # not a valid repo id (e.g. a missing local path)
        return None
    return str(Path(hit).parent) if isinstance(hit, str) else None


def _from_pretrained(loader, model_name: str, **kwargs):
    """`loader.from_pretrained`, failing fast with a clear message when the model cannot be reached.

    Order: a local folder; the hub when it answers (downloads into the cache); the cached snapshot
    when it does not (loaded as a folder: a hub id would still make transformers retry the network for
    ~30 s); otherwise ModelNotAvailable at once.
    """
    folder = Path(model_name).expanduser()
    if not folder.is_dir() and not harness.hub_reachable():
        snapshot = _cached_snapshot(model_name)
        if snapshot is None:
            raise _not_available(model_name)
        folder = Path(snapshot)
    if folder.is_dir():
        try:
            return loader.from_pretrained(str(folder), **kwargs)
        except Exception as e:     # missing files (OSError), damaged weights (safetensors, torch), bad config
            raise ModelNotAvailable(f"error: {folder} is a folder but not a loadable checkpoint "
                                    f"({type(e).__name__}: {str(e)[:300]}); rebuild or re-download it") from e
    try:
        return loader.from_pretrained(model_name, **kwargs)
    except OSError as e:
        raise _not_available(model_name, e) from e


def load_config(model_name: str):
    """The config of a checkpoint (local folder or hub id) without its weights: ModelNotAvailable (an
    OSError naming --offline) at once when it cannot be reached, as load_reward_model."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, model_name)


def load_tokenizer(model_name: str):
    """The tokenizer of a checkpoint (local folder or hub id), with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, model_name)
    if tokenizer.pad_token_id is None:  # Llama-3 style tokenizers may lack one; any id works (masked)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reward_model(model_name: str, dtype: str = "float32", attn_implementation: str | None = None,
                      device: str | None = None):
    """Load a sequence-classification reward model and its tokenizer (num_labels=1), in eval mode.

    dtype: "float32" | "bfloat16" | "float16"; attn_implementation: None (the library default, sdpa),
    "eager", "sdpa" or "flash_attention_2"; device: None = cuda if available, else cpu. A path that is
    neither a local folder nor reachable on the hub raises ModelNotAvailable (an OSError) at once,
    naming the --offline switch.
    """
    from transformers import AutoModelForSequenceClassification

    device = str(device or utils.get_device())
    kwargs = dict(num_labels=1, dtype=_torch_dtype(dtype))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device != "cpu":
        kwargs["device_map"] = {"": device}  # load straight onto the GPU, not via a CPU copy
    model = _from_pretrained(AutoModelForSequenceClassification, model_name, **kwargs)
    model = model.to(device).eval()
    return model, load_tokenizer(model_name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"error: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


_MODEL_CACHE: dict = {}


def _cached_reward_model(model_name: str, dtype: str, attn_implementation: str | None, device: str):
    """load_reward_model, keeping the last model in memory (a script embeds several splits in turn)."""
    key = (model_name, str(dtype), attn_implementation, str(device))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_reward_model(model_name, dtype, attn_implementation, device)
    return _MODEL_CACHE[key]


def _parts(model):
    """(backbone, score head or None) of a sequence-classification model, a PeftModel wrapping one, or a
    bare backbone (e.g. LlamaModel). The backbone's output is the final-norm hidden state."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    backbone = inner if isinstance(inner, torch.nn.Module) and inner is not base else base
    head = getattr(base, "score", None)
    return backbone, head


def _device_of(module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def reward_head(model) -> torch.Tensor:
    """The backbone's own reward direction V_ref = score.weight.T, float32 [d, num_labels] (CPU)."""
    head = _parts(model)[1]
    if head is None:
        raise ValueError("error: this model has no `score` head (load it as a sequence-classification "
                         "model, or pass the head explicitly)")
    return head.weight.detach().float().T.contiguous().cpu()


# -----------------------------------------------------------------------------
# rendering


def conversation(prompt, response: str) -> list[dict]:
    """The conversation embedded for one side of a comparison: the prompt (a string, as one user message,
    or a list of {role, content} chat messages) followed by the assistant's response."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
        [{"role": m["role"], "content": m["content"]} for m in prompt]
    return messages + [{"role": "assistant", "content": response}]


def distinct_conversations(conversations: Iterable) -> tuple[list, list[int]]:
    """(the distinct conversations in first-seen order, the position of each input among them): embed
    each once. Two conversations are the same when their content is (keys in any order)."""
    position, distinct, index = {}, [], []
    for c in conversations:
        key = json.dumps(c, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        if key not in position:
            position[key] = len(distinct)
            distinct.append(c)
        index.append(position[key])
    return distinct, index


def render_ids(tokenizer, conversation, max_length: int | None = None,
               truncation_side: str = "left") -> list[int]:
    """Token ids of a conversation rendered with the chat template: exactly one BOS.

    `conversation` is a list of {role, content} messages, or an already-rendered string (tokenised
    without adding special tokens). Truncation to `max_length` keeps the BOS first; "left" keeps the
    end of the conversation (and its final token), "right" keeps the start.
    """
    return render_all_ids(tokenizer, [conversation], max_length, truncation_side)[0]


def render_all_ids(tokenizer, conversations: Sequence, max_length: int | None = None,
                   truncation_side: str = "left") -> list[list[int]]:
    """render_ids of every conversation. The templates are rendered to text one by one, then all texts
    are tokenised in one call of the (Rust) tokenizer, which is what apply_chat_template(tokenize=True)
    does one conversation at a time (the same ids, tested)."""
    if max_length is not None and max_length < harness.MIN_MAX_LENGTH:
        raise ValueError(f"error: max_length must be at least {harness.MIN_MAX_LENGTH}, got {max_length}")
    if truncation_side not in ("left", "right"):
        raise ValueError(f"error: truncation_side must be 'left' or 'right', got {truncation_side!r}")
    texts = [c if isinstance(c, str) else tokenizer.apply_chat_template(list(c), tokenize=False)
             for c in conversations]
    bos = tokenizer.bos_token_id
    out = []
    for ids in (tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []):
        ids = [int(i) for i in ids]
        if bos is not None:
            start = 0
            while start < len(ids) and ids[start] == bos:
                start += 1
            ids = [bos] + ids[start:]  # exactly one BOS, whatever the template or the text did
        out.append(_truncated(ids, max_length, truncation_side, bos))
    return out


def _truncated(ids: list[int], max_length: int | None, truncation_side: str, bos: int | None) -> list[int]:
    """ids cut to max_length tokens: "left" keeps the BOS and the end, "right" the start."""
    if max_length is None or len(ids) <= max_length:
        return ids
    if truncation_side == "left":
        keep_bos = bos is not None and ids[0] == bos
        return ([bos] + ids[len(ids) - max_length + 1:]) if keep_bos else ids[-max_length:]
    return ids[:max_length]


def model_positions(model) -> int | None:
    """The longest sequence the backbone has positions for (config.max_position_embeddings), or None."""
    return getattr(getattr(_parts(model)[0], "config", None), "max_position_embeddings", None)


def render_for_model(model, tokenizer, conversations: Sequence, max_length: int | None = None,
                     truncation_side: str = "left") -> tuple[list[list[int]], int]:
    """render_all_ids, also cut to the backbone's positions when max_length is None or larger (a longer
    sequence runs past what the model was trained on, slowly, with a library warning): (ids, the number of
    conversations cut to the positions)."""
    ids = render_all_ids(tokenizer, conversations, max_length, truncation_side)
    positions = model_positions(model)
    if positions is None or (max_length is not None and max_length <= positions):
        return ids, 0
    cut = sum(len(x) > positions for x in ids)
    if cut:
        ids = [_truncated(x, positions, truncation_side, tokenizer.bos_token_id) for x in ids]
    return ids, cut


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (ties in input order).

    A batch has at most `batch_size` rows and, when `max_tokens` is given, at most `max_tokens` padded
    tokens (rows x longest length); a single sequence longer than `max_tokens` gets a batch of its own.
    """
    if batch_size < 1:
        raise ValueError(f"error: batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, batch = [], []
    for i in order:
        if batch:
            width = lengths[batch[0]]  # the first row of a batch is its longest
            if len(batch) >= batch_size or (max_tokens and width * (len(batch) + 1) > max_tokens):
                batches.append(batch)
                batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


# -----------------------------------------------------------------------------
# the forward pass


def _is_causal(backbone) -> bool:
    """True for a decoder-only (causal) architecture, e.g. Llama: its type has a causal-LM class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = getattr(backbone, "config", None)
    return (getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and not getattr(config, "is_encoder_decoder", False))


# A token run on top of a prefix cache costs about this much more than inside a whole sequence (an
# explicit attention mask instead of the causal kernel, the cache rows copied): ~0.3 measured on a CPU.
SUFFIX_TOKEN_OVERHEAD = 0.25


def shared_prefix_groups(ids: Sequence[Sequence[int]], min_prefix: int = 8, max_group: int = 64,
                         suffix_overhead: float = SUFFIX_TOKEN_OVERHEAD) -> list[tuple[int, list[int]]]:
    """Groups of conversations that start with the same tokens: [(prefix length P, member indices)].

    Chosen and rejected responses share their prompt (and a dialog's history), so the prompt's keys
    and values can be computed once per group. Sequences are sorted (lexicographically, so sequences
    with a common start are neighbours) and cut into contiguous groups of at most `max_group` members
    that maximise the tokens saved, by dynamic programming: a group of m members saves (m - 1) * P
    tokens and pays `suffix_overhead` per token its members run on top of the prefix, so a group is
    formed only where the prompt is a real share of the work (not for a common chat-template header
    ahead of long, different messages). P is the group's common prefix, shortened so that every
    member keeps at least one token of its own (the embedded last token); P >= `min_prefix`. Members
    are in sorted order; indices in no group are conversations embedded whole.
    """
    order = sorted(range(len(ids)), key=lambda i: list(ids[i]))
    seqs = [ids[i] for i in order]
    n = len(seqs)
    common = []  # common[k]: length of the common prefix of seqs[k] and seqs[k + 1]
    for a, b in zip(seqs, seqs[1:]):
        m, k = min(len(a), len(b)), 0
        while k < m and a[k] == b[k]:
            k += 1
        common.append(k)

    def gain(size: int, prefix: int, tokens: int) -> float:  # of a group of `size` holding `tokens`
        return (size - 1) * prefix - suffix_overhead * (tokens - size * prefix)

    best = [0.0] * (n + 1)  # best[j]: the largest gain on seqs[:j]
    start = [-1] * (n + 1)  # start[j]: first member of the group ending at seqs[j - 1] (-1: alone)
    for j in range(1, n + 1):
        best[j] = best[j - 1]
        prefix = shortest = tokens = len(seqs[j - 1])
        for i in range(j - 2, max(-1, j - 1 - max_group), -1):
            prefix, shortest = min(prefix, common[i]), min(shortest, len(seqs[i]))
            tokens += len(seqs[i])
            p = min(prefix, shortest - 1)
            if p < min_prefix:
                break  # extending the group further back can only shorten its prefix
            value = best[i] + gain(j - i, p, tokens)
            if value > best[j]:
                best[j], start[j] = value, i
    groups, j = [], n
    while j > 0:
        i = start[j]
        if i < 0:
            j -= 1
            continue
        p = min(min(common[i:j - 1]), min(len(s) for s in seqs[i:j]) - 1)
        groups.append((p, [order[k] for k in range(i, j)]))
        j = i
    return groups[::-1]


def _can_share_prefixes(backbone) -> bool:
    """Prefix sharing needs a causal model whose every layer attends to the whole past (a plain
    key/value cache): no sliding windows, no encoder-decoder."""
    config = getattr(backbone, "config", None)
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return (_is_causal(backbone) and not getattr(config, "sliding_window", None)
            and layer_types == {"full_attention"})


def _padded(rows: Sequence[Sequence[int]], pad: int):
    """(input_ids [b, width], mask [b, width]) of token rows padded on the right."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, r in enumerate(rows):
        input_ids[row, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[row, :len(r)] = 1
    return input_ids, mask


def _last_hidden_states(model, tokenizer, ids: list[list[int]], batch_size: int, max_tokens: int | None,
                        pbar=None, share_prefixes: bool = True):
    """Yield (indices, hidden [b, d] in the model's dtype) for batches of `ids`.

    With share_prefixes (causal models only), conversations that start alike (shared_prefix_groups)
    run their common prefix once and only their own tokens on top of its key/value cache; the rest
    run whole, batched by length, longest first.
    """
    backbone, _ = _parts(model)
    if any(len(x) == 0 for x in ids):
        raise ValueError("error: an empty conversation rendered to no tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    groups = shared_prefix_groups(ids) if share_prefixes and _can_share_prefixes(backbone) else []
    grouped = {i for _, members in groups for i in members}
    alone = [i for i in range(len(ids)) if i not in grouped]
    for chunk, hidden in _whole_batches(backbone, [ids[i] for i in alone], batch_size, max_tokens, pad):
        yield [alone[k] for k in chunk], hidden
        if pbar is not None:
            pbar.update(len(chunk))
    for chunk, hidden in _prefix_batches(backbone, ids, groups, batch_size, max_tokens, pad):
        yield chunk, hidden
        if pbar is not None:
            pbar.update(len(chunk))


def _whole_batches(backbone, ids, batch_size, max_tokens, pad):
    """Yield (positions in `ids`, last-token hidden [b, d]): whole sequences, batched by length."""
    device = _device_of(backbone)
    causal = _is_causal(backbone)
    for chunk in length_batches([len(x) for x in ids], batch_size, max_tokens):
        input_ids, mask = _padded([ids[i] for i in chunk], pad)
        last = mask.sum(1) - 1
        # Right pads come after every real token, so in a causal model no real token sees them and
        # positions are 0, 1, ... already: no mask is exact, and lets SDPA / flash attention use their
        # causal kernels instead of a padded-mask path.
        hidden = backbone(input_ids=input_ids.to(device), attention_mask=None if causal else mask.to(device),
                          use_cache=False).last_hidden_state
        yield chunk, hidden[torch.arange(len(chunk), device=hidden.device), last.to(hidden.device)]


PREFIX_WINDOW = 4  # prefix batches whose members are batched together (bounds the key/value cache kept)


def _prefix_batches(backbone, ids, groups, batch_size, max_tokens, pad):
    """Yield (indices, last-token hidden [b, d]) of grouped conversations: each group's prefix runs
    once (batched by prefix length, right-padded, its key/value cache kept), then the members' own
    tokens run on copies of their prefix's cache rows. Members are batched by the length of their own
    tokens across a window of PREFIX_WINDOW prefix batches (within one prefix batch alone, the few
    members of similar prefixes vary so much in length that half the tokens would be padding).

    Exact (to float rounding): in a causal model a token's keys and values depend only on the tokens
    before it, so the prefix's cache is the one the whole sequence would build. The members' positions
    continue from their prefix's real length, and the mask hides the prefix's pad columns.

    Why the cache is built this way: a batch of members mixes prefixes of several prefix batches, so
    its cache is assembled per sub-batch, each member getting a copy of its own prefix's rows (padded
    to the widest prefix in the sub-batch) in a fresh DynamicCache; the prefix caches themselves are
    never extended, so one prefix serves any number of members. The cost is the copy and an explicit
    mask (SUFFIX_TOKEN_OVERHEAD), which is why small shares are not grouped at all. On a GPU the
    saving is the prompt's compute, the larger part of a long dialog with short responses.
    """
    from transformers import DynamicCache

    device = _device_of(backbone)
    prefix_batches = length_batches([p for p, _ in groups], batch_size, max_tokens)
    for start in range(0, len(prefix_batches), PREFIX_WINDOW):
        caches, rows = [], []  # caches[j]: (per layer (keys, values), prefix mask); rows: (j, g, member, p)
        for j, prefix_batch in enumerate(prefix_batches[start:start + PREFIX_WINDOW]):
            prefixes = [groups[g] for g in prefix_batch]
            input_ids, prefix_mask = _padded([ids[members[0]][:p] for p, members in prefixes], pad)
            # Right pads after the real tokens: no mask needed in a causal model (see _whole_batches).
            cache = backbone(input_ids=input_ids.to(device), use_cache=True).past_key_values
            caches.append(([(layer.keys, layer.values) for layer in cache.layers], prefix_mask.to(device)))
            rows += [(j, g, i, p) for g, (p, members) in enumerate(prefixes) for i in members]
        width = max(mask.shape[1] for _, mask in caches)
        # Each row attends to its whole padded prefix: count it in the token budget.
        for sub in length_batches([width + len(ids[i]) - p for _, _, i, p in rows], batch_size, max_tokens):
            sub_rows = sorted((rows[k] for k in sub), key=lambda r: r[0])  # grouped by prefix batch
            used = sorted({j for j, _, _, _ in sub_rows})
            which = {j: torch.tensor([g for jj, g, _, _ in sub_rows if jj == j], device=device) for j in used}
            sub_width = max(caches[j][1].shape[1] for j in used)

            def gather(tensor_of_j, dim):  # rows of every used prefix batch, padded to sub_width, stacked
                parts = []
                for j in used:
                    part = tensor_of_j(j)[which[j]]
                    extra = sub_width - part.shape[dim]
                    parts.append(torch.nn.functional.pad(part, (0, 0) * (part.ndim - 1 - dim) + (0, extra)))
                return torch.cat(parts)

            n_layers = len(caches[0][0])
            rows_cache = DynamicCache(ddp_cache_data=[
                (gather(lambda j: caches[j][0][layer][0], 2), gather(lambda j: caches[j][0][layer][1], 2))
                for layer in range(n_layers)])
            own, own_mask = _padded([ids[i][p:] for _, _, i, p in sub_rows], pad)
            starts = torch.tensor([p for _, _, _, p in sub_rows])
            hidden = backbone(
                input_ids=own.to(device), past_key_values=rows_cache, use_cache=False,
                attention_mask=torch.cat([gather(lambda j: caches[j][1], 1), own_mask.to(device)], dim=1),
                position_ids=(starts[:, None] + torch.arange(own.shape[1])).to(device)).last_hidden_state
            last = (own_mask.sum(1) - 1).to(hidden.device)
            yield [i for _, _, i, _ in sub_rows], hidden[torch.arange(len(sub_rows), device=hidden.device), last]


def _progress(total: int, enabled: bool, desc: str):
    """A counter of embedded conversations (None when not enabled): a bar on a terminal, plain periodic
    lines in a log (harness.progress), so a long embedding run under nohup or in CI shows it is alive."""
    return harness.progress(desc=desc, total=total) if enabled else None


def embed_conversations(model, tokenizer, conversations: Sequence, batch_size: int = 32,
                        max_length: int | None = None, *, truncation_side: str = "left",
                        max_tokens: int | None = None, progress: bool = False,
                        share_prefixes: bool = True, return_truncated: bool = False):
    """Embeddings [n, d] float32 (CPU) of `conversations`, in input order.

    The final-layer hidden state after the final norm at each conversation's last real token. Works
    for a sequence-classification model, a PeftModel around one, or a bare backbone. share_prefixes:
    run a prompt shared by several conversations once (causal models; same result to float rounding).
    A conversation longer than the backbone's positions is truncated to them (render_for_model, counted
    and warned); return_truncated: return (embeddings, that count).
    """
    ids, cut = render_for_model(model, tokenizer, conversations, max_length, truncation_side)
    if cut:
        print(f"warning: {cut} conversation(s) longer than the backbone's {model_positions(model)} positions (its "
              f"max_position_embeddings) were truncated to them, BOS and the end kept", file=sys.stderr)
    pbar = _progress(len(ids), progress, "embedding")
    embeddings = _embed_ids(model, tokenizer, ids, batch_size, max_tokens, pbar, share_prefixes)
    if pbar is not None:
        pbar.close()
    return (embeddings, cut) if return_truncated else embeddings


def _hidden_size(model) -> int:
    backbone, _ = _parts(model)
    return int(backbone.config.hidden_size)


@torch.inference_mode()
def _embed_ids(model, tokenizer, ids, batch_size, max_tokens, pbar=None, share_prefixes: bool = True) -> torch.Tensor:
    out = torch.empty(len(ids), _hidden_size(model), dtype=torch.float32)
    for chunk, hidden in _last_hidden_states(model, tokenizer, ids, batch_size, max_tokens, pbar, share_prefixes):
        out[chunk] = hidden.float().cpu()
    return out


def score_conversations(model, tokenizer, conversations: Sequence, head=None, bias=None,
                        batch_size: int = 8, max_length: int | None = 2048, truncation_side: str = "left",
                        *, max_tokens: int | None = None, progress: bool = False,
                        share_prefixes: bool = True) -> torch.Tensor:
    """Scores [n, B] float32 (CPU) of `conversations`, in input order: embedding @ head (+ bias).

    head None: the model's own reward head V_ref = score.weight.T and its bias, if any (for a
    PeftModel, the adapter's active head): its sequence-classification logits. head [d, B] or [d]
    (tensor or array): B heads scored in one pass, plus `bias` (a scalar or [B]).
    """
    if head is None:
        head = reward_head(model)
        score_bias = getattr(_parts(model)[1], "bias", None)
        bias = None if score_bias is None else score_bias.detach().float().cpu()
    head = torch.as_tensor(head).detach().float().cpu()
    head = head[:, None] if head.ndim == 1 else head
    d = _hidden_size(model)
    if head.ndim != 2 or head.shape[0] != d:
        raise ValueError(f"error: head must have shape [{d}] or [{d}, B], got {tuple(head.shape)}")
    if bias is not None:
        bias = torch.as_tensor(bias).detach().float().cpu().reshape(-1)
        if bias.numel() not in (1, head.shape[1]):
            raise ValueError(f"error: bias must be a scalar or have {head.shape[1]} entries, got {bias.numel()}")
    embeddings = embed_conversations(model, tokenizer, conversations, batch_size, max_length,
                                     truncation_side=truncation_side, max_tokens=max_tokens, progress=progress,
                                     share_prefixes=share_prefixes)
    scores = embeddings @ head
    return scores if bias is None else scores + bias


# -----------------------------------------------------------------------------
# files: embeddings and the reward head as safetensors, written atomically

EMBEDDINGS_FILE = "conversation_embeddings.safetensors"  # every dataset: one row per distinct conversation


def _save_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors written atomically: never a half-written `path`."""
    from safetensors.torch import save_file

    with harness.atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _read(path: Path, key: str, what: str, made_by: str) -> tuple[torch.Tensor, dict]:
    """(tensor `key`, metadata) of a safetensors file; a missing, empty or unreadable file, or one
    without `key`, exits with the command that remakes it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        state = "missing" if not path.exists() else "empty"
        shards = _shards_dir(path)
        hint = f" (an interrupted run left {shards}: the same command resumes it)" if shards.exists() else ""
        raise SystemExit(f"error: {what} {path} is {state}{hint}; run `{made_by}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key), f.metadata() or {}
    except Exception as e:
        raise SystemExit(f"error: {what} {path} is unreadable ({type(e).__name__}: {str(e)[:200]}); it is "
                         f"remade by `{made_by}`") from None


def export_reward_head(model, path, *, dtype: str = "float32", attn_implementation: str | None = None,
                       device: str | None = None) -> Path:
    """Write the reward head of `model` (a loaded reward model, or a model name or folder), V_ref =
    score.weight.T [d, 1] float32 (key "reward_head"; "reward_bias" too when the head has one), to `path`
    as safetensors, so that training reads V_ref without loading the backbone. A file that already holds
    this model's head is kept; one of another model, or an unreadable one, is replaced. A name is loaded
    from the copy embed_to_file keeps in memory (same arguments: no second load). Under accelerate only
    the main process writes."""
    path = Path(path)
    name = str(model) if isinstance(model, (str, Path)) else getattr(getattr(model, "config", None), "_name_or_path", "")
    state = _process_state()
    if state.is_main_process:
        try:
            current = _metadata(path).get("model") if path.exists() else None
        except Exception:
            current = None           # unreadable: export again
        if current != name or not isinstance(model, (str, Path)):
            if isinstance(model, (str, Path)):
                model = _cached_reward_model(name, dtype, attn_implementation, str(device or utils.get_device()))[0]
            head = _parts(model)[1]
            tensors = {"reward_head": reward_head(model)}
            if getattr(head, "bias", None) is not None:
                tensors["reward_bias"] = head.bias.detach().float().reshape(-1).cpu()
            _save_atomic(tensors, path, {"format": FORMAT_VERSION, "model": name})
    state.wait_for_everyone()
    return path


def load_reward_head(path, made_by: str = "the embedding script of its folder") -> torch.Tensor:
    """The reward head [d, 1] float32 written by export_reward_head; clear errors naming `made_by`."""
    head, _ = _read(path, "reward_head", "the reward head", made_by)
    if head.dim() != 2 or head.shape[1] != 1 or not torch.isfinite(head).all():
        raise SystemExit(f"error: the reward head {path} has shape {tuple(head.shape)} or non-finite entries; "
                         f"delete it and run `{made_by}` (it exports the head again)")
    return head.float()


def load_embeddings(path, made_by: str = "the embedding script of its folder") -> torch.Tensor:
    """Embeddings [n, d] float32 written by embed_to_file, in the order of its input."""
    return _read(path, "embeddings", "the embeddings", made_by)[0].float()


def load_embedded(data_path, conversations: Sequence, made_by: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings [U, d] float32, reward head V_ref [d, 1]) of a data folder (EMBEDDINGS_FILE,
    REWARD_HEAD_FILE), after checking that the embeddings were made from exactly `conversations` (what
    the dataset's embedding script embeds from the current prepared data): a hash of their content and
    order is in the file's manifest. Every error names `made_by`, the command that remakes them."""
    path = Path(data_path) / EMBEDDINGS_FILE
    table, metadata = _read(path, "embeddings", "the embeddings", made_by)
    manifest = json.loads(metadata.get("manifest") or "{}")
    if manifest.get("conversations_sha256") != conversations_sha256(conversations):
        raise SystemExit(f"error: {path} was made from other inputs ({manifest.get('count')} conversations; the "
                         f"prepared data now give {len(conversations)}): the data were prepared again since. "
                         f"Run `{made_by} --overwrite=True` to embed the current data.")
    head = load_reward_head(Path(data_path) / REWARD_HEAD_FILE, made_by)
    if head.shape[0] != table.shape[1]:
        raise SystemExit(f"error: the reward head has {head.shape[0]} rows but the embeddings have d = "
                         f"{table.shape[1]}; run `{made_by}` (it exports the head of the model that embedded)")
    return table.float(), head


def _shards_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".shards")


def conversations_sha256(conversations: Iterable) -> str:
    """A hash of the conversations' content and order (the fingerprint of an embedding run)."""
    h = hashlib.sha256()
    for c in conversations:
        h.update(json.dumps(c, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _process_state():
    from accelerate import PartialState

    # Without a GPU (or with ACCELERATE_USE_CPU) ask for the CPU backend (gloo): otherwise PartialState
    # under torchrun / `accelerate launch --multi_gpu` on a CPU machine silently runs P single processes.
    use_cpu = (not torch.cuda.is_available()
               or os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes"))
    return PartialState(cpu=use_cpu)


def _differences(old: dict, new: dict) -> str:
    """The settings in which two embedding manifests differ, for an error message."""
    names = {"conversations_sha256": "the conversations (prepared again?)", "count": "conversations"}
    return ", ".join(f"{names.get(k, k)}: {old.get(k)!r} -> {v!r}" if k != "conversations_sha256" else names[k]
                     for k, v in new.items() if old.get(k) != v)


def _valid_shard(path: Path, rows: int) -> bool:
    """A finished shard: a readable safetensors file with `rows` embeddings (a damaged one is redone)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_slice("embeddings").get_shape()[0] == rows
    except Exception:
        return False


# Called with the shard index after each shard is written (tests inject a failure here to simulate a kill).
_after_shard_hook = None


def embed_to_file(model_name: str, conversations: Sequence, out_path, *, dtype: str = "float32",
                  attn_implementation: str | None = None, batch_size: int = 32, max_tokens: int | None = None,
                  max_length: int | None = None, truncation_side: str = "left", shard_size: int = 2048,
                  device: str | None = None, progress: bool = True, keep_shards: bool = False,
                  share_prefixes: bool = True, overwrite: bool = False) -> Path:
    """Embed `conversations` with the reward model `model_name` into `out_path` (safetensors, tensor
    "embeddings" [n, d] float32 in input order, the run's manifest in its metadata). Returns the path.

    Resumable: conversations are cut into shards of `shard_size` (in input order), each written
    atomically to `<out_path>.shards/shard-XXXXX.safetensors`; a killed run, started again with the
    same arguments, skips the finished shards (a damaged one is redone) and gives the same result as an
    uninterrupted run. The manifest (model, dtype, attention, max_length, truncation side, shard size,
    count and hash of the conversations) guards the work: when `out_path` already holds this exact run
    it returns at once; when it, or the shards folder, holds a run with other settings, it refuses and
    names the differences, unless `overwrite` (then that work is discarded). After the merge the shards
    folder is removed (unless keep_shards).

    Data parallel: under `accelerate launch`, process k embeds shards k, k+P, ... on its own device;
    the main process merges them in order. Every process must call this with the same arguments.

    batch_size caps the rows per forward pass; max_tokens (optional) caps rows x longest length, the
    better knob on a GPU (e.g. 32768 for the 8B model in bf16 on 80 GB). share_prefixes: a prompt
    shared by conversations of the same shard runs once (see embed_conversations). Conversations longer
    than the backbone's positions are truncated to them; their number is in the metadata
    ("truncated_to_positions") and printed.
    """
    out_path = Path(out_path)
    conversations = list(conversations)
    n = len(conversations)
    if n == 0:
        raise ValueError("error: no conversations to embed")
    if shard_size < 1:
        raise ValueError(f"error: shard_size must be >= 1, got {shard_size}")
    state = _process_state()
    is_main = state.is_main_process
    manifest = {
        "format": FORMAT_VERSION, "model": str(model_name), "dtype": str(dtype),
        "attn_implementation": str(attn_implementation), "max_length": max_length,
        "truncation_side": truncation_side, "shard_size": shard_size, "count": n,
        "conversations_sha256": conversations_sha256(conversations),
    }
    device = str(device or (state.device if state.num_processes > 1 else utils.get_device()))
    refuse = "Run again with --overwrite=True to replace it, or with the settings that made it."
    if out_path.exists():
        try:
            stored = json.loads(_metadata(out_path).get("manifest") or "{}")
        except Exception:
            stored = None          # unreadable: nothing to keep, it is replaced
        if stored == manifest:
            state.wait_for_everyone()
            return out_path        # this exact run is already complete
        if stored is not None and not overwrite:
            raise SystemExit(f"error: {out_path} holds embeddings made with other settings "
                             f"({_differences(stored, manifest)}). {refuse}")

    shards = _shards_dir(out_path)
    manifest_file = shards / "manifest.json"
    n_shards = (n + shard_size - 1) // shard_size
    shard_file = [shards / f"shard-{k:05d}.safetensors" for k in range(n_shards)]
    rows = [min(n, (k + 1) * shard_size) - k * shard_size for k in range(n_shards)]
    # Every process checks the folder (before any barrier), so all stop together on a mismatch.
    old = None
    if manifest_file.exists():
        try:
            old = json.loads(manifest_file.read_text())
        except ValueError:
            old = {}
    has_shards = shards.exists() and any(shards.glob("shard-*.safetensors"))
    if has_shards and old != manifest and not overwrite:
        what = f"a run with other settings ({_differences(old, manifest)})" if old else "an unknown run"
        raise SystemExit(f"error: {shards} holds the finished shards of {what}. {refuse}")
    resume = old == manifest
    done = [k for k in range(n_shards) if resume and _valid_shard(shard_file[k], rows[k])]
    mine = [k for k in range(state.process_index, n_shards, state.num_processes) if k not in done]
    if mine:   # loaded before anything is written: a model that cannot be loaded leaves nothing behind
        model, tokenizer = _cached_reward_model(str(model_name), dtype, attn_implementation, device)
    state.wait_for_everyone()
    if is_main and not resume:
        shutil.rmtree(shards, ignore_errors=True)
        shards.mkdir(parents=True, exist_ok=True)
        harness.write_text_atomic(manifest_file, json.dumps(manifest, indent=1, sort_keys=True))
    if done and is_main:
        print(f"resuming: {len(done)} of {n_shards} shards done")
    state.wait_for_everyone()
    if mine:
        pbar = _progress(sum(rows[k] for k in mine), progress and is_main, f"embedding {out_path.name}")
        if pbar is not None and state.num_processes > 1:
            pbar.set_postfix_str(f"process 0 of {state.num_processes}")
        for k in mine:
            part = conversations[k * shard_size:(k + 1) * shard_size]
            ids, cut = render_for_model(model, tokenizer, part, max_length, truncation_side)
            emb = _embed_ids(model, tokenizer, ids, batch_size, max_tokens, pbar, share_prefixes)
            _save_atomic({"embeddings": emb}, shard_file[k], {"format": FORMAT_VERSION, "shard": str(k),
                                                              "truncated_to_positions": str(cut)})
            if _after_shard_hook is not None:
                _after_shard_hook(k)
        if pbar is not None:
            pbar.close()
    state.wait_for_everyone()

    if is_main:
        from safetensors.torch import load_file

        missing = [str(f) for k, f in enumerate(shard_file) if not _valid_shard(f, rows[k])]
        if missing:
            raise SystemExit(f"error: shards missing after the run: {missing[:3]}; run the same command again")
        embeddings = torch.cat([load_file(str(f))["embeddings"] for f in shard_file])
        # shards written before this count was kept count 0
        cut = sum(int(_metadata(f).get("truncated_to_positions", 0)) for f in shard_file)
        _save_atomic({"embeddings": embeddings}, out_path,
                     {"format": FORMAT_VERSION, "manifest": json.dumps(manifest, sort_keys=True),
                      "model": str(model_name), "truncated_to_positions": str(cut)})
        if cut:
            print(f"warning: {cut} of {n} conversations were longer than the backbone's positions and were "
                  f"truncated to them, BOS and the end kept (recorded in {out_path.name})", file=sys.stderr)
        if not keep_shards:
            shutil.rmtree(shards, ignore_errors=True)
    state.wait_for_everyone()
    return out_path


def embed_dataset(script: str, settings, data_path: Path, conversations: Sequence, model_name: str,
                  dtype: str) -> tuple[Path, Path]:
    """The embedding step of a dataset folder: `conversations` (every distinct conversation its
    comparisons need) embedded with model_name in dtype into data_path/EMBEDDINGS_FILE (embed_to_file:
    sharded, resumable, accelerate-aware) and the model's reward head exported to
    data_path/REWARD_HEAD_FILE, with the script's settings (attn_implementation, batch_size, max_tokens,
    max_length, shard_size, device, overwrite). A model that cannot be loaded exits naming the offline
    command. Returns (embeddings path, head path)."""
    print(f"{len(conversations)} distinct conversations to embed with {model_name} ({dtype}, attention "
          f"{settings['attn_implementation'] or 'default'})")
    out, head = Path(data_path) / EMBEDDINGS_FILE, Path(data_path) / REWARD_HEAD_FILE
    load = dict(dtype=dtype, attn_implementation=settings["attn_implementation"], device=settings["device"])
    try:
        embed_to_file(model_name, conversations, out, batch_size=settings["batch_size"],
                      max_tokens=settings["max_tokens"], max_length=settings["max_length"],
                      shard_size=settings["shard_size"], overwrite=settings["overwrite"], **load)
        export_reward_head(model_name, head, **load)
    except ModelNotAvailable as e:
        if Path(model_name).expanduser().is_dir():     # a local folder that does not load: not a hub problem
            raise SystemExit(str(e)) from None
        offline_command = harness.command_line(script, settings) + ("" if settings.get("offline") else " --offline")
        raise harness.hub_unreachable(f"the model {model_name!r}", offline_command, e.__cause__) from None
    if _process_state().is_main_process:
        table = load_embeddings(out, harness.command_line(script, settings))
        print(f"wrote {out} {tuple(table.shape)} and {head.name} ({tuple(load_reward_head(head, script).shape)})")
    return out, head

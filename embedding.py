"""The shared embedding engine: conversations -> final-layer hidden state at the last real token.

Every dataset folder embeds through this module, with the real Skywork checkpoint or the built-in tiny
model alike. (First version: correct, batched by length; see the module's later history for shards,
resume and accelerate.)
"""
from __future__ import annotations

import torch


def load_reward_model(model_name: str, dtype: str = "float32", attn_implementation: str | None = None,
                      device: str | None = None):
    """Load a sequence-classification reward model and its tokenizer (num_labels=1), in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = dict(num_labels=1, dtype=getattr(torch, dtype))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForSequenceClassification.from_pretrained(model_name, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    return model, tokenizer


def reward_head(model) -> torch.Tensor:
    """The backbone's own reward direction V_ref = score.weight.T, float32 [d, 1]."""
    return model.score.weight.detach().float().T.contiguous().cpu()


def render_ids(tokenizer, conversation: list[dict], max_length: int | None = None) -> list[int]:
    """Token ids of a conversation rendered with the chat template: exactly one BOS."""
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    return ids[-max_length:] if max_length else ids


@torch.inference_mode()
def embed_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32,
                        max_length: int | None = None) -> torch.Tensor:
    """Embeddings [n, d] float32 of `conversations` (lists of {role, content}), in input order."""
    ids = [render_ids(tokenizer, c, max_length) for c in conversations]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.config.hidden_size)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        batch = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # right padding: the last real token is at length - 1
            batch[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        hidden = model.model(input_ids=batch.to(device), attention_mask=mask.to(device)).last_hidden_state
        last = mask.sum(1).to(device) - 1
        out[chunk] = hidden[torch.arange(len(chunk), device=device), last].float().cpu()
    return out

"""Throughput of the embedding engine (batched by length) against a one-conversation-at-a-time loop.

    python bench/embed_speed.py                          # built-in tiny model on CPU (engine >= 3x)
    python bench/embed_speed.py --llama8b --n=512        # Llama-3.1-8B-shaped random bf16 backbone (GPU)
    python bench/embed_speed.py --llama8b --tiny_shape   # the same code path with a tiny config (CPU check)

Both methods embed the same conversations with the same model in one run; it prints conversations/s
and real (unpadded) tokens/s of each, the ratio, and with --llama8b the engine's fraction of the
device's bf16 peak, estimating FLOPs as 2 * (non-embedding parameters) * real tokens (attention
FLOPs ignored, so this slightly understates the true utilisation). Checks that both give the same
embeddings. Writes nothing.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import embedding  # noqa: E402
import utils  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
n = 256                      # conversations embedded by the engine
loop_n = 0                   # conversations for the one-at-a-time loop (0: same as n)
batch_size = 32              # engine rows per batch
max_tokens = 0               # engine token budget per batch (0: none)
min_sentences = 2            # conversation length: sentences per message, drawn in [min, max]
max_sentences = 12
llama8b = False              # a Llama-3.1-8B-shaped backbone with random weights (for a GPU)
tiny_shape = False           # with --llama8b: shrink the config (to check the path on a CPU)
dtype = ""                   # "" = float32 for the tiny model, bfloat16 for --llama8b
attn_implementation = "sdpa"
peak_tflops = 0.0            # the device's dense bf16 peak; 0 = look up the GPU name (H100/H200/A100)
threads = 0                  # torch CPU threads (0: torch's default)
seed = 0
# -----------------------------------------------------------------------------
utils.configure(globals())

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0,
                    "A10G": 70.0, "L4": 121.0, "4090": 165.0}


def conversations(count, rng):
    from offline.text import sentence

    def message(role):
        k = int(rng.integers(min_sentences, max_sentences + 1))
        return {"role": role, "content": " ".join(sentence(rng) for _ in range(k))}

    return [[message("user"), message("assistant")] for _ in range(count)]


def llama8b_model(device, torch_dtype):
    """LlamaForSequenceClassification with the Llama-3.1-8B config and random weights."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256)
    if tiny_shape:
        shape = dict(hidden_size=256, intermediate_size=896, num_hidden_layers=2, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=128256)
    config = LlamaConfig(**shape, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         num_labels=1, pad_token_id=0, attn_implementation=attn_implementation,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = LlamaForSequenceClassification(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def one_at_a_time(model, tokenizer, convs, device):
    """The naive loop: render, forward one unpadded conversation, take its last hidden state."""
    out = []
    for c in convs:
        ids = tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        hidden = model.model(input_ids=ids.to(device)).last_hidden_state
        out.append(hidden[0, -1].float().cpu())
    return torch.stack(out)


def main():
    if threads:
        torch.set_num_threads(threads)
    from offline import tiny_model_path

    device = embedding.default_device()
    rng = np.random.default_rng(seed)
    if llama8b:
        torch_dtype = embedding._torch_dtype(dtype or "bfloat16")
        model = llama8b_model(device, torch_dtype)
        tokenizer = embedding.load_tokenizer(tiny_model_path())  # token ids only: any tokenizer will do
        name = "Llama-3.1-8B-shaped (random)" + (" tiny config" if tiny_shape else "")
    else:
        model, tokenizer = embedding.load_reward_model(tiny_model_path(), dtype=dtype or "float32",
                                                       attn_implementation=attn_implementation, device=device)
        name = "tiny offline model"
    n_params = sum(p.numel() for p in model.model.parameters()) - model.model.embed_tokens.weight.numel()
    convs = conversations(n, rng)
    loop_convs = convs[:loop_n or n]
    real_tokens = [len(embedding.render_ids(tokenizer, c)) for c in convs]
    loop_tokens = sum(real_tokens[:len(loop_convs)])
    print(f"{name} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"{next(model.parameters()).dtype}, attention {attn_implementation}, torch threads "
          f"{torch.get_num_threads()}; {n_params / 1e6:.1f}M non-embedding parameters")
    print(f"{len(convs)} conversations, {sum(real_tokens)} tokens (mean {np.mean(real_tokens):.0f}, "
          f"max {max(real_tokens)})")

    # warm-up (kernels, allocator) for both, on a few conversations
    embedding.embed_conversations(model, tokenizer, convs[:4], batch_size=4)
    one_at_a_time(model, tokenizer, convs[:2], device)

    sync(device)
    start = time.perf_counter()
    engine = embedding.embed_conversations(model, tokenizer, convs, batch_size=batch_size,
                                           max_tokens=max_tokens or None)
    sync(device)
    engine_s = time.perf_counter() - start
    start = time.perf_counter()
    loop = one_at_a_time(model, tokenizer, loop_convs, device)
    sync(device)
    loop_s = time.perf_counter() - start

    tol = 1e-4 if engine.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 else 5e-2
    err = (engine[:len(loop)] - loop).abs().max().item() / max(loop.abs().max().item(), 1e-12)
    engine_rate, loop_rate = len(convs) / engine_s, len(loop_convs) / loop_s
    engine_tok, loop_tok = sum(real_tokens) / engine_s, loop_tokens / loop_s
    print(f"engine (batch_size={batch_size}, max_tokens={max_tokens or None}): {engine_rate:9.1f} conv/s "
          f"{engine_tok:11.0f} tokens/s  ({engine_s:.2f} s)")
    print(f"one at a time:                             {loop_rate:9.1f} conv/s {loop_tok:11.0f} tokens/s  "
          f"({loop_s:.2f} s)")
    print(f"speed-up: {engine_rate / loop_rate:.1f}x   (max relative difference of the embeddings "
          f"{err:.1e}, {'ok' if err < tol else 'MISMATCH'})")
    if llama8b:
        peak = peak_tflops
        if not peak and device == "cuda":
            gpu = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), 0.0)
        for label, tok_rate in (("engine", engine_tok), ("one at a time", loop_tok)):
            achieved = 2 * n_params * tok_rate / 1e12
            frac = f"{100 * achieved / peak:.1f}% of the {peak:.0f} TFLOP/s bf16 peak" if peak else \
                "peak unknown (pass --peak_tflops=...)"
            print(f"{label}: {achieved:.2f} TFLOP/s (2 x params x tokens), {frac}")
    if err >= tol:
        raise SystemExit("error: the engine and the loop disagree")


if __name__ == "__main__":
    main()

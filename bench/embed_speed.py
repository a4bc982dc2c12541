"""Throughput of the embedding engine against a one-conversation-at-a-time loop.

    python bench/embed_speed.py                          # the offline datasets' inputs, tiny model, CPU
    python bench/embed_speed.py --data=synthetic         # long single-turn conversations, no shared prompt
    python offline/smollm2.py /tmp/smollm2 && python bench/embed_speed.py --model_name=/tmp/smollm2 \
        --data=synthetic --n=96 --responses=4 --history_turns=1   # a real model, PRISM-like conversations
    python bench/embed_speed.py --llama8b --n=512        # Llama-3.1-8B-shaped random bf16 backbone (GPU)
    python bench/embed_speed.py --llama8b --tiny_shape   # the same code path with a tiny config (CPU check)

Data "offline" (default): per dataset, exactly the conversations its embedding script embeds (the
folders' own `embedding_inputs`, read from the prepared offline data: run `bash main.sh`, or each
folder's `prepare.py --offline`, first): PRISM (every distinct prompt + response side), Reddit TLDR
(every distinct post + summary) and PersonalLLM (train + test, 8 responses per prompt). Data
"synthetic": `n` conversations of `min_sentences`..`max_sentences` sentences per message: `responses`
answers to each prompt (PRISM-like: several answers share their prompt; 1: nothing shared), the
prompt holding `history_turns` earlier user/assistant exchanges before its last user message. `n`
caps the conversations taken per dataset (0: all).

Model: the built-in tiny model, or `--model_name` (a local folder or hub id of a sequence-classification
model with a chat template, e.g. SmolLM2-135M-Instruct made by offline/smollm2.py), or --llama8b.

Three ways, same model and conversations, in one run: the engine (batched by length, each shared
prompt run once: embedding.shared_prefix_groups), the engine with share_prefixes=False (batching
alone), and the naive loop (render, one unpadded forward per conversation, last hidden state). Prints
conversations/s and real (unpadded) tokens/s of each, the speed-ups over the loop, and checks that all
three give the same embeddings (the largest norm-wise relative difference of one conversation's); with
--llama8b also the fraction of the device's bf16 peak, estimating FLOPs as 2 * (non-embedding
parameters) * real tokens (attention ignored, so it slightly understates the utilisation; with shared
prompts the engine does fewer FLOPs than this counts). Writes nothing.
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import embedding  # noqa: E402
import harness  # noqa: E402
import utils  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
data = "offline"             # "offline": the offline datasets' embedding inputs; "synthetic": generated
n = 0                        # conversations per dataset (0: all; synthetic: 256)
loop_n = 0                   # conversations for the one-at-a-time loop (0: same as n)
batch_size = 32              # engine rows per batch
max_tokens = 0               # engine token budget per batch (0: none)
min_sentences = 2            # synthetic conversation length: sentences per message, drawn in [min, max]
max_sentences = 12
responses = 1                # synthetic: answers per prompt (they share it); 1: nothing shared
history_turns = 0            # synthetic: earlier user/assistant exchanges in each prompt
model_name = ""              # a reward model folder or hub id; "" = the built-in tiny model
llama8b = False              # a Llama-3.1-8B-shaped backbone with random weights (for a GPU)
tiny_shape = False           # with --llama8b: shrink the config (to check the path on a CPU)
dtype = ""                   # "" = float32 for the tiny model and --model_name, bfloat16 for --llama8b
attn_implementation = "sdpa"
peak_tflops = 0.0            # the device's dense bf16 peak; 0 = look up the GPU name (H100/H200/A100)
threads = 0                  # torch CPU threads (0: torch's default)
repeats = 1                  # runs of each way; the fastest is reported
seed = 0
# -----------------------------------------------------------------------------
settings = harness.configure(globals())

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0,
                    "A10G": 70.0, "L4": 121.0, "4090": 165.0}


def synthetic_conversations(count, rng):
    """`count` conversations: prompts (`history_turns` exchanges, then a user message) with `responses`
    answers each."""
    from offline.text import sentence

    def message(role):
        k = int(rng.integers(min_sentences, max_sentences + 1))
        return {"role": role, "content": " ".join(sentence(rng) for _ in range(k))}

    convs = []
    while len(convs) < count:
        prompt = [message(role) for _ in range(history_turns) for role in ("user", "assistant")] + [message("user")]
        convs += [prompt + [message("assistant")] for _ in range(min(responses, count - len(convs)))]
    return convs


def offline_workloads() -> dict:
    """{dataset: the conversations its embedding script embeds}, from the prepared offline data."""
    for folder in ("PRISM", "RedditTLDR", "PersonalLLM"):
        sys.path.insert(0, str(ROOT / folder))
    import personalllm_simulation
    import prism_data
    import tldr_data

    def data(folder, name):
        return ROOT / folder / "data" / f"{name}-offline"

    made_by = "bash main.sh (or the folder's `python prepare.py --offline`)"
    return {
        "PRISM": prism_data.embedding_inputs(prism_data.load_prepared(data("PRISM", "prism"), made_by))[0],
        "Reddit TLDR": tldr_data.embedding_inputs(tldr_data.load_comparisons(data("RedditTLDR", "tldr"),
                                                                             made_by))[0],
        "PersonalLLM": personalllm_simulation.embedding_inputs(data("PersonalLLM", "personalllm"), made_by)[0],
    }


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


def timed(fn, device):
    """(the fastest of `repeats` runs of fn, in seconds, its output): on a machine shared with other work
    the fastest run is the one least slowed by it."""
    best = float("inf")
    for _ in range(max(repeats, 1)):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def measure(name, model, tokenizer, convs, device, n_params):
    """Time the three ways on `convs`; print a table row; return (seconds, tokens) per way."""
    loop_convs = convs[:loop_n or len(convs)]
    real_tokens = [len(embedding.render_ids(tokenizer, c)) for c in convs]
    tokens = {"engine": sum(real_tokens), "no sharing": sum(real_tokens),
              "loop": sum(real_tokens[:len(loop_convs)])}
    count = {"engine": len(convs), "no sharing": len(convs), "loop": len(loop_convs)}
    seconds, out = {}, {}
    seconds["engine"], out["engine"] = timed(lambda: embedding.embed_conversations(
        model, tokenizer, convs, batch_size=batch_size, max_tokens=max_tokens or None), device)
    seconds["no sharing"], out["no sharing"] = timed(lambda: embedding.embed_conversations(
        model, tokenizer, convs, batch_size=batch_size, max_tokens=max_tokens or None,
        share_prefixes=False), device)
    seconds["loop"], out["loop"] = timed(lambda: one_at_a_time(model, tokenizer, loop_convs, device), device)
    rate = {k: count[k] / seconds[k] for k in seconds}
    # per conversation ||engine - loop|| / ||loop||, as bench/gpu_check.py: relative to the largest entry,
    # a real model's loud channel (SmolLM2: ~10-40x the median) would hide differences on all the others
    ref = out["loop"].double()
    err = max(((out[k][:len(ref)].double() - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-30)).max().item()
              for k in ("engine", "no sharing"))
    print(f"| {name} | {len(convs)} | {np.mean(real_tokens):.0f} | {rate['loop']:.1f} | {rate['no sharing']:.1f} | "
          f"{rate['engine']:.1f} | {rate['no sharing'] / rate['loop']:.2f}x | **{rate['engine'] / rate['loop']:.2f}x** "
          f"| {err:.1e} |", flush=True)
    return seconds, tokens, count, err


def main():
    if threads:
        torch.set_num_threads(threads)
    from offline import tiny_model_path

    device = str(utils.get_device())
    rng = np.random.default_rng(seed)
    if llama8b:
        torch_dtype = embedding._torch_dtype(dtype or "bfloat16")
        model = llama8b_model(device, torch_dtype)
        tokenizer = embedding.load_tokenizer(tiny_model_path())  # token ids only: any tokenizer will do
        name = "Llama-3.1-8B-shaped (random)" + (" tiny config" if tiny_shape else "")
    elif model_name:
        model, tokenizer = embedding.load_reward_model(model_name, dtype=dtype or "float32",
                                                       attn_implementation=attn_implementation, device=device)
        name = Path(model_name).name or model_name
    else:
        model, tokenizer = embedding.load_reward_model(tiny_model_path(), dtype=dtype or "float32",
                                                       attn_implementation=attn_implementation, device=device)
        name = "tiny offline model"
    if data == "offline":
        workloads = {k: v[:n or len(v)] for k, v in offline_workloads().items()}
    elif data == "synthetic":
        workloads = {f"synthetic, {responses} answer(s) per prompt": synthetic_conversations(n or 256, rng)}
    else:
        raise SystemExit(f"error: --data must be 'offline' or 'synthetic', got {data!r}")
    n_params = sum(p.numel() for p in model.model.parameters()) - model.model.embed_tokens.weight.numel()
    print(f"{name} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"{next(model.parameters()).dtype}, attention {attn_implementation}, torch threads "
          f"{torch.get_num_threads()}; {n_params / 1e6:.1f}M non-embedding parameters; batch_size {batch_size}, "
          f"max_tokens {max_tokens or None}")

    # warm-up (kernels, allocator) for every way, on a few conversations
    first = next(iter(workloads.values()))
    embedding.embed_conversations(model, tokenizer, first[:8], batch_size=4)
    embedding.embed_conversations(model, tokenizer, first[:8], batch_size=4, share_prefixes=False)
    one_at_a_time(model, tokenizer, first[:2], device)

    print("| data | conversations | mean tokens | one at a time (conv/s) | engine, no prompt sharing (conv/s) "
          "| engine (conv/s) | batching alone | engine | max rel. difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {k: [0.0, 0, 0] for k in ("engine", "no sharing", "loop")}  # seconds, tokens, conversations
    worst = 0.0
    for label, convs in workloads.items():
        seconds, tokens, count, err = measure(label, model, tokenizer, convs, device, n_params)
        worst = max(worst, err)
        for k in totals:
            totals[k][0] += seconds[k]
            totals[k][1] += tokens[k]
            totals[k][2] += count[k]
    rate = {k: v[2] / v[0] for k, v in totals.items()}
    tok_rate = {k: v[1] / v[0] for k, v in totals.items()}
    if len(workloads) > 1:
        print(f"| all | {totals['engine'][2]} | | {rate['loop']:.1f} | {rate['no sharing']:.1f} | {rate['engine']:.1f} "
              f"| {rate['no sharing'] / rate['loop']:.2f}x | **{rate['engine'] / rate['loop']:.2f}x** | {worst:.1e} |")
    for k, label in (("engine", "engine"), ("no sharing", "engine, no prompt sharing"), ("loop", "one at a time")):
        print(f"{label}: {rate[k]:.1f} conv/s, {tok_rate[k]:.0f} real tokens/s")
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2   # gpu_check.py's, derived there
    print(f"max relative difference of the embeddings {worst:.1e} ({'ok' if worst < tol else 'MISMATCH'})")
    if llama8b:
        peak = peak_tflops
        if not peak and device == "cuda":
            gpu = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), 0.0)
        for k, label in (("engine", "engine"), ("no sharing", "engine, no prompt sharing"), ("loop", "one at a time")):
            achieved = 2 * n_params * tok_rate[k] / 1e12
            frac = f"{100 * achieved / peak:.1f}% of the {peak:.0f} TFLOP/s bf16 peak" if peak else \
                "peak unknown (pass --peak_tflops=...)"
            print(f"{label}: {achieved:.2f} TFLOP/s (2 x params x real tokens), {frac}")
    if worst >= tol:
        raise SystemExit("error: the engine and the loop disagree")


if __name__ == "__main__":
    main()

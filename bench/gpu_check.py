"""The GPU path in one run: an 8B reward model's embedding engine, its equality on CUDA, LoRe on CUDA, RB2.

    python bench/gpu_check.py                    # one H100/H200-class GPU, under 8 minutes, no download
    python bench/gpu_check.py --tiny             # the same code with tiny shapes on the CPU (seconds)
    python bench/gpu_check.py --sections="['embed','lore']" --embed_prompts=32   # a part, smaller

Nothing is downloaded: the backbone is LlamaForSequenceClassification with the config of
Skywork-Reward-Llama-3.1-8B-v0.2 (Llama-3.1-8B: d = 4096, 32 layers, 8 key/value heads, a 128,256-row
embedding table, num_labels = 1) and random bf16 weights (transformers' own init: normal, std 0.02;
norms 1), built on the GPU without a CPU copy. Token ids come from the offline tokenizer
(offline/tiny_model.py: Llama-3 chat template, 1,024 tokens, so only the first rows of the table are
read; the cost of a token does not depend on its id). Text comes from offline/text.py, seeded.

Sections, run in the order of `sections` (the cheap ones first); each prints its wall time, and the JSON
is rewritten after each one, so a run cut short still leaves the sections it finished:
- device: the GPU's name; the bf16 dense peak and memory bandwidth used below (looked up from the name
  in PEAKS, datasheet figures without sparsity; --peak_tflops / --bandwidth_tbs override), and what this
  GPU achieves on a large bf16 matrix product and a device-to-device copy, for scale.
- lore: utils.LoRe_regularized on CUDA at PRISM scale (1,000 users x 20 comparisons, d = 4096, K = 25,
  float32): ms per iteration (after warm-up, synchronised), its ratio to the floor of two reads of the
  features at the memory bandwidth (and to two timed X.sum(), the floor measured), the projected time of
  a 20,000-iteration fit; and the same fit on CUDA and on the CPU in float64 on a smaller problem (the
  largest difference of V and W relative to their largest entry: LORE_CHECK_TOLERANCE).
- equality: engine embeddings (prefix-shared, batched) against one-at-a-time ones, per attention
  implementation (sdpa, eager, and flash_attention_2 when installed): the norm-wise relative difference
  ||engine - one at a time|| / ||one at a time|| per conversation, its maximum against TOLERANCE_BF16 on
  `equality_conversations` conversations in bf16, and against TOLERANCE_FP32 on
  `equality_fp32_conversations` of them in float32 (the weights cast up exactly; sdpa and eager), which
  is the check that can see a small real error with random weights (see the tolerances' comment); both
  bf16 ways' distance from the float32 result (the engine must be about as accurate as the loop); and
  for scale, the difference between the two responses of one prompt. PASS/FAIL per implementation.
- embed: the engine (embedding.embed_conversations: batched by length, each shared prompt run once)
  against one conversation per forward (rendered with the chat template, one unpadded forward each), on
  PRISM-like conversations: multi-turn, 500-3,000 tokens, each prompt with two responses (chosen and
  rejected share it). Per attention implementation in `embed_attn_implementations` (eager is PRISM's
  default, sdpa the library's): real tokens/s of each way, the speed-up, the TFLOP/s each achieves and
  its fraction of the peak, and the peak GPU memory of the engine at PRISM's default batch_size and
  max_tokens (those of PRISM/generate-prism-embeddings.py). FLOPs are counted, not measured, as
  2 x (non-embedding parameters) x tokens + 4 x layers x hidden x (query, key) pairs of causal attention
  (L (L + 1) / 2 for a whole sequence of L tokens; s P + s (s + 1) / 2 for s tokens on a cached prefix
  of P); for the engine only the work it does (each shared prompt once, from
  embedding.shared_prefix_groups, padding not counted), so its fraction is a true utilisation.
- rb2: RewardBench 2 scoring (rewardbench2.score_rows) of rows generated in the real column format
  (subsets of 475/160/183/450/495/102 rows = 1,865; non-Ties rows 1 chosen + 3 rejected, Ties rows in
  ref/tied pairs; prompts of 50-500 tokens and responses of 100-800, log-uniform): rows/s of the engine
  against one prompt per forward (the original eval's way: a prompt's answers in one padded forward),
  the latter on every `rb2_loop_stride`-th row (rows of every subset, it is the slow one), and the
  norm-wise relative difference of their scores (bf16 tolerance).

Sizes: on an H100/H200 the full run should take 4-6 minutes (estimated from the FLOPs at 40-50% of the
peak: RB2 about half of it, the two embedding comparisons a quarter); none has run on a GPU yet.
`time_budget_s` skips the sections not started by then; run it under `timeout 570` where the window is
short (the JSON keeps every finished section). Shrink with --embed_prompts, --rb2_rows,
--rb2_loop_stride, --embed_attn_implementations="['sdpa']", --sections=...

Writes <out_dir>/gpu_check.json (settings, every figure, per-section seconds) and gpu_check.md (the
table it prints); out_dir is relative to this folder (bench/results/ by default; --tiny writes
gpu_check_tiny.*). Exit status 1 when a section failed or an equality check did not pass.
--tiny: a tiny Llama config (d = 64, 2 layers, 1,024 tokens), the CPU, a few conversations and rows,
short lengths; every section runs (flash_attention_2 is skipped on a CPU). tests/test_gpu_check.py runs it.
"""
import contextlib
import importlib.util
import math
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import embedding  # noqa: E402
import harness  # noqa: E402
import rewardbench2 as rb2  # noqa: E402
import utils  # noqa: E402
from offline.planted import random_population, simulate_comparisons  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
tiny = False                 # tiny shapes on the CPU (seconds); sizes below not given on the command line shrink
sections = ["device", "lore", "equality", "embed", "rb2"]  # in this order; the cheap ones first
out_dir = "results"          # relative to bench/
device = ""                  # "" = cuda (the CPU with --tiny)
time_budget_s = 450          # a section not started by then is skipped (0: no limit); the JSON has the rest
dtype = "bfloat16"           # the backbone's dtype, as the real runs
peak_tflops = 0.0            # bf16 dense peak of the GPU; 0 = look it up from the name (PEAKS)
bandwidth_tbs = 0.0          # memory bandwidth in TB/s; 0 = look it up from the name (PEAKS)
seed = 0
length_scale = 1.0           # multiplies every generated length (token ranges below)
# embed: the engine vs one conversation per forward
embed_prompts = 96           # PRISM-like prompts, two responses each (x2 conversations)
embed_loop_conversations = 0  # conversations run one per forward (0: all of them)
embed_attn_implementations = ["eager", "sdpa"]  # eager: PRISM's default (generate-prism-embeddings.py)
batch_size = 16              # engine rows per forward: PRISM/generate-prism-embeddings.py's default
max_tokens = 32768           # engine padded tokens per forward: the same script's default
# equality: engine (prefix-shared, batched) vs one at a time, per attention implementation
equality_conversations = 16  # bf16, per attention implementation
equality_fp32_conversations = 8  # float32 (sdpa, eager): the sharp check
equality_attn_implementations = ["sdpa", "eager", "flash_attention_2"]  # flash only when installed
# lore: LoRe_regularized at PRISM scale
lore_users = 1000
lore_comparisons_per_user = 20
lore_d = 4096
lore_K = 25
lore_alpha = 1e4
lore_learning_rate = 0.5
lore_warmup_iterations = 50
lore_iterations = 500        # timed
lore_full_iterations = 20000  # the real fit, projected
lore_check_users = 100       # CUDA vs CPU fit in float64 on lore_check_users x lore_comparisons_per_user
lore_check_iterations = 30
# rb2: RewardBench 2 scoring
rb2_rows = 1865              # the real test split's size; subsets scaled from RB2_SUBSET_ROWS
rb2_loop_stride = 6          # one prompt per forward on every n-th row (1: all rows)
rb2_batch_size = 32          # engine rows per forward
rb2_max_tokens = 32768       # engine padded tokens per forward
rb2_attn_implementation = "sdpa"  # eval_rb2.py's (the library default)
# device figures for scale
matmul_size = 8192           # n of the n x n x n bf16 product timed
copy_mib = 2048              # MiB copied device to device
# -----------------------------------------------------------------------------
settings = harness.configure(globals())

# What --tiny shrinks (a name given on the command line keeps its value).
TINY = dict(embed_prompts=6, equality_conversations=8, equality_fp32_conversations=4, length_scale=0.05,
            batch_size=4, max_tokens=512, lore_users=50, lore_comparisons_per_user=10, lore_d=64, lore_K=5,
            lore_warmup_iterations=5, lore_iterations=20, lore_full_iterations=20000, lore_check_users=20,
            lore_check_iterations=10, rb2_rows=30, rb2_loop_stride=3, rb2_batch_size=8, rb2_max_tokens=2048,
            matmul_size=256, copy_mib=8)
if tiny:
    for _name, _value in TINY.items():
        if _name not in settings.overridden:
            globals()[_name] = _value
    settings.update({name: globals()[name] for name in TINY})

# The 8B backbone: Skywork-Reward-Llama-3.1-8B-v0.2's config (that of Llama-3.1-8B, num_labels = 1).
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                rope_theta=500000.0, rms_norm_eps=1e-5,
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
LLAMA_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096, rope_theta=500000.0,
                  rms_norm_eps=1e-5)

# (name fragment, bf16 dense TFLOP/s, memory TB/s): vendor datasheets, no sparsity; the first match wins,
# so the specific names come first. The SXM parts are named plainly ("NVIDIA H100 80GB HBM3", "NVIDIA H200").
PEAKS = [("H200 NVL", 835.0, 4.8), ("H200", 989.0, 4.8), ("H100 NVL", 835.0, 3.9), ("H100 PCIe", 756.0, 2.0),
         ("H100", 989.0, 3.35), ("H800", 989.0, 3.35), ("A100-SXM4-80GB", 312.0, 2.039),
         ("A100 80GB PCIe", 312.0, 1.935), ("A100", 312.0, 1.555)]

# Lengths in tokens (before length_scale), drawn uniformly unless said otherwise.
PRISM_TOTAL_TOKENS = (500, 3000)      # a whole conversation (history + last user message + response)
PRISM_RESPONSE_TOKENS = (50, 400)     # each of the two responses to the last user message
PRISM_USER_TOKENS = (20, 150)         # a user message
PRISM_ASSISTANT_TOKENS = (100, 500)   # an earlier (chosen) assistant message
MESSAGE_TOKENS = 5                    # the chat template's tokens around a message (header, role, <|eot_id|>)
RB2_PROMPT_TOKENS = (50, 500)         # log-uniform
RB2_RESPONSE_TOKENS = (100, 800)      # log-uniform
RB2_SUBSET_ROWS = {"Factuality": 475, "Precise IF": 160, "Math": 183, "Safety": 450, "Focus": 495, "Ties": 102}

# Equality tolerances on ||engine - one at a time|| / ||one at a time|| per conversation.
# bf16 keeps 8 significant bits: every rounding is off by up to u = 2^-9 = 0.2% relative. The engine and
# the one-at-a-time forward run the same ops on differently shaped operands (other GEMM tilings, other
# attention kernels, a prefix's keys/values from a cache, masks), so their roundings differ at every op.
# Through 32 layers the residual stream takes ~200 such roundings (attention and MLP outputs, their
# projections, the adds, the norms); were they independent, the norm-wise relative difference would be
# about sqrt(200) u ~ 3% at worst, typically less (GEMMs accumulate in fp32, the final norm removes the
# scale). 5% leaves room above that. With random weights, though, attention is diffuse (it averages over
# the context) and the last token (<|eot_id|>) is the same in every conversation, so the two responses of
# one prompt differ by only a few % (printed as the scale): bf16 rounding and a small real error (a token
# dropped, a position off by one) cannot be told apart in bf16. So the same comparison runs again in
# float32 (the weights cast up, exactly, and back): u = 2^-24 gives ~1e-6 by the same count (PyTorch keeps
# TF32 off for float32 matmuls by default; the block below makes sure), and 1e-4 is 100x that and still
# 10x below a small real error: positions off by one on the cached prefix move the tiny model's
# embeddings by ~1e-3, under bf16's noise, and tests/test_gpu_check.py plants exactly that. The float32
# embeddings one at a time are also the reference against which both bf16 ways' own rounding errors are
# shown: the engine must be about as accurate as the plain loop.
TOLERANCE_BF16 = 5e-2
TOLERANCE_FP32 = 1e-4
LORE_CHECK_TOLERANCE = 1e-6   # LoRe fit on the GPU vs the CPU, float64, relative to the largest entry
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -11}


def tolerance() -> float:
    """The equality tolerance of the run's dtype: TOLERANCE_FP32 in float32, else TOLERANCE_BF16 scaled by
    the unit roundoff (float16: 4x tighter than bf16)."""
    if torch_dtype() == torch.float32:
        return TOLERANCE_FP32
    return TOLERANCE_BF16 * UNIT_ROUNDOFF[torch_dtype()] / UNIT_ROUNDOFF[torch.bfloat16]


def torch_dtype() -> torch.dtype:
    return embedding._torch_dtype(dtype)


# -----------------------------------------------------------------------------
# device, timing and the model


def run_device() -> str:
    if device:
        return device
    if tiny:
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; run with --tiny (the same code on the CPU, tiny shapes), "
                         "or --device=cpu to try the full shapes on the CPU (hours)")
    return "cuda"


def is_cuda(dev) -> bool:
    return str(dev).startswith("cuda")


def sync(dev) -> None:
    if is_cuda(dev):
        torch.cuda.synchronize()


def timed(fn, dev):
    """(seconds, fn()) with the device synchronised before and after."""
    sync(dev)
    start = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - start, out


def reset_peak_memory(dev) -> None:
    if is_cuda(dev):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(dev):
    """(allocated, reserved) peak GiB since the last reset (None on the CPU)."""
    if not is_cuda(dev):
        return None, None
    return torch.cuda.max_memory_allocated() / 2 ** 30, torch.cuda.max_memory_reserved() / 2 ** 30


def device_peaks(dev) -> dict:
    """The peak bf16 TFLOP/s and memory TB/s used for the fractions, and where they come from."""
    name = torch.cuda.get_device_name(dev) if is_cuda(dev) else "CPU"
    found = next(((fragment, tf, bw) for fragment, tf, bw in PEAKS if fragment in name), None)
    out = {"name": name, "torch": torch.__version__}
    try:
        import transformers
        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    for key, given, index, setting in (("peak_bf16_tflops", peak_tflops, 1, "peak_tflops"),
                                       ("bandwidth_tbs", bandwidth_tbs, 2, "bandwidth_tbs")):
        if given > 0:
            out[key], out[key + "_source"] = float(given), "set on the command line"
        elif found is not None:
            out[key], out[key + "_source"] = found[index], f"datasheet of {found[0]} (dense, no sparsity)"
        else:
            out[key], out[key + "_source"] = None, f"no datasheet entry for {name!r}: pass --{setting}=..."
    return out


def build_backbone(dev, config_shape: dict, attn_implementation: str):
    """LlamaForSequenceClassification with random weights in `dtype`, built where it runs (no CPU copy):
    transformers' init (normal, std initializer_range = 0.02; RMS norms 1) keeps activations finite."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(**config_shape, num_labels=1, pad_token_id=0, tie_word_embeddings=False,
                         initializer_range=0.02, attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype())
    try:
        with torch.device(dev):
            model = LlamaForSequenceClassification(config)
    finally:
        torch.set_default_dtype(default)
    model = model.eval()
    weight = model.model.layers[0].mlp.down_proj.weight
    std = float(weight.detach().float().std())
    if not (math.isfinite(std) and 0.005 < std < 0.05):
        raise RuntimeError(f"error: the random init gave weights of std {std} (expected ~0.02)")
    return model


def set_attention(model, implementation: str) -> None:
    model.set_attn_implementation(implementation)
    if model.config._attn_implementation != implementation:
        raise RuntimeError(f"error: attention is {model.config._attn_implementation!r} after asking for "
                           f"{implementation!r}")


def flash_attention_missing(dev):
    """None when flash_attention_2 can run here, else why not."""
    if not is_cuda(dev):
        return "needs CUDA"
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attn not installed"
    return None


def parameter_counts(model) -> dict:
    backbone = model.model
    total = sum(p.numel() for p in backbone.parameters())
    emb = backbone.embed_tokens.weight.numel()
    return {"non_embedding": total - emb, "embedding": emb,
            "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 30}


# -----------------------------------------------------------------------------
# generated text


class TextMaker:
    """Seeded text of about a given number of tokens of `tokenizer` (offline/text.py's sentences; the
    tokens per word are measured once on a sample)."""

    def __init__(self, tokenizer, rng: np.random.Generator):
        from offline.text import sentence

        self.sentence, self.rng = sentence, rng
        sample_rng = np.random.default_rng(12345)
        sample = " ".join(sentence(sample_rng) for _ in range(500))
        self.tokens_per_word = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / len(sample.split())

    def scaled(self, low_high, log=False) -> int:
        low, high = (max(1, round(x * length_scale)) for x in low_high)
        if log:
            return int(round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))
        return int(self.rng.integers(low, high + 1))

    def text(self, n_tokens: int) -> str:
        words_needed = max(1, round(n_tokens / self.tokens_per_word))
        words = []
        while len(words) < words_needed:
            words += self.sentence(self.rng).split()
        return " ".join(words[:words_needed])


def prism_like_conversations(maker: TextMaker, n_prompts: int) -> list:
    """2 * n_prompts conversations: per prompt, a multi-turn history (user and chosen assistant messages)
    and a last user message, then each of two responses; a conversation has about PRISM_TOTAL_TOKENS."""
    conversations = []
    user_low, user_high = (max(1, round(x * length_scale)) for x in PRISM_USER_TOKENS)
    assistant_low = max(1, round(PRISM_ASSISTANT_TOKENS[0] * length_scale))
    for _ in range(n_prompts):
        total = maker.scaled(PRISM_TOTAL_TOKENS)
        responses = [maker.scaled(PRISM_RESPONSE_TOKENS) for _ in range(2)]
        budget = total - sum(responses) // 2 - 2 * MESSAGE_TOKENS  # left for the history and the last message
        history = []
        while budget > user_high + assistant_low + user_low + 2 * MESSAGE_TOKENS:  # one more exchange fits
            user = maker.scaled(PRISM_USER_TOKENS)
            assistant = min(maker.scaled(PRISM_ASSISTANT_TOKENS), budget - user - user_low - 2 * MESSAGE_TOKENS)
            history += [{"role": "user", "content": maker.text(user)},
                        {"role": "assistant", "content": maker.text(assistant)}]
            budget -= user + assistant + 2 * MESSAGE_TOKENS
        history.append({"role": "user", "content": maker.text(max(budget, user_low))})
        for n in responses:
            conversations.append(history + [{"role": "assistant", "content": maker.text(n)}])
    return conversations


def rb2_like_rows(maker: TextMaker, n_rows: int) -> list:
    """RewardBench 2 rows in the hub's column format, subsets scaled from RB2_SUBSET_ROWS to ~n_rows."""
    from offline import rewardbench2 as offline_rb2

    scale = n_rows / sum(RB2_SUBSET_ROWS.values())
    rows, plain_id = [], 0
    for subset, count in RB2_SUBSET_ROWS.items():
        count = max(1, round(count * scale))
        kinds = ["plain"] * count if subset != "Ties" else ["ref", "tied"] * max(1, count // 2)
        for k, kind in enumerate(kinds):
            n_correct = offline_rb2.TIED_CORRECT if kind == "tied" else 1
            n_rejected = offline_rb2.N_REJECTED
            answers = [maker.text(maker.scaled(RB2_RESPONSE_TOKENS, log=True)) for _ in range(n_correct + n_rejected)]
            if kind == "plain":
                row_id, plain_id = str(plain_id), plain_id + 1
            else:
                row_id = f"{kind}:{k // 2}"
            rows.append({"id": row_id, "prompt": maker.text(maker.scaled(RB2_PROMPT_TOKENS, log=True)),
                         "chosen": answers[:n_correct], "rejected": answers[n_correct:],
                         "num_correct": n_correct, "num_incorrect": n_rejected,
                         "total_completions": n_correct + n_rejected,
                         "models": [offline_rb2.MODELS[i % len(offline_rb2.MODELS)]
                                    for i in range(n_correct + n_rejected)],
                         "subset": subset, "additional_metadata": {"source": "bench/gpu_check.py"}})
    return rb2.load_rows(rows)  # normalised and checked as a real file would be


# -----------------------------------------------------------------------------
# FLOPs


def attention_pairs(prefix: int, own: int) -> int:
    """(query, key) pairs of causal attention for `own` tokens after a cached prefix of `prefix` tokens."""
    return own * prefix + own * (own + 1) // 2


def forward_flops(counts: dict, tokens: int, pairs: int, layers: int, hidden: int) -> float:
    """2 x non-embedding parameters x tokens (every weight one multiply-add per token) + attention:
    q.k and the weighted sum of values, 2 x hidden each per (query, key) pair and layer."""
    return 2.0 * counts["non_embedding"] * tokens + 4.0 * layers * hidden * pairs


def engine_work(ids: list) -> tuple:
    """(tokens, attention pairs) the engine computes for `ids` (padding aside): a shared prompt once."""
    groups = embedding.shared_prefix_groups(ids)
    grouped = set()
    tokens = pairs = 0
    for prefix, members in groups:
        tokens += prefix
        pairs += attention_pairs(0, prefix)
        for i in members:
            grouped.add(i)
            tokens += len(ids[i]) - prefix
            pairs += attention_pairs(prefix, len(ids[i]) - prefix)
    for i, row in enumerate(ids):
        if i not in grouped:
            tokens += len(row)
            pairs += attention_pairs(0, len(row))
    return tokens, pairs, len(groups)


# -----------------------------------------------------------------------------
# the ways being compared


@torch.inference_mode()
def one_at_a_time(model, tokenizer, conversations, dev) -> torch.Tensor:
    """The straightforward loop: render with the chat template, one unpadded forward per conversation,
    the final-norm hidden state of its last token. [n, d] float32 (CPU)."""
    out = []
    for conversation in conversations:
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                            return_tensors="pt")["input_ids"]
        hidden = model.model(input_ids=ids.to(dev)).last_hidden_state
        out.append(hidden[0, -1].float().cpu())
    return torch.stack(out)


def engine(model, tokenizer, conversations, bs=None, mt=None) -> torch.Tensor:
    return embedding.embed_conversations(model, tokenizer, conversations, batch_size=bs or batch_size,
                                         max_tokens=(mt if mt is not None else max_tokens) or None)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def relative_differences(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_i|| / ||b_i|| per row, in float64."""
    a, b = a.double(), b.double()
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-30)


# -----------------------------------------------------------------------------
# sections: each returns a dict of figures and adds its lines to the table


def section_device(context, table):
    dev = context["device"]
    out = dict(context["peaks"])
    n = matmul_size
    a = torch.randn(n, n, device=dev, dtype=torch_dtype())
    b = torch.randn(n, n, device=dev, dtype=torch_dtype())
    a @ b  # warm-up
    reps = 10
    seconds, _ = timed(lambda: [a @ b for _ in range(reps)], dev)
    out["matmul_tflops"] = 2.0 * n ** 3 * reps / seconds / 1e12
    a = b = None   # free the GPU memory
    x = torch.empty(copy_mib * 2 ** 20 // 4, device=dev, dtype=torch.float32).fill_(1.0)
    y = torch.empty_like(x)
    y.copy_(x)
    seconds, _ = timed(lambda: [y.copy_(x) for _ in range(reps)], dev)
    out["copy_tbs"] = 2.0 * x.numel() * 4 * reps / seconds / 1e12   # bytes read + written
    x = y = None
    peak = out["peak_bf16_tflops"]
    table.append(("device", "GPU", f"{out['name']}; torch {out['torch']}, transformers {out.get('transformers')}"))
    bandwidth = out["bandwidth_tbs"]
    table.append(("device", "bf16 dense peak used", f"{f'{peak:g} TFLOP/s' if peak else 'unknown'} "
                                                    f"({out['peak_bf16_tflops_source']})"))
    table.append(("device", "memory bandwidth used", f"{f'{bandwidth:g} TB/s' if bandwidth else 'unknown'} "
                                                     f"({out['bandwidth_tbs_source']})"))
    table.append(("device", f"measured: bf16 {n}^3 matrix product", f"{out['matmul_tflops']:.1f} TFLOP/s"
                  + (f" ({100 * out['matmul_tflops'] / peak:.0f}% of the peak)" if peak else "")))
    table.append(("device", f"measured: device copy of {copy_mib} MiB", f"{out['copy_tbs']:.3f} TB/s (read + write)"))
    return out


def embed_one(context, table, implementation, conversations, loop_conversations, real_tokens, flops) -> dict:
    """Time the engine and the one-per-forward loop with one attention implementation."""
    dev, model, tokenizer = context["device"], context["model"], context["tokenizer"]
    counts, peak, loop_n = context["params"], context["peaks"]["peak_bf16_tflops"], len(loop_conversations)
    set_attention(model, implementation)
    engine(model, tokenizer, conversations[:4], bs=2)            # warm-up: kernels, allocator
    one_at_a_time(model, tokenizer, conversations[:1], dev)
    reset_peak_memory(dev)
    t_engine, e_engine = timed(lambda: engine(model, tokenizer, conversations), dev)
    allocated, reserved = peak_memory_gib(dev)
    t_loop, e_loop = timed(lambda: one_at_a_time(model, tokenizer, loop_conversations, dev), dev)
    rate = {"engine": real_tokens["engine"] / t_engine, "loop": real_tokens["loop"] / t_loop}
    tflops = {"engine": flops["engine"] / t_engine / 1e12, "loop": flops["loop"] / t_loop / 1e12}
    difference = relative_differences(e_engine[:loop_n], e_loop)
    row = {"engine_seconds": t_engine, "loop_seconds": t_loop,
           "engine_tokens_per_s": rate["engine"], "loop_tokens_per_s": rate["loop"],
           "speedup": rate["engine"] / rate["loop"],
           "engine_tflops": tflops["engine"], "loop_tflops": tflops["loop"],
           "engine_peak_fraction": tflops["engine"] / peak if peak else None,
           "loop_peak_fraction": tflops["loop"] / peak if peak else None,
           "engine_peak_memory_gib": allocated, "engine_peak_reserved_gib": reserved,
           "max_relative_difference": float(difference.max()),
           "finite": bool(torch.isfinite(e_engine).all() and torch.isfinite(e_loop).all())}
    share = (lambda f: f" = {100 * f:.1f}% of {peak:g}") if peak else (lambda f: "")
    table.append((f"embed, {implementation}", "one conversation per forward",
                  f"{rate['loop']:,.0f} tokens/s, {tflops['loop']:.3g} TFLOP/s{share(row['loop_peak_fraction'])}"))
    table.append((f"embed, {implementation}", "engine",
                  f"{rate['engine']:,.0f} tokens/s (**{row['speedup']:.2f}x**), {tflops['engine']:.3g} TFLOP/s"
                  f"{share(row['engine_peak_fraction'])} (work done, counted)"))
    if allocated is not None:
        table.append((f"embed, {implementation}", f"engine peak GPU memory (batch_size {batch_size}, "
                      f"max_tokens {max_tokens})", f"{allocated:.1f} GiB allocated, {reserved:.1f} GiB reserved "
                      f"(weights {counts['weights_gib']:.1f} GiB)"))
    return row


def section_embed(context, table):
    dev, model, tokenizer = context["device"], context["model"], context["tokenizer"]
    counts, config = context["params"], model.config
    conversations = prism_like_conversations(context["maker"], embed_prompts)
    ids = embedding.render_all_ids(tokenizer, conversations)
    lengths = [len(x) for x in ids]
    loop_n = embed_loop_conversations or len(conversations)
    loop_conversations = conversations[:loop_n]
    engine_tokens, engine_pairs, n_groups = engine_work(ids)
    layers, hidden = config.num_hidden_layers, config.hidden_size
    flops = {"engine": forward_flops(counts, engine_tokens, engine_pairs, layers, hidden),
             "loop": forward_flops(counts, sum(lengths[:loop_n]),
                                   sum(attention_pairs(0, n) for n in lengths[:loop_n]), layers, hidden)}
    real_tokens = {"engine": sum(lengths), "loop": sum(lengths[:loop_n])}
    out = {"conversations": len(conversations), "prompts": embed_prompts, "loop_conversations": loop_n,
           "tokens_min": min(lengths), "tokens_mean": float(np.mean(lengths)), "tokens_max": max(lengths),
           "real_tokens": sum(lengths), "engine_tokens_computed": engine_tokens, "shared_prefix_groups": n_groups,
           "engine_tflop": flops["engine"] / 1e12, "loop_tflop": flops["loop"] / 1e12,
           "batch_size": batch_size, "max_tokens": max_tokens, "by_attention": {}}
    table.append(("embed", "conversations", f"{len(conversations)} ({embed_prompts} prompts x 2 responses), "
                  f"{min(lengths)}-{max(lengths)} tokens, mean {np.mean(lengths):.0f}; the engine computes "
                  f"{engine_tokens} of {sum(lengths)} tokens ({n_groups} shared prompts)"))
    for implementation in embed_attn_implementations:
        try:  # one implementation failing (memory, an unsupported path) leaves the others their result
            out["by_attention"][implementation] = embed_one(context, table, implementation, conversations,
                                                            loop_conversations, real_tokens, flops)
        except Exception as e:
            traceback.print_exc()
            out["by_attention"][implementation] = {"error": error_text(e)}
            table.append((f"embed, {implementation}", "ERROR", error_text(e)))
        reset_peak_memory(dev)
    set_attention(model, context["attn_implementation"])
    out["passed"] = all("error" not in row and row["finite"] for row in out["by_attention"].values())
    return out


@contextlib.contextmanager
def parameters_in(model, dt: torch.dtype):
    """The model's parameters cast to `dt` inside the block, back afterwards (bf16 -> float32 -> bf16 is
    exact). Buffers (RoPE's float32 inverse frequencies) are left alone."""
    before = {name: p.dtype for name, p in model.named_parameters()}
    for p in model.parameters():
        p.data = p.data.to(dt)
    try:
        yield model
    finally:
        for name, p in model.named_parameters():
            p.data = p.data.to(before[name])


@contextlib.contextmanager
def full_float32_matmuls():
    """float32 arithmetic in float32 inside the block: no TF32 in products (whatever the environment set),
    and SDPA on its math back end (plain products and softmax; its fused float32 kernels may use TF32)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def section_equality(context, table):
    dev, model, tokenizer = context["device"], context["model"], context["tokenizer"]
    conversations = prism_like_conversations(context["maker"], max(1, equality_conversations // 2))
    ids = embedding.render_all_ids(tokenizer, conversations)
    n_fp32 = min(len(conversations), 2 * max(1, equality_fp32_conversations // 2))
    tol = tolerance()
    out = {"conversations": len(conversations), "fp32_conversations": n_fp32,
           "tokens_mean": float(np.mean([len(x) for x in ids])),
           "shared_prefix_groups": len(embedding.shared_prefix_groups(ids)), "dtype": dtype,
           "tolerance": tol, "tolerance_fp32": TOLERANCE_FP32, "by_attention": {}}
    rows, bf16 = out["by_attention"], {}
    for implementation in equality_attn_implementations:
        optional = implementation == "flash_attention_2"  # only it may be absent; a typo is an error
        missing = flash_attention_missing(dev) if optional else None
        if missing is None and optional:
            try:
                set_attention(model, implementation)
            except (ImportError, ValueError) as e:
                missing = error_text(e)
        if missing is not None:
            rows[implementation] = {"skipped": missing}
            continue
        try:  # one implementation failing (an unsupported path, memory) leaves the others their result
            set_attention(model, implementation)
            batched = engine(model, tokenizer, conversations)
            alone = one_at_a_time(model, tokenizer, conversations, dev)
        except Exception as e:
            traceback.print_exc()
            rows[implementation] = {"error": error_text(e), "passed": False}
            continue
        bf16[implementation] = (batched, alone)
        difference = relative_differences(batched, alone)
        between = relative_differences(alone[0::2], alone[1::2])  # the two responses of one prompt
        finite = bool(torch.isfinite(batched).all() and torch.isfinite(alone).all())
        rows[implementation] = {
            "max_relative_difference": float(difference.max()),
            "median_relative_difference": float(difference.median()),
            "between_responses_median": float(between.median()), "finite": finite,
            "passed": finite and float(difference.max()) <= tol}

    # float32: the sharp check, and the reference for both bf16 ways (flash attention has no float32)
    reference = None
    with parameters_in(model, torch.float32), full_float32_matmuls():
        for implementation in [k for k in bf16 if k != "flash_attention_2"]:
            row = rows[implementation]
            try:
                set_attention(model, implementation)
                subset = conversations[:n_fp32]
                batched = engine(model, tokenizer, subset)
                alone = one_at_a_time(model, tokenizer, subset, dev)
            except Exception as e:
                traceback.print_exc()
                row["fp32_error"], row["fp32_passed"] = error_text(e), False
                continue
            reference = alone if reference is None else reference
            difference = relative_differences(batched, alone)
            row["fp32_max_relative_difference"] = float(difference.max())
            row["fp32_passed"] = bool(torch.isfinite(batched).all()) and float(difference.max()) <= TOLERANCE_FP32
    set_attention(model, context["attn_implementation"])
    for implementation in equality_attn_implementations:
        row = rows[implementation]
        if "skipped" in row:
            table.append(("equality", implementation, f"skipped ({row['skipped']})"))
            continue
        if "error" in row:
            table.append(("equality", implementation, f"FAIL: {row['error']}"))
            continue
        if reference is not None:
            batched, alone = bf16[implementation]
            row["engine_vs_fp32_max"] = float(relative_differences(batched[:n_fp32], reference).max())
            row["alone_vs_fp32_max"] = float(relative_differences(alone[:n_fp32], reference).max())
        row["passed"] = row["passed"] and row.get("fp32_passed", True)
        text = (f"{'PASS' if row['passed'] else 'FAIL'}: {dtype} max {row['max_relative_difference']:.1e} "
                f"(median {row['median_relative_difference']:.1e}, tolerance {tol:.0e})")
        if "fp32_max_relative_difference" in row:
            text += f"; float32 max {row['fp32_max_relative_difference']:.1e} (tolerance {TOLERANCE_FP32:.0e})"
        if "fp32_error" in row:
            text += f"; float32: {row['fp32_error']}"
        if "engine_vs_fp32_max" in row:
            text += (f"; vs the float32 result: engine {row['engine_vs_fp32_max']:.1e}, one at a time "
                     f"{row['alone_vs_fp32_max']:.1e}")
        text += f"; two responses of one prompt differ by {row['between_responses_median']:.1e}"
        table.append(("equality", f"{implementation}: ||engine - one at a time|| / ||one at a time||", text))
    out["passed"] = all(v.get("passed", True) for v in rows.values())
    return out


def section_lore(context, table):
    dev = context["device"]
    population = random_population(lore_users, lore_d, 8, seed=seed)
    data, _ = simulate_comparisons(population, lore_comparisons_per_user, seed=seed + 1)
    data = data.to(dev, torch.float32)
    V_star = torch.tensor(population.directions, dtype=torch.float32)
    V_ref = V_star[:, :1] / V_star[:, :1].norm()

    def fit(iterations, comparisons=data, where=dev, dt=torch.float32, n_users=lore_users):
        model = utils.LoRe_regularized(V_ref.to(dt), lore_alpha, n_users, lore_d, lore_K, iterations,
                                       lore_learning_rate, seed=seed, device=where, dtype=dt, progress=False)
        model.train(comparisons)
        return model

    fit(lore_warmup_iterations)
    seconds, model = timed(lambda: fit(lore_iterations), dev)
    per_iteration = seconds / lore_iterations
    store = data.table                               # one pass of the trainer reads the table
    timed(lambda: (store.sum(), store.sum()), dev)  # warm-up of the reduction kernel
    reads = min(timed(lambda: (store.sum(), store.sum()), dev)[0] for _ in range(5))
    nbytes = store.numel() * store.element_size()
    bandwidth = context["peaks"]["bandwidth_tbs"]
    floor = 2.0 * nbytes / (bandwidth * 1e12) if bandwidth else None
    loss = model.loss_history
    out = {"users": lore_users, "comparisons": data.N, "d": lore_d, "K": lore_K, "dtype": "float32",
           "feature_mib": nbytes / 2 ** 20, "iterations_timed": lore_iterations,
           "ms_per_iteration": 1e3 * per_iteration, "floor_ms": None if floor is None else 1e3 * floor,
           "ratio_to_floor": None if floor is None else per_iteration / floor,
           "measured_two_reads_ms": 1e3 * reads, "ratio_to_measured_reads": per_iteration / reads,
           "full_iterations": lore_full_iterations,
           "projected_full_fit_s": per_iteration * lore_full_iterations,
           "loss_first": float(loss[0]), "loss_last": float(loss[-1]),
           "finite": bool(torch.isfinite(loss).all() and torch.isfinite(model.V).all())}

    # The same fit here and on the CPU in float64 (the full V and W, before pruning): a real difference
    # (an op that behaves otherwise on CUDA) is O(1); float64 rounding through these few Adam steps stays
    # many orders below LORE_CHECK_TOLERANCE.
    check_users = min(lore_check_users, lore_users)
    small = data.select(data.users < check_users, n_users=check_users).to("cpu", torch.float64)
    here = fit(lore_check_iterations, small.to(dev), dev, torch.float64, check_users)
    cpu = fit(lore_check_iterations, small, "cpu", torch.float64, check_users)
    cpu_difference = max(float((a.cpu() - b).abs().max() / b.abs().max().clamp(min=1e-300))
                         for a, b in ((here.V, cpu.V), (here.W, cpu.W)))
    out.update({"cpu_check_users": check_users, "cpu_check_iterations": lore_check_iterations,
                "cpu_check_max_relative_difference": cpu_difference,
                "cpu_check_passed": cpu_difference <= LORE_CHECK_TOLERANCE})
    table.append(("lore", f"LoRe_regularized, {lore_users} users x {lore_comparisons_per_user}, d = {lore_d}, "
                  f"K = {lore_K}, float32 on {dev}", f"{1e3 * per_iteration:.2f} ms per iteration "
                  f"({lore_iterations} timed; W-step NLL {out['loss_first']:.3f} at the first, "
                  f"{out['loss_last']:.3f} at the last)"))
    table.append(("lore", f"floor: two reads of the features ({nbytes / 2 ** 20:.0f} MiB)",
                  (f"{1e3 * floor:.3f} ms at {bandwidth} TB/s: **{per_iteration / floor:.1f}x** the floor; "
                   if floor else "bandwidth unknown; ") + f"two timed X.sum(): {1e3 * reads:.3f} ms "
                  f"({per_iteration / reads:.1f}x)"))
    table.append(("lore", f"a {lore_full_iterations:,}-iteration fit, projected",
                  f"{out['projected_full_fit_s']:.0f} s ({out['projected_full_fit_s'] / 60:.1f} min)"))
    table.append(("lore", f"the fit on {dev} vs the CPU, float64, {check_users} users, {lore_check_iterations} "
                  f"iterations", f"{'PASS' if out['cpu_check_passed'] else 'FAIL'}: max |difference| / max |value| "
                  f"of V and W = "
                  f"{cpu_difference:.1e} (tolerance {LORE_CHECK_TOLERANCE:.0e})"))
    return out


def section_rb2(context, table):
    dev, model, tokenizer = context["device"], context["model"], context["tokenizer"]
    rows = rb2_like_rows(context["maker"], rb2_rows)
    loop_rows = rows[::rb2_loop_stride]
    answers = [len(r["chosen"]) + len(r["rejected"]) for r in rows]
    prompt_tokens = [len(embedding.render_ids(tokenizer, [{"role": "user", "content": r["prompt"]}])) for r in rows]
    set_attention(model, rb2_attn_implementation)
    rb2.score_rows(model, tokenizer, rows[:4], batch_size=4)  # warm-up
    reset_peak_memory(dev)
    t_engine, engine_scores = timed(lambda: rb2.score_rows(model, tokenizer, rows, batch_size=rb2_batch_size,
                                                           max_tokens=rb2_max_tokens or None), dev)
    allocated, reserved = peak_memory_gib(dev)
    t_loop, loop_scores = timed(lambda: [rb2.score_rows(model, tokenizer, [r], batch_size=len(r["chosen"]) +
                                                        len(r["rejected"]), share_prefixes=False)[0]
                                         for r in loop_rows], dev)
    engine_flat = np.concatenate([s.ravel() for s in engine_scores[::rb2_loop_stride]])
    loop_flat = np.concatenate([s.ravel() for s in loop_scores])
    difference = float(np.linalg.norm(engine_flat - loop_flat) / max(np.linalg.norm(loop_flat), 1e-30))
    set_attention(model, context["attn_implementation"])
    rate = {"engine": len(rows) / t_engine, "loop": len(loop_rows) / t_loop}
    counts = {s: sum(r["subset"] == s for r in rows) for s in RB2_SUBSET_ROWS}
    out = {"rows": len(rows), "subset_rows": counts, "responses": sum(answers),
           "prompt_tokens_mean": float(np.mean(prompt_tokens)),
           "loop_rows": len(loop_rows), "engine_seconds": t_engine, "loop_seconds": t_loop,
           "engine_rows_per_s": rate["engine"], "loop_rows_per_s": rate["loop"],
           "speedup": rate["engine"] / rate["loop"], "relative_score_difference": difference,
           "score_difference_passed": difference <= tolerance(),
           "engine_peak_memory_gib": allocated, "engine_peak_reserved_gib": reserved,
           "batch_size": rb2_batch_size, "max_tokens": rb2_max_tokens, "attn_implementation": rb2_attn_implementation,
           "finite": bool(np.isfinite(engine_flat).all() and np.isfinite(loop_flat).all())}
    table.append(("rb2", "rows", f"{len(rows)} ({', '.join(f'{s} {n}' for s, n in counts.items())}), "
                  f"{sum(answers)} responses; prompts ~{np.mean(prompt_tokens):.0f} tokens"))
    table.append(("rb2", f"one prompt per forward ({len(loop_rows)} rows)", f"{rate['loop']:.1f} rows/s"))
    table.append(("rb2", f"engine (batch_size {rb2_batch_size}, max_tokens {rb2_max_tokens}, "
                         f"{rb2_attn_implementation})",
                  f"{rate['engine']:.1f} rows/s (**{out['speedup']:.2f}x**), {t_engine:.0f} s for all rows"
                  + (f"; peak {allocated:.1f} GiB" if allocated is not None else "")))
    table.append(("rb2", "scores, engine vs one prompt per forward",
                  f"{'PASS' if out['score_difference_passed'] else 'FAIL'}: ||difference|| / ||scores|| = "
                  f"{difference:.1e} (tolerance {tolerance():.0e})"))
    return out


SECTIONS = {"device": section_device, "embed": section_embed, "equality": section_equality,
            "lore": section_lore, "rb2": section_rb2}
NEEDS_MODEL = {"embed", "equality", "rb2"}


# -----------------------------------------------------------------------------


def markdown(table) -> str:
    lines = ["| section | figure | value |", "|---|---|---|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_results(path_json: Path, path_md: Path, results: dict, table) -> None:
    harness.write_json_atomic(path_json, results)
    harness.write_text_atomic(path_md, markdown(table))


def build_context(dev, with_model: bool = True) -> dict:
    """What the sections share: device, peaks, tokenizer, text maker, and (with_model) the backbone."""
    from offline.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 1 << 20  # the generated conversations are long; the model takes them
    context = {"device": dev, "tokenizer": tokenizer, "peaks": device_peaks(dev),
               "maker": TextMaker(tokenizer, np.random.default_rng(seed)), "attn_implementation": "sdpa"}
    if with_model:
        seconds, model = timed(lambda: build_backbone(dev, LLAMA_TINY if tiny else LLAMA_8B, "sdpa"), dev)
        model.config.pad_token_id = tokenizer.pad_token_id
        context["model"], context["params"] = model, dict(parameter_counts(model), build_seconds=seconds)
    return context


def main() -> int:
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"error: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    start_all = time.perf_counter()
    dev = run_device()
    results_dir = Path(out_dir) if Path(out_dir).is_absolute() else Path(__file__).resolve().parent / out_dir
    stem = "gpu_check_tiny" if tiny else "gpu_check"
    path_json, path_md = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    context = build_context(dev, with_model=any(s in NEEDS_MODEL for s in sections))
    results = {"settings": dict(settings), "seed": seed, "device": context["peaks"], "sections": {},
               "seconds": {}, "failed": []}
    table = []
    print(f"gpu_check: {'tiny shapes' if tiny else 'Llama-3.1-8B shapes'}, {dtype}, on {dev} "
          f"({context['peaks']['name']}); writing {path_json}", flush=True)
    if "model" in context:
        results["model"] = {"config": LLAMA_TINY if tiny else LLAMA_8B, "dtype": dtype, **context["params"]}
        table.append(("model", "LlamaForSequenceClassification, random weights",
                      f"{context['params']['non_embedding'] / 1e9:.3f}B non-embedding + "
                      f"{context['params']['embedding'] / 1e6:.1f}M embedding parameters, {dtype}, "
                      f"{context['params']['weights_gib']:.2f} GiB; built in "
                      f"{context['params']['build_seconds']:.1f} s"))
        print(f"model: {table[-1][2]}", flush=True)
    for name in sections:
        elapsed = time.perf_counter() - start_all
        if time_budget_s and elapsed > time_budget_s:
            print(f"--- {name}: skipped, {elapsed:.0f} s > time_budget_s = {time_budget_s}", flush=True)
            results["sections"][name] = {"skipped": f"time budget: {elapsed:.0f} s > {time_budget_s} s"}
            results["failed"].append(name)
            table.append((name, "skipped", f"the time budget was spent ({elapsed:.0f} s > {time_budget_s} s)"))
            write_results(path_json, path_md, results, table)
            continue
        print(f"--- {name}", flush=True)
        start, first_row = time.perf_counter(), len(table)
        try:
            results["sections"][name] = SECTIONS[name](context, table)
        except Exception as e:  # a scarce GPU window: record it and go on with the next section
            traceback.print_exc()
            results["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
            results["failed"].append(name)
            table.append((name, "ERROR", error_text(e)))
        reset_peak_memory(dev)  # after the except block: its traceback no longer holds the section's tensors
        if "model" in context:
            set_attention(context["model"], context["attn_implementation"])
        results["seconds"][name] = time.perf_counter() - start
        results["seconds"]["total"] = time.perf_counter() - start_all
        table.append((name, "wall time", f"{results['seconds'][name]:.1f} s"))
        write_results(path_json, path_md, results, table)
        print("\n".join(f"  {a} | {b}: {c}" for a, b, c in table[first_row:]), flush=True)
        print(f"{name}: {results['seconds'][name]:.1f} s (total {results['seconds']['total']:.1f} s)", flush=True)
    checks = [results["sections"].get("equality", {}).get("passed", True),
              results["sections"].get("embed", {}).get("passed", True),
              results["sections"].get("lore", {}).get("cpu_check_passed", True),
              results["sections"].get("rb2", {}).get("score_difference_passed", True)]
    results["passed"] = not results["failed"] and all(checks)
    write_results(path_json, path_md, results, table)
    print()
    print(markdown(table))
    print(f"{'all checks passed' if results['passed'] else 'FAILED: see the table'}; "
          f"total {results['seconds'].get('total', 0):.0f} s; wrote {path_json} and {path_md.name}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

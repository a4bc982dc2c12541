"""Offline demonstration that subtracting a style forget LoRA removes a planted style bias.

    cd debias_lora && python demo_offline.py                      # ~1-2 minutes on 2 CPU cores
    cd debias_lora && python demo_offline.py --smoke              # a few steps: checks it runs

1. Data: generated GSM8K-style problems (offline/gsm8k.py) -> variants and pairs (build_pairs.py).
2. A style-biased reward model: the built-in tiny reward model fine-tuned (its token embeddings,
   BASE_TRAINABLE) with the Bradley-Terry loss on correctness pairs (correct beats incorrect at equal
   style) AND on reversed style and cross pairs (the more markdown-rich / verbose response wins, even
   when it is wrong). So it knows correctness but prefers markdown over it: low "hard" accuracy. The
   rest of the network stays as it was, so the base keeps most of the general preferences of the
   tiny model's head, on which the offline RewardBench 2 rows are built (fine-tuning every weight at
   this learning rate scrambles them: RewardBench 2 below the 25% of random scores), as a real reward
   model with a style bias still ranks general responses well. Saved as results-offline/biased_base
   (a plain checkpoint, loaded like any base).
3. A style forget LoRA trained on it (train_forget_lora.py: --pair-mode style --direction undesired).
4. The lambda sweep (evaluate_lambdas.py) on held-out questions: hard / normal / easy accuracy and
   RewardBench 2 (the generated file) per lambda.

The claim checked, at lambda = 1 (the whole LoRA subtracted; fixed in advance, the sweep is
there to look at, not to pick from): the hard accuracy rises by at least CLAIM_MIN_RISE while the normal
(same-style, correctness-only) accuracy drops by at most CLAIM_MAX_DROP. Writes
results-offline/demo_offline.{json,md} (the table and the claim's check) beside
lambda_sweep_style.{json,md,png}, the biased base and the LoRA.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import harness  # noqa: E402
from debias_lora import build_pairs, evaluate_lambdas, lora_math, train_forget_lora  # noqa: E402
from debias_lora.pairs import load_pairs  # noqa: E402

LAMBDAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
CLAIM_LAMBDA = 1.0          # the claim's lambda: subtract the whole forget LoRA (fixed, not chosen on the sweep)
# The claim's margins at CLAIM_LAMBDA. The tiny model's training is chaotic: another seed, or another CPU's
# float rounding, gives another trajectory. Over seeds 0-7 (200 held-out questions, 600 pairs per mode;
# the tiny model version 3) the hard accuracy rose by 0.33-0.77 and the normal one moved by -0.07 to +0.02
# (mean -0.02, sd 0.03): the subtraction perturbs the whole network a little. A rise of at least 0.2 and a
# drop of at most 0.15 (4.5 sd beyond the mean drop) hold on every trajectory we can expect, and still
# fail a forget LoRA that does nothing (no rise) or one that destroys the correctness knowledge (normal
# -> 0.5).
CLAIM_MIN_RISE = 0.2
CLAIM_MAX_DROP = 0.15
CORRECTNESS_WEIGHT = 1      # copies of each correctness pair in the biased mix
BASE_TRAINABLE = ("model.embed_tokens.weight",)   # what the biased base's fine-tuning changes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data", help="generated pairs (default: data-offline beside this script)")
    parser.add_argument("--results_dir", default="results", help="the biased base, the LoRA and the tables "
                        "(default: results-offline beside this script)")
    parser.add_argument("--smoke", action="store_true", help="a few steps only: checks that it runs")
    parser.add_argument("--questions", type=int, nargs=2, default=(400, 200), metavar=("TRAIN", "TEST"))
    parser.add_argument("--base_correctness_steps", type=int, default=200,
                        help="optimiser steps of the base on correctness pairs (phase 1)")
    parser.add_argument("--base_bias_steps", type=int, default=100,
                        help="optimiser steps of the base on the biased mix (phase 2)")
    parser.add_argument("--base_lr", type=float, default=3e-3, help="learning rate of phase 1")
    parser.add_argument("--base_bias_lr", type=float, default=3e-3, help="learning rate of phase 2")
    parser.add_argument("--label_noise", type=float, default=0.1, help="flipped labels in the biased mix")
    parser.add_argument("--lora_epochs", type=float, default=1.0)
    parser.add_argument("--lora_lr", type=float, default=2e-3)
    parser.add_argument("--lora_pairs", type=int, default=800, help="style pairs the LoRA trains on")
    parser.add_argument("--batch_size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max_length", type=int, default=96, help="tokens per conversation (left-truncated: "
                        "the end of a response, with its final answer, is kept)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=LAMBDAS)
    parser.add_argument("--rb2_limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return harness.cli_args(parser, argv)


def _swapped(p: dict) -> dict:
    return dict(p, chosen=p["rejected"], rejected=p["chosen"], chosen_style=p["rejected_style"],
                rejected_style=p["chosen_style"], chosen_correct=p["rejected_correct"],
                rejected_correct=p["chosen_correct"])


def biased_pairs(pairs: list[dict], label_noise: float, seed: int) -> list[dict]:
    """The biased training mix: correctness pairs as they are (CORRECTNESS_WEIGHT copies), style and
    cross pairs reversed (the stylish response wins, in cross pairs even when it is wrong); then a
    fraction `label_noise` of the labels flipped at random, so the learnt margins stay finite (a
    Bradley-Terry model of noisy labels) instead of growing without bound on separable data."""
    rng = np.random.default_rng(seed)
    out = []
    for p in pairs:
        out += [p] * CORRECTNESS_WEIGHT if p["mode"] == "correctness" else [_swapped(p)]
    return [_swapped(p) if flip else p for p, flip in zip(out, rng.random(len(out)) < label_noise)]


def train_biased_base(pairs_path: Path, out_dir: Path, args) -> Path:
    """The tiny reward model, fine-tuned (BASE_TRAINABLE) in two phases: correctness pairs only (it
    learns to check the arithmetic), then the biased mix (it learns to prefer markdown, even over
    correctness)."""
    from offline import tiny_model_path
    torch.manual_seed(args.seed)
    model, tokenizer = lora_math.load_base_model(tiny_model_path(), device="cpu")
    for name, p in model.named_parameters():
        p.requires_grad_(name in BASE_TRAINABLE)
    pairs = load_pairs(pairs_path)
    phases = [("biased base 1/2 (correctness)", [p for p in pairs if p["mode"] == "correctness"],
               args.base_correctness_steps, args.base_lr),
              ("biased base 2/2 (style bias)", biased_pairs(pairs, args.label_noise, args.seed),
               args.base_bias_steps, args.base_bias_lr)]
    log = []
    for desc, phase_pairs, steps, lr in phases:
        tokenized = train_forget_lora.tokenize_pairs(phase_pairs, tokenizer, args.max_length, swap=False)
        model, phase_log = train_forget_lora.train_bradley_terry(
            model, tokenized, tokenizer.pad_token_id, epochs=steps * args.batch_size / len(tokenized),
            learning_rate=lr, batch_size=args.batch_size, seed=args.seed,
            log_every=max(1, steps // 4), desc=desc)
        log += [dict(row, phase=desc) for row in phase_log]
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=1))
    return harness.umask_permissions(out_dir)


def check_claim(results: list[dict], at_lambda: float = CLAIM_LAMBDA, min_rise: float = CLAIM_MIN_RISE,
                max_drop: float = CLAIM_MAX_DROP) -> dict:
    """The demo's claim on a sweep: at lambda = `at_lambda` (fixed before the run, not picked by the
    figures it then reports), hard has risen by at least `min_rise` over lambda 0 and normal has dropped
    by at most `max_drop`."""
    by_lambda = {r["lambda"]: r for r in results}
    if 0.0 not in by_lambda or at_lambda not in by_lambda:
        raise SystemExit(f"error: the claim compares lambda 0 with lambda {at_lambda:g}; the sweep has "
                         f"{sorted(by_lambda)}. Add both to --lambdas.")
    base, debiased = by_lambda[0.0], by_lambda[at_lambda]
    return {"claim_lambda": at_lambda, "min_rise": min_rise, "max_drop": max_drop,
            "hard_at_0": base["hard"], "normal_at_0": base["normal"], "easy_at_0": base["easy"],
            "hard_at_claim": debiased["hard"], "normal_at_claim": debiased["normal"], "easy_at_claim": debiased["easy"],
            "hard_rises": debiased["hard"] >= base["hard"] + min_rise,
            "normal_holds": debiased["normal"] >= base["normal"] - max_drop}


def main(argv=None) -> dict:
    args = parse_args(argv)
    # The tiny model's matrices are small: one thread is as fast as two, and far faster when the
    # machine's cores are shared with other jobs.
    torch.set_num_threads(1)
    if args.smoke:
        args.questions, args.base_correctness_steps, args.base_bias_steps, args.lora_pairs = (40, 10), 2, 2, 16
        args.lambdas, args.rb2_limit = [0.0, 1.0], 10
    start = time.time()
    args.settings["offline"] = True                     # the demo is always offline
    data_path, results_path = harness.script_dirs(__file__, args.settings)
    results_path.mkdir(parents=True, exist_ok=True)

    print("== 1. generated GSM8K-style pairs")
    build_pairs.main(["--offline", "--offline_questions", *map(str, args.questions), "--seed", str(args.seed),
                      "--data_dir", str(data_path)])

    print("== 2. the style-biased base (tiny reward model, token embeddings fine-tuned)")
    base_dir = train_biased_base(data_path / "pairs_train.jsonl", results_path / "biased_base", args)

    print("== 3. the style forget LoRA (direction undesired)")
    lora_dir = results_path / "forget_lora_style_undesired"
    train_forget_lora.main([
        "--offline", "--model", str(base_dir), "--data", str(data_path / "pairs_train.jsonl"),
        "--pair-mode", "style", "--direction", "undesired", "--epochs", str(args.lora_epochs),
        "--learning-rate", str(args.lora_lr), "--batch-size", str(args.batch_size),
        "--max-length", str(args.max_length), "--limit", str(args.lora_pairs), "--seed", str(args.seed),
        "--log-every", "20", "--output", str(lora_dir), "--overwrite"])   # the demo remakes what it owns

    print("== 4. the lambda sweep")
    from offline import rewardbench2 as offline_rewardbench2
    sweep_args = ["--offline", "--base_model", str(base_dir), "--lora_path", str(lora_dir),
                  "--output_path", str(results_path / "lambda_sweep_style.json"),
                  "--variants", str(data_path / "variants_test.jsonl"),
                  "--rb2_dataset", str(offline_rewardbench2.dataset_path(data_path / "rewardbench2")),
                  "--max_length", str(args.max_length), "--batch_size", "32",
                  "--lambdas", *map(str, args.lambdas)]
    if args.rb2_limit:
        sweep_args += ["--rb2_limit", str(args.rb2_limit)]
    sweep = evaluate_lambdas.main(sweep_args)

    claim = check_claim(sweep["results"])
    seconds = round(time.time() - start, 1)
    summary = {"settings": args.settings, "claim": claim, "results": sweep["results"], "seconds": seconds}
    harness.write_json_atomic(results_path / "demo_offline.json", summary)
    verdict = (f"hard accuracy rises by at least {claim['min_rise']:g} while normal accuracy stays within "
               f"{claim['max_drop']:g} of its start"
               if claim["hard_rises"] and claim["normal_holds"] else "NOT SHOWN (see the table)")
    text = (f"Offline debias demo: style-biased tiny RM minus lambda * style forget LoRA "
            f"({args.questions[1]} held-out questions; {seconds:.0f} s)\n\n"
            f"{evaluate_lambdas.markdown_table(sweep['results'])}\n\n"
            f"From lambda 0 to lambda = {claim['claim_lambda']:g} (fixed before the run): hard "
            f"{claim['hard_at_0']:.3f} -> {claim['hard_at_claim']:.3f}, normal {claim['normal_at_0']:.3f} -> "
            f"{claim['normal_at_claim']:.3f}, easy {claim['easy_at_0']:.3f} -> {claim['easy_at_claim']:.3f}: "
            f"{verdict}.\n")
    harness.write_text_atomic(results_path / "demo_offline.md", text)
    print("\n" + text)
    return summary


if __name__ == "__main__":
    main()

"""Merge base - lambda * LoRA into a plain reward model and save it (usable without PEFT).

    cd debias_lora && python subtract_lora.py \
        --base_model "xxccho/margin_reg_baseline/checkpoint-2460" \
        --lora_path "xxccho/rm-debias-loras-llama-margin-reg/style" --lambda 0.5 \
        --output_dir results/debiased_style_0.5
    cd debias_lora && python subtract_lora.py --offline --lambda 1.0   # the demo's biased tiny RM and style LoRA

Every LoRA layer's weight becomes W - lambda * (alpha / r) * B @ A (alpha / sqrt(r) for rsLoRA),
computed in float32 and stored in the model's dtype; the reward head stays the base head. A base that is
itself a LoRA adapter is merged first. DoRA and other adapters that cannot be negated are refused.
Writes --output_dir (default results/debiased_<lora folder>_lambda<lambda>): the model
(save_pretrained), its tokenizer and debias.json (base, LoRA, lambda).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import harness  # noqa: E402
import utils  # noqa: E402
from debias_lora import lora_math  # noqa: E402
from debias_lora.evaluate_lambdas import DEFAULT_BASE, DEFAULT_LORA, base_and_lora  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=None, help=f"default {DEFAULT_BASE}")
    parser.add_argument("--lora_path", default=None, help=f"default {DEFAULT_LORA}")
    parser.add_argument("--lambda", dest="lam", type=float, required=True, help="+x subtracts x * LoRA")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--offline", action="store_true", help="the demo's biased tiny RM and style LoRA")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    _, results_path = harness.script_dirs(__file__, harness.Settings(data_dir="data", results_dir="results", offline=args.offline),
                                          check_writable=False)    # it writes --output_dir: checked below
    args.base_model, args.lora_path = base_and_lora(args.base_model, args.lora_path, args.offline, results_path)
    output = Path(args.output_dir) if args.output_dir else \
        results_path / f"debiased_{Path(args.lora_path).name}_lambda{args.lam:g}"
    harness.require_writable(output.parent, "--output_dir=...")
    device = args.device or str(utils.get_device())
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")

    model, tokenizer = lora_math.load_base_model(args.base_model, dtype=dtype, device=device)
    peft_model = lora_math.apply_forget_lora(model, args.lora_path)
    n_layers = len(lora_math.lora_layers(peft_model))
    merged = lora_math.merge_subtracted(peft_model, args.lam)
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    (output / "debias.json").write_text(json.dumps(
        {"base_model": args.base_model, "lora_path": args.lora_path, "lambda": args.lam, "dtype": dtype,
         "lora_layers": n_layers, "formula": "W - lambda * (alpha / r) * B @ A"}, indent=1))
    harness.umask_permissions(output)
    print(f"merged base - {args.lam:g} * LoRA over {n_layers} layers -> {output}")
    return output


if __name__ == "__main__":
    main()

"""Train a forget LoRA on one pair mode of the GSM8K pairs with the Bradley-Terry loss (seed 003).

    cd debias_lora && python train_forget_lora.py \
        --model "xxccho/margin_reg_baseline/checkpoint-2460" \
        --data data/pairs_train.jsonl --pair-mode style --direction undesired \
        --epochs 3 --learning-rate 1e-5
    cd debias_lora && accelerate launch --num_processes 4 train_forget_lora.py --model ... (several GPUs)
    cd debias_lora && python train_forget_lora.py --offline     # the demo's biased tiny RM, generated pairs

LoRA r=8, alpha=16, dropout 0.05 on q/k/v/o projections (PEFT, no task type: the reward head is
frozen and never saved into the adapter). Loss per pair: -log sigmoid(r(chosen) - r(rejected)), the
reward read by the model's own head at the last real token of the chat-rendered (prompt, response).
`--direction undesired` swaps chosen and rejected, so the adapter learns the bias direction that
evaluate_lambdas.py / subtract_lora.py later subtract. A base that is itself a LoRA adapter is merged
first. Data parallel under `accelerate launch` (each process a shard of every batch; metrics gathered;
the main process saves).

Reads: --data (pairs JSONL from build_pairs.py; default data/pairs_train.jsonl, offline data-offline/).
Writes: --output (default results/forget_lora_<mode>_<direction>): adapter_model.safetensors,
adapter_config.json, tokenizer, training_args.json, training_log.json (loss/accuracy per logged step).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import embedding  # noqa: E402
import harness  # noqa: E402
from debias_lora import lora_math  # noqa: E402
from debias_lora.pairs import MODES, load_pairs  # noqa: E402

DEFAULT_MODEL = "xxccho/margin_reg_baseline/checkpoint-2460"


def offline_base_path() -> Path:
    """The offline base: the style-biased tiny reward model that demo_offline.py trains."""
    return HERE / "results-offline" / "biased_base"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=f"base reward model or LoRA-adapter base (default "
                        f"{DEFAULT_MODEL}; offline: results-offline/biased_base)")
    parser.add_argument("--data", default=None, help="pairs JSONL (default data/pairs_train.jsonl)")
    parser.add_argument("--pair-mode", default="style", choices=MODES)
    parser.add_argument("--direction", default="undesired", choices=("undesired", "desired"),
                        help="undesired swaps chosen and rejected (the adapter learns the bias)")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--output", default=None, help="adapter folder (default results/forget_lora_<mode>_<direction>)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimiser step and process")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per conversation (left-truncated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-r", type=int, default=lora_math.LORA_R)
    parser.add_argument("--lora-alpha", type=int, default=lora_math.LORA_ALPHA)
    parser.add_argument("--lora-dropout", type=float, default=lora_math.LORA_DROPOUT)
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--dtype", default=None, help="model dtype (default bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs of the mode")
    parser.add_argument("--log-every", type=int, default=10, help="optimiser steps between log lines")
    parser.add_argument("--offline", action="store_true", help="tiny biased model and generated pairs")
    parser.add_argument("--overwrite", action="store_true", help="replace an adapter in --output that was "
                        "trained with other settings")
    return harness.cli_args(parser, argv)


# -----------------------------------------------------------------------------
# data


def tokenize_pairs(pairs: list[dict], tokenizer, max_length: int, swap: bool) -> list[tuple[list[int], list[int]]]:
    """(chosen ids, rejected ids) per pair, rendered with the chat template; `swap` exchanges them."""
    out = []
    for p in pairs:
        chosen = embedding.render_ids(tokenizer, embedding.conversation(p["prompt"], p["chosen"]), max_length)
        rejected = embedding.render_ids(tokenizer, embedding.conversation(p["prompt"], p["rejected"]), max_length)
        out.append((rejected, chosen) if swap else (chosen, rejected))
    return out


class PairCollator:
    """A batch of pairs -> right-padded input_ids/attention_mask [2b, T]: the b chosen rows, then the b
    rejected rows."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch):
        rows = [c for c, _ in batch] + [r for _, r in batch]
        width = max(len(x) for x in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, x in enumerate(rows):
            ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class LastTokenReward(torch.nn.Module):
    """r [n] float32 = score(final hidden state at the last real token), read from the attention mask
    (right padding), the same reward the engine's score_conversations gives. Wraps a plain model or a
    PeftModel, so accelerate/DDP sees one module whose forward runs every trainable parameter."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        backbone, head = lora_math.reward_parts(self.model)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = attention_mask.sum(1) - 1
        return head(hidden[torch.arange(len(last), device=hidden.device), last]).squeeze(-1).float()


def bradley_terry_loss(margin: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(margin) over pairs; margin [b] = r(chosen) - r(rejected)."""
    return -torch.nn.functional.logsigmoid(margin).mean()


# -----------------------------------------------------------------------------
# training


def train_bradley_terry(model, tokenized: list, pad_id: int, *, epochs: float, learning_rate: float,
                        batch_size: int, seed: int, accelerator=None, gradient_accumulation_steps: int = 1,
                        warmup_ratio: float = 0.03, weight_decay: float = 0.0, log_every: int = 10,
                        desc: str = "train") -> tuple[torch.nn.Module, list[dict]]:
    """Train the trainable parameters of `model` (a PeftModel: its LoRA; a plain model: everything
    trainable) on (chosen ids, rejected ids) pairs with the Bradley-Terry loss; AdamW, linear warmup
    then linear decay. Returns (the unwrapped model, log rows {step, epoch, loss, accuracy, lr}), with
    loss/accuracy averaged over the pairs since the previous log row, gathered from every process
    (accuracy: margin > 0 strictly; a tie counts as wrong)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = accelerator or Accelerator(gradient_accumulation_steps=gradient_accumulation_steps)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(tokenized, batch_size=batch_size, shuffle=True, generator=generator,
                                         collate_fn=PairCollator(pad_id), drop_last=False)
    wrapper = LastTokenReward(model)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    wrapper, optimizer, loader = accelerator.prepare(wrapper, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / accelerator.gradient_accumulation_steps)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    warmup = int(warmup_ratio * total_steps)

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    wrapper.train()
    log, step, sums = [], 0, [0.0, 0.0, 0]
    start = time.time()
    pbar = tqdm(total=total_steps, desc=desc, disable=not accelerator.is_main_process, dynamic_ncols=True)
    done = False
    epoch = 0
    while not done:
        for batch in loader:
            with accelerator.accumulate(wrapper):
                rewards = wrapper(batch["input_ids"], batch["attention_mask"])
                half = rewards.shape[0] // 2
                margin = rewards[:half] - rewards[half:]
                loss = bradley_terry_loss(margin)
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:   # one schedule step per optimiser step
                    scheduler.step()
                optimizer.zero_grad()
            gathered = accelerator.gather_for_metrics(margin.detach())
            sums[0] += float(-torch.nn.functional.logsigmoid(gathered).sum())
            sums[1] += float((gathered > 0).sum())
            sums[2] += gathered.numel()
            if accelerator.sync_gradients:
                step += 1
                pbar.update(1)
                if step % log_every == 0 or step == total_steps:
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                           "loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2],
                           "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - start, 1)}
                    log.append(row)
                    pbar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.3f}")
                    if accelerator.is_main_process:
                        pbar.write(f"{desc} step {step}/{total_steps} epoch {row['epoch']:.2f} "
                                   f"loss {row['loss']:.4f} acc {row['accuracy']:.3f} lr {row['lr']:.2e}")
                    sums = [0.0, 0.0, 0]
                if step >= total_steps:
                    done = True
                    break
        epoch += 1
    pbar.close()
    wrapper.eval()
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(wrapper).model, log


def check_output(output: Path, recipe: dict, overwrite: bool) -> None:
    """Before any training: refuse to replace an adapter in `output` that another recipe (settings or
    pairs) trained, unless overwrite, naming the differences."""
    try:
        old = json.loads((output / "training_args.json").read_text())
    except (OSError, ValueError):
        old = None
    if not (output / "adapter_config.json").exists() or overwrite:
        return
    changed = ", ".join(f"{k}: {(old or {}).get(k)!r} -> {v!r}" for k, v in recipe.items()
                        if (old or {}).get(k) != v)
    if changed:
        raise SystemExit(f"error: {output} holds a forget LoRA trained otherwise ({changed}). Run with --overwrite "
                         f"to replace it, or give another --output.")


def main(argv=None) -> Path:
    args = parse_args(argv)
    data_path, results_path = harness.script_dirs(__file__, harness.Settings(data_dir="data", results_dir="results", offline=args.offline),
                                                  check_writable=False)    # it writes --output: checked below
    if args.model is None:
        args.model = str(harness.require_file(offline_base_path(), "python demo_offline.py")) \
            if args.offline else DEFAULT_MODEL
    data = Path(args.data) if args.data else harness.require_file(
        data_path / "pairs_train.jsonl", "python build_pairs.py" + (" --offline" if args.offline else ""))
    output = Path(args.output) if args.output else results_path / f"forget_lora_{args.pair_mode}_{args.direction}"
    harness.require_writable(output, "--output=...")
    recipe = {k: v for k, v in vars(args).items() if k not in ("settings", "output", "log_every", "overwrite")}
    recipe.update(data=str(data), data_sha256=harness.file_sha256(data))
    check_output(output, recipe, args.overwrite)

    pairs = load_pairs(data, args.pair_mode)[: args.limit]        # checked before the model is loaded
    if not pairs:
        raise SystemExit(f"error: {data} has no pairs of mode {args.pair_mode!r}")

    from accelerate import Accelerator
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
    dtype = args.dtype or ("bfloat16" if accelerator.device.type == "cuda" else "float32")
    model, tokenizer = lora_math.load_base_model(args.model, dtype=dtype, device=str(accelerator.device))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = lora_math.new_forget_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout)

    tokenized = tokenize_pairs(pairs, tokenizer, args.max_length, swap=args.direction == "undesired")
    if accelerator.is_main_process:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"base {args.model}; {len(pairs)} {args.pair_mode} pairs ({args.direction}); "
              f"{n_train:,} trainable LoRA parameters; {accelerator.num_processes} process(es) on "
              f"{accelerator.device}")
    model, log = train_bradley_terry(
        model, tokenized, tokenizer.pad_token_id, epochs=args.epochs, learning_rate=args.learning_rate,
        batch_size=args.batch_size, seed=args.seed, accelerator=accelerator,
        gradient_accumulation_steps=args.gradient_accumulation_steps, warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, log_every=args.log_every, desc=f"forget-lora {args.pair_mode}")
    if accelerator.is_main_process:
        settings = dict(recipe, output=str(output), n_pairs=len(pairs), processes=accelerator.num_processes,
                        dtype=dtype)
        lora_math.save_forget_lora(model, output, extra=settings)
        tokenizer.save_pretrained(str(output))
        (output / "training_log.json").write_text(json.dumps(log, indent=1))
        harness.umask_permissions(output)
        final = log[-1] if log else {}
        print(f"saved the {args.pair_mode} forget LoRA to {output} (last logged loss "
              f"{final.get('loss', float('nan')):.4f}, accuracy {final.get('accuracy', float('nan')):.3f})")
    accelerator.wait_for_everyone()
    return output


if __name__ == "__main__":
    main()

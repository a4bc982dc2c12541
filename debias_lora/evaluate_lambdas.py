"""Sweep lambda for base - lambda * LoRA: RewardBench 2 and the GSM8K style/correctness matrix per lambda.

    cd debias_lora && python evaluate_lambdas.py \
        --base_model "xxccho/margin_reg_baseline/checkpoint-2460" \
        --lora_path "xxccho/rm-debias-loras-llama-margin-reg/style" \
        --output_path results/rb2_style.json \
        --lambdas -1.0 -0.5 -0.2 0.0 0.1 0.2 0.3 0.5 0.7 1.0 2.0 3.0
    cd debias_lora && python evaluate_lambdas.py --offline    # the demo's biased tiny RM and style LoRA

lambda = +x subtracts x * LoRA (every LoRA layer's scaling = -x * alpha / r); 0 is the base; -1 is the
base plus the adapter as trained. One model is loaded once and only the scaling changes per lambda.

Style/correctness matrix (RM-Bench convention) on held-out variants (build_pairs.py's
variants_test.jsonl): acc[i][j] = P(score(correct response in style i) > score(incorrect response in
style j)) over questions, styles ordered concise, detailed plain, detailed markdown; a tie counts as
wrong. hard = mean of the upper triangle (the correct answer is plainer than the wrong one: style
against correctness), normal = mean of the diagonal (same style), easy = mean of the lower triangle.
RewardBench 2: the official and the original eval_rb2.py's figures from rewardbench2.evaluate_reward_model (the
scoring eval_rb2 uses), on --rb2_dataset (hub allenai/reward-bench-2; offline: the generated file).

Writes --output_path (JSON: settings and per-lambda figures), and beside it <stem>.md (table) and
<stem>.png (hard/normal/easy and RB2 overall against lambda).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import embedding  # noqa: E402
import harness  # noqa: E402
import utils  # noqa: E402
from debias_lora import lora_math  # noqa: E402
from debias_lora.pairs import STYLES  # noqa: E402

DEFAULT_BASE = "xxccho/margin_reg_baseline/checkpoint-2460"
DEFAULT_LORA = "xxccho/rm-debias-loras-llama-margin-reg/style"
PUBLISHED_LAMBDAS = [  # the grid of the published forget LoRAs' card
    -1.0, -0.5, -0.2, 0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0, 3.0]
RB2_HUB = "allenai/reward-bench-2"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default=None, help=f"base RM or LoRA-adapter base (default {DEFAULT_BASE})")
    parser.add_argument("--lora_path", default=None, help=f"forget LoRA folder or hub repo/subfolder "
                        f"(default {DEFAULT_LORA}; offline: results-offline/forget_lora_style_undesired)")
    parser.add_argument("--output_path", default=None, help="result JSON (default results/lambda_sweep.json)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=None,
                        help=f"lambda = +x subtracts x * LoRA (default {PUBLISHED_LAMBDAS})")
    parser.add_argument("--variants", default=None, help="held-out variants JSONL (default data/variants_test.jsonl)")
    parser.add_argument("--limit_questions", type=int, default=None, help="first N held-out questions only")
    parser.add_argument("--rb2_dataset", default=None, help=f"RewardBench 2: hub id or local .jsonl/.parquet "
                        f"(default {RB2_HUB}; offline: the generated file)")
    parser.add_argument("--rb2_limit", type=int, default=None, help="first N RewardBench 2 rows only")
    parser.add_argument("--skip_rb2", action="store_true", help="only the style/correctness matrix")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=2048, help="tokens per conversation (left-truncated)")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--offline", action="store_true", help="tiny biased model, generated data")
    return harness.cli_args(parser, argv)


# -----------------------------------------------------------------------------
# the style/correctness matrix


def load_variants(path, limit_questions: int | None = None, remade_by: str = "python build_pairs.py") -> list[dict]:
    """Variants rows of questions that have all 6 (style x correctness), in file order; a file without
    one complete question exits (nothing would be measured)."""
    from debias_lora.pairs import read_jsonl
    rows = read_jsonl(path, remade_by)
    if any(not {"question_id", "style_index", "correct", "prompt", "response"} <= set(r) for r in rows):
        raise SystemExit(f"error: {path} is not a variants file of build_pairs.py; run `{remade_by}`")
    by_question: dict[str, list] = {}
    for row in rows:
        by_question.setdefault(row["question_id"], []).append(row)
    complete = [q for q, rs in by_question.items()
                if {(r["style_index"], r["correct"]) for r in rs} == {(i, c) for i in range(3) for c in (True, False)}]
    complete = complete[:limit_questions]
    if not complete:
        raise SystemExit(f"error: {path} holds no question with all 6 variants (style x correctness); nothing to "
                         f"evaluate and nothing was written. Run `{remade_by}`")
    return [r for q in complete for r in by_question[q]]


def variant_scores(variants: list[dict], scores) -> np.ndarray:
    """Scores arranged as [questions, 3 styles, 2] (last axis: 0 = correct, 1 = incorrect)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    index = {q: i for i, q in enumerate(dict.fromkeys(r["question_id"] for r in variants))}
    table = np.full((len(index), len(STYLES), 2), np.nan)
    for row, score in zip(variants, scores):
        table[index[row["question_id"]], row["style_index"], 0 if row["correct"] else 1] = score
    if np.isnan(table).any():
        raise ValueError("every question needs all 6 variants (use load_variants)")
    return table


def style_matrix(table: np.ndarray) -> dict:
    """RM-Bench figures of a [questions, 3, 2] score table: acc[i][j] = P(correct in style i scores
    strictly above incorrect in style j); hard = upper triangle mean, normal = diagonal, easy = lower
    triangle; plus how often the markdown variant beats the concise one at equal correctness."""
    correct, wrong = table[:, :, 0], table[:, :, 1]
    acc = (correct[:, :, None] > wrong[:, None, :]).mean(0)          # [3, 3]
    upper, lower = np.triu_indices(3, 1), np.tril_indices(3, -1)
    markdown_wins = float((table[:, 2, :] > table[:, 0, :]).mean())
    return {"matrix": acc.round(4).tolist(), "hard": float(acc[upper].mean()),
            "normal": float(np.diag(acc).mean()), "easy": float(acc[lower].mean()),
            "average": float(acc.mean()), "markdown_over_concise": markdown_wins,
            "n_questions": int(table.shape[0])}


def score_variants(model, tokenizer, variants: list[dict], batch_size: int, max_length: int) -> np.ndarray:
    conversations = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
                     for r in variants]
    scores = embedding.score_conversations(model, tokenizer, conversations, batch_size=batch_size,
                                           max_length=max_length)
    return variant_scores(variants, scores[:, 0].numpy())


# -----------------------------------------------------------------------------
# RewardBench 2


def rb2_rows(dataset: str, limit: int | None) -> list[dict]:
    """RewardBench 2 rows (hub id, local .jsonl/.parquet file or folder), loaded once for the sweep."""
    import rewardbench2
    try:
        return rewardbench2.load_rows(dataset, limit=limit)
    except ValueError as e:       # rows that are not RewardBench 2's: the message names the row
        raise SystemExit(str(e)) from None


def rb2_figures(model, tokenizer, rows, batch_size: int, max_length: int) -> dict:
    """Official and original RewardBench 2 figures of an already-loaded seqclf model (PeftModel included),
    through the scoring eval_rb2 uses."""
    import rewardbench2
    return rewardbench2.evaluate_reward_model(model, tokenizer, rows, batch_size=batch_size,
                                              max_length=max_length)


def _overall(rb2: dict | None) -> float | None:
    """The official overall RewardBench 2 score (the model's own head)."""
    if not rb2:
        return None
    return float(rb2["official"]["overall"][0])


# -----------------------------------------------------------------------------
# the sweep


def sweep(model, tokenizer, lambdas, variants, rb2_dataset=None, batch_size=8, max_length=2048,
          verbose=True) -> list[dict]:
    """Per lambda: set the scaling of `model` (a PeftModel with the forget LoRA), then the matrix and
    RewardBench 2 figures. The model is left at the last lambda."""
    results = []
    for lam in lambdas:
        start = time.time()
        lora_math.set_lambda(model, lam)
        row = {"lambda": float(lam)}
        row.update(style_matrix(score_variants(model, tokenizer, variants, batch_size, max_length)))
        if rb2_dataset is not None:
            row["rb2"] = rb2_figures(model, tokenizer, rb2_dataset, batch_size, max_length)
            row["rb2_overall"] = _overall(row["rb2"])
            row["rb2_original_overall_strict"] = float(row["rb2"]["original"]["overall_strict"][0])
            row["rb2_original_overall_weighted"] = float(row["rb2"]["original"]["overall_weighted"][0])
        row["seconds"] = round(time.time() - start, 1)
        if verbose:
            rb2 = f" rb2 {row['rb2_overall']:.3f}" if row.get("rb2_overall") is not None else ""
            print(f"lambda {lam:+.2f}: hard {row['hard']:.3f} normal {row['normal']:.3f} easy {row['easy']:.3f}"
                  f" markdown>concise {row['markdown_over_concise']:.3f}{rb2} ({row['seconds']} s)", flush=True)
        results.append(row)
    return results


def markdown_table(results: list[dict]) -> str:
    has_rb2 = any(r.get("rb2_overall") is not None for r in results)
    head = ("| lambda | hard | normal | easy | average | markdown > concise |"
            + (" RB2 official overall | RB2 original overall STRICT | RB2 original overall WEIGHTED |"
               if has_rb2 else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        line = (f"| {r['lambda']:+.2f} | {r['hard']:.3f} | {r['normal']:.3f} | {r['easy']:.3f} | "
                f"{r['average']:.3f} | {r['markdown_over_concise']:.3f} |")
        if has_rb2:
            line += (f" {r['rb2_overall']:.3f} | {r['rb2_original_overall_strict']:.3f} | "
                     f"{r['rb2_original_overall_weighted']:.3f} |"
                     if r.get("rb2_overall") is not None else " - | - | - |")
        lines.append(line)
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lambdas = [r["lambda"] for r in results]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, marker in (("hard", "o"), ("normal", "s"), ("easy", "^")):
        ax.plot(lambdas, [r[key] for r in results], marker=marker, label=key)
    if any(r.get("rb2_overall") is not None for r in results):
        ax.plot(lambdas, [r.get("rb2_overall") if r.get("rb2_overall") is not None else np.nan for r in results],
                marker="D", linestyle="--", label="RB2 overall")
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("lambda (debiased = base - lambda * LoRA)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: list[dict], settings: dict, output_path: Path, title: str) -> None:
    harness.write_json_atomic(output_path, {"settings": settings, "results": results})
    harness.write_text_atomic(output_path.with_suffix(".md"), f"{title}\n\n{markdown_table(results)}\n")
    plot(results, output_path.with_suffix(".png"), title)


def base_and_lora(base_model, lora_path, offline: bool, results_path: Path) -> tuple[str, str]:
    """--base_model / --lora_path, defaulting to the published ones, or offline to the demo's biased
    tiny RM and its style forget LoRA (made by demo_offline.py)."""
    if offline:
        from debias_lora.train_forget_lora import offline_base_path
        made_by = "python demo_offline.py"
        base_model = base_model or str(harness.require_file(offline_base_path(), made_by))
        lora_path = lora_path or str(harness.require_file(results_path / "forget_lora_style_undesired", made_by))
    return base_model or DEFAULT_BASE, lora_path or DEFAULT_LORA


def main(argv=None) -> dict:
    args = parse_args(argv)
    data_path, results_path = harness.script_dirs(__file__, harness.Settings(data_dir="data", results_dir="results", offline=args.offline),
                                                  check_writable=False)    # it writes --output_path: checked below
    args.base_model, args.lora_path = base_and_lora(args.base_model, args.lora_path, args.offline, results_path)
    args.lambdas = args.lambdas if args.lambdas is not None else PUBLISHED_LAMBDAS
    output_path = Path(args.output_path) if args.output_path else results_path / "lambda_sweep.json"
    harness.require_writable(output_path.parent, "--output_path=...")
    variants_path = Path(args.variants) if args.variants else harness.require_file(
        data_path / "variants_test.jsonl", "python build_pairs.py" + (" --offline" if args.offline else ""))
    variants = load_variants(variants_path, args.limit_questions)     # checked before the model is loaded
    rb2_dataset = None
    if not args.skip_rb2:
        if args.rb2_dataset is None and args.offline:
            from offline import rewardbench2 as offline_rewardbench2
            args.rb2_dataset = str(offline_rewardbench2.dataset_path(data_path / "rewardbench2"))
        rb2_dataset = rb2_rows(args.rb2_dataset or RB2_HUB, args.rb2_limit)

    device = args.device or str(utils.get_device())
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    model, tokenizer = lora_math.load_base_model(args.base_model, dtype=dtype, device=device)
    model = lora_math.apply_forget_lora(model, args.lora_path)
    print(f"base {args.base_model}, forget LoRA {args.lora_path}: {len(variants) // 6} held-out questions, "
          f"lambdas {args.lambdas}")
    results = sweep(model, tokenizer, args.lambdas, variants, rb2_dataset, args.batch_size, args.max_length)
    settings = dict({k: v for k, v in vars(args).items() if k != "settings"}, output_path=str(output_path), variants=str(variants_path), dtype=dtype,
                    device=device)
    title = f"base - lambda * LoRA ({Path(args.lora_path).name}) on {Path(args.base_model).name}"
    write_results(results, settings, output_path, title)
    print(markdown_table(results))
    print(f"wrote {output_path} (+ .md, .png)")
    return {"settings": settings, "results": results}


if __name__ == "__main__":
    main()

"""Evaluate a reward model, or a learned LoRe basis used as B reward heads, on RewardBench 2.

    cd PRISM && python eval_rb2.py --mode seqclf                                  # Skywork's own head
    cd PRISM && python eval_rb2.py --rm_head PRISM_V_lore_K_5_alpha_10000.0.pt    # every basis column
    cd PRISM && python eval_rb2.py --offline                                      # tiny model, generated data
    cd PRISM && python eval_rb2.py --offline --rm_head PRISM_V_lore_K_5_alpha_10000.0.pt
    cd PRISM && python eval_rb2.py --rm_head PRISM_V_lore_K_5_alpha_10000.0.pt \
        --rm_weights PRISM_W_lore_seen_5_10000.0.pt                          # the average seen user's reward

Reads: --dataset (default the hub's allenai/reward-bench-2, split test; or a local .jsonl / .parquet
with the same columns; with --offline a generated file, data/rewardbench2-offline/test.jsonl, built on
first use), the model (--model; --offline: the built-in tiny model) and, in lmhead mode, the head
file --rm_head: .npy/.pt/.pth/.bin/.safetensors holding (H,), (H, 1) or (H, B), or a dict (pick with
--head_key). A relative --rm_head is looked up in the current folder, then in results/ (results-offline/
with --offline), where train_basis.py saves PRISM_V_lore_K_{K}_alpha_{alpha}.pt. --rm_weights must come from
the same fit as --rm_head (its .safetensors twin records the sha256 of the V it goes with): a W of another
fit is refused before the model is loaded.
Writes: the original's table and the official table on stdout, and into results/ (results-offline/):
rb2_<tag>.json (all figures, settings) and rb2_<tag>.md (both tables), tag = "seqclf" or
"lmhead_<head file stem>"; --save_json/--save_csv choose other paths (CSV: one row per head).

Modes: seqclf loads the sequence-classification model and scores with its own head; lmhead loads the
backbone alone (AutoModel: no LM head, no score head) and scores final hidden states @ head (+ bias),
all B heads in one pass; auto = lmhead when --rm_head is given, else seqclf. Figures: see
rewardbench2.py (official RewardBench 2 scoring with 1/k tie credit and the official Ties formula,
and the original eval_rb2.py's strict figures, Overall STRICT and Overall WEIGHTED, per head).
"""
import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import harness  # noqa: E402
import offline  # noqa: E402
import rewardbench2 as rb2  # noqa: E402
from offline import rewardbench2 as offline_rewardbench2  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"HF model id or local path (default {rb2.DEFAULT_MODEL}; "
                   "--offline: the built-in tiny model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer id or path (default: --model)")
    p.add_argument("--mode", default="auto", choices=["auto", "seqclf", "lmhead"])
    p.add_argument("--rm_head", default=None, help="head file (.npy/.pt/.pth/.bin/.safetensors), (H,), (H,1), (H,B)")
    p.add_argument("--head_key", default=None, help="tensor key when --rm_head is a dict checkpoint")
    p.add_argument("--rm_weights", default=None, help="a W file of train_basis.py ([users, B] simplex weights): "
                   "score the one head V @ mean_user(W), the average seen user's LoRe reward, instead of the "
                   "B columns")
    p.add_argument("--head_bias", default=None, help="bias: a number, or a file of shape () or (B,)")
    p.add_argument("--dataset", default=None, help=f"hub id or local .jsonl/.parquet (default {rb2.HUB_DATASET}; "
                   "--offline: a generated file)")
    p.add_argument("--split", default="test")
    p.add_argument("--subset", default=None, help=" | ".join(rb2.SUBSETS))
    p.add_argument("--limit", type=int, default=None, help="first N prompts only (smoke test)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=2048)
    p.add_argument("--truncation_side", default="left", choices=["left", "right"],
                   help="left keeps the end of the response (the scored token); BOS is always kept")
    p.add_argument("--device", default=None, help="cuda | cpu | cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--save_csv", default=None, help="per-head summary CSV")
    p.add_argument("--save_json", default=None, help="all figures as JSON (default results/rb2_<tag>.json)")
    p.add_argument("--top_k", type=int, default=10, help="heads shown in the ranking tables")
    p.add_argument("--verbose_failures", action="store_true", help="print the rows the best head gets wrong")
    p.add_argument("--offline", action="store_true", help="built-in tiny model and generated data, no network")
    p.add_argument("--results_dir", default="results", help="folder of the default outputs (default: results "
                   "beside this script, results-offline with --offline)")
    p.add_argument("--data_dir", default="data/rewardbench2", help="folder of the generated RewardBench 2 file "
                   "with --offline (default: data/rewardbench2-offline beside this script)")
    return harness.cli_args(p, argv)


def check_same_fit(head_path: Path, weights_path: Path, head_key, made_by: str) -> None:
    """Exit unless the W file was fitted together with the V file (weights of another fit, e.g. alpha 0's
    W on alpha 1e4's V, give a meaningless head and used to overwrite the right result file). W's fit record
    names its V by the sha256 of the tensor; records written before that must equal V's record."""
    fitted = harness.fit_record(weights_path, made_by)
    mismatch = "give the W file of the same fit (<DATASET>_W_lore_seen_<K>_<alpha>.pt beside " \
               "<DATASET>_V_lore_K_<K>_alpha_<alpha>.pt); nothing was written"
    if "basis_sha256" in fitted:
        used = harness.tensor_sha256(rb2.read_head_tensor(head_path, head_key))
        if used != fitted["basis_sha256"]:
            raise SystemExit(f"error: {weights_path} was fitted with another basis than {head_path} (the basis it "
                             f"records has sha256 {fitted['basis_sha256'][:12]}..., this one {used[:12]}...): {mismatch}")
        return
    basis = harness.fit_record(head_path, made_by)
    if basis != fitted:
        changed = ", ".join(f"{k}: {basis.get(k)!r} (V) vs {fitted.get(k)!r} (W)" for k in sorted({*basis, *fitted})
                            if basis.get(k) != fitted.get(k))
        raise SystemExit(f"error: {weights_path} and {head_path} come from different fits ({changed}): {mismatch}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    # the folder checked is the result file's, which --save_json may move out of results/
    data_path, results_path = harness.script_dirs(__file__, args.settings, check_writable=False)
    harness.require_writable(Path(args.save_json).parent if args.save_json else results_path,
                             "--save_json=..." if args.save_json else "--results_dir=...")
    if args.save_csv:
        harness.require_writable(Path(args.save_csv).parent, "--save_csv=...")
    mode = args.mode if args.mode != "auto" else ("lmhead" if args.rm_head else "seqclf")
    if mode == "lmhead" and not args.rm_head:
        raise SystemExit("error: --mode lmhead needs --rm_head (a head file); use --mode seqclf for the "
                         "model's own head")
    if mode == "seqclf" and (args.rm_head or args.head_bias is not None):
        raise SystemExit("error: --rm_head/--head_bias are for lmhead mode; drop --mode seqclf (or use auto)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")

    head_path = weights_path = None
    if args.rm_head:  # check the head file before loading an 8B model
        head_path = rb2.resolve_file(args.rm_head, [results_path])
        columns = rb2.load_head(head_path, args.head_key).shape[1]
        if args.rm_weights:
            weights_path = rb2.resolve_file(args.rm_weights, [results_path])
            mean_user = rb2.load_head(weights_path, what="the --rm_weights file").mean(0, keepdim=True).T  # [B, 1]
            if mean_user.shape[0] != columns:
                raise SystemExit(f"error: {weights_path} has {mean_user.shape[0]} columns, {head_path} {columns}: "
                                 f"give the W file of the same fit (<DATASET>_W_lore_seen_<K>_<alpha>.pt)")
            check_same_fit(head_path, weights_path, args.head_key,
                           harness.command_line("train_basis.py", args.settings, keep=("offline", "results_dir")))
    elif args.rm_weights:
        raise SystemExit("error: --rm_weights weighs the columns of --rm_head: give both")
    if args.model is None:        # after the checks: the offline model and data are built on first use
        args.model = offline.tiny_model_path() if args.offline else rb2.DEFAULT_MODEL
    if args.dataset is None:
        args.dataset = str(offline_rewardbench2.dataset_path(data_path)) if args.offline else rb2.HUB_DATASET
    rows = rb2.load_rows(args.dataset, split=args.split, subset=args.subset, limit=args.limit)

    print(f"model {args.model} ({mode}, {dtype}, {device}); dataset {args.dataset} [{args.split}]: "
          f"{len(rows)} prompts, {sum(len(r['chosen']) + len(r['rejected']) for r in rows)} responses")
    model, tokenizer = rb2.load_scoring_model(args.model, mode, dtype=dtype, device=device,
                                              tokenizer_name=args.tokenizer)
    head = bias = None
    if mode == "lmhead":
        head = rb2.load_head(head_path, args.head_key, hidden_size=rb2.hidden_size(model))
        if weights_path is not None:
            head = head @ mean_user
        bias = rb2.load_bias(args.head_bias, head.shape[1])
        print(f"head {head_path}: {head.shape[0]} x {head.shape[1]}"
              + ("" if bias is None else f", bias {bias.tolist()[:8]}"))

    start = time.time()
    scores = rb2.score_rows(model, tokenizer, rows, head=head, bias=bias, batch_size=args.batch_size,
                            max_length=args.max_length, truncation_side=args.truncation_side, progress=True)
    seconds = time.time() - start
    figures = rb2.compute_figures(rows, scores)

    original_table = rb2.format_original_table(figures, args.top_k)
    official_table = rb2.format_official_table(figures, args.top_k)
    print(original_table)
    print()
    print(official_table)
    print(f"scored {len(rows)} prompts in {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.1f} prompts/s)")
    if args.verbose_failures:
        best = figures["official"]["best_head"]
        lines = rb2.failures(rows, scores, head=best)
        print(f"\n{len(lines)} failing prompts for head {best} (strict rule):")
        print("\n".join(lines))

    tag = "seqclf" if mode == "seqclf" else f"lmhead_{head_path.stem}" + ("_mean_user" if weights_path else "")
    settings = {**{k: v for k, v in vars(args).items() if k != "settings"}, "mode": mode, "dtype": dtype, "device": device,
                "rm_head": None if head_path is None else str(head_path),
                "rm_weights": None if weights_path is None else str(weights_path)}
    report = {"settings": settings, "seconds": seconds, **figures}
    json_path = Path(args.save_json) if args.save_json else results_path / f"rb2_{tag}.json"
    rb2.write_json(report, json_path)
    md_path = json_path.with_suffix(".md")
    harness.write_text_atomic(md_path, f"# RewardBench 2: {tag}\n\nmodel `{args.model}`, dataset `{args.dataset}` "
                            f"[{args.split}], {len(rows)} prompts\n\n```\n{original_table}\n```\n\n{official_table}\n")
    print(f"wrote {json_path} and {md_path}")
    if args.save_csv:
        print(f"wrote {rb2.write_csv(figures, args.save_csv)}")
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:       # rows or heads that are not RewardBench 2's: the message says which
        raise SystemExit(str(e)) from None

"""Build the GSM8K style/correctness variants and the preference pairs of the three pair modes.

    cd debias_lora && python build_pairs.py                                   # hub openai/gsm8k (main)
    cd debias_lora && python build_pairs.py --source /path/to/gsm8k           # local train.jsonl/test.jsonl
    cd debias_lora && python build_pairs.py --source questions.jsonl --splits train   # one local file
    cd debias_lora && python build_pairs.py --offline                         # generated problems

Per question: 6 variants (concise / detailed plain / detailed markdown x correct / incorrect with an
arithmetic slip carried through to a wrong final answer) and 3 pairs per mode (style, correctness,
cross; see pairs.py for the exact definitions).

Reads: GSM8K rows {question, answer} (hub `openai/gsm8k` config `main`, a folder with <split>.jsonl,
or one .jsonl file); offline: writes generated rows to data-offline/gsm8k/<split>.jsonl first.
Writes (data folder, default debias_lora/data, or data-offline):
  pairs_<split>.jsonl     question_id, mode, prompt, chosen, rejected, chosen_style, rejected_style,
                          chosen_correct, rejected_correct
  variants_<split>.jsonl  question_id, prompt, style, style_index, correct, response, final_answer
  pairs_summary.json      pair counts per split and mode, skipped questions
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import harness  # noqa: E402
from debias_lora import pairs as P  # noqa: E402

HUB_DATASET = "openai/gsm8k"
OFFLINE_QUESTIONS = {"train": 400, "test": 100}   # generated questions per split with --offline


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=HUB_DATASET,
                        help="hub dataset id, a folder with <split>.jsonl, or one .jsonl file (default %(default)s)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--data_dir", default="data", help="output folder (default: data beside this script, data-offline with --offline)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N questions of each split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arithmetic slips")
    parser.add_argument("--offline", action="store_true", help="generated GSM8K-style problems, no network")
    parser.add_argument("--offline_questions", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"),
                        help=f"generated questions per split (default {tuple(OFFLINE_QUESTIONS.values())})")
    return harness.cli_args(parser, argv)


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in harness.read_jsonl(path, "a GSM8K file has one {question, answer} object per line")]


def load_rows(source: str, split: str, n_splits: int) -> list[dict]:
    """GSM8K rows of one split from a local folder/file or the hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        return read_jsonl(harness.require_file(path / f"{split}.jsonl", f"a GSM8K {split}.jsonl in {path}"))
    if path.is_file():
        if n_splits != 1:
            raise SystemExit("error: a single .jsonl --source holds one split: pass --splits NAME")
        return read_jsonl(path)
    if path.suffix == ".jsonl" or source.startswith((".", "/")):
        raise SystemExit(f"error: {source} does not exist")
    what = f"{source} (or give a local copy as --source /path/to/gsm8k: a folder with train.jsonl/test.jsonl)"
    if not harness.hub_reachable():
        raise harness.hub_unreachable(what, "python build_pairs.py --offline")
    from datasets import load_dataset
    try:
        return [dict(row) for row in load_dataset(source, "main", split=split)]
    except (ConnectionError, OSError) as e:
        raise harness.hub_unreachable(what, "python build_pairs.py --offline", e) from None


def main(argv=None) -> dict:
    args = parse_args(argv)
    data_path, _ = harness.script_dirs(__file__, args.settings)
    data_path.mkdir(parents=True, exist_ok=True)
    source = args.source
    if args.offline:
        from offline.gsm8k import write_jsonl as write_generated
        counts = dict(zip(("train", "test"), args.offline_questions or OFFLINE_QUESTIONS.values()))
        raw = data_path / "gsm8k"
        for i, split in enumerate(args.splits):
            write_generated(raw / f"{split}.jsonl", counts.get(split, counts["test"]), seed=1000 + i)
        source = str(raw)
    summary = {"source": source, "seed": args.seed, "splits": {}}
    for split in args.splits:
        rows = load_rows(source, split, len(args.splits))[: args.limit]
        variants, pairs, skipped = P.build(rows, split, seed=args.seed)
        harness.write_jsonl_atomic(data_path / f"variants_{split}.jsonl", variants)
        harness.write_jsonl_atomic(data_path / f"pairs_{split}.jsonl", pairs)
        per_mode = dict(collections.Counter(p["mode"] for p in pairs))
        summary["splits"][split] = {"questions": len(rows), "used": len(rows) - len(skipped),
                                    "variants": len(variants), "pairs": per_mode, "skipped": skipped[:50],
                                    "n_skipped": len(skipped)}
        print(f"{split}: {len(rows)} questions ({len(skipped)} skipped), {len(variants)} variants, "
              f"pairs per mode {per_mode} -> {data_path / f'pairs_{split}.jsonl'}")
    (data_path / "pairs_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()

"""Reddit TLDR: per-worker (post, winning summary, losing summary) comparisons of BOTH HF splits, in one run.

    cd RedditTLDR && python prepare.py              # openai/summarize_from_feedback (hub parquet conversion)
    cd RedditTLDR && python prepare.py --offline    # generated rows in the same format (offline/tldr.py)

Reads: the hub dataset `openai/summarize_from_feedback`, config `comparisons`, through its parquet
conversion (`revision="refs/convert/parquet"`, what current `datasets` can load of this script-based
dataset), splits train and validation; offline: the generated raw files it writes first into
<data>/raw/comparisons/{train,validation}/0000.parquet (+ ground_truth.* beside them).
Writes (data folder): comparisons_train.parquet, comparisons_validation.parquet (columns worker,
post_id, post, winning, losing, split; rows in dataset order) and prepare_summary.json (counts).
Rows without a post (the CNN/DM articles of the validation split) take `info.article` as the text
(the original embedded the word "None"); they are counted, and so are the rows skipped for having no
text at all or a malformed comparison.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import harness  # noqa: E402
import tldr_data  # noqa: E402

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False             # True: generated rows (offline/tldr.py) instead of the hub, no network
data_dir = "data/tldr"
dataset = tldr_data.HUB_DATASET
dataset_config = tldr_data.HUB_CONFIG
dataset_revision = tldr_data.HUB_REVISION
seed = 0                    # offline generator: seed of texts, workers and planted labels
offline_workers = 60        # offline generator: regular workers (plus 2 tiny and 3 one-sided ones)
personal_scale = 1.0        # offline generator: strength of the workers' personal tastes (0: the null world, where
                            # every worker's reward is the shared head alone, with the same label noise)
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, _ = harness.script_dirs(__file__, settings)

data_files = None
if offline:
    import offline as generated
    from offline import tldr as offline_tldr
    from offline.planted import truth_files

    raw = data_path / "raw"
    data_files = {s: [str(raw / "comparisons" / s / "0000.parquet")] for s in tldr_data.HF_SPLITS}
    generated.ensure_generated(raw, "tldr", offline_tldr.GENERATOR_VERSION,
                               {"seed": seed, "n_workers": offline_workers, "personal_scale": personal_scale},
                               [*(Path(f[0]).relative_to(raw) for f in data_files.values()),
                                *truth_files(offline_tldr.GROUND_TRUTH)],
                               lambda: offline_tldr.generate(raw, seed=seed, n_workers=offline_workers,
                                                             personal_scale=personal_scale))

raw_splits = tldr_data.load_raw_splits(data_files, dataset, dataset_config, dataset_revision,
                                       offline_command=harness.command_line("prepare.py", settings) + " --offline")
summary = {"settings": settings, "splits": {}}
frames, workers = {}, {}
for split in tldr_data.HF_SPLITS:
    frames[split], counts = tldr_data.comparisons_from_rows(raw_splits[split])
    if not len(frames[split]):
        raise SystemExit(f"error: the {split} split gave no comparison ({counts}); nothing was written")
    workers[split] = set(frames[split]["worker"])
    summary["splits"][split] = counts
    print(f"{split}: {counts['rows']} rows ({counts['article_as_text']} without a post, their article used as "
          f"the text); skipped {counts['skipped_no_text']} without any text and {counts['skipped_malformed']} "
          f"malformed; kept {counts['comparisons']} comparisons of {counts['workers']} workers")
for split, frame in frames.items():
    tldr_data.write_parquet_atomic(frame, data_path / tldr_data.COMPARISONS_FILE.format(split=split))
summary["workers_in_both_splits"] = len(workers["train"] & workers["validation"])
print(f"workers in both splits: {summary['workers_in_both_splits']}; wrote "
      + ", ".join(tldr_data.COMPARISONS_FILE.format(split=s) for s in frames) + f" in {data_path}")
harness.write_json_atomic(data_path / tldr_data.PREPARE_SUMMARY_FILE, summary)

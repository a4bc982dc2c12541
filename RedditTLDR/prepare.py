"""Reddit TLDR: per-worker (post, winning summary, losing summary) comparisons of BOTH HF splits, in one run.

    cd RedditTLDR && python prepare.py              # openai/summarize_from_feedback (hub parquet conversion)
    cd RedditTLDR && python prepare.py --offline    # generated rows in the same format (offline/tldr.py)

Reads: the hub dataset `openai/summarize_from_feedback`, config `comparisons`, through its parquet
conversion (`revision="refs/convert/parquet"`, what current `datasets` can load of this script-based
dataset), splits train and validation; offline: the generated raw files it writes first into
data/tldr-offline/raw/comparisons/{train,validation}/0000.parquet (+ ground_truth.* beside them).
Writes (data folder): comparisons_train.parquet, comparisons_validation.parquet (columns worker,
post_id, post, winning, losing, split; rows in dataset order) and prepare_summary.json (counts).
Rows without a post (the CNN/DM articles of the validation split) take `info.article` as the text
(the original embedded the word "None"); they are counted, and so are the rows skipped for having no
text at all or a malformed comparison.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
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
offline_train_posts = 200   # offline generator: posts per HF split ...
offline_validation_posts = 80
offline_summaries_per_post = 6  # ... and candidate summaries per post (any two make a comparison)
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, _ = utils.script_dirs(__file__, data_dir, "results", offline)
data_path.mkdir(parents=True, exist_ok=True)

data_files = None
if offline:
    import json
    from offline import tldr as offline_tldr

    raw_dir = data_path / "raw"
    generator_args = dict(seed=seed, n_workers=offline_workers, train_posts=offline_train_posts,
                          validation_posts=offline_validation_posts,
                          summaries_per_post=offline_summaries_per_post)
    truth = raw_dir / "ground_truth.json"
    files = {s: [str(raw_dir / "comparisons" / s / "0000.parquet")] for s in tldr_data.HF_SPLITS}
    recorded = json.loads(truth.read_text()).get("generator_args", {}) if truth.exists() else {}
    same = all(recorded.get(k) == v for k, v in generator_args.items())
    if same and all(Path(f[0]).exists() for f in files.values()):
        print(f"offline raw rows already generated with these settings in {raw_dir}")
    else:
        print(f"generating offline TLDR rows into {raw_dir}")
        offline_tldr.generate(raw_dir, **generator_args)
    data_files = files

raw = tldr_data.load_raw_splits(data_files, dataset, dataset_config, dataset_revision)
summary = {"settings": settings, "splits": {}}
workers = {}
for split in tldr_data.HF_SPLITS:
    frame, counts = tldr_data.comparisons_from_rows(raw[split])
    out = data_path / tldr_data.COMPARISONS_FILE.format(split=split)
    tldr_data.write_parquet_atomic(frame, out)
    workers[split] = set(frame["worker"])
    summary["splits"][split] = counts
    print(f"{split}: {counts['rows']} rows ({counts['article_as_text']} without a post, their article used as "
          f"the text); skipped {counts['skipped_no_text']} without any text and {counts['skipped_malformed']} "
          f"malformed; kept {counts['comparisons']} comparisons of "
          f"{counts['workers']} workers -> {out}")
summary["workers_in_both_splits"] = len(workers["train"] & workers["validation"])
print(f"workers in both splits: {summary['workers_in_both_splits']}")
utils.write_json_atomic(data_path / tldr_data.PREPARE_SUMMARY_FILE, summary)

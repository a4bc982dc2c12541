"""Load PersonalLLM (prompts, 8 responses each, 10 reward models' scores), check it, save it for the next steps.

    cd PersonalLLM && python prepare.py              # real data from the hub (namkoong-lab/PersonalLLM)
    cd PersonalLLM && python prepare.py --offline    # generated rows in the same format, no network

Reads: the hub dataset (splits train 9,402 and test 1,000 prompts), or with --offline the parquet files
that offline/personalllm.py writes into <data>/raw/ (exactly the published columns), loaded through the
same `datasets.load_dataset` call path.
Writes into <data> (data/personalllm, or data/personalllm-offline):
  train.parquet, test.parquet   prompt, subset, prompt_id, response_1..8 (+ models and scores), the
                                rows kept (in dataset order);
  rewards.safetensors           "train" [P_train, 8, 10], "test" [P_test, 8, 10] float64 raw scores,
                                last axis in `reward_models` order (the published order);
  prepare.json                  counts, dropped rows, the reward-model order.
Offline it also writes raw/ and ground_truth.{safetensors,json} (the planted reward structure).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import harness  # noqa: E402
from offline import personalllm as generated  # noqa: E402  (the published format lives with the generator)

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False                  # True: generate the rows locally (tiny planted model), no network
dataset = "namkoong-lab/PersonalLLM"
data_dir = "data/personalllm"
reward_models = list(generated.REWARD_MODELS)  # score-column suffixes; this order = the reward tensor's last axis
seed = 0                         # offline generator seed
offline_train_prompts = generated.N_TRAIN_PROMPTS  # offline generator: train prompts (real: 9,402), enough
offline_test_prompts = generated.N_TEST_PROMPTS    # that the real fractions (0.5%, 0.1%) give every user some
personal_scale = 1.0             # offline generator: how far the 10 reward models deviate from the shared head (0:
                                 # the null world, every model the head up to its score noise)
# -----------------------------------------------------------------------------
settings = harness.configure(globals())
data_path, _ = harness.script_dirs(__file__, settings)


def load_hub(name: str):
    """The hub dataset (train/test), failing at once with the offline command when the hub is unreachable."""
    import datasets

    offline_command = harness.command_line("prepare.py", settings) + " --offline"
    if not os.environ.get("HF_HUB_OFFLINE") and not harness.hub_reachable():
        raise harness.hub_unreachable(name, offline_command)
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, OSError, ValueError) as e:
        raise harness.hub_unreachable(name, offline_command, e) from None


def load_generated(path: Path):
    """Write the generated raw parquet files (once; same seed = same bytes) and load them like the hub's."""
    import datasets

    import offline as generator
    from offline.planted import truth_files

    raw = path / "raw"
    files = {split: raw / generated.RAW_FILES[split] for split in generated.SPLITS}
    generator.ensure_generated(
        raw, "personalllm", generated.GENERATOR_VERSION,
        {"seed": seed, "n_train": offline_train_prompts, "n_test": offline_test_prompts, "personal_scale": personal_scale},
        [*(f.name for f in files.values()), *truth_files(path / generated.GROUND_TRUTH)],   # truth: beside raw/
        lambda: generated.write_raw(path, n_train=offline_train_prompts, n_test=offline_test_prompts, seed=seed,
                                    personal_scale=personal_scale))
    return datasets.load_dataset("parquet", data_files={s: str(f) for s, f in files.items()},
                                 cache_dir=str(path / ".datasets_cache"))


def check_columns(names: list[str], split: str) -> None:
    score_cols = [c for row in generated.score_columns(reward_models) for c in row]
    needed = ["prompt", "prompt_id"] + generated.response_columns() + score_cols
    missing = [c for c in needed if c not in names]
    if missing:
        raise SystemExit(f"error: the {split} split lacks the columns {missing[:6]}{' ...' if len(missing) > 6 else ''}; "
                         f"expected the PersonalLLM format (prompt, prompt_id, response_1..8 and "
                         f"response_{{i}}_{{rm}} for rm in {reward_models})")


def split_frame(dataset, split: str):
    """(rows kept as a DataFrame, rewards [P, 8, M] float64, number of dropped rows by reason)."""
    frame = dataset[split].to_pandas()
    check_columns(list(frame.columns), split)
    scores = np.stack([frame[row].to_numpy(dtype=np.float64) for row in generated.score_columns(reward_models)],
                      axis=1)                                                   # [P, 8, M]
    responses = frame[generated.response_columns()]
    bad_score = ~np.isfinite(scores).all(axis=(1, 2))
    bad_text = (responses.isna().any(axis=1) | frame["prompt"].isna()).to_numpy()
    keep = ~(bad_score | bad_text)
    dropped = {"non_finite_score": int(bad_score.sum()), "missing_text": int((bad_text & ~bad_score).sum())}
    return frame[keep].reset_index(drop=True), scores[keep], dropped


from safetensors.numpy import save_file  # noqa: E402

source = load_generated(data_path) if offline else load_hub(dataset)
for split in generated.SPLITS:
    if split not in source:
        raise SystemExit(f"error: the dataset has no {split!r} split (it has {list(source)})")
frames, rewards, report = {}, {}, {"source": "generated (offline)" if offline else dataset,
                                   "reward_models": reward_models, "n_responses": generated.N_RESPONSES, "splits": {}}
for split in generated.SPLITS:
    frames[split], scores, dropped = split_frame(source, split)
    if len(frames[split]) == 0:
        raise SystemExit(f"error: no usable rows left in the {split} split (dropped: {dropped}); nothing was written")
    rewards[split] = np.ascontiguousarray(scores)
    report["splits"][split] = {"rows": len(source[split]), "kept": len(frames[split]), "dropped": dropped}
    print(f"{split}: {len(frames[split])} prompts x {generated.N_RESPONSES} responses kept "
          f"({len(source[split]) - len(frames[split])} dropped: {dropped})")
data_path.mkdir(parents=True, exist_ok=True)
for split, frame in frames.items():
    with harness.atomic_path(data_path / f"{split}.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
with harness.atomic_path(data_path / "rewards.safetensors") as tmp:
    save_file(rewards, str(tmp), metadata={"reward_models": json.dumps(reward_models)})
harness.write_json_atomic(data_path / "prepare.json", {"settings": settings, **report})
print(f"wrote {data_path}/train.parquet, test.parquet, rewards.safetensors")

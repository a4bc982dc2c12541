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
                                last axis in `reward_models` order (the SPEC's order);
  prepare.json                  counts, dropped rows, the reward-model order.
Offline it also writes raw/ and ground_truth.{safetensors,json} (the planted reward structure).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402
from offline import personalllm as generated  # noqa: E402  (the published format lives with the generator)

# -----------------------------------------------------------------------------
# settings: edit here, or override on the command line as --name=value
offline = False                  # True: generate the rows locally (tiny planted model), no network
dataset_name = "namkoong-lab/PersonalLLM"
data_dir = "data/personalllm"
results_dir = "results"          # unused here; kept so every script resolves the same folders
reward_models = list(generated.REWARD_MODELS)  # score-column suffixes; this order = the reward tensor's last axis
seed = 0                         # offline generator seed
offline_train_prompts = 160      # offline: generated train prompts (real: 9,402)
offline_test_prompts = 40        # offline: generated test prompts (real: 1,000)
offline_directions = 3           # offline: latent reward directions behind the 10 generated reward models
# -----------------------------------------------------------------------------
settings = utils.configure(globals())
data_path, _ = utils.script_dirs(__file__, data_dir, results_dir, offline)


def load_hub(name: str):
    """The hub dataset (train/test), failing at once with the offline hint when the hub is unreachable."""
    import datasets

    hint = ("run `python prepare.py --offline` for the built-in generated data, or, with a copy in the "
            "local Hugging Face cache, set HF_HUB_OFFLINE=1")
    if not os.environ.get("HF_HUB_OFFLINE") and not utils.hub_reachable():
        raise SystemExit(f"error: cannot reach the Hugging Face hub to download {name}; {hint}")
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, OSError, ValueError) as e:
        raise SystemExit(f"error: loading {name} failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                         f"{hint}") from e


def load_generated(path: Path):
    """Write the generated raw parquet files (once; same seed = same bytes) and load them like the hub's."""
    import datasets

    raw = path / "raw"
    files = {split: raw / generated.RAW_FILES[split] for split in generated.SPLITS}
    truth = path / (generated.GROUND_TRUTH + ".json")
    wanted = {"seed": seed, "n_prompts": {"train": offline_train_prompts, "test": offline_test_prompts},
              "n_directions": offline_directions}
    current = json.loads(truth.read_text()) if truth.exists() else {}
    if not all(f.exists() for f in files.values()) or any(current.get(k) != v for k, v in wanted.items()):
        print(f"generating offline PersonalLLM rows into {raw} ...")
        summary = generated.write_raw(path, n_train=offline_train_prompts, n_test=offline_test_prompts,
                                      seed=seed, n_directions=offline_directions)
        print(f"  planted: {summary['n_directions']} latent directions; best-vs-worst accuracy of the "
              f"planted linear reward: train {summary['oracle_accuracy_train']:.3f}, "
              f"test {summary['oracle_accuracy_test']:.3f}")
    else:
        print(f"using the generated rows in {raw}")
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


def main() -> None:
    from safetensors.numpy import save_file

    dataset = load_generated(data_path) if offline else load_hub(dataset_name)
    for split in generated.SPLITS:
        if split not in dataset:
            raise SystemExit(f"error: the dataset has no {split!r} split (it has {list(dataset)})")
    data_path.mkdir(parents=True, exist_ok=True)
    rewards, report = {}, {"source": "generated (offline)" if offline else dataset_name,
                           "reward_models": reward_models, "n_responses": generated.N_RESPONSES, "splits": {}}
    for split in generated.SPLITS:
        frame, scores, dropped = split_frame(dataset, split)
        if len(frame) == 0:
            raise SystemExit(f"error: no usable rows left in the {split} split (dropped: {dropped})")
        with utils.atomic_path(data_path / f"{split}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        rewards[split] = np.ascontiguousarray(scores)
        report["splits"][split] = {"rows": len(dataset[split]), "kept": len(frame), "dropped": dropped}
        print(f"{split}: {len(frame)} prompts x {generated.N_RESPONSES} responses kept "
              f"({len(dataset[split]) - len(frame)} dropped: {dropped})")
    with utils.atomic_path(data_path / "rewards.safetensors") as tmp:
        save_file(rewards, str(tmp), metadata={"reward_models": json.dumps(reward_models)})
    (data_path / "prepare.json").write_text(json.dumps({"settings": utils.script_settings(globals()), **report},
                                                       indent=1) + "\n")
    print(f"wrote {data_path}/train.parquet, test.parquet, rewards.safetensors")


if __name__ == "__main__":
    main()

"""PersonalLLM: the simulated population (best/worst under each user's mixture), the generated rows,
and the folder end to end on the offline default (small sizes)."""
import hashlib
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "PersonalLLM"
sys.path.insert(0, str(FOLDER))
import personalllm_simulation as sim  # noqa: E402


def brute_force(rewards, weights, prompts):
    """Python loops: for each user and each of its prompts, the first max and first min response."""
    users, chosen, rejected, skipped = [], [], [], 0
    R = rewards.shape[1]
    for c in range(weights.shape[0]):
        for p in (range(rewards.shape[0]) if prompts is None else prompts[c]):
            scores = [sum(float(rewards[p, j, m]) * float(weights[c, m]) for m in range(rewards.shape[2]))
                      for j in range(R)]
            best = scores.index(max(scores))
            worst = scores.index(min(scores))
            if best == worst:
                skipped += 1
                continue
            users.append(c)
            chosen.append(int(p) * R + best)
            rejected.append(int(p) * R + worst)
    return users, chosen, rejected, skipped


@pytest.mark.parametrize("all_prompts", [True, False])
def test_best_worst_matches_brute_force_continuous(all_prompts):
    rng = np.random.default_rng(0)
    rewards = rng.standard_normal((9, 8, 10))
    weights = rng.dirichlet(0.1 * np.ones(10), size=6)
    prompts = None if all_prompts else sim.sample_prompts(rng, 6, 9, 4)
    got = sim.best_worst_comparisons(rewards, weights, prompts)
    users, chosen, rejected, skipped = brute_force(rewards, weights, prompts)
    assert got.users.tolist() == users and got.chosen.tolist() == chosen and got.rejected.tolist() == rejected
    assert got.n_skipped == skipped == 0 and got.n_users == 6


def test_best_worst_ties_first_index_and_all_equal_skipped():
    """Exact arithmetic (small integers x multiples of 1/16), many ties: the first response among equal
    scores is taken; a prompt whose 8 scores are all equal is skipped and counted."""
    rng = np.random.default_rng(1)
    rewards = rng.integers(0, 3, size=(12, 8, 10)).astype(float)
    rewards[3] = 1.0                                   # all 8 responses equal for every user
    rewards[5, 6] = rewards[5, 2]                      # a duplicated response
    weights = rng.integers(0, 5, size=(7, 10)) / 16.0
    weights[0] = 0.0                                   # a user indifferent to everything
    got = sim.best_worst_comparisons(rewards, weights, None)
    users, chosen, rejected, skipped = brute_force(rewards, weights, None)
    assert got.users.tolist() == users and got.chosen.tolist() == chosen and got.rejected.tolist() == rejected
    assert got.n_skipped == skipped and skipped >= 12 + 6      # user 0 on every prompt, everyone on prompt 3
    assert got.n_tied_best > 0 and got.n_tied_worst > 0
    assert not np.any(got.users == 0)


def test_chunking_does_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(2)
    rewards, weights = rng.standard_normal((20, 8, 10)), rng.dirichlet(0.1 * np.ones(10), size=30)
    prompts = sim.sample_prompts(rng, 30, 20, 5)
    whole = sim.best_worst_comparisons(rewards, weights, prompts)
    monkeypatch.setattr(sim, "CHUNK_ELEMENTS", 1000)      # ~2 users per chunk
    chunked = sim.best_worst_comparisons(rewards, weights, prompts)
    for name in ("users", "chosen", "rejected"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name))


def test_sample_prompts_without_replacement_and_seeded():
    a = sim.sample_prompts(np.random.default_rng(3), 50, 30, 7)
    b = sim.sample_prompts(np.random.default_rng(3), 50, 30, 7)
    assert a.shape == (50, 7) and np.array_equal(a, b)
    assert all(len(set(row)) == 7 for row in a.tolist()) and a.min() >= 0 and a.max() < 30
    assert np.array_equal(sim.sample_prompts(np.random.default_rng(0), 2, 5, 5), [[0, 1, 2, 3, 4]] * 2)


def test_population_groups_are_indices_into_shared_tables():
    rng = np.random.default_rng(4)
    train, test = rng.standard_normal((40, 8, 10)), rng.standard_normal((10, 8, 10))
    pop = sim.simulate_population(train, test, n_seen=25, n_unseen=12, seen_per_user=6, unseen_per_user=2, seed=5)
    assert np.allclose(pop.weights_seen.sum(1), 1) and pop.weights_unseen.shape == (12, 10)
    assert pop.seen_train.N == 25 * 6 and pop.unseen_train.N == 12 * 2
    assert pop.seen_test.N == 25 * 10 and pop.unseen_test.N == 12 * 10         # every test prompt
    assert pop.seen_train.chosen.max() < 40 * 8 and pop.seen_test.chosen.max() < 10 * 8
    # changing the unseen users' prompt count leaves the seen users' data unchanged
    other = sim.simulate_population(train, test, 25, 12, 6, 5, seed=5)
    assert np.array_equal(other.seen_train.chosen, pop.seen_train.chosen)
    table = torch.randn(40 * 8, 16)
    comparisons = pop.seen_train.comparisons(table)
    assert comparisons.table.data_ptr() == table.data_ptr()   # no copy
    x = table[comparisons.chosen] - table[comparisons.rejected]
    V = torch.randn(16, 3)
    assert torch.allclose(comparisons.project(V), x @ V, atol=1e-5)
    assert sim.per_user_copy_bytes(pop, d=4096) == (150 + 24 + 250 + 120) * 4096 * 4


def test_fraction_giving_zero_prompts_is_a_clear_error():
    import harness
    with pytest.raises(harness.SettingsError, match="seen_prompt_fraction"):
        sim.prompts_per_user(0.005, 160, "seen", "seen_prompt_fraction")


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generated_rows_published_format_low_rank_and_byte_identical(tmp_path):
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file

    from offline import personalllm as gen
    from offline.planted import embed_for_planting

    summaries = [gen.write_raw(tmp_path / name, n_train=6, n_test=3, seed=7) for name in ("a", "b")]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") and summaries[0] == summaries[1]
    table = pq.read_table(tmp_path / "a" / "raw" / gen.RAW_FILES["train"])
    assert table.column_names == gen.columns() and table.num_rows == 6
    parts = [c.split("_", 2) for c in table.column_names]
    assert sum(len(p) == 3 and p[0] == "response" and p[2] in gen.REWARD_MODELS for p in parts) == 80
    assert "response_3_mistral_weqweasdas" in table.column_names and "response_8_model" in table.column_names
    # the scores are the planted linear rewards (up to each model's scale/offset and the small noise)
    frame = table.to_pandas()
    truth = load_file(str(tmp_path / "a" / "ground_truth.safetensors"))
    E = embed_for_planting([gen.conversation(p, r) for p, row in zip(frame["prompt"], frame[gen.response_columns()].to_numpy())
                            for r in row])
    clean = E.astype(np.float64) @ truth["directions"] @ truth["user_weights"].T / 100        # [48, 10]
    scores = np.stack([frame[row].to_numpy() for row in gen.score_columns()], 1).reshape(-1, 10)
    residual = (scores - truth["offsets"]) / truth["scales"] - clean
    assert np.abs(residual).max() < 6 * summaries[0]["noise_std"] and clean.std() > 20 * summaries[0]["noise_std"]


@pytest.fixture
def run_script(monkeypatch):
    """Run a PersonalLLM script in this process (as `python script args` from its folder): no new
    interpreter importing torch each time)."""
    monkeypatch.setenv("TQDM_DISABLE", "1")

    def run(script: str, *args: str) -> None:
        monkeypatch.setattr(sys, "argv", [script, *args])
        runpy.run_path(str(FOLDER / script), run_name="__main__")
    return run


@pytest.mark.slow
def test_folder_runs_end_to_end_offline(tmp_path, run_script):
    paths = [f"--data_dir={tmp_path / 'data'}", f"--results_dir={tmp_path / 'results'}"]
    run_script("prepare.py", "--offline", "--offline_train_prompts=40", "--offline_test_prompts=10", paths[0])
    data = tmp_path / "data"
    assert {"train.parquet", "test.parquet", "rewards.safetensors", "ground_truth.json"} <= {p.name for p in data.iterdir()}
    run_script("generate-personalllm-embeddings.py", "--offline", paths[0])
    from safetensors.numpy import load_file
    assert load_file(str(data / "conversation_embeddings.safetensors"))["embeddings"].shape == ((40 + 10) * 8, 128)
    assert (data / "reward_head.safetensors").exists()

    # the real fractions give 0 prompts per user on 40 offline prompts: a clear error naming the setting
    with pytest.raises(SystemExit, match="--seen_prompt_fraction"):
        run_script("train_basis.py", "--offline", *paths)

    small = ["--n_seen_users=120", "--n_unseen_users=60", "--seen_prompt_fraction=0.5", "--num_iterations=150",
             "--fewshot_iterations=150"]
    run_script("train_basis.py", "--offline", *paths, *small, "--unseen_prompt_fraction=0.2", "--K_list=[0,1,3]")
    results = tmp_path / "results"
    report = json.loads((results / "train_basis.json").read_text())
    assert report["seed"] == 0 and report["K_list"] == [0, 1, 3] and report["settings"]["offline"] is True
    assert report["counts"]["seen_train"]["comparisons"] + report["counts"]["seen_train"]["skipped_all_equal"] == 120 * 20
    # What the world guarantees (seed 0, deterministic): the noise-free planted rewards order every best-vs-
    # worst pair (the ceiling, 1.0), the head only the shared part (below it: 0.905-0.988 over generator
    # seeds 0-2 at this size); the users mix 10 reward models, so rank 3 beats one shared reward on new
    # users (K3 - K1: 0.010-0.086 over those seeds; margin half the smallest).
    unseen = {row["K"]: row["unseen_test"]["mean"] for row in report["results"]}
    assert report["planted_accuracy"]["unseen_test"] == 1.0 and unseen[0] < 1.0, unseen
    assert unseen[3] > unseen[1] + 0.005, unseen
    assert (results / "train_basis.md").exists()
    assert (results / "generalization_accuracy_vs_rank_lore_alpha_0.0.png").exists()
    assert (results / "PersonalLLM_V_lore_K_3_alpha_0.0.pt").exists()

    run_script("vary_fewshot.py", "--offline", *paths, *small, "--unseen_pool_fraction=0.5", "--trials=2",
               "--num_shots=[1,5]", "--K_list=[1,3]")
    fewshot = json.loads((results / "vary_fewshot.json").read_text())
    assert fewshot["num_shots"] == [1, 5] and len(fewshot["results"]) == 4
    assert (results / "fewshot_accuracy_vs_shots.png").exists()


def test_hub_path_fails_fast_naming_offline(tmp_path, run_script, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit, match="--offline"):
        run_script("prepare.py", f"--data_dir={tmp_path / 'data'}")

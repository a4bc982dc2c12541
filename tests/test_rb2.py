"""RewardBench 2: official and seed figures, head files, batched multi-head scoring, the CLI offline."""
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

import embedding
import harness
import rewardbench2 as rb2
from offline import rewardbench2 as gen
from offline.tiny_model import tiny_model_path

ROOT = Path(__file__).resolve().parent.parent


# -----------------------------------------------------------------------------
# the official Ties scoring, transcribed from rewardbench 0.1.4 (rewardbench/utils.py: sample_stats and
# process_single_model) for one head; the vectorised version must agree with it


def _official_sample_stats(scored):
    correct = [s for s in scored.values() if s["correct"]]
    incorrect = [s for s in scored.values() if not s["correct"]]
    if not correct or not incorrect:
        return {"accurate": False, "different_correct_margin": None, "correct_incorrect_margin": 0}
    best_c = max(c["score"] for c in correct)
    worst_c = min(c["score"] for c in correct)
    best_i = max(c["score"] for c in incorrect)
    return {"accurate": worst_c > best_i,
            "different_correct_margin": best_c - worst_c if len(correct) > 1 else None,
            "correct_incorrect_margin": worst_c - best_i}


def _official_ties(samples):
    results = {"ref": defaultdict(dict), "tied": defaultdict(dict)}
    for sample in samples:
        kind, pid = sample["id"].split(":")
        for i, score in enumerate(sample["scores"]):
            results[kind][int(pid)][i] = {"correct": i < sample["num_correct"], "score": score}
    stats = {k: {pid: _official_sample_stats(v) for pid, v in r.items()} for k, r in results.items()}
    ref, tied = stats["ref"], stats["tied"]
    acc_ref = np.mean([r["accurate"] for r in ref.values()]) if ref else 0
    acc_tied = np.mean([r["accurate"] for r in tied.values()]) if tied else 0
    common = set(ref) & set(tied)
    valid = [r for r in common if tied[r]["different_correct_margin"] is not None]
    if common:
        cp = np.mean([tied[r]["correct_incorrect_margin"] > tied[r]["different_correct_margin"] for r in valid])
        cph = np.mean([min(ref[r]["correct_incorrect_margin"], tied[r]["correct_incorrect_margin"])
                       > tied[r]["different_correct_margin"] for r in valid])
        ratios = [min(ref[r]["correct_incorrect_margin"], tied[r]["correct_incorrect_margin"])
                  / tied[r]["different_correct_margin"] for r in valid if tied[r]["different_correct_margin"] > 0]
        cms = np.mean([math.tanh(x - 1) for x in ratios]) if ratios else 0
    else:
        cp = cph = cms = 0
    return 0.3 * acc_tied + 0.3 * acc_ref + 0.2 * cp + 0.2 * cph + 0.01 * cms


def _official_item(scores):  # reroll_and_score_dataset
    scores = np.array(scores)
    top = np.max(scores)
    return (1 / np.sum(scores == top)) if scores[0] == top else 0


# -----------------------------------------------------------------------------
# figures on hand-made score arrays


def test_official_item_score_gives_one_over_k_for_ties_at_the_top():
    s = np.array([[3.0, 1.0, 2.0, 5.0], [1.0, 1.0, 0.0, 5.0], [2.0, 1.0, 2.0, 5.0], [0.0, 1.0, 2.0, 5.0]])
    # head 0: chosen alone on top; head 1: 4-way tie; head 2: 3-way tie at the top; head 3: all tied at 5
    np.testing.assert_allclose(rb2.official_item_score(s), [1.0, 0.25, 1 / 3, 0.25])
    assert rb2.official_item_score(np.array([1.0, 2.0, 0.0, 0.0]))[0] == 0.0
    strict, _ = rb2.original_strict_and_weighted(s, 1)
    np.testing.assert_array_equal(strict, [1, 0, 0, 0])  # the original's strict rule: any tie is wrong


def test_original_ties_weighted_approximation():
    # correct answers [5, 4], incorrect [1, 3.5]: strict; margin 0.5 < spread 1 -> weighted 0.5
    # head 1: correct [10, 9.5], incorrect [0, 1]: margin 8.5 > spread 0.5 -> 1.0
    s = np.array([[5.0, 10.0], [4.0, 9.5], [1.0, 0.0], [3.5, 1.0]])
    strict, weighted = rb2.original_strict_and_weighted(s, 2)
    np.testing.assert_allclose(strict, [1, 1])
    np.testing.assert_allclose(weighted, [0.5, 1.0])
    strict, weighted = rb2.original_strict_and_weighted(np.array([[1.0], [2.0]]), 1)
    assert strict[0] == 0 and weighted[0] == 0


def test_official_ties_hand_made():
    ids = ["ref:0", "tied:0", "ref:1", "tied:1", "tied:2", "ref:3", "ref:4", "tied:4"]
    scores = [
        np.array([5.0, 1.0, 2.0]),            # ref:0 accurate, margin 3
        np.array([6.0, 5.0, 1.0, 0.0]),       # tied:0 accurate, spread 1, margin 4
        np.array([1.0, 2.0]),                 # ref:1 wrong, margin -1
        np.array([3.0, 3.0, 1.0]),            # tied:1 accurate, zero spread, margin 2
        np.array([2.0, 2.5, 1.0]),            # tied:2 (no ref:2): accurate, counts in tied accuracy only
        np.array([4.0, 0.0]),                 # ref:3 (no tied:3): counts in ref accuracy only
        np.array([4.0, 0.0]),                 # ref:4 accurate, margin 4
        np.array([7.0, 1.0]),                 # tied:4 one correct answer only: spread undefined
    ]
    nc = [1, 2, 1, 2, 2, 1, 1, 1]
    out = rb2.official_ties(ids, scores, nc)
    assert out["tied_accuracy"][0] == pytest.approx(1.0)          # 4 tied rows, all accurate
    assert out["ref_accuracy"][0] == pytest.approx(3 / 4)         # ref:1 wrong
    # prompts with both rows and a defined spread: 0 (spread 1) and 1 (spread 0); not 4 (one correct)
    assert out["n_paired"] == 2
    assert out["correctness_preferred"][0] == pytest.approx(1.0)  # 4 > 1 and 2 > 0
    assert out["correctness_preferred_hard"][0] == pytest.approx(0.5)  # min(3,4)>1 yes; min(-1,2)>0 no
    # zero spread: prompt 1 is left out of the margin score (no division by zero)
    assert out["correctness_margin_score"][0] == pytest.approx(math.tanh(3 / 1 - 1))
    expected = 0.3 * 1 + 0.3 * 0.75 + 0.2 * 1 + 0.2 * 0.5 + 0.01 * math.tanh(2)
    assert out["score"][0] == pytest.approx(expected)
    samples = [{"id": i, "scores": list(s), "num_correct": n} for i, s, n in zip(ids, scores, nc)]
    assert out["score"][0] == pytest.approx(_official_ties(samples))


def test_official_ties_one_group_only_and_bad_ids():
    only_tied = rb2.official_ties(["tied:0", "tied:1"], [np.array([2.0, 1.5, 1.0]), np.array([0.0, 2.0, 1.0])],
                                  [2, 2])
    assert only_tied["ref_accuracy"][0] == 0 and only_tied["correctness_preferred"][0] == 0
    assert only_tied["score"][0] == pytest.approx(0.3 * 0.5)
    only_ref = rb2.official_ties(["ref:0"], [np.array([2.0, 1.0])], [1])
    assert only_ref["score"][0] == pytest.approx(0.3)
    # both rows present but every tied row has one correct answer: nothing to average (official: NaN)
    single = rb2.official_ties(["ref:0", "tied:0"], [np.array([2.0, 1.0]), np.array([2.0, 1.0])], [1, 1])
    assert single["correctness_preferred"][0] == 0 and single["score"][0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="ref:k"):
        rb2.official_ties(["7"], [np.array([1.0, 0.0])], [1])
    with pytest.raises(ValueError, match="twice"):
        rb2.official_ties(["ref:1", "ref:1"], [np.array([1.0, 0.0])] * 2, [1, 1])


def test_vectorised_figures_match_the_official_code_on_random_scores():
    rng = np.random.default_rng(3)
    rows, scores, B = [], [], 5
    for i in range(40):  # integer scores: many exact ties, at the top and between correct answers
        rows.append({"id": str(i), "subset": ["Factuality", "Math"][i % 2], "num_correct": 1,
                     "chosen": ["c"], "rejected": ["r"] * 3, "prompt": "p"})
        scores.append(rng.integers(0, 4, (4, B)).astype(float))
    for k in range(12):
        for kind in ("ref", "tied"):
            if (k, kind) in ((3, "ref"), (5, "tied")):
                continue  # a tied row without its ref, and a ref without its tied
            nc = 1 if kind == "ref" or k == 7 else int(rng.integers(2, 4))
            rows.append({"id": f"{kind}:{k}", "subset": "Ties", "num_correct": nc, "chosen": ["c"] * nc,
                         "rejected": ["r"] * 3, "prompt": "p"})
            scores.append(rng.integers(0, 6, (nc + 3, B)).astype(float))
    fig = rb2.compute_figures(rows, scores)
    for b in range(B):
        for name in ("Factuality", "Math"):
            idx = [i for i, r in enumerate(rows) if r["subset"] == name]
            assert fig["official"]["per_subset"][name][b] == pytest.approx(
                np.mean([_official_item(scores[i][:, b]) for i in idx]))
        ties = [{"id": r["id"], "scores": list(s[:, b]), "num_correct": r["num_correct"]}
                for r, s in zip(rows, scores) if r["subset"] == "Ties"]
        assert fig["official"]["per_subset"]["Ties"][b] == pytest.approx(_official_ties(ties))
        assert fig["official"]["overall"][b] == pytest.approx(
            np.mean([fig["official"]["per_subset"][n][b] for n in ("Factuality", "Math", "Ties")]))
    assert not fig["complete"] and fig["official"]["best_head"] == fig["official"]["ranking"][0]


ORIGINAL_SUBSETS = ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]


def original_evaluate_point(scores_correct, scores_incorrect):
    """Transcription of the original eval_rb2.py's evaluate_point (scores (C, B) and (R, B))."""
    min_c = np.min(scores_correct, axis=0)
    max_i = np.max(scores_incorrect, axis=0)
    acc_strict = (min_c > max_i).astype(np.float32)
    margin = (min_c - max_i).astype(np.float32)
    spread_c = (np.max(scores_correct, axis=0) - np.min(scores_correct, axis=0)).astype(np.float32)
    ties_bonus = (margin > spread_c).astype(np.float32)
    return {"acc_strict": acc_strict, "ties_weighted_approx": 0.5 * acc_strict + 0.5 * ties_bonus}


def original_report(rows, scores, B):
    """Transcription of the original eval_rb2.py's accumulation and multi-head reporting."""
    totals = {k: 0 for k in ORIGINAL_SUBSETS}
    corrects = {k: np.zeros(B, dtype=np.int64) for k in ORIGINAL_SUBSETS}
    ties_weighted_sum, ties_count = np.zeros(B, dtype=np.float64), np.zeros(B, dtype=np.int64)
    for row, s in zip(rows, scores):
        C = len(row["chosen"])
        m = original_evaluate_point(s[:C, :], s[C:, :])
        totals[row["subset"]] += 1
        corrects[row["subset"]] += m["acc_strict"].astype(np.int64)
        if row["subset"] == "Ties":
            ties_weighted_sum += m["ties_weighted_approx"].astype(np.float64)
            ties_count += 1
    acc_by_subset = {s: corrects[s] / max(totals[s], 1) for s in ORIGINAL_SUBSETS if totals[s]}
    five = np.vstack([acc_by_subset.get(s, np.full(B, np.nan)) for s in ORIGINAL_SUBSETS[:5]])
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        five_mean = np.nanmean(five, axis=0)
        ties_strict = acc_by_subset.get("Ties", np.full(B, np.nan))
        ties_weighted = np.divide(ties_weighted_sum, np.maximum(ties_count, 1), out=np.full(B, np.nan),
                                  where=ties_count > 0)
        overall_strict = np.nanmean(np.stack([five_mean, ties_strict]), axis=0)
        overall_weighted = np.nanmean(np.stack([five_mean, ties_weighted]), axis=0)
    return acc_by_subset, five_mean, ties_strict, ties_weighted, overall_strict, overall_weighted


@pytest.mark.parametrize("subsets", [ORIGINAL_SUBSETS, ["Math", "Ties"], ["Math", "Focus"], ["Ties"]])
def test_original_figures_equal_a_transcription_of_the_original(subsets):
    rng = np.random.default_rng(len(subsets))
    B, rows, scores = 4, [], []
    for i in range(60):
        subset = subsets[i % len(subsets)]
        n_chosen = int(rng.integers(1, 4)) if subset == "Ties" else 1
        rows.append({"id": f"{'tied' if n_chosen > 1 else 'ref'}:{i}" if subset == "Ties" else str(i),
                     "subset": subset, "num_correct": n_chosen, "prompt": "p",
                     "chosen": [f"c{j}" for j in range(n_chosen)], "rejected": ["r0", "r1", "r2"]})
        # a coarse grid of float32 scores: ties between answers and margin == spread cases do occur
        scores.append((rng.integers(0, 6, (n_chosen + 3, B)) / 4).astype(np.float32))
    fig = rb2.compute_figures(rows, scores)["original"]
    by_subset, five, ties_strict, ties_weighted, overall_strict, overall_weighted = original_report(rows, scores, B)
    for name, value in by_subset.items():
        np.testing.assert_allclose(fig["per_subset"][name], value)
    for ours, theirs in ((fig["five_cat"], five), (fig["ties_strict"], ties_strict),
                         (fig["ties_weighted"], ties_weighted)):
        np.testing.assert_allclose(np.nan if ours is None else ours, theirs)
    np.testing.assert_allclose(fig["overall_strict"], overall_strict)
    np.testing.assert_allclose(fig["overall_weighted"], overall_weighted)
    if "Ties" in subsets and len(subsets) > 1:   # Ties counts for half, not for one sixth
        np.testing.assert_allclose(fig["overall_strict"], (five + ties_strict) / 2)


def test_figures_layout_and_original_aggregates():
    rows = [{"id": str(i), "subset": s, "num_correct": 1, "chosen": ["a"], "rejected": ["b"], "prompt": "p"}
            for i, s in enumerate(rb2.SUBSETS[:5])]
    rows += [{"id": "ref:0", "subset": "Ties", "num_correct": 1, "chosen": ["a"], "rejected": ["b"], "prompt": "p"},
             {"id": "tied:0", "subset": "Ties", "num_correct": 2, "chosen": ["a", "c"], "rejected": ["b"],
              "prompt": "p"}]
    good = [np.array([[1.0, 0.0], [0.0, 1.0]])] * 5   # head 0 right, head 1 wrong
    ties = [np.array([[3.0, 0.0], [0.0, 1.0]]), np.array([[3.0, 0.0], [2.9, 0.0], [0.0, 1.0]])]
    fig = rb2.compute_figures(rows, good + ties)
    assert fig["complete"] and fig["n_heads"] == 2 and fig["subsets"] == rb2.SUBSETS
    assert fig["original"]["five_cat"] == [1.0, 0.0]
    assert fig["original"]["ties_strict"] == [1.0, 0.0]
    assert fig["original"]["ties_weighted"] == [1.0, 0.0]    # margins 3 and 2.9 exceed spreads 0 and 0.1
    assert fig["original"]["overall_weighted"] == [1.0, 0.0] and fig["original"]["overall_strict"] == [1.0, 0.0]
    assert fig["original"]["best_per_subset"]["Math"] == [0, 1.0]
    assert fig["original"]["mean_per_subset"]["Math"] == 0.5
    assert fig["official"]["overall"][0] == pytest.approx((5 + 0.3 + 0.3 + 0.2 + 0.2 + 0.01 * math.tanh(28)) / 6)
    assert fig["official"]["ranking"] == [0, 1] and fig["original"]["ranking"] == [0, 1]
    json.dumps(fig)  # JSON-ready
    table = rb2.format_original_table(fig, top_k=2)
    assert "Ties       | mean strict: 50.00% | best head #0 = 100.00% | mean weighted: 50.00% (n=2)" in table
    assert ("#01 head 0 | overall(weighted) 100.00% | overall(strict) 100.00% | 5-cat 100.00% | ties strict "
            "100.00% approx 100.00%") in table
    one_head = rb2.compute_figures(rows, [s[:, :1] for s in good + ties])
    table = rb2.format_original_table(one_head)
    assert "Overall STRICT (incl. ties):          100.00%" in table and "Overall WEIGHTED approx" in table


# -----------------------------------------------------------------------------
# head and bias files


def test_head_files_all_formats_and_shapes(tmp_path):
    from safetensors.torch import save_file
    V = torch.randn(16, 3)
    torch.save(V, tmp_path / "v.pt")
    torch.save(V[:, 0], tmp_path / "v1.pth")
    torch.save({"V": V, "meta": {"W": torch.ones(2)}}, tmp_path / "d.bin")
    np.save(tmp_path / "v.npy", V[:, :1].numpy())
    save_file({"head": V.contiguous()}, str(tmp_path / "v.safetensors"))
    assert torch.equal(rb2.load_head(tmp_path / "v.pt", hidden_size=16), V)
    assert rb2.load_head(tmp_path / "v1.pth").shape == (16, 1)
    assert torch.equal(rb2.load_head(tmp_path / "d.bin", "V"), V)
    assert rb2.load_head(tmp_path / "d.bin", "meta.W").shape == (2, 1)
    assert rb2.load_head(tmp_path / "v.npy").shape == (16, 1)
    assert torch.equal(rb2.load_head(tmp_path / "v.safetensors", hidden_size=16), V)
    assert torch.equal(rb2.load_bias("0.5", 3), torch.full((3,), 0.5))
    torch.save(torch.tensor([1.0, 2.0, 3.0]), tmp_path / "b.pt")
    np.save(tmp_path / "b0.npy", np.float32(2.0))
    assert rb2.load_bias(str(tmp_path / "b.pt"), 3).tolist() == [1, 2, 3]
    assert rb2.load_bias(str(tmp_path / "b0.npy"), 2).tolist() == [2, 2]
    with pytest.raises(SystemExit, match=r"expected \(\) or \(2,\)"):
        rb2.load_bias(str(tmp_path / "b.pt"), 2)


@pytest.mark.parametrize("make, key, message", [
    (lambda: torch.randn(15), None, "H = 15, but the backbone's hidden size is 16"),
    (lambda: torch.randn(1, 16), None, "looks transposed"),
    (lambda: torch.randn(16, 2, 2), None, r"expected \(H,\), \(H, 1\) or \(H, B\)"),
    (lambda: torch.randn(16, 0), None, "expected"),
    (lambda: {"a": torch.randn(16), "b": torch.randn(16)}, None, "choose one with --head_key"),
    (lambda: {"a": torch.randn(16)}, "nope", "--head_key 'nope' is not in"),
    (lambda: torch.randn(16), "a", "drop --head_key"),
    (lambda: torch.full((16,), float("nan")), None, "NaN"),
])
def test_bad_heads_are_refused_with_a_message(tmp_path, make, key, message):
    torch.save(make(), tmp_path / "h.pt")
    with pytest.raises(SystemExit, match=message):
        rb2.load_head(tmp_path / "h.pt", key, hidden_size=16)


def test_pickled_objects_and_unknown_files_are_refused(tmp_path):
    import argparse
    torch.save(argparse.Namespace(V=torch.randn(4)), tmp_path / "x.pt")  # an arbitrary pickled object
    with pytest.raises(SystemExit, match="weights_only=True"):
        rb2.load_head(tmp_path / "x.pt")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(SystemExit, match="must be one of"):
        rb2.load_head(tmp_path / "x.txt")
    with pytest.raises(SystemExit, match="does not exist"):
        rb2.load_head(tmp_path / "missing.pt")


# -----------------------------------------------------------------------------
# scoring with the tiny model on a generated file



SMALL = dict(subset_rows={"Factuality": 6, "Precise IF": 4, "Math": 4, "Safety": 6, "Focus": 6}, ties_pairs=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated file at a small scale (the default scale only changes the row counts)."""
    return gen.write(tmp_path_factory.mktemp("rb2"), **SMALL)


@pytest.fixture(scope="module")
def seqclf():
    torch.manual_seed(0)
    return rb2.load_scoring_model(tiny_model_path(), "seqclf", device="cpu")


@pytest.fixture(scope="module")
def backbone():
    return rb2.load_scoring_model(tiny_model_path(), "lmhead", device="cpu")


def test_generated_file_is_in_the_real_format_and_reproducible(data):
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert list(rows[0]) == ["id", "prompt", "chosen", "rejected", "num_correct", "num_incorrect",
                             "total_completions", "models", "subset", "additional_metadata"]
    assert sorted({r["subset"] for r in rows}) == sorted(rb2.SUBSETS)
    for r in rows:
        assert r["num_correct"] == len(r["chosen"]) and r["num_incorrect"] == len(r["rejected"])
        assert r["total_completions"] == len(r["models"]) == len(r["chosen"]) + len(r["rejected"])
        if r["subset"] == "Ties":
            assert r["id"].split(":")[0] in ("ref", "tied")
            assert len(r["chosen"]) == (1 if r["id"].startswith("ref") else gen.TIED_CORRECT)
        else:
            assert len(r["chosen"]) == 1 and len(r["rejected"]) == 3
    # the same population given from its file (as eval_rb2 --offline gives PRISM's): the same bytes
    again = gen.write(data.parent / "again", **SMALL, population_path=data.parent / "ground_truth")
    assert again.read_bytes() == data.read_bytes()
    assert (data.parent / "again" / "planted_head.safetensors").read_bytes() == \
        (data.parent / "planted_head.safetensors").read_bytes()
    assert json.loads((data.parent / "again" / "ground_truth.json").read_text())["population_source"].startswith(
        "sha256:")


def test_generated_file_is_rebuilt_only_when_its_population_changes(data, monkeypatch):
    written = []
    monkeypatch.setattr(gen, "write", lambda out_dir, seed=0, population_path=None: written.append(population_path))
    assert gen.dataset_path(data.parent) == data and written == []
    gen.dataset_path(data.parent, population_path=data.parent / "ground_truth")
    assert written == [data.parent / "ground_truth"]


def test_parquet_folder_and_filters_load_the_same_rows(data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = rb2.load_rows(data)
    pq.write_table(pa.Table.from_pylist([json.loads(x) for x in data.read_text().splitlines()]),
                   tmp_path / "test.parquet")
    assert rb2.load_rows(tmp_path / "test.parquet") == rows
    assert rb2.load_rows(tmp_path) == rows  # a folder with <split>.parquet
    math_rows = rb2.load_rows(data, subset="math", limit=3)
    assert len(math_rows) == 3 and {r["subset"] for r in math_rows} == {"Math"}
    with pytest.raises(SystemExit, match="subsets present"):
        rb2.load_rows(data, subset="Chat")
    with pytest.raises(ValueError, match="lacks the column"):
        rb2.load_rows([{"id": "0", "prompt": "p", "chosen": ["a"]}])


def test_hub_without_network_fails_fast_naming_offline(monkeypatch):
    monkeypatch.setattr(harness, "hub_reachable", lambda timeout=3.0: False)
    start = time.time()
    with pytest.raises(SystemExit, match="--offline"):
        rb2.load_rows("allenai/reward-bench-2-not-cached-here")
    assert time.time() - start < 15


def test_each_pair_scored_once_in_one_batched_call(seqclf, data, monkeypatch):
    model, tok = seqclf
    rows = rb2.load_rows(data, limit=12)
    rows.append(dict(rows[0], id="dup"))           # the same (prompt, response) pairs again
    calls = []
    real = embedding.score_conversations

    def spy(model, tokenizer, conversations, **kw):
        calls.append(len(conversations))
        return real(model, tokenizer, conversations, **kw)
    monkeypatch.setattr(embedding, "score_conversations", spy)
    scores = rb2.score_rows(model, tok, rows, batch_size=16)
    assert calls == [sum(len(r["chosen"]) + len(r["rejected"]) for r in rows[:-1])]
    np.testing.assert_array_equal(scores[-1], scores[0])
    ids = embedding.render_ids(tok, embedding.conversation(rows[0]["prompt"], rows[0]["chosen"][0]))
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # messages, never re-tokenised text


def test_batched_equals_one_at_a_time_and_left_padding(seqclf, data):
    model, tok = seqclf
    rows = rb2.load_rows(data, limit=4) + rb2.load_rows(data, subset="Ties", limit=2)
    one = rb2.score_rows(model, tok, rows, batch_size=1)
    batched = rb2.score_rows(model, tok, rows, batch_size=64)
    np.testing.assert_allclose(np.concatenate(batched), np.concatenate(one), rtol=1e-4, atol=1e-4)
    tok.padding_side = "left"
    try:
        left = rb2.score_rows(model, tok, rows, batch_size=64)
    finally:
        tok.padding_side = "right"
    np.testing.assert_allclose(np.concatenate(left), np.concatenate(one), rtol=1e-4, atol=1e-4)


def _rounding_bound(backbone, tokenizer, rows, V, bias: float = 0.0) -> np.ndarray:
    """How far two float32 computations of the scores e . V (+ bias) [answers, B] may differ by rounding
    alone when their kernels sum in different orders: each is within gamma_d * sum_i |e_i v_i| of the exact
    value (gamma_d = d u, u = 2^-24; Higham, Accuracy and Stability, 3.1), plus one rounding of the bias
    sum. The embeddings come from the engine with an identity head (times 1 plus zeros is exact)."""
    d, u = V.shape[0], 2.0 ** -24
    E = np.concatenate(rb2.score_rows(backbone, tokenizer, rows, head=torch.eye(d), batch_size=32)).astype(np.float64)
    V = V.double().numpy().reshape(d, -1)
    return 2 * d * u * (np.abs(E) @ np.abs(V)) + 2 * u * (np.abs(E @ V) + abs(bias))


def test_seqclf_equals_lmhead_with_exported_head_and_multi_head_equals_separate_runs(seqclf, backbone, data,
                                                                                     tmp_path):
    model, tok = seqclf
    bare, bare_tok = backbone
    assert not hasattr(bare, "score") and not hasattr(bare, "lm_head")  # no head allocated
    rows = rb2.load_rows(data)[::3]
    own = rb2.evaluate_reward_model(model, tok, rows, batch_size=32, return_scores=True)
    torch.save(embedding.reward_head(model), tmp_path / "ref.pt")
    head = rb2.load_head(tmp_path / "ref.pt", hidden_size=rb2.hidden_size(bare))
    lm = rb2.evaluate_reward_model(bare, bare_tok, rows, head=head, batch_size=32, return_scores=True)
    gap = np.abs(np.concatenate(lm["scores"]).astype(np.float64) - np.concatenate(own["scores"]))
    assert (gap <= _rounding_bound(bare, bare_tok, rows, head)).all()
    assert lm["official"]["overall"] == pytest.approx(own["official"]["overall"])

    rows = rows[::2]
    from peft import LoraConfig, get_peft_model  # a PeftModel is scored by its own head too
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    try:
        wrapped = rb2.evaluate_reward_model(peft_model, tok, rows, batch_size=32, return_scores=True)
    finally:
        peft_model.unload()  # the shared fixture model gets its plain layers back
    plain = rb2.evaluate_reward_model(model, tok, rows, batch_size=32, return_scores=True)
    np.testing.assert_allclose(np.concatenate(wrapped["scores"]), np.concatenate(plain["scores"]), atol=1e-5)

    V = torch.randn(head.shape[0], 3, generator=torch.Generator().manual_seed(1))
    bias = torch.tensor([0.5, -1.0, 2.0])
    multi = rb2.evaluate_reward_model(bare, bare_tok, rows, head=V, bias=bias, batch_size=32, return_scores=True)
    bound = _rounding_bound(bare, bare_tok, rows, V, bias=2.0)
    for b in range(3):
        single = rb2.evaluate_reward_model(bare, bare_tok, rows, head=V[:, b:b + 1], bias=bias[b:b + 1],
                                           batch_size=32, return_scores=True)
        gap = np.abs(np.concatenate(multi["scores"])[:, b].astype(np.float64)
                     - np.concatenate(single["scores"])[:, 0])
        assert (gap <= bound[:, b]).all(), (gap.max(), bound[:, b].min())
        for name in multi["subsets"]:
            assert multi["official"]["per_subset"][name][b] == pytest.approx(single["official"]["per_subset"][name][0])
            assert multi["original"]["per_subset"][name][b] == pytest.approx(single["original"]["per_subset"][name][0])


def test_cli_end_to_end_on_a_generated_file(data, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "PRISM"))
    import eval_rb2
    torch.save(torch.randn(rb2.hidden_size(rb2.load_scoring_model(tiny_model_path(), "lmhead", device="cpu")[0]), 4),
               tmp_path / "PRISM_V_lore_K_4_alpha_1.0.pt")
    report = eval_rb2.main(["--offline", "--dataset", str(data), "--rm_head",
                            str(tmp_path / "PRISM_V_lore_K_4_alpha_1.0.pt"), "--head_bias", "0.1",
                            "--batch_size", "32", "--top_k", "2", "--save_csv", str(tmp_path / "heads.csv"),
                            "--save_json", str(tmp_path / "rb2.json"), "--verbose_failures"])
    out = capsys.readouterr().out
    assert "================= RewardBench 2 Results =================" in out and "#02 head" in out
    assert "(official scoring)" in out and "failing prompts for head" in out
    saved = json.loads((tmp_path / "rb2.json").read_text())
    assert saved["n_heads"] == 4 and saved["complete"] and saved["settings"]["mode"] == "lmhead"
    assert saved["official"]["overall"] == report["official"]["overall"]
    assert (tmp_path / "rb2.md").exists()
    csv_lines = (tmp_path / "heads.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("head,original_Factuality")

    # without the generator's noise the planted head (the tiny model's own) ranks every row right
    noiseless = gen.write(tmp_path / "noiseless", **SMALL, noise_scale=0.0)
    eval_rb2.main(["--offline", "--dataset", str(noiseless), "--rm_head",
                   str(noiseless.parent / "planted_head.safetensors"), "--batch_size", "32",
                   "--save_json", str(tmp_path / "planted.json")])
    planted = json.loads((tmp_path / "planted.json").read_text())
    assert all(planted["official"]["per_subset"][n] == [1.0] for n in rb2.SUBSETS[:5])
    assert planted["official"]["ties"]["tied_accuracy"] == [1.0] and planted["official"]["ties"]["ref_accuracy"] == [1.0]

    with pytest.raises(SystemExit, match="hidden size is"):
        torch.save(torch.randn(7, 2), tmp_path / "bad.pt")
        eval_rb2.main(["--offline", "--dataset", str(data), "--rm_head", str(tmp_path / "bad.pt")])
    with pytest.raises(SystemExit, match="needs --rm_head"):
        eval_rb2.main(["--offline", "--mode", "lmhead"])



def test_rm_weights_of_another_fit_are_refused_before_any_model_load(data, tmp_path, monkeypatch):
    """--rm_head V (alpha 1e4) --rm_weights W (alpha 0) scored a head that no fit made and overwrote the right
    result file. W's record names its V by the tensor's sha256; records without it must equal V's; a missing
    record is named with the command that writes it again. All before the model is loaded."""
    sys.path.insert(0, str(ROOT / "PRISM"))
    import eval_rb2
    g = torch.Generator().manual_seed(0)
    for alpha in (0.0, 10000.0):                     # as the sweep writes them (tests/test_lore.py checks that)
        V, W = torch.randn(128, 2, generator=g), torch.softmax(torch.randn(5, 2, generator=g), 1)
        record = {"K": 2, "alpha": alpha, "seed": 0}
        harness.save_tensor(tmp_path / f"PRISM_V_lore_K_2_alpha_{alpha}.pt", V, "V", record)
        harness.save_tensor(tmp_path / f"PRISM_W_lore_seen_2_{alpha}.pt", W, "W",
                           {**record, "basis_sha256": harness.tensor_sha256(V)})
    V4, W4, W0 = (tmp_path / n for n in ("PRISM_V_lore_K_2_alpha_10000.0.pt", "PRISM_W_lore_seen_2_10000.0.pt",
                                         "PRISM_W_lore_seen_2_0.0.pt"))
    results = tmp_path / "results"
    loaded = []
    monkeypatch.setattr(rb2, "load_scoring_model", lambda *a, real=rb2.load_scoring_model, **k:
                        loaded.append(a) or real(*a, **k))

    def evaluate(head, weights):
        return eval_rb2.main(["--offline", "--dataset", str(data), "--rm_head", str(head), "--rm_weights",
                              str(weights), "--results_dir", str(results), "--batch_size", "32"])

    with pytest.raises(SystemExit, match=r"PRISM_W_lore_seen_2_0.0.pt was fitted with another basis than .*"
                                         r"PRISM_V_lore_K_2_alpha_10000.0.pt .*give the W file of the same fit"):
        evaluate(V4, W0)
    with pytest.raises(SystemExit, match=r"fitted with another basis"):          # nor is offline data made first
        eval_rb2.main(["--offline", "--data_dir", str(tmp_path / "rb2"), "--rm_head", str(V4), "--rm_weights", str(W0),
                       "--results_dir", str(results)])
    assert not (tmp_path / "rb2").exists()
    harness.save_tensor(W0, torch.load(W0, weights_only=True), "W", {"K": 2, "alpha": 0.0, "seed": 0})   # older file
    with pytest.raises(SystemExit, match=r"come from different fits \(alpha: 10000.0 \(V\) vs 0.0 \(W\)\)"):
        evaluate(V4, W0)
    W0.with_suffix(".safetensors").unlink()
    with pytest.raises(SystemExit, match=rf"PRISM_W_lore_seen_2_0.0.safetensors is missing: .*run `python "
                                         rf"train_basis.py --offline --results_dir={results}`"):
        evaluate(V4, W0)
    W0.write_bytes(b"\x00garbage")
    with pytest.raises(SystemExit, match=r"cannot read the --rm_weights file .*PRISM_W_lore_seen_2_0.0.pt"):
        evaluate(V4, W0)
    assert loaded == [] and not results.exists()
    # the right pair, the head given as the .safetensors twin: the same tensor, the same hash
    report = evaluate(V4.with_suffix(".safetensors"), W4)
    assert len(loaded) == 1 and report["n_heads"] == 1

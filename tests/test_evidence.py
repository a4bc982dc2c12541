"""Evidence that can say no: collapse diagnostics on hand-made bases with known answers, the paired
bootstrap on cases with known intervals, the derangement, the verdict's wording, and a null world in
which the pipeline finds no personal gain."""
import math

import numpy as np
import pytest
import torch

import evidence
import reports
import utils
from offline.planted import PlantedPopulation, random_population, simulate_comparisons

# --- collapse diagnostics ----------------------------------------------------------------------

def test_a_rank_one_basis_is_seen_as_collapsed():
    v = torch.tensor([1.0, 2.0, -1.0, 0.5])
    V = torch.stack([v, 2 * v, -0.5 * v], 1)                  # three columns, one direction
    W = torch.tensor([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.9, 0.05, 0.05]])
    d = evidence.basis_diagnostics(V, W, V_ref=v)
    assert d["numerical_rank"] == 1
    assert d["s2_s1"] == pytest.approx(0.0, abs=1e-7)         # float rounding of an exact rank-1 SVD
    assert d["mean_abs_basis_cos"] == pytest.approx(1.0)
    assert d["mean_cos_ref"] == pytest.approx((1 + 1 - 1) / 3) and d["min_cos_ref"] == pytest.approx(-1.0)
    assert d["bases_used"] == 1 and d["mean_top1_weight"] == pytest.approx((0.8 + 0.7 + 0.9) / 3)


def test_orthogonal_columns_and_uniform_weights():
    V = torch.eye(4)[:, :3] * torch.tensor([1.0, 3.0, 0.5])  # orthogonal, different lengths
    W = torch.full((5, 3), 1 / 3)
    d = evidence.basis_diagnostics(V, W)
    assert d["numerical_rank"] == 3 and d["s2_s1"] == pytest.approx(1 / 3)
    assert d["mean_abs_basis_cos"] == pytest.approx(0.0, abs=1e-12)
    assert d["mean_weight_entropy"] == pytest.approx(math.log(3)) == d["max_weight_entropy"]
    assert d["mean_cos_ref"] is None and d["bases_used"] == 1          # argmax ties go to the first column


def test_one_hot_users_use_every_column_and_pruned_rows_are_renormalised():
    V = torch.eye(3)
    W = torch.tensor([[0.99, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.2]])   # pruned rows, not summing to 1
    d = evidence.basis_diagnostics(V, W)
    assert d["bases_used"] == 3 and d["mean_top1_weight"] == pytest.approx(1.0)
    assert d["mean_weight_entropy"] == pytest.approx(0.0)
    one = evidence.basis_diagnostics(torch.ones(4, 1), torch.ones(2, 1))
    assert one["s2_s1"] is None and one["mean_abs_basis_cos"] is None and one["max_weight_entropy"] == 0.0


# --- the paired bootstrap, the derangement and the verdict ----------------------------------------

def test_every_user_five_points_better_gives_the_interval_five_five():
    out = evidence.paired_bootstrap(np.full(40, 0.05), seed=0)
    assert out["mean"] == pytest.approx(5.0)
    assert out["ci95"] == [pytest.approx(5.0), pytest.approx(5.0)] and out["users"] == 40
    assert evidence.verdict(out) == evidence.GAIN


def test_bootstrap_interval_is_seeded_drops_users_without_comparisons_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    differences = np.concatenate([rng.normal(0.0, 0.1, 200), [np.nan] * 5])
    a, b = evidence.paired_bootstrap(differences, seed=3), evidence.paired_bootstrap(differences, seed=3)
    assert a == b and a["users"] == 200
    lo, hi = a["ci95"]
    assert lo < a["mean"] < hi
    # the standard error of a mean of 200 draws with std 10 points is ~0.71 points: the 95% interval is
    # about +-1.96 SE wide; 0.2 points of slack for the 2,000 resamples' own noise
    assert hi - lo == pytest.approx(2 * 1.96 * 10 / math.sqrt(200), abs=0.4)
    assert evidence.paired_bootstrap([np.nan, np.nan], seed=0) == {"mean": None, "ci95": [None, None], "users": 0}


@pytest.mark.parametrize("lo, hi, word", [(0.1, 2.0, "gain"), (-2.0, -0.1, "loss"), (-1.0, 2.0, "no clear difference"),
                                          (0.0, 2.0, "no clear difference"), (None, None, "no clear difference")])
def test_the_verdict_follows_the_interval_only(lo, hi, word):
    interval = {"mean": 0.5 if lo is not None else None, "ci95": [lo, hi], "users": 10}
    assert evidence.verdict(interval) == word
    if lo is not None:
        assert evidence.describe(interval).endswith(f": {word}")


@pytest.mark.parametrize("n", [2, 3, 5, 17, 100])
def test_the_derangement_is_a_permutation_without_a_fixed_point(n):
    for seed in range(20):
        perm = evidence.derangement(n, seed)
        assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))
    assert np.array_equal(evidence.derangement(n, 7), evidence.derangement(n, 7))
    with pytest.raises(ValueError):
        evidence.derangement(1, 0)


# --- the sweep carries the evidence; a null world gives no personal gain ------------------------------

def planted_groups(population: PlantedPopulation, n_seen: int, seed: int):
    seen = PlantedPopulation(population.directions, population.user_weights[:n_seen])
    unseen = PlantedPopulation(population.directions, population.user_weights[n_seen:])
    return [simulate_comparisons(seen, 20, seed=seed)[0], simulate_comparisons(seen, 20, seed=seed + 1)[0],
            simulate_comparisons(unseen, 10, seed=seed + 2)[0], simulate_comparisons(unseen, 20, seed=seed + 3)[0]]


def sweep(population, seed, n_seen=60):
    V_ref = torch.tensor(population.directions[:, :1], dtype=torch.float32)
    groups = planted_groups(population, n_seen, seed)
    n_unseen = len(population.user_weights) - n_seen
    return utils.run([0, 1, 3], [0.0], V_ref, *groups, n_seen, n_unseen, "cpu", num_iterations=300,
                     fewshot_iterations=200, seed=seed, progress=False).records


def test_records_carry_diagnostics_and_contrasts_for_every_fit():
    records = sweep(random_population(80, 12, 3, seed=0), seed=0)
    for record in records:
        assert ("diagnostics" in record) == (record["K"] >= 1) == ("contrasts" in record)
    fit = records[-1]
    assert set(fit["contrasts"]) == {"seen_test", "unseen_test"}
    assert fit["contrasts"]["unseen_test"]["shared"].shape == (20,)
    row = reports.summarize(records)[-1]
    for group in ("seen_test", "unseen_test"):
        assert set(reports.GAINS) <= set(row[group])
        assert row[group]["gain_vs_ref"]["users"] == (60 if group == "seen_test" else 20)


NULL_SEEDS = range(6)


def null_population(seed: int) -> PlantedPopulation:
    """Every user's reward is the same direction (the population's first column): no personal part."""
    population = random_population(80, 12, 3, seed=seed)
    weights = np.zeros_like(population.user_weights)
    weights[:, 0] = 1.0
    return PlantedPopulation(population.directions, weights)


@pytest.mark.parametrize("seed", NULL_SEEDS)
def test_a_null_world_gives_no_clear_personal_gain(seed):
    """Users who share one reward: each user's own weights (K = 3) cannot beat the shared mean weights on
    held-out comparisons (averaging the users' noisy fits can only help: the true difference is < 0), so
    that interval never lies above 0 (seeds 0-19: the largest lower bound was -0.5 points). Against another
    user's equally noisy weights the true difference is 0, so a 95% interval lies above 0 in 2.5% of
    worlds (1 of 40 over seeds 0-19, at +0.25): the margin is 2 points, which a lower bound reaches only
    when the mean is about 4 standard errors above 0 (SE ~0.9-1.3 points at these sizes)."""
    row = reports.summarize(sweep(null_population(seed), seed=seed))[-1]
    for group in ("seen_test", "unseen_test"):
        assert evidence.verdict(row[group]["gain_vs_shared"]) != evidence.GAIN, (group, row[group]["gain_vs_shared"])
        assert row[group]["gain_vs_other"]["ci95"][0] < 2.0, (group, row[group]["gain_vs_other"])


def test_heterogeneous_users_gain_over_another_users_weights():
    """The contrast: users with opposed tastes (pure users of 3 orthogonal directions), the same sizes.
    Each user's own few-shot weights beat another user's on its test comparisons (a permuted user likes
    another direction): the interval lies above 0 by far (+20 to +35 points over seeds 0-2)."""
    population = random_population(80, 12, 3, seed=1, concentration=0.05)
    row = reports.summarize(sweep(population, seed=1))[-1]
    assert evidence.verdict(row["unseen_test"]["gain_vs_other"]) == evidence.GAIN
    assert row["unseen_test"]["gain_vs_other"]["ci95"][0] > 5.0


@pytest.mark.parametrize("best_K, labels", [
    (1, ["ref (the backbone's head)", "K = 1 (one Bradley-Terry reward)"]),
    (2, ["ref (the backbone's head)", "K = 1 (one Bradley-Terry reward)", "LoRe (K = 2, chosen on seen users)"])])
def test_paper_table_keeps_the_K1_row_when_lore_chose_K1(best_K, labels):
    """The K = 1 row is always there; LoRe's row is added only when it chose another K (it was once
    dropped together with the K = 1 row when LoRe chose K = 1)."""
    counts = {"users": 2, "comparisons": 4}
    records = [{"alpha": 0.0, "K": K, "seed": 0, "d": 4, "basis_size": K,
                "per_user": {g: np.array([0.5, 0.6 + 0.1 * (K == best_K)]) for g in reports.GROUP_NAMES},
                "groups": {g: {"mean": 0.55 + 0.05 * (K == best_K), **counts} for g in reports.GROUP_NAMES}}
               for K in (0, 1, 2)]
    assert [row["label"] for row in reports.lore_rows(records, 0.0)] == labels

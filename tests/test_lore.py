"""The LoRe core in utils.py: losses, schedule, pruning, the fast alternating iteration against the
straightforward formulation, batched few-shot fitting, K = 0, recovery of a planted population, and the
pipelines' returns and files. Everything is offline, seeded and small (d <= 16)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harness
import reports
import utils
from offline.planted import bayes_accuracy, random_population, simulate_comparisons


def random_users(counts, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, d, generator=g, dtype=dtype) for m in counts]


# --- losses, schedule, pruning ---------------------------------------------------------------------

def hand_made_case():
    # user 0: x = [1, 0]; user 1: x = [0, 1] and [1, 1]. W = 0 -> w = [1/2, 1/2], V w = [200, -100]
    X = [torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)]
    V = torch.tensor([[100.0, 300.0], [0.0, -200.0]], dtype=torch.float64)
    return X, V


def test_lore_loss_matches_closed_form():
    X, V = hand_made_case()
    V_sft = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    model = utils.LoRe(V_sft, 0.5, 2, 2, 2, 1, 0.1, dtype=torch.float64, device="cpu")
    model.W.data.zero_()
    model.V.data.copy_(V)
    comparisons = utils.as_comparisons(X)
    # margins x.V.w/100: user 0 -> 2; user 1 -> -1 and 1; loss = sum over users of their mean NLL
    nll = lambda s: math.log1p(math.exp(-s))  # noqa: E731
    expected = nll(2.0) + (nll(-1.0) + nll(1.0)) / 2
    expected += 0.5 * ((100 - 1) ** 2 + (0 - 2) ** 2 + (300 - 1) ** 2 + (-200 - 2) ** 2)
    assert float(model.loss(comparisons).detach()) == pytest.approx(expected, rel=1e-12)


def test_regularized_pooled_loss_and_cosine_term_match_closed_form():
    X, V = hand_made_case()
    model = utils.LoRe_regularized(None, 0.0, 2, 2, 2, 1, 0.0, dtype=torch.float64, device="cpu")
    model.W.data.zero_()
    model.V.data.copy_(V)
    model.train(X)                        # lr 0: one iteration only records the loss at W = 0
    nll = lambda s: math.log1p(math.exp(-s))  # noqa: E731
    assert float(model.loss_history[0]) == pytest.approx((nll(2.0) + nll(-1.0) + nll(1.0)) / 3, rel=1e-12)
    # columns [1,0] and [0,1] both at 45 degrees from [1,1]
    reg = utils.cosine_regularizer(torch.eye(2, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64))
    assert float(reg) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)


def original_alpha_at_step(step, num_iterations, alpha):
    """Transcription of the original LoRe_regularized._alpha_at_step."""
    warmup_start = int(0.2 * num_iterations)
    warmup_end = int(0.8 * num_iterations)
    if step < warmup_start: return 0.0  # noqa: E701
    if step >= warmup_end: return float(alpha)  # noqa: E701
    return float(alpha) * (step - warmup_start) / (warmup_end - warmup_start)


def test_cosine_warmup_schedule():
    alpha, T = 10.0, 100
    values = {t: utils.cosine_warmup_alpha(t, T, alpha) for t in (0, 19, 20, 35, 50, 79, 80, 99)}
    assert values == pytest.approx({0: 0.0, 19: 0.0, 20: 0.0, 35: 2.5, 50: 5.0, 79: 10 * 59 / 60, 80: 10.0,
                                    99: 10.0})


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 13, 99, 101, 1003])
def test_cosine_warmup_uses_the_original_integer_bounds(T):
    # T = 13: int(2.6) = 2 and int(10.4) = 10, where 0.2 T and 0.8 T would give other weights
    assert [utils.cosine_warmup_alpha(t, T, 3.0) for t in range(T)] == \
        [original_alpha_at_step(t, T, 3.0) for t in range(T)]


def test_pruning_keeps_columns_whose_largest_weight_reaches_1e_2():
    weights = torch.tensor([[0.5, 0.0099, 0.4901, 0.0], [0.98, 0.0, 0.01, 0.01]])
    V = torch.arange(12.0).reshape(3, 4)
    kept_weights, kept_V = utils.prune_basis(weights, V)
    assert torch.equal(kept_weights, weights[:, [0, 2, 3]])   # not renormalised; 1e-2 itself is kept
    assert torch.equal(kept_V, V[:, [0, 2, 3]])


def test_regularized_trainer_returns_pruned_simplex_weights():
    X = random_users([5, 6, 7, 8], 6, seed=3)
    model = utils.LoRe_regularized(None, 0.0, 4, 6, 8, 30, 0.5, dtype=torch.float64, device="cpu")
    weights, V = model.train(X)
    full = torch.softmax(model.W.detach(), 1)
    kept = full.max(0).values >= 1e-2
    assert torch.equal(weights, full[:, kept]) and torch.equal(V, model.V.detach()[:, kept])


def test_training_leaves_the_torch_thread_count_as_it_was():
    torch.set_num_threads(2)
    try:
        utils.LoRe_regularized(None, 0.0, 4, 6, 2, 5, 0.5, device="cpu").train(random_users([5, 6, 7, 8], 6, seed=3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


# --- the fast alternating iteration equals the straightforward one --------------------------------

def straightforward_regularized(X_all, users, V_sft, alpha, W0, V0, T, lr):
    """The original formulation: every comparison against every user's weights (X_all @ (V @ w.T),
    then gather), separate forward passes for the W step and the V step."""
    W, V = W0.clone().requires_grad_(), V0.clone().requires_grad_()
    opt_W, opt_V = torch.optim.Adam([W], lr=lr), torch.optim.Adam([V], lr=lr)
    for t in range(T):
        opt_W.zero_grad()
        logits = X_all @ (V.detach() @ torch.softmax(W, 1).T) / 100
        (-F.logsigmoid(logits.gather(1, users[:, None]))).mean().backward()
        opt_W.step()
        opt_V.zero_grad()
        logits = X_all @ (V @ torch.softmax(W.detach(), 1).T) / 100
        loss = (-F.logsigmoid(logits.gather(1, users[:, None]))).mean()
        alpha_t = original_alpha_at_step(t, T, alpha)
        cos = (F.normalize(V, dim=0) * F.normalize(V_sft, dim=0)).sum(0)
        (loss + alpha_t * torch.mean(1 - cos)).backward()
        opt_V.step()
    return W.detach(), V.detach()


def straightforward_joint(X_all, users, V_sft, alpha, W0, V0, T, lr):
    """The original LoRe: one Adam over W and V; loss = sum over users of their mean NLL (every comparison
    against every user's weights, then a gather) + alpha * sum_b ||V_b - V_sft||^2."""
    W, V = W0.clone().requires_grad_(), V0.clone().requires_grad_()
    optimizer = torch.optim.Adam([W, V], lr=lr)
    counts = torch.bincount(users).double()
    for _ in range(T):
        optimizer.zero_grad()
        logits = X_all @ (V @ torch.softmax(W, 1).T) / 100
        nll = -F.logsigmoid(logits.gather(1, users[:, None]))[:, 0]
        loss = (torch.zeros(len(counts), dtype=nll.dtype).index_add(0, users, nll) / counts).sum()
        (loss + alpha * ((V - V_sft) ** 2).sum()).backward()
        optimizer.step()
    return W.detach(), V.detach()


def test_fast_joint_iteration_with_the_l2_pull_equals_straightforward():
    """The joint trainer with alpha > 0 (its whole gradient, the L2 pull towards V_ref included)."""
    C, d, B, T = 4, 6, 3, 40
    X = random_users([5, 6, 7, 8], d, seed=4)
    X_all = torch.cat(X).double()
    users = torch.repeat_interleave(torch.arange(C), torch.tensor([len(x) for x in X]))
    V_sft = torch.randn(d, 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    model = utils.LoRe(V_sft, 0.05, C, d, B, T, 0.3, seed=2, dtype=torch.float64, device="cpu")
    W0, V0 = model.W.detach().clone(), model.V.detach().clone()
    model.train([x.double() for x in X])
    W_expected, V_expected = straightforward_joint(X_all, users, V_sft, 0.05, W0, V0, T, 0.3)
    assert torch.allclose(model.W, W_expected, rtol=1e-9, atol=1e-10)
    assert torch.allclose(model.V, V_expected, rtol=1e-9, atol=1e-10)
    drift = (model.V - V_sft).norm()
    unpulled = utils.LoRe(V_sft, 0.0, C, d, B, T, 0.3, seed=2, dtype=torch.float64, device="cpu")
    unpulled.train([x.double() for x in X])
    assert drift < (unpulled.V - V_sft).norm()                       # the pull does pull


@pytest.mark.parametrize("indexed", [False, True])
def test_fast_regularized_iteration_equals_straightforward(indexed):
    d, C, B, T = 7, 5, 3, 12
    X = random_users([4, 6, 3, 5, 7], d, seed=1)
    X_all = torch.cat(X)
    users = torch.repeat_interleave(torch.arange(C), torch.tensor([len(x) for x in X]))
    if indexed:   # the same features from embedding rows: x_n = table[2n] - table[2n+1], shuffled rows
        rows = torch.randperm(2 * len(X_all), generator=torch.Generator().manual_seed(4))
        table = torch.empty(2 * len(X_all), d, dtype=X_all.dtype)
        table[rows[0::2]], table[rows[1::2]] = 2 * X_all, X_all
        data = utils.Comparisons(users, C, table, rows[0::2], rows[1::2])
    else:
        data = X
    V_sft = torch.randn(d, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = utils.LoRe_regularized(V_sft, 3.0, C, d, B, T, 0.3, seed=5, dtype=torch.float64, device="cpu")
    W0, V0 = model.W.detach().clone(), model.V.detach().clone()
    model.train(data)
    W_expected, V_expected = straightforward_regularized(X_all, users, V_sft, 3.0, W0, V0, T, 0.3)
    assert torch.allclose(model.W.detach(), W_expected, rtol=1e-9, atol=1e-10)
    assert torch.allclose(model.V.detach(), V_expected, rtol=1e-9, atol=1e-10)
    assert not torch.equal(model.V.detach(), V0)


def test_joint_lore_gradient_through_indexed_projection_matches_dense():
    d = 5
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, d, generator=g, dtype=torch.float64)
    chosen, rejected = torch.tensor([0, 3, 3, 8, 1, 2]), torch.tensor([1, 4, 5, 0, 7, 7])
    users = torch.tensor([0, 0, 1, 1, 1, 2])
    indexed = utils.Comparisons(users, 3, table, chosen, rejected)
    features = table[chosen] - table[rejected]
    dense = utils.Comparisons.from_features(users, 3, features)
    V = torch.randn(d, 2, generator=g, dtype=torch.float64, requires_grad=True)
    G = torch.randn(6, 2, generator=g, dtype=torch.float64)
    (grad_indexed,) = torch.autograd.grad((indexed.project(V) * G).sum(), V)
    (grad_dense,) = torch.autograd.grad(((features @ V) * G).sum(), V)
    assert torch.allclose(indexed.project(V), features @ V) and torch.allclose(grad_indexed, grad_dense)
    assert torch.allclose(indexed.project_T(G), features.T @ G) and torch.allclose(dense.project_T(G), features.T @ G)
    a = utils.solve_regularized(None, 0.0, indexed, 2, 20, 0.5, seed=1, progress=False)
    b = utils.solve_regularized(None, 0.0, dense, 2, 20, 0.5, seed=1, progress=False)
    assert all(torch.allclose(x, y) for x, y in zip(a, b))


def test_batched_few_shot_equals_one_fit_per_user():
    # Adam is elementwise and the loss is a sum of per-user terms, so one batched fit is exactly C fits
    d, B = 6, 3
    X = random_users([3, 5, 2, 4], d, seed=7)
    V = torch.randn(d, B, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 50
    batched = utils.PersonalizeBatch(4, d, B, 40, 0.1, seed=3, dtype=torch.float64, device="cpu")
    W0 = batched.W.detach().clone()
    weights = batched.train(X, V)
    for i, x in enumerate(X):
        w = W0[i].clone().requires_grad_()
        opt = torch.optim.Adam([w], lr=0.1)
        for _ in range(40):
            opt.zero_grad()
            (-F.logsigmoid(x @ V @ torch.softmax(w, 0) / 100)).mean().backward()
            opt.step()
        assert torch.allclose(weights[i], torch.softmax(w.detach(), 0), rtol=1e-9, atol=1e-12)


# --- evaluation, K = 0, sampling, inputs ------------------------------------------------------------

def test_k0_reproduces_reference_head_predictions_and_ties_are_wrong():
    d = 6
    X = random_users([5, 8, 3], d, seed=11, dtype=torch.float32)
    Xu = random_users([4, 6], d, seed=12, dtype=torch.float32)
    V_ref = torch.randn(d, generator=torch.Generator().manual_seed(13))
    X[0][0] = 0.0                                     # a tie (x . V_ref = 0) counts as wrong
    out = utils.run([0], [0.0], V_ref, X, X, Xu, Xu, 3, 2, "cpu", progress=False)
    assert all(len(r) == 1 for r in out) and len(out) == 8

    def reference(groups):
        per_user = np.array([float(((x @ V_ref) > 0).float().mean()) for x in groups])
        return per_user.mean(), 0.25 * per_user.std()
    for mean, band, groups in ((out[0], out[4], X), (out[1], out[5], X), (out[2], out[6], Xu), (out[3], out[7], Xu)):
        assert (mean[0], band[0]) == pytest.approx(reference(groups))
    per_user = utils.per_user_accuracy(X, V_ref[:, None], torch.ones(3, 1))
    assert per_user[0] == pytest.approx(float(((X[0] @ V_ref) > 0).float().mean())) and per_user[0] <= 0.8


def test_sample_shots_is_seeded_and_takes_min_m_shots_per_user():
    X = random_users([2, 9, 5], 4, seed=0)
    shots = utils.sample_shots(X, 4, seed=1)
    assert [len(s) for s in shots] == [2, 4, 4]
    for s, x in zip(shots, X):                       # rows of the user's own set, no repeats
        assert all(any(torch.equal(r, y) for y in x) for r in s) and len(torch.unique(s, dim=0)) == len(s)
    again, other = utils.sample_shots(X, 4, seed=1), utils.sample_shots(X, 4, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(shots, again))
    assert not all(torch.equal(a, b) for a, b in zip(shots, other))


def test_bad_shapes_raise_value_errors_naming_the_shape():
    X = random_users([3, 4], 5, seed=0)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        utils.run([0], [0.0], torch.zeros(5, 2), X, X, X, X, 2, 2, "cpu", progress=False)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        utils.Comparisons.from_user_list([torch.zeros(3, 5), torch.zeros(4)])
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        utils.Comparisons.from_user_list([torch.zeros(3, 5), torch.zeros(2, 6)])
    with pytest.raises(ValueError, match="users"):
        utils.run([0], [0.0], torch.zeros(5), X, X, X, X, 3, 2, "cpu", progress=False)


# --- planted population: recovery, few-shot, K = 1 ---------------------------------------------------

@pytest.fixture(scope="module")
def planted():
    """B* = 3 orthogonal directions in R^16, Dirichlet(0.3) users (most lean on one direction):
    150 seen users x 40 train / 40 test comparisons, 100 unseen users x 20 shots / 40 test."""
    d, B_star, C, C_unseen = 16, 3, 150, 100
    population = random_population(C + C_unseen, d, B_star, seed=0)
    seen = population_rows(population, slice(0, C))
    unseen = population_rows(population, slice(C, None))
    train, _ = simulate_comparisons(seen, 40, seed=1)
    test, bayes_test = simulate_comparisons(seen, 40, seed=2)
    shots, _ = simulate_comparisons(unseen, 20, seed=3)
    test_unseen, bayes_unseen = simulate_comparisons(unseen, 40, seed=4)
    V_star, W_star = torch.tensor(population.directions, dtype=torch.float32), \
        torch.tensor(population.user_weights, dtype=torch.float32)
    return dict(d=d, B_star=B_star, C=C, C_unseen=C_unseen, V_star=V_star, W_star=W_star, train=train,
                test=test, shots=shots, test_unseen=test_unseen, bayes_seen=bayes_accuracy(test, bayes_test),
                bayes_unseen=bayes_accuracy(test_unseen, bayes_unseen))


def test_planted_population_bayes_accuracy_is_what_the_truth_achieves(planted):
    p = planted
    assert 0.8 < p["bayes_seen"] < 0.9 and 0.8 < p["bayes_unseen"] < 0.9
    assert torch.allclose(p["W_star"].sum(1), torch.ones(p["C"] + p["C_unseen"]))
    # the truth itself scores its Bayes accuracy up to sampling error: 6,000 comparisons,
    # std error sqrt(0.84 * 0.16 / 6000) = 0.5 points, so 2 points is > 4 standard errors
    mean, _ = utils.accuracy_mean_std(p["test"], p["V_star"], p["W_star"][: p["C"]])
    assert abs(mean - p["bayes_seen"]) < 0.02


def test_lore_recovers_planted_population_and_beats_a_single_reward_on_unseen_users(planted):
    p = planted
    out = utils.run([1, p["B_star"]], [0.0], None, p["train"], p["test"], p["shots"], p["test_unseen"], p["C"],
                    p["C_unseen"], "cpu", progress=False)
    seen_test, unseen_test = out[1], out[3]
    # Within a few points of Bayes: with 6,000 (4,000) test comparisons the accuracy's std error is
    # ~0.5 (0.6) points; the rest of the allowed gap is estimation error of 40 train comparisons per
    # seen user (3 weights each) and of 20 shots per unseen user (measured: 1.1 and 2.5 points).
    assert seen_test[1] > p["bayes_seen"] - 0.03
    assert unseen_test[1] > p["bayes_unseen"] - 0.045
    # One Bradley-Terry reward cannot serve users who lean on orthogonal directions: a user on
    # direction 1 judged by the population's mean direction (~54 degrees away for 3 directions) loses
    # ~10 points (measured 9). Require 5 points: > 5 std errors of a difference on 4,000 comparisons.
    assert unseen_test[1] > unseen_test[0] + 0.05
    assert seen_test[1] > seen_test[0] + 0.05


# --- pipelines: lengths, files, seeding --------------------------------------------------------------

def population_rows(population, users):
    """The planted population restricted to some of its users."""
    from offline.planted import PlantedPopulation
    return PlantedPopulation(population.directions, population.user_weights[users])


def small_groups():
    population = random_population(30, 8, 2, seed=5)
    seen, unseen = population_rows(population, slice(0, 20)), population_rows(population, slice(20, None))
    groups = [simulate_comparisons(seen, 10, seed=s)[0] for s in (1, 2)]
    groups += [simulate_comparisons(unseen, 6, seed=s)[0] for s in (3, 4)]
    return torch.tensor(population.directions[:, :1], dtype=torch.float32) / 400, groups


def test_run_regularized_returns_eight_lists_and_saves_loadable_files(tmp_path):
    from safetensors.torch import load_file
    V_ref, groups = small_groups()
    K_list, alpha_list = [0, 1, 3], [0.0, 100.0]
    out = utils.run_regularized(K_list, alpha_list, V_ref, *groups, 20, 10, "cpu", num_iterations=40,
                                fewshot_iterations=20, results_dir=tmp_path / "res", dataset_name="toy",
                                progress=False)
    assert len(out) == 8 and all(len(r) == 6 for r in out)
    assert all(0.0 <= v <= 1.0 for r in out[:4] for v in r)
    for alpha in alpha_list:
        assert not (tmp_path / "res" / f"toy_V_lore_K_0_alpha_{alpha}.pt").exists()
        for K in (1, 3):
            V = torch.load(tmp_path / "res" / f"toy_V_lore_K_{K}_alpha_{alpha}.pt", weights_only=True)
            W = torch.load(tmp_path / "res" / f"toy_W_lore_seen_{K}_{alpha}.pt", weights_only=True)
            assert V.shape[0] == 8 and 1 <= V.shape[1] <= K and W.shape == (20, V.shape[1])
            assert torch.equal(load_file(tmp_path / "res" / f"toy_V_lore_K_{K}_alpha_{alpha}.safetensors")["V"], V)
            assert torch.equal(load_file(tmp_path / "res" / f"toy_W_lore_seen_{K}_{alpha}.safetensors")["W"], W)
            # W's fit record names the V it goes with (eval_rb2 --rm_weights checks it)
            assert harness.fit_record(tmp_path / "res" / f"toy_W_lore_seen_{K}_{alpha}.pt", "")["basis_sha256"] == \
                harness.tensor_sha256(V)
    again = utils.run_regularized(K_list, alpha_list, V_ref, *groups, 20, 10, "cpu", num_iterations=40,
                                  fewshot_iterations=20, results_dir=tmp_path / "res2", progress=False)
    assert again == out                                  # seeded: identical reruns
    assert (tmp_path / "res2" / "V_lore_K_3_alpha_100.0.pt").exists()


def test_run_returns_eight_lists_and_saves_when_asked(tmp_path):
    V_ref, groups = small_groups()
    out = utils.run([0, 2], [0.0], V_ref, *groups, 20, 10, "cpu", num_iterations=30, fewshot_iterations=20,
                    results_dir=tmp_path, dataset_name="toy", progress=False)
    assert len(out) == 8 and all(len(r) == 2 for r in out)
    V = torch.load(tmp_path / "toy_V_lore_K_2_alpha_0.0.pt", weights_only=True)
    assert V.shape == (8, 2) and (tmp_path / "toy_W_lore_seen_2_0.0.safetensors").exists()



def test_a_saved_basis_is_not_replaced_by_another_fit_unless_overwrite(tmp_path):
    V_ref, groups = small_groups()
    other_data = [groups[1], groups[0], *groups[2:]]          # seen train and test swapped: other training data

    def sweep(groups=groups, **changes):
        settings = dict(num_iterations=30, fewshot_iterations=20, results_dir=tmp_path, dataset_name="toy",
                        progress=False)
        return utils.run([0, 2], [0.0], V_ref, *groups, 20, 10, "cpu", **{**settings, **changes})

    path = tmp_path / "toy_V_lore_K_2_alpha_0.0.pt"
    sweep()
    sweep()                                                    # the same fit again: allowed
    saved, V_saved = path.read_bytes(), torch.load(path, weights_only=True)
    with pytest.raises(SystemExit, match=r"toy_V_lore_K_2_alpha_0\.0\.pt .*num_iterations: 30 -> 31.*--overwrite=True"):
        sweep(num_iterations=31)
    with pytest.raises(SystemExit, match=r"data_sha256"):
        sweep(other_data)
    assert path.read_bytes() == saved                          # refused before anything was written
    sweep(num_iterations=31, overwrite=True)
    assert not torch.equal(torch.load(path, weights_only=True), V_saved)


def original_vary_shots(trials, alpha_list, K_list, num_shots, train_features_unseen, test_features_sparse_unseen,
                        V_final, N_unseen, fit_joint, draw, fit_few_shot):
    """Transcription of the original run_few_shot_vary_shots, with its fits and draws passed in, for
    every (alpha, K): the four lists it computes (the original returned those of the last (alpha, K))."""
    def evaluate_model(X, V, w):
        return ((X @ V @ w) > 0).sum().item() / (X @ V @ w).numel()

    out = []
    for alpha in alpha_list:
        for K in K_list:
            V_joint = V_final if K == 0 else fit_joint(alpha, K)
            few_shot_train_means, few_shot_train_stds, unseen_test_means, unseen_test_stds = [], [], [], []
            for shots in num_shots:
                few_shot_train, unseen_test = [], []
                for trial in range(trials):
                    train_features_unseen_shots = draw(train_features_unseen, shots, trial)
                    if K <= 1:
                        W_few_shot = [torch.tensor([1.0], dtype=torch.float64) for i in range(N_unseen)]
                    else:
                        W_few_shot = fit_few_shot(train_features_unseen_shots, V_joint)
                    few_shot_train.append(np.mean([evaluate_model(train_features_unseen_shots[i], V_joint, W_few_shot[i])
                                                   for i in range(N_unseen)]))
                    unseen_test.append(np.mean([evaluate_model(test_features_sparse_unseen[i], V_joint, W_few_shot[i])
                                                for i in range(N_unseen)]))
                few_shot_train_means.append(np.mean(few_shot_train))
                few_shot_train_stds.append(np.std(few_shot_train))
                unseen_test_means.append(np.mean(unseen_test))
                unseen_test_stds.append(np.std(unseen_test))
            out.append((few_shot_train_means, few_shot_train_stds, unseen_test_means, unseen_test_stds))
    return out


def test_vary_shots_returns_the_original_statistics(monkeypatch, tmp_path):
    """Our batched run against the original's loop, with the same draws and the same (deterministic,
    stand-in) fits: the four lists the original returns, for every (alpha, K); and their files."""
    V_ref, (train, _, pool, test_unseen) = small_groups()
    V_ref, train, pool, test_unseen = V_ref.double(), train.to(dtype=torch.float64), \
        pool.to(dtype=torch.float64), test_unseen.to(dtype=torch.float64)
    d, seed, trials, num_shots = train.d, 7, 4, [1, 3, 50]

    def joint_V(alpha, K):        # a fixed basis per (alpha, K), standing in for the joint fit
        g = torch.Generator().manual_seed(int(10 * K + alpha))
        return torch.randn(d, K, generator=g, dtype=torch.float64)

    def few_shot_weights(user_features, V):   # per user: softmax of its mean projection, a stand-in fit
        return [torch.softmax((x @ V).mean(0) / 100, 0) for x in user_features]

    def batched_few_shot_weights(shots, V, *args, **kwargs):
        return torch.stack(few_shot_weights(shots.user_list(), V))

    monkeypatch.setattr(utils, "solve_regularized", lambda V_sft, alpha, X, K, *a, **k: (None, joint_V(alpha, K)))
    monkeypatch.setattr(utils, "_few_shot_weights", batched_few_shot_weights)
    alpha_list, K_list = [0.0, 1.0], [0, 1, 3]
    ours = utils.run_few_shot_vary_shots(trials, alpha_list, K_list, num_shots, train, pool, test_unseen, V_ref,
                                         20, 10, "cpu", seed=seed, progress=False)
    draw = lambda users, shots, trial: utils.sample_shots(users, shots, seed=utils.derived_seed(seed, 2, shots, trial))  # noqa: E731
    theirs = original_vary_shots(trials, alpha_list, K_list, num_shots, pool.user_list(), test_unseen.user_list(),
                                 V_ref, 10, joint_V, draw, few_shot_weights)
    assert len(ours.runs) == len(theirs) == 6
    for run, original in zip(ours.runs, theirs):
        mine = (run["fewshot_train"]["mean"], run["fewshot_train"]["std_trials"], run["unseen_test"]["mean"],
                run["unseen_test"]["std_trials"])
        for a, b in zip(mine, original):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    a, b, c, e = ours                                  # unpacks as the original: its last (alpha, K)
    for x, y in zip((a, b, c, e), theirs[-1]):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)
    assert max(theirs[-1][3]) > 0                       # the trials do differ
    assert ours.capped == [50] and all(run["unseen_test"]["std_users"].min() > 0 for run in ours.runs)

    paths = reports.save_fewshot_results(tmp_path, "fewshot", {"seed": seed}, num_shots, K_list, alpha_list, ours)
    payload = json.loads(paths["json"].read_text())
    row = payload["results"][-1]
    assert (row["alpha"], row["K"], row["shots"], row["capped"]) == (1.0, 3, 50, True)
    assert row["unseen_test"]["std_trials"] == pytest.approx(e[-1]) and "std_users" in row["unseen_test"]
    assert "| 50 (capped) |" in paths["markdown"].read_text() and paths["plots"][0].exists()


def test_vary_shots_seeding_and_k0():
    V_ref, (train, _, shots_pool, test_unseen) = small_groups()
    kwargs = dict(num_iterations=30, fewshot_iterations=20, progress=False)
    out = utils.run_few_shot_vary_shots(3, [0.0], [0, 2], [2, 4], train, shots_pool, test_unseen, V_ref, 20, 10,
                                        "cpu", **kwargs)
    assert len(out) == 4 and all(r.shape == (2,) for r in out) and len(out.runs) == 2
    again = utils.run_few_shot_vary_shots(3, [0.0], [0, 2], [2, 4], train, shots_pool, test_unseen, V_ref, 20,
                                          10, "cpu", **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    # K = 0: the reference head, whatever the shots: its test accuracy is the plain K = 0 figure, the
    # same in every trial (std over trials 0)
    reference = utils.run([0], [0.0], V_ref, train, train, shots_pool, test_unseen, 20, 10, "cpu", progress=False)
    assert out.runs[0]["unseen_test"]["mean"] == pytest.approx([reference[3][0]] * 2)
    assert list(out.runs[0]["unseen_test"]["std_trials"]) == [0.0, 0.0]


def toy_records(means, stds, K_list=(0, 5), alpha=1e4, seed=3):
    """Records as run() makes them, with the given per-group means and stds over users [group][K]."""
    return [{"alpha": alpha, "K": K, "seed": seed, "d": 4, "basis_size": max(K, 1),
             "cosine_to_ref": None if K == 0 else [1.0] * K,
             "groups": {g: {"mean": means[j][i], "std": stds[j][i], "users": 2, "comparisons": 4}
                        for j, g in enumerate(utils.GROUP_NAMES)},
             "per_user": {g: torch.tensor([means[j][i], means[j][i]]) for j, g in enumerate(utils.GROUP_NAMES)}}
            for i, K in enumerate(K_list)]


def test_a_sweep_unpacks_as_the_original_with_its_band():
    records = toy_records([[0.9, 0.8], [0.7, 0.6], [0.65, 0.6], [0.6, 0.55]],
                          [[0.1, 0.2], [0.04, 0.08], [0.0, 0.0], [0.12, 0.04]])
    sweep = utils.Sweep.from_records(records)
    means_seen_train, *_, bands_unseen_test = sweep
    assert means_seen_train == [0.9, 0.8] and sweep.records is records
    assert bands_unseen_test == pytest.approx([0.25 * 0.12, 0.25 * 0.04])          # the original's 0.25 x std


def test_save_results_writes_json_with_raw_std_markdown_and_plot(tmp_path):
    records = toy_records([[0.9, 0.8], [0.7, 0.6], [0.65, 0.6], [0.6, 0.55]],
                          [[0.1, 0.2], [0.04, 0.08], [0.0, 0.0], [0.12, float("nan")]])
    paths = reports.save_results(tmp_path, "toy", {"seed": 3, "K_list": [0, 5]}, records,
                                 plot_name="acc_alpha_{alpha}.png")
    payload = json.loads(paths["json"].read_text())
    assert payload["seed"] == 3 and payload["settings"]["K_list"] == [0, 5]
    assert payload["results"][1]["seen_train"] == {"mean": 0.8, "std": pytest.approx(0.2), "per_seed": [0.8]}
    assert payload["results"][1]["unseen_test"]["std"] is None
    table = paths["markdown"].read_text()
    assert "| ref | 90.0 ± 10.0 |" in table and "| 5 (chosen on seen users) |" in table
    assert payload["K_chosen_on_seen_users"] == {"10000.0": 5}
    assert paths["plots"] == [tmp_path / "acc_alpha_10000.0.png"] and paths["plots"][0].stat().st_size > 0


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the code under test saves, in order."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    saved = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), real_savefig(self, *a, **k)))
    return saved


def test_plots_name_their_band_draw_reference_lines_and_keep_the_legend_off_the_data(tmp_path, figures):
    records = toy_records([[0.9, 0.8], [0.7, 0.6], [0.65, 0.6], [0.6, 0.55]],
                          [[0.1, 0.2], [0.04, 0.08], [0.0, 0.0], [0.12, 0.04]])
    reports.save_results(tmp_path, "toy", {"seed": 0}, records, reference_lines={"planted reward, unseen users": 0.87})
    ax = figures[0].axes[0]
    legend = ax.get_legend()
    assert "0.25 std over users" in legend.get_title().get_text()          # the band says what it is
    assert any(list(line.get_ydata()) == [87.0, 87.0] for line in ax.get_lines())      # the planted line
    assert any("planted reward" in text.get_text() for text in ax.texts)
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1 - 1                                          # outside the axes: off the data


# --- every fit sees only its own comparisons, never the ones it is scored on ------------------------

def spy_groups():
    V_ref, groups = small_groups()
    # each group's features are marked by a distinct scale, so a spy can tell which group a fit got
    marked = [utils.Comparisons.from_features(g.users, g.n_users, (g.table[g.chosen] - g.table[g.rejected]) * (1 + i))
              for i, g in enumerate(groups)]
    return V_ref, marked


def which_group(X, groups) -> str:
    comparisons = utils.as_comparisons(X)
    features = comparisons.table[comparisons.chosen] - comparisons.table[comparisons.rejected]
    for name, g in zip(utils.GROUP_NAMES, groups):
        if len(features) == g.N and torch.allclose(features, g.table[g.chosen] - g.table[g.rejected]):
            return name
    return "something else"


@pytest.mark.parametrize("pipeline", ["run", "run_regularized", "run_few_shot_vary_shots"])
def test_seen_fits_see_seen_train_and_new_users_only_their_few_shot_part(pipeline, monkeypatch):
    V_ref, groups = spy_groups()
    seen = {"joint": [], "few_shot": []}
    real_joint = {name: getattr(utils, name) for name in ("solve_regularized", "solve_regularized_simplex")}
    real_few_shot = utils._few_shot_weights

    def joint(name):
        def spy(V_sft, alpha, X, K, *args, **kwargs):
            seen["joint"].append(which_group(X, groups))
            return real_joint[name](V_sft, alpha, X, K, *args, **kwargs)
        return spy

    def few_shot(X, V, *args, **kwargs):
        seen["few_shot"].append(which_group(X, groups) if pipeline != "run_few_shot_vary_shots" else X.N)
        return real_few_shot(X, V, *args, **kwargs)
    for name in real_joint:
        monkeypatch.setattr(utils, name, joint(name))
    monkeypatch.setattr(utils, "_few_shot_weights", few_shot)
    fast = dict(num_iterations=10, fewshot_iterations=5, progress=False)
    if pipeline == "run_few_shot_vary_shots":
        utils.run_few_shot_vary_shots(2, [0.0], [0, 2], [2], groups[0], groups[2], groups[3], V_ref, 20, 10, "cpu",
                                      **fast)
        # every draw is 2 shots of each of the 10 new users (from their 6 few-shot comparisons), x 2 trials
        assert seen["joint"] == ["seen_train"] and seen["few_shot"] == [2 * 10 * 2]
    else:
        getattr(utils, pipeline)([0, 1, 2], [0.0], V_ref, *groups, 20, 10, "cpu", **fast)
        assert seen["joint"] == ["seen_train", "seen_train"] and seen["few_shot"] == ["unseen_train"]


def test_the_plot_band_is_a_quarter_of_the_std(tmp_path, figures):
    """The shaded band is ± 0.25 std over users (the original's factor), not the std itself."""
    records = toy_records([[0.9, 0.8], [0.7, 0.6], [0.65, 0.6], [0.6, 0.55]],
                          [[0.1, 0.2], [0.04, 0.08], [0.0, 0.0], [0.12, 0.04]])
    reports.save_results(tmp_path, "toy", {"seed": 0}, records)
    band = figures[0].axes[0].collections[0]                # the first line's band: seen users, train
    y = band.get_paths()[0].vertices[:, 1]
    assert y.min() == pytest.approx(100 * (0.8 - 0.25 * 0.2)) and y.max() == pytest.approx(100 * (0.9 + 0.25 * 0.1))

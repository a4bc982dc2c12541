"""The PAL and VPL baselines in baselines.py: losses against hand-computed cases, VPL's KL against its
closed form, PAL with one prototype and an identity projection against a single Bradley-Terry model, a
planted population with opposed tastes on which each baseline beats K = 1 on unseen users, batched
against one-user-at-a-time computations, the paper table and bad input. Offline, seeded, small (d <= 16)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import baselines
import harness
import reports
import utils


def softplus(s):
    return math.log1p(math.exp(-abs(s))) + max(-s, 0.0)   # -log sigmoid(s), stable


def indexed(table, pairs, users=None, n_users=None):
    """An indexed Comparisons from a table and (chosen, rejected) row pairs."""
    table = torch.as_tensor(table, dtype=torch.float64)
    chosen, rejected = (torch.tensor(list(c), dtype=torch.long) for c in zip(*pairs))
    users = torch.zeros(len(pairs), dtype=torch.long) if users is None else torch.as_tensor(users)
    return utils.Comparisons(users, n_users or int(users.max()) + 1, table=table, chosen=chosen, rejected=rejected)


def planted_population(n_seen, n_unseen, m_train, m_fewshot, m_test, d, *, seed=0, rows=400):
    """Four groups of indexed comparisons from a planted population with opposed tastes: directions
    (v, -v) from offline.planted.random_population, users Dirichlet
    (0.3, 0.3) mixtures of the two, so most users lean clearly one way and the population average is
    near 0. Pairs of random table rows, labelled by Bradley-Terry draws at the 1/100 temperature."""
    from offline.planted import random_population
    V_star = torch.tensor(random_population(n_seen + n_unseen, d, 1, margin_std=4.0, seed=seed).directions,
                          dtype=torch.float32)
    directions = torch.cat([V_star, -V_star], 1)
    weights = torch.as_tensor(np.random.default_rng(seed).dirichlet([0.3, 0.3], size=n_seen + n_unseen),
                              dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    table = torch.randn(rows, d, generator=g) / math.sqrt(2)    # e_a - e_b ~ N(0, I)

    def draw(user_weights, m):
        n = user_weights.shape[0]
        users = torch.arange(n).repeat_interleave(m)
        a = torch.randint(rows, (len(users),), generator=g)
        b = (a + torch.randint(1, rows, (len(users),), generator=g)) % rows     # b != a
        p = torch.sigmoid(((table[a] - table[b]) @ directions * user_weights[users]).sum(1) / utils.TEMPERATURE)
        a_wins = torch.rand(len(users), generator=g) < p
        return utils.Comparisons(users, n, table=table, chosen=torch.where(a_wins, a, b),
                                 rejected=torch.where(a_wins, b, a))
    seen, unseen = weights[:n_seen], weights[n_seen:]
    return {"seen_train": draw(seen, m_train), "seen_test": draw(seen, m_test),
            "unseen_train": draw(unseen, m_fewshot), "unseen_test": draw(unseen, m_test)}


# --- losses against hand-computed cases -----------------------------------------------------------

def pal_case(form_class, **hyper):
    model = form_class(2, 1, 2, seed=0, device="cpu", dtype=torch.float64, projection="identity", **hyper)
    model.prototypes = torch.eye(2, dtype=torch.float64)     # p_1 = [1, 0], p_2 = [0, 1]
    logits = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)   # w = [3/4, 1/4]
    return model, logits


def test_pal_b_loss_matches_hand_computation():
    # a_u = [3/4, 1/4]; e_c = [1, 0], e_r = [0, 1]: cos = 0.75/|a| and 0.25/|a|, |a| = sqrt(10)/4
    table = [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]
    comparisons = indexed(table, [(0, 1), (2, 0)])
    norm_a = math.sqrt(10) / 4
    cos_c = [0.75 / norm_a, (1.5 + 0.5) / (math.sqrt(8) * norm_a)]
    cos_r = [0.25 / norm_a, 0.75 / norm_a]
    model, logits = pal_case(baselines.PAL)
    margins = [(c - r) / 0.07 for c, r in zip(cos_c, cos_r)]              # scale 1/0.07 (CLIP's init)
    expected = (softplus(margins[0]) + softplus(margins[1])) / 2
    got = model.batch_loss(comparisons.table, comparisons.chosen, comparisons.rejected, logits,
                           torch.zeros(2, dtype=torch.long))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert model.margins(comparisons, {"logits": logits}).tolist() == pytest.approx(margins, rel=1e-12)
    # the dot form at LoRe's temperature: margin = (e_c - e_r) . a_u / 100
    model, logits = pal_case(baselines.PAL, similarity="dot")
    assert model.margins(comparisons, {"logits": logits}).tolist() == pytest.approx([0.005, 0.0125], rel=1e-12)


def test_pal_a_hinge_loss_matches_hand_computation():
    # ideal point a_u = [3/4, 1/4] (identity projection); margin = |e_r - a| - |e_c - a|, hinge max(0, 1 - m)
    table = [[1.0, 0.0], [0.0, 1.0], [0.75, 0.25], [3.0, 0.25]]
    comparisons = indexed(table, [(0, 1), (2, 3)])
    model, logits = pal_case(baselines.PAL_A)
    margins = [math.sqrt(0.75 ** 2 + 0.75 ** 2) - math.sqrt(0.25 ** 2 + 0.25 ** 2), 2.25]
    expected = (max(0.0, 1 - margins[0]) + max(0.0, 1 - margins[1])) / 2    # the second is past the margin
    got = model.batch_loss(comparisons.table, comparisons.chosen, comparisons.rejected, logits,
                           torch.zeros(2, dtype=torch.long))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert model.margins(comparisons, {"logits": logits}).tolist() == pytest.approx(margins, rel=1e-12)


def test_vpl_elbo_matches_hand_computation():
    # d = 2, h = 2, L = 1. Pair encoder and attention with zero weights: every context gives the same
    # pooled vector, so mean = 0.5 and log_var = -0.2 (the heads' biases). Decoder: hidden =
    # [e_0 + 10, z + 10] (positive, so LeakyReLU passes it), identity, r = hidden_0 - 10 = e_0.
    model = baselines.VPL(2, 1, seed=0, device="cpu", dtype=torch.float64, hidden_dim=2, latent_dim=1,
                          kl_weight=0.5)
    net = model.net
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net["mean"].bias.fill_(0.5)
        net["log_var"].bias.fill_(-0.2)
        net["dec1"].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        net["dec1"].bias.fill_(10.0)
        net["dec2"].weight.copy_(torch.eye(2))
        net["dec3"].weight.copy_(torch.tensor([[1.0, 0.0]]))
        net["dec3"].bias.fill_(-10.0)
    table = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0], [0.5, 3.0]], dtype=torch.float64)
    chosen, rejected = torch.tensor([0, 3, 2]), torch.tensor([1, 2, 1])
    targets = torch.tensor([0, 1])                                # margins e_c0 - e_r0: 1 and -1.5
    contexts, mask = torch.tensor([[1, 2], [2, 0]]), torch.tensor([[True, True], [True, False]])
    with torch.no_grad():
        loss, nll, kl = model.batch_loss(table, chosen, rejected, targets, contexts, mask, step=0)
    kl_expected = 0.5 * (math.exp(-0.2) + 0.25 - 1 + 0.2)
    nll_expected = (softplus(1.0) + softplus(-1.5)) / 2
    assert float(nll) == pytest.approx(nll_expected, rel=1e-12)
    assert float(kl) == pytest.approx(kl_expected, rel=1e-12)
    # step 0 of the cyclical cosine annealing weighs the KL term by its floor 0.1
    assert float(loss) == pytest.approx(nll_expected + 0.5 * 0.1 * kl_expected, rel=1e-12)


def test_vpl_kl_term_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, log_var = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    posterior = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    closed_form = torch.distributions.kl_divergence(posterior, prior).sum(-1)
    assert torch.allclose(baselines.gaussian_kl(mean, log_var), closed_form, rtol=1e-12)
    # one hand case: mu = 1, sigma^2 = e: 0.5 (e + 1 - 1 - 1)
    assert float(baselines.gaussian_kl(torch.ones(1, 1), torch.ones(1, 1))) == pytest.approx(0.5 * (math.e - 1))
    assert float(baselines.gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4))) == 0.0


def test_kl_annealing_schedule():
    values = [baselines.kl_annealing(t, 100, 0.1) for t in (0, 50, 100, 150)]
    assert values == pytest.approx([0.1, 0.55, 0.1, 0.55])        # cyclical: restarts every 100 steps
    assert baselines.kl_annealing(99, 100, 0.1) == pytest.approx(1.0, abs=1e-3)


def test_row_adam_steps_only_the_users_of_a_batch_as_one_adam_per_user():
    # PAL keeps one parameter per user; torch's Adam steps only those with a gradient (the users of
    # the mini-batch), each with its own step count
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, generator=g, dtype=torch.float64)
    per_user = [W[u].clone().requires_grad_(True) for u in range(3)]
    optimizers = [torch.optim.Adam([p], lr=0.1) for p in per_user]
    row_adam = baselines._RowAdam(W, 0.1)
    for rows in ([0, 1], [1, 2], [0], [0, 1, 2]):
        grads = torch.randn(len(rows), 2, generator=g, dtype=torch.float64)
        row_adam.step(torch.tensor(rows), grads)
        for u, grad in zip(rows, grads):
            per_user[u].grad = grad.clone()
            optimizers[u].step()
    assert torch.allclose(W, torch.stack([p.detach() for p in per_user]), rtol=1e-12)


# --- PAL with one prototype and an identity projection is a single Bradley-Terry model ------------

def test_pal_one_prototype_identity_equals_single_bradley_terry():
    g = torch.Generator().manual_seed(3)
    d, n_users, steps, lr = 6, 4, 40, 5e-3
    table = torch.randn(30, d, generator=g, dtype=torch.float64) * 30
    pairs = torch.randint(30, (60, 2), generator=g)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    users = torch.arange(len(pairs)) % n_users
    train = utils.Comparisons(users, n_users, table=table, chosen=pairs[:, 0], rejected=pairs[:, 1])
    model = baselines.build("PAL", d, n_users, K=1, seed=0, device="cpu", dtype=torch.float64,
                            projection="identity", similarity="dot", batch_size=train.N, epochs=steps)
    v0 = model.prototypes[0].clone()
    model.fit(train)                                  # full batch: one Adam step per epoch
    # the straightforward single Bradley-Terry fit: margin x . v / 100, pooled mean NLL, Adam(lr)
    x = table[train.chosen] - table[train.rejected]
    v = v0.clone().requires_grad_(True)
    adam = torch.optim.Adam([v], lr=lr)
    for _ in range(steps):
        adam.zero_grad()
        F.softplus(-(x @ v) / utils.TEMPERATURE).mean().backward()
        adam.step()
    assert torch.allclose(model.prototypes[0], v.detach(), rtol=1e-9, atol=1e-12)
    # and the project's own K = 1 model (LoRe_regularized, alpha = 0) from the same start
    lore = utils.LoRe_regularized(None, 0.0, n_users, d, 1, steps, lr, device="cpu", dtype=torch.float64,
                                  progress=False)
    lore.V.data.copy_(v0[:, None])
    _, V = lore.train(train)
    assert torch.allclose(model.prototypes[0], V[:, 0], rtol=1e-9, atol=1e-12)
    assert torch.allclose(model.margins(train, model.seen_state), x @ V[:, 0] / utils.TEMPERATURE, rtol=1e-9)


# --- planted heterogeneous users: a personalised baseline must beat K = 1 on unseen users ----------

SMALL = {"PAL": {"batch_size": 64, "epochs": 20, "lr_projection": 1e-3},
         "PAL-A": {"batch_size": 64, "epochs": 20, "lr_projection": 1e-3},
         "VPL": {"hidden_dim": 32, "latent_dim": 8, "batch_size": 64, "epochs": 5, "learning_rate": 3e-3}}
SMALL_GRID = {"K": (2,), "d_pref": (16,)}


def test_planted_population_each_baseline_beats_single_reward_on_unseen_users(tmp_path):
    groups = planted_population(40, 30, 30, 20, 30, 16, seed=0)
    # K = 1: one Bradley-Terry reward for everybody, fitted as the pipeline fits it
    _, V = utils.solve_regularized_simplex(None, 0.0, groups["seen_train"], 1, 300, 0.5, progress=False)
    single = [{name: utils.per_user_accuracy(groups[name], V, torch.ones(groups[name].n_users, 1))
               for name in utils.GROUP_NAMES}]
    k1_row = reports.paper_row("K = 1", single, utils.group_counts(groups), reports.lore_parameter_counts(16, 1, 40),
                               label="K = 1")
    rows = [reports.paper_row(**result) for result in baselines.evaluate_methods(
        ["PAL", "PAL-A", "VPL"], groups, seeds=[0], grid=SMALL_GRID, hyper=SMALL, device="cpu")]
    # The tastes are opposed (directions v and -v), so the best single reward is near the population
    # average, ~0: K = 1 sits near chance (47-49% for seeds 0-2). A personalised model reads each
    # user's side from 20 shots. The standard error of a mean accuracy over 30 users x 30 comparisons
    # is about 1.7 points, so a 5-point margin is ~3 SE; the gaps here are 21-29 points (12-34 over
    # seeds 0-2 of this population).
    # The same holds for the seen users on unseen prompts with their fitted state (K = 1: 51-57%, gaps
    # 21-25 points here, 9-27 over seeds 0-2).
    for group in ("unseen_test", "seen_test"):
        k1 = k1_row["groups"][group]["mean"]
        assert k1 < 0.6
        for row in rows:
            assert row["groups"][group]["mean"] > k1 + 0.05, (row["method"], group, row["groups"][group], k1)
    # every row was computed on the same users and comparisons
    for name in utils.GROUP_NAMES:
        counts = {(r["groups"][name]["users"], r["groups"][name]["comparisons"]) for r in rows + [k1_row]}
        assert counts == {(groups[name].n_users, groups[name].N)}
    paths = reports.save_paper_table(tmp_path, "planted_table", [k1_row] + rows, {"seed": 0})
    table = paths["markdown"].read_text()
    assert "| K = 1 |" in table and "| PAL (K = 2, chosen on validation) |" in table and "| VPL |" in table
    assert "mean ± std over users (one seed)" in table


# --- batched over users equals one user at a time --------------------------------------------------

def one_user(comparisons, user):
    index = (comparisons.users == user).nonzero().squeeze(1)
    return comparisons.select(index, users=torch.zeros(len(index), dtype=torch.long), n_users=1)


@pytest.mark.parametrize("method", ["PAL", "PAL-A"])
def test_pal_new_users_batched_equals_one_at_a_time(method):
    groups = planted_population(6, 5, 10, 8, 10, 8, seed=1)
    model = baselines.fit(method, groups["seen_train"], K=3, seed=0, device="cpu", dtype=torch.float64,
                          d_pref=8, batch_size=16, epochs=2, personalize_iterations=30)
    fewshot = groups["unseen_train"].to(dtype=torch.float64)
    init = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batched = model.personalize(fewshot, init=init)
    accuracy = model.per_user_accuracy(groups["unseen_test"].to(dtype=torch.float64), batched)
    for u in range(5):
        alone = model.personalize(one_user(fewshot, u), init=init[u:u + 1])
        assert torch.allclose(batched["logits"][u], alone["logits"][0], rtol=1e-9, atol=1e-12)
        single = model.per_user_accuracy(one_user(groups["unseen_test"].to(dtype=torch.float64), u), alone)
        assert float(single[0]) == float(accuracy[u])
    if method == "PAL-A":    # the ideal point through the first-layer shortcut equals f(P^T w)
        weights = torch.softmax(init, 1)
        assert torch.allclose(model.user_points(weights), model.project(weights @ model.prototypes), rtol=1e-10)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_pal_b_frozen_margins_shortcut_equals_the_model(similarity):
    # the new users' O(N K) margins (P^T products taken once) against the model's own margin of a_u = w P
    g = torch.Generator().manual_seed(4)
    model = baselines.build("PAL", 5, 3, K=4, seed=1, device="cpu", dtype=torch.float64, d_pref=6,
                            similarity=similarity)
    f_chosen, f_rejected = (torch.randn(7, 6, generator=g, dtype=torch.float64) for _ in range(2))
    users = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    logits = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    shortcut = model.frozen_margins(f_chosen, f_rejected, users)(torch.softmax(logits, 1))
    direct = model.margin(f_chosen, f_rejected, model.user_points(torch.softmax(logits, 1))[users])
    assert torch.allclose(shortcut, direct, rtol=1e-12)
    weights = torch.arange(7, dtype=torch.float64)
    grad_shortcut, = torch.autograd.grad((shortcut * weights).sum(), logits)
    grad_direct, = torch.autograd.grad((direct * weights).sum(), logits)
    assert torch.allclose(grad_shortcut, grad_direct, rtol=1e-10)


def straightforward_vpl_latent(model, table, chosen, rejected):
    """VPL's SequenceEncoder on one user's set, as its code does it: the pair MLP on [e_c; e_r], then
    self-attention and a mean over the set, no padding."""
    net = model.net
    act = lambda x: F.leaky_relu(x, 0.2)  # noqa: E731
    pairs = net["pair3"](act(net["pair2"](act(net["pair1"](torch.cat([table[chosen], table[rejected]], 1))))))
    q, k, v = net["query"](pairs), net["key"](pairs), net["value"](pairs)
    attended = torch.softmax(q @ k.T / math.sqrt(pairs.shape[1]), -1) @ v
    pooled = attended.mean(0)
    return net["mean"](pooled).clamp(-1, 1), net["log_var"](pooled).clamp(-1, 1)


def test_vpl_new_users_batched_equals_one_at_a_time():
    groups = planted_population(6, 5, 10, 8, 10, 8, seed=2)
    model = baselines.fit("VPL", groups["seen_train"].to(dtype=torch.float64), seed=0, device="cpu",
                          hidden_dim=16, latent_dim=4, batch_size=16, epochs=2)
    # users with different set sizes, so the batched encoder pads and masks
    fewshot = groups["unseen_train"].to(dtype=torch.float64)
    fewshot = fewshot.select(torch.arange(fewshot.N)[torch.arange(fewshot.N) % 8 < 2 + fewshot.users])
    batched = model.personalize(fewshot)
    test = groups["unseen_test"].to(dtype=torch.float64)
    accuracy, margins = model.per_user_accuracy(test, batched), model.margins(test, batched)
    net = model.net
    for u in range(5):
        mine = one_user(fewshot, u)
        alone = model.personalize(mine)
        assert torch.allclose(batched["mean"][u], alone["mean"][0], rtol=1e-9, atol=1e-12)
        with torch.no_grad():
            mean, log_var = straightforward_vpl_latent(model, mine.table, mine.chosen, mine.rejected)
            assert torch.allclose(batched["mean"][u], mean, rtol=1e-9, atol=1e-12)
            assert torch.allclose(batched["log_var"][u], log_var, rtol=1e-9, atol=1e-12)
            # the decoder on [e; z] as written, against the split first layer
            theirs = one_user(test, u)
            z = mean.expand(theirs.N, -1)

            def reward(rows):
                hidden = F.leaky_relu(net["dec1"](torch.cat([test.table[rows], z], 1)), 0.2)
                return net["dec3"](F.leaky_relu(net["dec2"](hidden), 0.2)).squeeze(1)
            assert torch.allclose(margins[test.users == u], reward(theirs.chosen) - reward(theirs.rejected),
                                  rtol=1e-9, atol=1e-12)
        assert float(model.per_user_accuracy(theirs, alone)[0]) == float(accuracy[u])
    assert batched["context"].tolist() == [2, 3, 4, 5, 6]


def test_vpl_contexts_are_2_to_8_others_from_the_users_fixed_survey_pool():
    """The cited rule (add_survey_contexts.py): a survey pool per user drawn once, every context a random
    2-8 of it; here never the target itself (unless its user's pool holds nothing else)."""
    users = torch.tensor([0, 0, 0, 1] + [2] * 30)                    # user 1 has a single comparison
    g = torch.Generator().manual_seed(0)
    pool = baselines.VPL.survey_pools(users, 3, 20, g)                # user 2: 20 of its 30 in the pool
    order, starts, counts, rank = pool
    assert counts.tolist() == [3, 1, 20] and int((rank >= 0).sum()) == 24
    assert all(users[m] == 2 for m in order[starts[2]:starts[2] + 20])
    targets = torch.arange(len(users)).repeat(20)                     # every comparison, 20 draws each
    contexts, mask = baselines.VPL.sample_contexts(targets, users, pool, 2, 8, g)
    assert contexts.shape == mask.shape == (len(targets), 8)
    sizes = mask.sum(1)
    for i, t in enumerate(targets.tolist()):
        members = contexts[i][mask[i]].tolist()
        assert all(users[m] == users[t] for m in members) and len(set(members)) == len(members)
        assert all(rank[m] >= 0 for m in members)                     # drawn from the pool only
        if users[t] == 1:
            assert members == [t]                                      # its own context: nothing else
        else:
            assert t not in members
            available = int(counts[users[t]]) - int(rank[t] >= 0)
            assert min(2, available) <= len(members) <= min(8, available)
    big = sizes[users[targets] == 2]
    assert set(big.tolist()) == set(range(2, 9))                      # every length 2..8 occurs


def test_dense_comparisons_are_viewed_without_leaking_the_label():
    # a dense Comparisons (x = e_c - e_r only) becomes rows +x/2 and -x/2: a linear margin is exact and
    # no row is "always the rejected one"
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = utils.Comparisons.from_features(torch.zeros(5, dtype=torch.long), 1, x)
    table, chosen, rejected = baselines._indexed(dense)
    assert torch.equal(table[chosen] - table[rejected], x) and torch.equal(table[rejected], -table[chosen])
    model = baselines.build("PAL", 3, 1, K=1, device="cpu", dtype=torch.float64, projection="identity",
                            similarity="dot")
    state = {"logits": torch.zeros(1, 1, dtype=torch.float64)}
    assert torch.allclose(model.margins(dense, state), x @ model.prototypes[0] / utils.TEMPERATURE, rtol=1e-12)


# --- several seeds, the table, parameter counts --------------------------------------------------

def test_evaluate_methods_two_seeds_gives_mean_and_std_over_seeds(tmp_path):
    groups = planted_population(8, 6, 10, 6, 8, 6, seed=3)
    hyper = {"PAL": {"batch_size": 32, "epochs": 2, "personalize_iterations": 20}}
    row, = [reports.paper_row(**r) for r in baselines.evaluate_methods(["PAL"], groups, seeds=[0, 1],
                                                                        grid={"K": (2,), "d_pref": (8,)},
                                                                        hyper=hyper, device="cpu")]
    entry = row["groups"]["unseen_test"]
    assert entry["std_over"] == "seeds" and len(entry["per_seed"]) == 2
    assert entry["mean"] == pytest.approx(np.mean(entry["per_seed"]))
    assert entry["std"] == pytest.approx(np.std(entry["per_seed"]))
    assert (entry["users"], entry["comparisons"]) == (6, 48)
    model = baselines.build("PAL", 6, 8, K=2, device="cpu", d_pref=6)   # the grid's 8 capped at d = 6
    shared = 6 * 6 + 6 + 2 * (6 * 6 + 6) + 2 * 6 + 1         # mlp2 + 2 prototypes + the scale
    assert row["parameters"] == {**model.parameter_counts(8), "per_user": 2, "shared": shared, "total": shared + 8 * 2}
    # one seed: mean ± std over users (per-user accuracies 0.7 and 0.9: 80 ± 10; 0.5 and 0.9: 70 ± 20)
    lore = reports.paper_row("LoRe", [{"seen_test": np.array([0.7, 0.9, np.nan]), "unseen_test": np.array([0.5, 0.9])}],
                             utils.group_counts(groups), reports.lore_parameter_counts(6, 3, 8), K=3)
    paths = reports.save_paper_table(tmp_path, "table", [lore, row], {"seed": 0})
    markdown = paths["markdown"].read_text()
    assert "| LoRe (K = 3) | 80.0 ± 10.0† | 70.0 ± 20.0† | - | - | 3 | 42 |" in markdown
    assert "† marks a row with one seed, whose std is over users" in markdown
    payload = json.loads(paths["json"].read_text())
    assert payload["counts"]["unseen_test"] == {"users": 6, "comparisons": 48}
    assert [r["label"] for r in payload["rows"]] == ["LoRe (K = 3)", "PAL (K = 2, chosen on validation)"]
    # seeds that selected models of different sizes: the table shows every seed's count, not the first's
    mixed = dict(row, parameters_per_seed=[{"per_user": 2, "total": 50}, {"per_user": 8, "total": 110}])
    assert "| 2/8 | 50/110 |" in reports.save_paper_table(tmp_path, "mixed", [mixed], {"seed": 0})[
        "markdown"].read_text()
    # a row computed on other comparisons is refused
    fewer = dict(groups, unseen_test=groups["unseen_test"].select(torch.arange(40)))
    other = reports.paper_row("ref", [{"seen_test": np.array([0.5]), "unseen_test": np.array([0.5])}],
                              utils.group_counts(fewer), reports.lore_parameter_counts(6, 0, 8))
    with pytest.raises(ValueError, match="same unseen_test comparisons"):
        reports.save_paper_table(tmp_path, "bad", [row, other], {"seed": 0})


def test_vpl_parameter_counts():
    model = baselines.build("VPL", 10, 3, device="cpu", hidden_dim=4, latent_dim=2)
    shared = (20 * 4 + 4) + (4 * 4 + 4) + (4 * 2 + 2) + 5 * (2 * 2 + 2) + (12 * 4 + 4) + (4 * 4 + 4) + (4 + 1)
    assert model.parameter_counts(3) == {"per_user": 2, "shared": shared, "total": shared + 6,
                                         "note": model.parameter_counts(3)["note"]}


# --- bad input ---------------------------------------------------------------------------------------

def test_unknown_method_lists_the_known_ones():
    groups = planted_population(4, 3, 4, 4, 4, 4)
    with pytest.raises(harness.SettingsError, match="unknown baseline.*'LoRA'.*known: PAL, PAL-A, VPL"):
        baselines.evaluate_methods(["PAL", "LoRA"], groups)
    with pytest.raises(harness.SettingsError, match="known: PAL, PAL-A, VPL"):
        baselines.fit("pal", groups["seen_train"], K=2)
    with pytest.raises(harness.SettingsError, match="unknown hyperparameter.*lr.*known: .*learning_rate"):
        baselines.fit("VPL", groups["seen_train"], lr=0.1)
    with pytest.raises(harness.SettingsError, match="PAL needs K >= 1"):
        baselines.fit("PAL", groups["seen_train"])


def test_pal_grid_given_in_part_keeps_the_other_defaults_and_a_bad_one_is_refused_before_any_work():
    assert baselines.selection_grid({"K": [2]}) == {"K": (2,), "d_pref": baselines.PAL_GRID["d_pref"]}
    assert baselines.selection_grid(None) == baselines.PAL_GRID
    for bad in ({"k": [2]}, {"K": []}, {"K": [0]}, {"d_pref": [1.5]}, {"K": 2}, [2]):
        with pytest.raises(harness.SettingsError, match="PAL's grid"):
            baselines.check_methods(["PAL"], {"PAL": {"grid": bad}})
    groups = planted_population(8, 4, 20, 5, 6, 6, seed=2)    # a partial grid: a K from it, d_pref from PAL_GRID
    model = baselines.fit_selected("PAL", groups["seen_train"], seed=0, grid={"K": [2]}, epochs=1)
    assert model.K == 2 and [c["d_pref"] for c in model.selection["candidates"]] == [6]   # widths capped at d = 6


@pytest.mark.parametrize("method, values, message", [
    ("VPL", {"hidden_dim": -1}, "hidden_dim must be an integer >= 1, got -1"),
    ("VPL", {"latent_dim": "64"}, "latent_dim must be an integer >= 1"),
    ("PAL", {"epochs": 0}, "epochs must be an integer >= 1"),
    ("PAL", {"max_steps": 2.5}, "max_steps must be an integer >= 1 or null"),
    ("VPL", {"learning_rate": float("nan")}, "learning_rate must be a finite number >= 0"),
    ("PAL", {"activation": "tanh"}, "activation must be one of"),
])
def test_a_bad_hyperparameter_value_is_refused_by_check_methods(method, values, message):
    with pytest.raises(harness.SettingsError, match=message):     # before any fit: a run stops at once
        baselines.check_methods([method], {method: values})
    baselines.check_methods([method], {method: {"max_steps": None, "batch_size": 16}})   # good values pass


def test_baseline_without_unseen_users_says_what_is_missing():
    groups = planted_population(4, 3, 4, 4, 4, 4)
    d = groups["seen_train"].d
    empty = utils.Comparisons(torch.zeros(0, dtype=torch.long), 0, table=torch.zeros(1, d),
                              chosen=torch.zeros(0, dtype=torch.long), rejected=torch.zeros(0, dtype=torch.long))
    with pytest.raises(SystemExit, match="on TLDR are evaluated on unseen users.*unseen_train group is empty "
                                         r"\(0 users, 0 comparisons\)"):
        baselines.evaluate_methods(["VPL"], dict(groups, unseen_train=empty, unseen_test=empty), dataset="TLDR")


# --- the cited budgets, the selection and the anchored variants (issue: fair baselines) ----------------

def test_defaults_are_the_cited_configurations():
    """Every default of PAL and VPL, with where it comes from; a changed default fails here."""
    assert baselines.PAL.DEFAULTS == {
        "projection": "mlp",            # PAL's mlp2 projector (config/prefLearner_config/*-mlp2.yaml)
        "d_pref": 512,                  # b-dim512 (the README's main configuration); chosen on validation
        "activation": "gelu",           # PAL-B's configs (PAL-A: relu)
        "similarity": "cosine",         # PrefLearner_angle
        "loss": "logistic",             # the code's cross-entropy over the two rewards (PAL-A: hinge)
        "batch_size": 32, "epochs": 20,  # departures, documented: frozen embeddings, users with tens
        "patience": 3,                  # stop a candidate 3 epochs after its best (documented departure)
        "max_steps": None,
        "lr_projection": 1e-4, "weight_decay_projection": 0.01,   # config/optim_config/vanilla-e1.yaml
        "lr_prototypes": 5e-3, "lr_weights": 5e-3, "lr_scale": 0.1,
        "personalize_iterations": 500, "personalize_lr": 5e-3}   # main_pal_b_unseen.py: W only, lr 5e-3
    assert baselines.PAL_A.DEFAULTS == {**baselines.PAL.DEFAULTS, "activation": "relu", "loss": "hinge"}
    assert baselines.PAL_GRID == {"K": (1, 2, 4, 8), "d_pref": (128, 512)}
    assert (baselines.VALIDATION_FRACTION, baselines.MIN_VALIDATION_USER) == (0.1, 5)   # dataset_factory.py
    assert baselines.VPL.DEFAULTS == {
        "hidden_dim": 512, "latent_dim": 512,     # submit_job_UF_P_4.sh
        "batch_size": 32,                         # 4 per device x 8 accumulation steps
        "epochs": 2, "duplicates": 4,             # --num_train_epochs=2; --num_duplicates 4 (data script)
        "context_min": 2, "context_max": 8, "survey_size": 100,    # add_survey_contexts.py, survey_size=100
        "max_steps": None, "learning_rate": 1e-4, "weight_decay": 1e-3, "warmup_ratio": 0.03,
        "max_grad_norm": 1.0,                     # the HF Trainer's default
        "kl_weight": 3e-6, "anneal_steps": 10000, "anneal_floor": 0.1, "negative_slope": 0.2}


def test_vpl_takes_its_cited_number_of_optimizer_steps():
    groups = planted_population(6, 3, 21, 5, 5, 6, seed=2)
    model = baselines.fit("VPL", groups["seen_train"], seed=0, device="cpu", hidden_dim=8, latent_dim=4)
    N = groups["seen_train"].N                       # 126: 2 epochs x ceil(4 x 126 / 32) = 2 x 16
    assert model.optimizer_steps == model.steps_for(N) == 2 * math.ceil(4 * N / 32) == 32
    assert model.optimizer_steps >= 7 * N / 32 and len(model.loss_history) == 2


def test_pal_validation_split_is_per_user_disjoint_and_seeded():
    groups = planted_population(5, 2, 12, 4, 4, 6, seed=0)
    train = groups["seen_train"].select(torch.arange(60 - 8))      # the last user keeps 4: below 5
    fit_part, valid = baselines.validation_split(train, seed=3)
    assert fit_part.N + valid.N == train.N and valid.counts().tolist() == [1, 1, 1, 1, 0]   # round(1.2) = 1
    pairs = lambda c: set(zip(c.users.tolist(), c.chosen.tolist(), c.rejected.tolist()))   # noqa: E731
    assert not pairs(fit_part) & pairs(valid) and pairs(fit_part) | pairs(valid) == pairs(train)
    again = baselines.validation_split(train, seed=3)[1]
    assert torch.equal(again.chosen, valid.chosen) and not torch.equal(baselines.validation_split(train, 4)[1].chosen,
                                                                        valid.chosen)


def test_pal_keeps_the_epoch_with_the_lowest_validation_loss():
    groups = planted_population(8, 2, 30, 4, 4, 6, seed=1)
    fit_part, valid = baselines.validation_split(groups["seen_train"], seed=0)
    fast = dict(K=2, seed=0, device="cpu", dtype=torch.float64, d_pref=8, epochs=6, lr_projection=3e-2,
                lr_prototypes=0.3, lr_weights=0.3)                               # fast: it overfits
    model = baselines.build("PAL", 6, 8, patience=6, **fast)
    model.fit(fit_part.to(dtype=torch.float64), valid.to(dtype=torch.float64))
    losses = model.selection["validation_losses"]
    best = int(np.argmin(losses))
    assert len(losses) == 6 and model.selection["epoch"] == best + 1 and best < 4     # not simply the last
    kept = float(model.loss(valid.to(dtype=torch.float64), model.seen_state))
    assert kept == pytest.approx(losses[best], rel=1e-12)
    assert model.optimizer_steps == 6 * math.ceil(fit_part.N / 32)
    # with patience 1 the same trajectory stops at the first epoch that follows an epoch without a new best
    stop = next((e for e in range(1, 6) if e - int(np.argmin(losses[:e])) > 1), 6)
    early = baselines.build("PAL", 6, 8, patience=1, **fast)
    early.fit(fit_part.to(dtype=torch.float64), valid.to(dtype=torch.float64))
    assert early.selection["validation_losses"] == losses[:stop] and stop < 6
    assert early.selection["epoch"] == int(np.argmin(losses[:stop])) + 1
    assert early.optimizer_steps == stop * math.ceil(fit_part.N / 32)


def test_selection_is_recorded_and_never_touches_the_test_groups(monkeypatch):
    groups = planted_population(8, 4, 20, 5, 6, 6, seed=2)
    triples = lambda c: set(zip(c.users.tolist(), c.chosen.tolist(), c.rejected.tolist()))   # noqa: E731
    seen_train = triples(groups["seen_train"])
    seen = []
    real_fit = baselines.PAL.fit

    def spy(self, train, valid=None):        # both parts come from seen_train and split it
        seen.append((train.N, valid.N))
        assert triples(train) | triples(valid) == seen_train and not triples(train) & triples(valid)
        return real_fit(self, train, valid)
    monkeypatch.setattr(baselines.PAL, "fit", spy)
    result, = baselines.evaluate_methods(["PAL"], groups, seeds=[0], grid={"K": (1, 2), "d_pref": (4,)},
                                         hyper={"PAL": {"epochs": 2}}, device="cpu")
    assert seen == [(144, 16), (144, 16)]                 # 2 candidates, each on 90% with 10% to validate
    selection = result["selection"][0]
    assert [c["K"] for c in selection["candidates"]] == [1, 2]
    best = min(selection["candidates"], key=lambda c: c["validation_loss"])
    assert selection["chosen"]["K"] == best["K"] == result["K"] == result["hyperparameters"]["K"]
    assert "validation" in result["selected_on"] and result["optimizer_steps"] == [2 * math.ceil(144 / 32)]


def test_anchored_variants_add_the_heads_reward_in_training_and_evaluation():
    groups = planted_population(6, 3, 12, 4, 6, 5, seed=3)
    V_ref = torch.randn(5, 1, generator=torch.Generator().manual_seed(0))
    results = baselines.evaluate_methods(["PAL", "VPL"], groups, seeds=[0], V_ref=V_ref,
                                         grid={"K": (2,), "d_pref": (4,)}, device="cpu",
                                         hyper={"PAL": {"epochs": 1}, "VPL": {"hidden_dim": 4, "latent_dim": 2,
                                                                              "epochs": 1}})
    assert [r["method"] for r in results] == ["PAL", "PAL+ref", "VPL", "VPL+ref"]
    assert all(r["optimizer_steps"][0] > 0 and r["selected_on"] for r in results)
    # an anchored model whose own reward is switched off scores exactly as the head (x . V_ref / 100)
    model = baselines.build("PAL", 5, 6, K=1, seed=0, device="cpu", dtype=torch.float64, anchor=V_ref.double(),
                            projection="identity", similarity="dot")
    assert model.name == "PAL+ref"
    model.prototypes.zero_()
    test = groups["seen_test"].to(dtype=torch.float64)
    head = (test.table[test.chosen] - test.table[test.rejected]) @ V_ref.double()[:, 0] / utils.TEMPERATURE
    assert torch.allclose(model.margins(test, {"logits": torch.zeros(6, 1, dtype=torch.float64)}), head, rtol=1e-12)
    vpl = baselines.build("VPL", 5, 6, device="cpu", dtype=torch.float64, anchor=V_ref.double(), hidden_dim=4,
                          latent_dim=2)
    plain = baselines.build("VPL", 5, 6, device="cpu", dtype=torch.float64, hidden_dim=4, latent_dim=2)
    state = {"mean": torch.zeros(6, 2, dtype=torch.float64)}
    assert torch.allclose(vpl.margins(test, state) - plain.margins(test, state), head, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="anchor"):
        baselines.build("PAL", 4, 6, K=1, device="cpu", anchor=V_ref)

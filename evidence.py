"""Evidence that can say no: collapse diagnostics of a fitted basis, paired per-user differences with
bootstrap intervals over users, and the verdict an interval supports.

A learned basis can look personal and be one direction: every column at a cosine of 0.9999 to the head,
every user on the same column. `basis_diagnostics` says so in numbers. A gain is a paired difference of
per-user accuracies (the same users, the same comparisons): its mean in points with a 95% percentile
bootstrap interval over users (users resampled with replacement, paired, seeded). `verdict` reads the
interval and nothing else: a gain when its lower bound is above 0, a loss when its upper bound is below
0, otherwise "no clear difference".
"""
from __future__ import annotations

import math

import numpy as np
import torch

BOOTSTRAP_RESAMPLES = 2000   # resamples of the users per interval (the percentile interval's 2.5% tails
                             # then rest on 50 resamples each)
RANK_TOLERANCE = 1e-3        # a singular value counts towards the numerical rank above this x the largest
GAIN, LOSS, NO_CLEAR_DIFFERENCE = "gain", "loss", "no clear difference"


def basis_diagnostics(V, W, V_ref=None) -> dict:
    """Collapse diagnostics of a basis V [d, B] with the seen users' weights W [C, B] (rows on, or for a
    pruned basis just under, the simplex; each row is renormalised to sum 1 for the weight statistics):
      numerical_rank      singular values of V above RANK_TOLERANCE x the largest
      s2_s1               second over first singular value (None for B = 1: there is no second)
      mean_abs_basis_cos  mean |cos| over pairs of distinct columns (None for B = 1)
      mean_cos_ref, min_cos_ref   cos(V_b, V_ref) over the columns (None without V_ref)
      bases_used          columns that are some user's largest weight (ties: the first column)
      mean_top1_weight    mean over users of the largest weight
      mean_weight_entropy mean over users of -sum_b w_b ln w_b (0 ln 0 = 0)
      max_weight_entropy  ln B, the entropy of uniform weights over the B columns
    A collapsed basis shows numerical_rank 1, s2_s1 near 0, cosines near 1 and bases_used 1."""
    V = torch.as_tensor(V).detach().double().cpu()
    W = torch.as_tensor(W).detach().double().cpu()
    B = V.shape[1]
    singular = torch.linalg.svdvals(V)
    unit = V / V.norm(dim=0).clamp_min(1e-300)
    cosines = unit.T @ unit
    off_diagonal = cosines[~torch.eye(B, dtype=torch.bool)].abs()
    weights = W / W.sum(1, keepdim=True).clamp_min(1e-300)
    entropy = -(weights * torch.where(weights > 0, weights.log(), torch.zeros_like(weights))).sum(1)
    out = {"numerical_rank": int((singular > RANK_TOLERANCE * singular[0]).sum()),
           "s2_s1": float(singular[1] / singular[0]) if B > 1 else None,
           "mean_abs_basis_cos": float(off_diagonal.mean()) if B > 1 else None,
           "mean_cos_ref": None, "min_cos_ref": None,
           "bases_used": int(len(torch.unique(weights.argmax(1)))),
           "mean_top1_weight": float(weights.max(1).values.mean()),
           "mean_weight_entropy": float(entropy.mean()),
           "max_weight_entropy": math.log(B)}
    if V_ref is not None:
        ref = torch.as_tensor(V_ref).detach().double().cpu().reshape(-1)
        to_ref = unit.T @ (ref / ref.norm())
        out.update(mean_cos_ref=float(to_ref.mean()), min_cos_ref=float(to_ref.min()))
    return out


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2): user i is scored with the weights
    of user perm[i] != i. A uniform permutation redrawn until it has none (about e ~ 2.7 draws)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 users, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def paired_bootstrap(differences, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """{"mean", "ci95": [lo, hi], "users"} of per-user differences of accuracy [C] (NaN: a user without
    comparisons, left out), in points (x 100): the mean over users and its 95% percentile bootstrap
    interval, users resampled with replacement (seeded). No user: mean and interval None."""
    values = np.asarray(differences, dtype=np.float64).reshape(-1)
    values = 100.0 * values[~np.isnan(values)]
    if len(values) == 0:
        return {"mean": None, "ci95": [None, None], "users": 0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "ci95": [float(lo), float(hi)], "users": int(len(values))}


def verdict(interval: dict) -> str:
    """GAIN when the interval's lower bound is > 0, LOSS when its upper bound is < 0, else
    NO_CLEAR_DIFFERENCE (an interval that contains 0, or none)."""
    lo, hi = interval["ci95"]
    if lo is not None and lo > 0:
        return GAIN
    if hi is not None and hi < 0:
        return LOSS
    return NO_CLEAR_DIFFERENCE


def describe(interval: dict, unit: str = "points") -> str:
    """"+3.1 points [1.2, 5.0] over 120 users: gain" (or "n/a" without users)."""
    if interval["mean"] is None:
        return "n/a (no users)"
    lo, hi = interval["ci95"]
    return (f"{interval['mean']:+.1f} {unit} [{lo:+.1f}, {hi:+.1f}] over {interval['users']} users: "
            f"{verdict(interval)}")

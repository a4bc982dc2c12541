"""How the cosine pull of LoRe_regularized at alpha = 1e4 depends on d, the per-coordinate size of the
embedding differences (c) and the iteration count, on a synthetic planted world of the offline design:
user reward direction = a * h_hat (the head: general part) + b * U* w_i (personal part, Dirichlet w).

    python offline/experiments/synthetic_scale.py --d=256 --c=32 --T=20000 --K=5
Prints one JSON line: accuracies (ref, fitted; seen test and unseen test), mean cos(V_b, head), |V_b|.
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import utils

p = argparse.ArgumentParser()
p.add_argument("--d", type=int, default=256); p.add_argument("--c", type=float, default=1.0)
p.add_argument("--T", type=int, default=1000); p.add_argument("--K", type=int, default=5)
p.add_argument("--alpha", type=float, default=1e4)
p.add_argument("--seen", type=int, default=150); p.add_argument("--unseen", type=int, default=40)
p.add_argument("--m_train", type=int, default=11); p.add_argument("--m_test", type=int, default=12)
p.add_argument("--m_fewshot", type=int, default=11)
p.add_argument("--mg", type=float, default=1.5, help="margin std of the general part (after /100)")
p.add_argument("--mp", type=float, default=2.5, help="margin std of a pure user's personal part")
p.add_argument("--Bstar", type=int, default=3); p.add_argument("--conc", type=float, default=0.1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--R", type=float, default=1.0, help="x std along the personal directions / along the head")
a = p.parse_args()
torch.set_num_threads(1)
rng = np.random.default_rng(a.seed)
d = a.d
Q, _ = np.linalg.qr(rng.standard_normal((d, a.Bstar + 1)))
h = Q[:, 0]; U = Q[:, 1:]
gen = 100 * a.mg / a.c * h
pers = 100 * a.mp / (a.c * a.R) * U
n_users = a.seen + a.unseen
Wst = rng.dirichlet(a.conc * np.ones(a.Bstar), size=n_users)
dirs = gen[None, :] + Wst @ pers.T            # [users, d]

def sample(users_idx, m):
    users = np.repeat(users_idx, m)
    z = rng.standard_normal((len(users), d))
    x = a.c * (z + (a.R - 1) * (z @ U) @ U.T)
    s = np.einsum("nd,nd->n", x, dirs[users]) / 100
    pw = 1 / (1 + np.exp(-s))
    win = rng.random(len(pw)) < pw
    x = np.where(win[:, None], x, -x)
    return utils.Comparisons(torch.tensor(users - users_idx[0]), len(users_idx), features=torch.tensor(x, dtype=torch.float32)), np.maximum(pw, 1 - pw).mean()

seen = np.arange(a.seen); unseen = np.arange(a.seen, n_users)
tr, _ = sample(seen, a.m_train); te, bayes = sample(seen, a.m_test)
fs, _ = sample(unseen, a.m_fewshot); ute, ubayes = sample(unseen, a.m_test)
head = torch.tensor(h[:, None] * 0.3, dtype=torch.float32)
out = {k: v for k, v in vars(a).items()}
out["bayes_seen_test"] = float(bayes); out["bayes_unseen_test"] = float(ubayes)
out["ref_seen_test"] = utils.eval_multiple(te, head, torch.ones(a.seen, 1))[0]
out["ref_unseen_test"] = utils.eval_multiple(ute, head, torch.ones(a.unseen, 1))[0]
t0 = time.time()
Wt, V = utils.solve_regularized_simplex(head, a.alpha, tr, a.K, a.T, 0.5, seed=1, progress=False)
out["fit_s"] = round(time.time() - t0, 1)
out["train"] = utils.eval_multiple(tr, V, Wt)[0]
out["seen_test"] = utils.eval_multiple(te, V, Wt)[0]
if a.K > 1:
    Wu = torch.stack(utils.learn_multiple_few_shot(fs, V, 500, 0.5, seed=2, progress=False))
else:
    Wu = torch.ones(a.unseen, V.shape[1])
out["unseen_test"] = utils.eval_multiple(ute, V, Wu)[0]
cos = (torch.nn.functional.normalize(V, dim=0).T @ torch.tensor(h, dtype=torch.float32))
out["cos_head"] = [round(float(c), 3) for c in cos]
out["mean_cos"] = float(cos.mean())
out["V_norm"] = [round(float(n), 1) for n in V.norm(dim=0)]
print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))

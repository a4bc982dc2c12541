"""Exploration on the offline PRISM comparisons (already embedded with final-norm gains 1): emulate a
final-norm gain vector (loud channels), a head, a planted population (general = head + personal), redraw
each comparison's orientation from the planted Bradley-Terry probability, fit LoRe_regularized and report.

    cd PRISM && python ../offline/experiments/explore_prism.py --G=150 --L=8 --mg=1.5 --mp=1.5
"""
import argparse, json, sys, time
from pathlib import Path
import numpy as np
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "PRISM"))
import utils, prism_data

p = argparse.ArgumentParser()
p.add_argument("--G", type=float, default=150.0); p.add_argument("--L", type=int, default=8)
p.add_argument("--quiet", type=float, default=1.0)
p.add_argument("--mg", type=float, default=1.5); p.add_argument("--mp", type=float, default=1.5)
p.add_argument("--Bstar", type=int, default=3); p.add_argument("--conc", type=float, default=0.1)
p.add_argument("--T", type=int, default=1000); p.add_argument("--K", type=str, default="1,5")
p.add_argument("--alphas", type=str, default="10000,0"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--rb2_cands", type=int, default=8); p.add_argument("--rb2_noise", type=float, default=0.5)
p.add_argument("--rb2_rule", type=str, default="random")
p.add_argument("--head_mode", type=str, default="inv", help="inv: r/gain; quiet: zero on loud channels")
a = p.parse_args()
torch.set_num_threads(1)
data = ROOT / "PRISM" / "data" / "prism-offline"
groups, users, _ = prism_data.user_groups(data)
d = groups["seen_train"].d
rng = np.random.default_rng(a.seed)
gain = np.full(d, a.quiet); loud = np.arange(0, d, d // a.L)[: a.L]; gain[loud] = a.G
r = rng.standard_normal(d) * 0.2
head = r / gain if a.head_mode == "inv" else np.where(gain > a.quiet, 0.0, r)
from offline.tiny_model import LOUD_CHANNELS, LOUD_GAIN
built = np.ones(d); built[list(LOUD_CHANNELS)] = LOUD_GAIN     # the gains the data were embedded with
Xs = {k: g.features.double().numpy() / built * gain for k, g in groups.items()}
Xall = np.concatenate(list(Xs.values()))
hh = head / np.linalg.norm(head)
sig_h = (Xall @ hh).std()
gen_dir = hh * 100 * a.mg / sig_h
# personal: top principal subspace of x, orthogonal to the head, scaled to margin std mp
Xc = Xall - Xall.mean(0)
_, s, vt = np.linalg.svd(Xc, full_matrices=False)
top = vt[: 2 * a.Bstar]
Uq = (rng.standard_normal((a.Bstar, top.shape[0])) @ top).T
Uq -= np.outer(hh, hh @ Uq)
Uq, _ = np.linalg.qr(Uq)
sig_p = (Xall @ Uq).std(0)
pers = Uq * (100 * a.mp / sig_p)
n_seen, n_unseen = len(users["seen"]), len(users["unseen"])
W = rng.dirichlet(a.conc * np.ones(a.Bstar), size=n_seen + n_unseen)
out = {"R": float(sig_p.mean() / sig_h), "sig_h": float(sig_h), "x_coord_rms": float(np.sqrt((Xall ** 2).mean()))}
comps, bayes = {}, {}
for k, g in groups.items():
    off = 0 if k.startswith("seen") else n_seen
    u = g.users.numpy()
    dirs = gen_dir[None] + W[u + off] @ pers.T
    m = np.einsum("nd,nd->n", Xs[k], dirs) / 100
    pw = 1 / (1 + np.exp(-m))
    win = rng.random(len(pw)) < pw
    x = np.where(win[:, None], Xs[k], -Xs[k])
    comps[k] = utils.Comparisons(g.users, g.n_users, features=torch.tensor(x, dtype=torch.float32))
    bayes[k] = float(np.mean([np.maximum(pw, 1 - pw)[u == i].mean() for i in np.unique(u)]))
out["bayes"] = {k: round(v, 3) for k, v in bayes.items()}
H = torch.tensor(head[:, None], dtype=torch.float32)
out["ref"] = {k: round(utils.eval_multiple(c, H, torch.ones(c.n_users, 1))[0], 3) for k, c in comps.items()}
# planted truth accuracy (Bayes predictor) on realised labels
# RB2 proxy: prompts with rb2_cands candidate responses embedded by the tiny model (gain 1), gains emulated
rb2_path = ROOT / "offline" / "experiments" / f"rb2_cands_{a.rb2_cands}.npy"
if not rb2_path.exists():
    from offline import rewardbench2 as g2
    from offline.planted import embed_for_planting
    from offline.text import paragraph
    rr = np.random.default_rng(5)
    convs = []
    for i in range(300):
        pr = g2._prompt(["Factuality", "Math", "Safety", "Focus"][i % 4], rr)
        convs += [[{"role": "user", "content": pr}, {"role": "assistant", "content": paragraph(rr, 1, 3)}] for _ in range(a.rb2_cands)]
    np.save(rb2_path, embed_for_planting(convs))
Erb = np.load(rb2_path).astype(np.float64) / built * gain
Erb = Erb.reshape(-1, a.rb2_cands, d)
grb = Erb @ hh                                       # general score (any positive scale)
grb_c = grb - grb.mean(1, keepdims=True)
q = grb_c / grb_c.std() + a.rb2_noise * rng.standard_normal(grb.shape)
rows = []
for i in range(len(q)):
    order = np.argsort(-q[i])
    rej = order[-3:] if a.rb2_rule == "bottom" else rng.choice(order[1:], 3, replace=False)
    rows.append((order[0], rej))
def rb2_acc(Vm):
    S = Erb @ Vm                                     # [P, C, B]
    accs = []
    for b in range(S.shape[2]):
        ok = [float(S[i, c, b] > S[i, rej, b].max()) for i, (c, rej) in enumerate(rows)]
        accs.append(np.mean(ok))
    return accs
out["rb2_head"] = round(rb2_acc(head[:, None])[0], 3)
res = []
for alpha in map(float, a.alphas.split(",")):
    for K in map(int, a.K.split(",")):
        t0 = time.time()
        Ws, V = utils.solve_regularized_simplex(H, alpha, comps["seen_train"], K, a.T, 0.5, seed=1, progress=False)
        Wu = torch.stack(utils.learn_multiple_few_shot(comps["unseen_train"], V, 500, 0.5, seed=2, progress=False)) \
            if K > 1 else torch.ones(n_unseen, V.shape[1])
        cos = torch.nn.functional.normalize(V.double(), dim=0).T @ torch.tensor(hh)
        res.append({"alpha": alpha, "K": K, "train": round(utils.eval_multiple(comps["seen_train"], V, Ws)[0], 3),
                    "seen_test": round(utils.eval_multiple(comps["seen_test"], V, Ws)[0], 3),
                    "unseen_test": round(utils.eval_multiple(comps["unseen_test"], V, Wu)[0], 3),
                    "mean_cos": round(float(cos.mean()), 5), "rb2_cols": round(float(np.mean(rb2_acc(V.double().numpy()))), 3),
                    "rb2_wmean": round(rb2_acc((V.double() @ Ws.double().mean(0)).numpy()[:, None])[0], 3), "s": round(time.time() - t0, 1)})
out["fits"] = res
print(json.dumps({"args": vars(a), **out}))

"""Geometry of the offline PRISM embeddings: scale of embedding differences, head margin spread, spectrum.

    cd PRISM && python ../offline/experiments/geometry.py
"""
import sys
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "PRISM"))
import prism_data

data = ROOT / "PRISM" / "data" / "prism-offline"
groups, users, head = prism_data.user_groups(data)
X = torch.cat([g.table if g.table is not None and g.chosen is None else g.features for g in groups.values()])
E = prism_data.load_embedded(data, "")[1]
print("E: norm mean %.2f, per-coord rms %.3f, mean-vector norm %.2f" % (E.norm(dim=1).mean(), E.pow(2).mean().sqrt(), E.mean(0).norm()))
print("X: N %d, norm mean %.2f, per-coord rms %.3f" % (X.shape[0], X.norm(dim=1).mean(), X.pow(2).mean().sqrt()))
h = head[:, 0]
m = X @ h
print("head: norm %.3f; margin x.h std %.3f, /100 std %.4f; x.h_hat std %.3f" % (h.norm(), m.std(), m.std() / 100, (X @ (h / h.norm())).std()))
Xc = X - X.mean(0)
s = torch.linalg.svdvals(Xc) / (X.shape[0] ** 0.5)
print("x std along PCs (top 10):", [round(float(v), 3) for v in s[:10]], "median", round(float(s.median()), 3), "min", round(float(s[-1]), 4))
print("E per-coordinate abs mean top:", E.abs().mean(0).sort(descending=True).values[:5])

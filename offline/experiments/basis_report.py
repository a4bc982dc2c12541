"""Mean cosine of every saved basis to the head, and the offline RewardBench 2 official overall of the
head, of each basis column (mean over columns) and of the LoRe-weighted mean head V @ mean_i(w_i).

    cd PRISM && python ../offline/experiments/basis_report.py results-offline [more result folders]
Prints a markdown table (one row per V file). Scores every head in one pass of the tiny backbone.
"""
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import rewardbench2 as rb2  # noqa: E402
from offline.rewardbench2 import dataset_path  # noqa: E402
from offline.tiny_model import tiny_model_path  # noqa: E402

torch.set_num_threads(1)
here = Path.cwd()
data = here / "data"
head_file = next(data.glob("*-offline/reward_head.safetensors"))
from safetensors.torch import load_file  # noqa: E402

head = load_file(str(head_file))[next(iter(load_file(str(head_file))))].float().reshape(-1, 1)
entries = []   # (label, V [d,B], W [C,B] or None)
for folder in sys.argv[1:]:
    for vf in sorted(Path(folder).glob("*_V_lore_K_*_alpha_*.pt")):
        m = re.match(r"(.+)_V_lore_K_(\d+)_alpha_(.+)\.pt", vf.name)
        V = torch.load(vf, weights_only=True).float()
        wf = vf.with_name(f"{m.group(1)}_W_lore_seen_{m.group(2)}_{m.group(3)}.pt")
        W = torch.load(wf, weights_only=True).float() if wf.exists() else None
        entries.append((f"{folder}:K={m.group(2)},alpha={m.group(3)}", V, W))
cols = [head]
spans = []
for label, V, W in entries:
    start = sum(c.shape[1] for c in cols)
    cols.append(V)
    if W is not None:
        cols.append(V @ W.mean(0, keepdim=True).T)
    spans.append((start, V.shape[1], W is not None))
H = torch.cat(cols, 1)
model, tok = rb2.load_scoring_model(tiny_model_path(), "lmhead", device="cpu")
rows = rb2.load_rows(dataset_path(ROOT / "PRISM" / "data" / "rewardbench2-offline"))
scores = rb2.score_rows(model, tok, rows, head=H, batch_size=64)
fig = rb2.compute_figures(rows, scores)
overall = np.array(fig["official"]["overall"])
hh = torch.nn.functional.normalize(head[:, 0], dim=0)
print(f"head: RB2 official overall {100 * overall[0]:.1f}")
print("| basis | columns | mean cos to head | min cos | RB2 mean over columns | RB2 min column | RB2 weighted-mean head |")
print("|---|---|---|---|---|---|---|")
out = []
for (label, V, W), (start, B, has_w) in zip(entries, spans):
    cos = torch.nn.functional.normalize(V, dim=0).T @ hh
    per = overall[start:start + B]
    wm = overall[start + B] if has_w else float("nan")
    print(f"| {label} | {B} | {cos.mean():.5f} | {cos.min():.5f} | {100 * per.mean():.1f} | {100 * per.min():.1f} | {100 * wm:.1f} |")
    out.append({"basis": label, "columns": B, "mean_cos": float(cos.mean()), "rb2_mean": float(per.mean()), "rb2_wmean": float(wm)})
print(json.dumps({"head": float(overall[0]), "bases": out}))

"""The TLDR relations across generator seeds at a given size (ref, K = 1, K = 3 on seen / unseen workers
against the planted Bayes rate).

    cd RedditTLDR && python ../offline/experiments/tldr_seeds.py --workers=30 --seeds=0,1,2
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
p = argparse.ArgumentParser()
p.add_argument("--workers", type=int, default=30); p.add_argument("--train_posts", type=int, default=60)
p.add_argument("--validation_posts", type=int, default=24); p.add_argument("--summaries", type=int, default=6)
p.add_argument("--seeds", default="0,1,2"); p.add_argument("--K_list", default="[0,1,3]")
p.add_argument("--extra", default=""); p.add_argument("--out", default="/tmp/tldr_seeds")
a = p.parse_args()
py = sys.executable
for seed in map(int, a.seeds.split(",")):
    base = Path(a.out) / str(seed)
    common = ["--offline", f"--data_dir={base / 'data' / 'tldr'}"]
    for args in (["prepare.py", *common, f"--seed={seed}", f"--offline_workers={a.workers}",
                  f"--offline_train_posts={a.train_posts}", f"--offline_validation_posts={a.validation_posts}",
                  f"--offline_summaries_per_post={a.summaries}"],
                 ["generate-tldr-embeddings.py", *common],
                 ["train_basis.py", *common, f"--results_dir={base / 'results'}", f"--K_list={a.K_list}",
                  *a.extra.split()]):
        subprocess.run([py, *args], cwd=ROOT / "RedditTLDR", check=True, capture_output=True, text=True)
    r = json.loads((base / "results-offline" / "train_basis.json").read_text())
    print(json.dumps({"seed": seed, "bayes": r.get("bayes_optimal"), "split": {k: r["split"][k] for k in ("seen", "unseen")},
                      "acc": {r2["K"]: (round(r2["seen_test"]["mean"], 3), round(r2["unseen_test"]["mean"], 3))
                              for r2 in r["results"]}}), flush=True)

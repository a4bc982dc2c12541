"""The PRISM relations across generator seeds at a given size: ref / K = 1 / K >= 5 on seen and unseen
users at alpha = 1e4 and 0, the planted rate, the basis' mean cosine to the head and RewardBench 2.

    cd PRISM && python ../offline/experiments/prism_seeds.py --users=100 --iterations=500 --seeds=0,1,2,3,4
Writes one JSON line per seed (stdout) and runs in /tmp/prism_seeds/<seed>/.
"""
import argparse, json, subprocess, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
p = argparse.ArgumentParser()
p.add_argument("--users", type=int, default=100); p.add_argument("--iterations", type=int, default=500)
p.add_argument("--seeds", default="0,1,2,3,4"); p.add_argument("--K_list", default="[0,1,5,10]")
p.add_argument("--out", default="/tmp/prism_seeds")
a = p.parse_args()
py = sys.executable
for seed in map(int, a.seeds.split(",")):
    base = Path(a.out) / str(seed)
    common = ["--offline", f"--data_dir={base / 'data' / 'prism'}"]
    res = ["--results_dir=" + str(base / "results")]
    for args in (["prepare.py", *common, f"--offline_users={a.users}", f"--seed={seed}"],
                 ["generate-prism-embeddings.py", *common],
                 ["train_basis.py", *common, *res, f"--num_iterations={a.iterations}", f"--K_list={a.K_list}",
                  "--alpha_list=[10000.0,0.0]"]):
        subprocess.run([py, *args], cwd=ROOT / "PRISM", check=True, capture_output=True, text=True)
    payload = json.loads((base / "results-offline" / "prism_lore_results.json").read_text())
    rep = subprocess.run([py, str(ROOT / "offline" / "experiments" / "basis_report.py"), str(base / "results-offline")],
                         cwd=base, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    out = {"seed": seed, "counts": payload["counts"], "planted": payload["planted_accuracy"],
           "acc": {f"{r['alpha']:g}/{r['K']}": (round(r["seen_test"]["mean"], 3), round(r["unseen_test"]["mean"], 3))
                   for r in payload["results"]}, "rb2": json.loads(rep)}
    print(json.dumps(out), flush=True)

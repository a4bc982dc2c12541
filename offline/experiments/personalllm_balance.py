"""Regenerate the offline PersonalLLM rows with another balance (same texts, so the embeddings are reused),
then run prepare.py (which keeps these rows: same seed and sizes) and train_basis.py.

    cd PersonalLLM && python ../offline/experiments/personalllm_balance.py --personal=6 --noise=0.05 --train=1000
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
p = argparse.ArgumentParser()
p.add_argument("--general", type=float, default=2.5); p.add_argument("--personal", type=float, default=3.0)
p.add_argument("--noise", type=float, default=0.05); p.add_argument("--conc", type=float, default=0.3)
p.add_argument("--train", type=int, default=1000); p.add_argument("--test", type=int, default=100)
p.add_argument("--seen_fraction", type=float, default=0.025); p.add_argument("--unseen_fraction", type=float, default=0.005)
p.add_argument("--extra", type=str, default="")
a = p.parse_args()
from offline import personalllm as gen  # noqa: E402

data = ROOT / "PersonalLLM" / "data" / "personalllm-offline"
s = gen.write_raw(data, n_train=a.train, n_test=a.test, seed=0, general_margin_std=a.general,
                  personal_margin_std=a.personal, noise_std=a.noise, concentration=a.conc)
print("oracle", s["oracle_accuracy_train"], s["oracle_accuracy_test"])
py = sys.executable
run = lambda args: subprocess.run([py, *args], cwd=ROOT / "PersonalLLM", check=True, capture_output=True, text=True).stdout
run(["prepare.py", "--offline", f"--offline_train_prompts={a.train}", f"--offline_test_prompts={a.test}"])
run(["generate-personalllm-embeddings.py", "--offline"])
out = run(["train_basis.py", "--offline", f"--seen_prompt_fraction={a.seen_fraction}",
           f"--unseen_prompt_fraction={a.unseen_fraction}", *a.extra.split()])
print("\n".join(l for l in out.splitlines() if l.startswith("|")))

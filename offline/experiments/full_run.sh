#!/usr/bin/env bash
# Every offline pipeline from scratch at the recommended main-job settings, each step timed (one thread).
#   bash offline/experiments/full_run.sh > /tmp/full_run.log 2>&1
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-/work/main/.venv/bin/python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TQDM_DISABLE=1
rm -rf offline/build PRISM/data PRISM/results-offline RedditTLDR/data RedditTLDR/results-offline \
       PersonalLLM/data PersonalLLM/results-offline debias_lora/data-offline debias_lora/results-offline
step() { local dir=$1; shift; local t0=$(date +%s.%N); (cd "$dir" && "$PY" "$@") > "/tmp/full_$(echo "$dir-$1-$*" | md5sum | cut -c1-8).log" 2>&1 || { echo "FAILED $dir $*"; exit 1; }; printf "%7.1f s  %s %s\n" "$(echo "$(date +%s.%N) - $t0" | bc)" "$dir" "$*"; }
step PRISM prepare.py --offline
step PRISM generate-prism-embeddings.py --offline
step PRISM train_basis.py --offline --alpha_list=[10000.0,0.0] --num_iterations=2000
step PRISM vary_fewshot.py --offline --alpha_list=[10000.0] --num_iterations=2000
step PRISM eval_rb2.py --offline --batch_size 32
step PRISM eval_rb2.py --offline --batch_size 32 --rm_head PRISM_V_lore_K_5_alpha_10000.0.pt
step PRISM eval_rb2.py --offline --batch_size 32 --rm_head PRISM_V_lore_K_5_alpha_0.0.pt
step PRISM personalize_demo.py --offline
step RedditTLDR prepare.py --offline
step RedditTLDR generate-tldr-embeddings.py --offline
step RedditTLDR train_basis.py --offline
step RedditTLDR vary_fewshot.py --offline
step PersonalLLM prepare.py --offline --offline_train_prompts=5000 --offline_test_prompts=100
step PersonalLLM generate-personalllm-embeddings.py --offline
step PersonalLLM train_basis.py --offline
step PersonalLLM vary_fewshot.py --offline
step debias_lora demo_offline.py --offline

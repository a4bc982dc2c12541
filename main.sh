#!/usr/bin/env bash
# The main job in one command: install requirements.txt into .venv (once), then run every dataset
# folder's scripts in order on the offline default and print the result tables (see main_job.py).
# Extra arguments go to main_job.py, e.g. `bash main.sh --only=PRISM` or `bash main.sh --smoke`.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt   # a few seconds when everything is already there
exec .venv/bin/python main_job.py "$@"

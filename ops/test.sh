#!/usr/bin/env bash
# The test command: set up, then run the whole suite. Extra arguments go to pytest (e.g. -m "not slow").
# pytest's exit code is passed on as is, so "no tests ran" (5) fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"

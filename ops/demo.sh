#!/usr/bin/env bash
# The main job: set up, build the default demo model once (quick preset, reused on later runs), and show
# what it reached on held-out videos. Extra arguments go to `vbs train demo` (e.g. --preset full).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MODEL_DIR=${VBS_MODEL_DIR:-models/demo}
.venv/bin/vbs train demo --out "$MODEL_DIR" "$@" > /dev/null
cat "$MODEL_DIR/model_card.md"
echo "model: $MODEL_DIR (model_card.json has every figure)"

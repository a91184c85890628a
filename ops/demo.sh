#!/usr/bin/env bash
# The main job: set up, build the default demo model once (quick preset, reused on later runs), show what it
# reached on held-out videos, then run the whole service (streaming graph, HTTP API, live page, /metrics)
# with a live demo stream, until Ctrl-C. Extra arguments go to `vbs up` (e.g. --port 8080 --config FILE);
# VBS_PRESET=full builds the full-preset model instead (in models/demo-full; a model directory holds one build).
set -euo pipefail
cd "$(dirname "$0")/.."
VBS_SETUP=service bash ops/setup.sh  # the service's packages only; the test command adds the test tools
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PRESET=${VBS_PRESET:-quick}
if [ "$PRESET" = quick ]; then default_dir=models/demo; else default_dir=models/demo-$PRESET; fi
MODEL_DIR=${VBS_MODEL_DIR:-$default_dir}
.venv/bin/vbs train demo --out "$MODEL_DIR" --preset "$PRESET" > /dev/null
cat "$MODEL_DIR/model_card.md"
video=$(ls "$MODEL_DIR"/data/heldout/*.mp4 | head -n 1)
echo
echo "Tagging the held-out demo video $video (first 5 clips of the JSON lines; all in $MODEL_DIR/demo_tags.jsonl):"
.venv/bin/vbs tag "$video" --model "$MODEL_DIR" --out "$MODEL_DIR/demo_tags.jsonl"
head -n 5 "$MODEL_DIR/demo_tags.jsonl" | .venv/bin/python -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    top = {slot: ranked[0]["label"] for slot, ranked in r["labels"].items()}
    t0, t1, align, sub = r["t0"], r["t1"], r["alignment"], r["subtitle"]
    print(f"{t0:6.1f}-{t1:5.1f} s  {top}  alignment={align}  subtitle={sub!r}")'
echo "model: $MODEL_DIR (model_card.json has every figure)"
echo
echo "Starting the service with a live demo stream (Ctrl-C stops it):"
exec .venv/bin/vbs up --model "$MODEL_DIR" --demo "$@"

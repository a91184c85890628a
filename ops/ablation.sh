#!/usr/bin/env bash
# The paper's ablation on a built demo model: pretrain VideoBERT again on text only and on video only
# (same encoder, words, steps and seed; visual words start at random, since starting them near the
# narration is itself cross-modal), evaluate zero-shot on the held-out videos, and print the table beside
# the cross-modal model. Usage: bash ops/ablation.sh [MODEL_DIR] [STEPS]   (defaults: models/demo 500)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MODEL=${1:-models/demo}
STEPS=${2:-500}
for kind in text video; do
  dir="$MODEL/ablation/$kind"
  mkdir -p "$dir"
  ln -sfn "$(realpath "$MODEL/encoder")" "$dir/encoder"
  ln -sfn "$(realpath "$MODEL/vocab")" "$dir/vocab"
  if [ "$kind" = text ]; then mix="0 1 0"; objectives=text; else mix="0 0 1"; objectives=video; fi
  .venv/bin/vbs train videobert --data "$MODEL/data/train" --encoder "$dir/encoder" --vocab "$dir/vocab" \
    --out "$dir/videobert" --steps "$STEPS" --mix $mix --objectives "$objectives" --no-text-init -q
  .venv/bin/vbs eval zero-shot --model "$dir" --data "$MODEL/data/heldout" --json "$dir/zero_shot.json" -q > /dev/null
done
.venv/bin/python - "$MODEL" <<'PY'
import json, sys
m = sys.argv[1]
rows = [("text only", f"{m}/ablation/text/zero_shot.json"), ("video only", f"{m}/ablation/video/zero_shot.json"),
        ("cross-modal (demo model)", f"{m}/eval_zero_shot.json")]
print(f"{'pretraining':<26}{'verb top-1':>11}{'noun top-1':>11}{'both top-1':>11}{'verb top-3':>11}{'noun top-3':>11}")
for name, path in rows:
    r = json.load(open(path))
    print(f"{name:<26}" + "".join(f"{r[k]:>11.3f}" for k in ("verb_top1", "noun_top1", "both_top1", "verb_top3", "noun_top3")))
print(f"{'chance':<26}{0.125:>11.3f}{0.167:>11.3f}{0.021:>11.3f}{0.375:>11.3f}{0.5:>11.3f}")
PY

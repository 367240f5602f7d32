#!/usr/bin/env bash
# Command 1: set everything up and run the whole suite on the embedded default data.
#   dataset (generated offline from scikit-image photos) -> train -> finetune -> validate -> test
# Idempotent: an existing dataset and a finished demo run are reused. Settings can be
# changed through environment variables (the test suite runs a tiny configuration).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLASS=${DEMO_CLASS:-brick}
SIZE=${DEMO_SIZE:-128}
COLOR=${DEMO_COLOR:-grayscale}
ARCH=${DEMO_ARCH:-mvtec2}
LOSS=${DEMO_LOSS:-ssim}
DATA=${DEMO_DATA:-mvtec}
OUT=${DEMO_OUT:-saved_models}
N_TRAIN=${DEMO_TRAIN:-120}
N_TEST_GOOD=${DEMO_TEST_GOOD:-20}
N_TEST_DEFECT=${DEMO_TEST_DEFECT:-10}
INSTANCES=${DEMO_INSTANCES:-6000}
AREA=${DEMO_AREA:-12}
BATCH=${DEMO_BATCH:-8}
LR=${DEMO_LR:-1e-3}
SKIP_SETUP=${DEMO_SKIP_SETUP:-0}
started=$(date +%s)
# Steps whose output is shown *and* read keep a copy here. `tee /dev/stderr` would reopen
# (truncate) a log file that stdout and stderr are redirected to; writing to fd 2 does not.
STEP_LOG=$(mktemp)
trap 'rm -f "$STEP_LOG"' EXIT

if [ "$SKIP_SETUP" = 1 ]; then PY=${PYTHON:-python3}; else bash scripts/setup_env.sh; PY=.venv/bin/python; fi
export TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg

echo "[1/5] dataset: $DATA/$CLASS ($SIZE px, generated offline from scikit-image photographs)"
"$PY" make_dataset.py --out "$DATA" --classes "$CLASS" --size "$SIZE" --train "$N_TRAIN" \
  --test-good "$N_TEST_GOOD" --test-defect "$N_TEST_DEFECT" --seed 0

# Reuse the newest finished demo run with the same settings, if there is one.
RUN=$("$PY" - "$OUT" "$DATA" "$CLASS" "$ARCH" "$LOSS" "$SIZE" "$INSTANCES" <<'PYEOF'
import json, sys
from pathlib import Path
out, data, klass, arch, loss, size, instances = sys.argv[1:]
base = Path(out) / Path(data).resolve().name / klass / arch / loss.upper()
for run in sorted(base.glob("*/setup.json"), reverse=True):
    s = json.loads(run.read_text())
    if s.get("status") == "done" and s.get("tag") == "demo" and s["size"] == int(size) and s["instances"] == int(instances):
        print(run.parent)
        break
PYEOF
)
if [ -n "$RUN" ]; then
  echo "[2/5] train: reusing finished demo run $RUN"
else
  echo "[2/5] train: $ARCH CAE, $LOSS loss, $COLOR, $SIZE px, $INSTANCES images shown"
  "$PY" train.py new -d "$DATA/$CLASS" -a "$ARCH" -l "$LOSS" -c "$COLOR" -b "$BATCH" --size "$SIZE" --lr "$LR" \
    -i "$INSTANCES" -t demo --out "$OUT" | tee "$STEP_LOG" >&2
  RUN=$(tail -n 1 "$STEP_LOG")
fi

echo "[3/5] finetune: plots to choose the minimum defect area"
"$PY" finetune.py -p "$RUN" -r 100 | tail -n 1

echo "[4/5] validate: threshold for minimum area $AREA px from held-back good images"
"$PY" validate.py -p "$RUN" -a "$AREA" | sed -n 1p  # sed reads to the end: no broken pipe

echo "[5/5] test: classify every test image, score, save masks and overlays"
"$PY" test.py -p "$RUN" --save | tee "$STEP_LOG" >&2
TEST_OUT=$(tail -n 1 "$STEP_LOG")

cat <<TXT

Demo finished in $(( $(date +%s) - started )) s.
  run folder:          $RUN
  training curve:      $RUN/loss_curve.png
  finetune plots:      $RUN/finetune/
  threshold choice:    $RUN/validation/
  verdicts, masks:     $TEST_OUT/ (classification.csv, test_result.json, <defect>/*_overlay.png)
  metrics and curves:  $(dirname "$TEST_OUT")/metrics.json, roc_curves.png, pro_curve.png
TXT

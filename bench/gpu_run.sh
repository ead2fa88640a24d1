#!/usr/bin/env bash
# A real ISIC-sized training as a user runs it, on one GPU: `dermaseg plan` then `dermaseg
# train --config plan.yaml`, against the path a user got before plan chose compilation, the
# learning rate for its batch and validation its own batch (the same plan with
# train.compile=false, the recipe's optim.lr and warm-up, data.val_batch_size = the batch),
# on a synthetic set the size of ISIC 2018 (2,594 training and 100 validation images at
# 512 px, made here). Both train $EPOCHS epochs; bench/gpu_run_table.py measures each run
# (whole-run images/s, the first epoch's excess: compilation; the steady epoch) and carries
# both over the planned run (train.max_epochs): bench/results/gpu_run.md, .json. Within
# $DEADLINE_S seconds (default 570). Random initial weights (no network there). With $OUT set
# (the device tool), the table, the logs, plan.* and both runs' summary/metrics are copied there.
#
#   bash bench/gpu_run.sh              # on the GPU machine
#   SMOKE=1 bash bench/gpu_run.sh      # CPU dry run: 64 px, 24 + 4 images, 2 epochs, eager
#                                      # (the CPU plan does not compile; gpu_run_smoke.*)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
EPOCHS="${EPOCHS:-5}"
TRAIN=2594; VAL=100; SIZE=512; NAME=gpu_run; SCALE=1  # SCALE: of each step's time limit
if [ "${SMOKE:-0}" = 1 ]; then
  TRAIN=24; VAL=4; SIZE=64; EPOCHS=2; NAME=gpu_run_smoke; SCALE=3; DEADLINE_S="${DEADLINE_S:-1500}"
fi
DEADLINE_S="${DEADLINE_S:-570}"
work="$(mktemp -d)"
finish() {  # on the device machine, what comes back is what lies under $OUT
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp bench/results/"$NAME".* "$work"/*.log "$work"/plan.* "$OUT"/ 2>/dev/null
    for run in planned before; do
      for file in summary.json metrics.csv; do
        [ -f "$work/$run/$file" ] && cp "$work/$run/$file" "$OUT/${run}_$file"
      done
    done
  fi
  rm -rf "$work"
}
trap finish EXIT
step() {  # step LIMIT_S NAME COMMAND...: one line, the log's tail on failure
  local limit=$(($1 * SCALE)) name=$2; shift 2
  local left=$((DEADLINE_S - SECONDS))
  [ "$left" -le 10 ] && { echo "== $name: no time left (DEADLINE_S=$DEADLINE_S)"; exit 1; }
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s)"
  if ! timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1; then
    echo "$name failed or ran out of time:"; tail -n 15 "$work/$name.log"; exit 1
  fi
  tail -n 1 "$work/$name.log"
}
step 120 synth "$PY" -m dermaseg data synth -n $((TRAIN + VAL)) -o "$work/raw"
step 120 prepare "$PY" -m dermaseg data prepare "$work/raw" -o "$work/prep" --size "$SIZE" \
  --val "$("$PY" -c "print($VAL / ($TRAIN + $VAL))")" --test 0
step 240 plan "$PY" -m dermaseg plan --data "$work/prep" -o "$work/plan.yaml"
cat "$work/plan.log"
# before: the plan's batch, eager, validation at that batch, the recipe's rate and warm-up
read -r batch lr warmup < <("$PY" - "$work/plan.json" <<'PYEOF'
import json, sys
from dermaseg.config_io import load_config
plan = json.load(open(sys.argv[1]))
base = plan["base"]
recipe = load_config(base)
print(plan["config"]["data"]["batch_size"], recipe.optim.lr, recipe.optim.warmup_epochs)
PYEOF
)
[ -n "${warmup:-}" ] || { echo "$work/plan.json: no batch, lr and warm-up read from it"; exit 1; }
# random initial weights: the machine has no network for the recipe's ImageNet weights
common=(--config "$work/plan.yaml" --data "$work/prep" -q --set "train.max_epochs=$EPOCHS"
        --set train.fit_quality=false --set model.pretrained=null)
step 200 planned "$PY" -m dermaseg train "${common[@]}" -o "$work/planned"
step 200 before "$PY" -m dermaseg train "${common[@]}" -o "$work/before" \
  --set train.compile=false --set "data.val_batch_size=$batch" --set "optim.lr=$lr" \
  --set "optim.warmup_epochs=$warmup"
"$PY" bench/gpu_run_table.py "$work/plan.json" "$work/planned" "$work/before" --name "$NAME"

#!/bin/bash
# 5-fold cross-validation of a recipe on derm-real (all 194 pairs, `data prepare --folds 5
# --test 0 --size 192`): train each fold with a fixed cosine schedule (the machine's load
# cannot change the result, only the time) and evaluate it on its own fold's images.
#   bash bench/crossval.sh LABEL [--set key=value ...]
# The rows of bench/results/crossval.md: bash bench/crossval.sh ema (cpu_small),
#   bash bench/crossval.sh cc --set train.ema_decay=null and
#   bash bench/crossval.sh base --set train.ema_decay=null --set data.colour_constancy=none
# Env: DATA (derm-real), WORK (bench/work/crossval), CONFIG (cpu_small), EPOCHS (40),
# FOLDS ("0 1 2 3 4": the folds to run).
# Then: python bench/crossval_table.py  (bench/results/crossval.md, .json)
set -eu
LABEL=$1; shift
DATA=${DATA:-../shared/data/derm-real}
WORK=${WORK:-bench/work/crossval}
CONFIG=${CONFIG:-cpu_small}
EPOCHS=${EPOCHS:-40}
FOLDS=${FOLDS:-0 1 2 3 4}
DERMASEG=${DERMASEG:-.venv/bin/dermaseg}
PREP="$WORK/prep"
mkdir -p "$WORK/$LABEL"
[ -f "$PREP/manifest.json" ] || "$DERMASEG" data prepare "$DATA" -o "$PREP" --size 192 \
  --folds 5 --test 0 --random-split > "$WORK/prep.log"
for fold in $FOLDS; do
  run="$WORK/$LABEL/fold$fold"
  "$DERMASEG" train --config "$CONFIG" --data "$PREP" --fold "$fold" -o "$run" \
    --set "train.max_epochs=$EPOCHS" --set optim.anneal_by_time=false \
    --set train.max_minutes=120 --set train.early_stop_patience=1000 "$@" > "$run.log" 2>&1 \
    || { tail "$run.log"; exit 1; }
  "$DERMASEG" evaluate "$run/best.ckpt" --data "$PREP" --split "fold$fold" -o "$run/eval" \
    -q --overwrite
  echo "$LABEL fold $fold: $(tail -n1 "$run.log")"
done

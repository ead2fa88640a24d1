#!/bin/bash
# The seeded split of derm-real (136 train / 29 val / 29 test, `data prepare --size 192`):
# train a recipe with a fixed cosine schedule (the machine's load cannot change the result)
# and evaluate it on the val and test splits; beside bench/loso.sh, the "no loss on the
# seeded split" check of a recipe change.
#   bash bench/seeded_split.sh LABEL [--set key=value ...]
# Env: PREP (local-data/prep-real), WORK (bench/work/seeded), CONFIG (cpu_small), EPOCHS (40).
# The rows of bench/results/seeded_split.md: bash bench/seeded_split.sh emaw (cpu_small),
#   bash bench/seeded_split.sh cc --set train.ema_decay=null and
#   bash bench/seeded_split.sh base --set train.ema_decay=null --set data.colour_constancy=none
# Then: python bench/loso_table.py --work bench/work/seeded --labels base,cc,ema,emaw --name seeded_split
set -eu
LABEL=$1; shift
PREP=${PREP:-local-data/prep-real}
WORK=${WORK:-bench/work/seeded}
CONFIG=${CONFIG:-cpu_small}
EPOCHS=${EPOCHS:-40}
DERMASEG=${DERMASEG:-.venv/bin/dermaseg}
run="$WORK/$LABEL/train-seeded"
mkdir -p "$WORK/$LABEL"
"$DERMASEG" train --config "$CONFIG" --data "$PREP" -o "$run" --set "train.max_epochs=$EPOCHS" \
  --set optim.anneal_by_time=false --set train.max_minutes=120 \
  --set train.early_stop_patience=1000 "$@" > "$run.log" 2>&1 || { tail "$run.log"; exit 1; }
for split in val test; do
  "$DERMASEG" evaluate "$run/best.ckpt" --data "$PREP" --split "$split" -o "$run/eval-$split" \
    -q --overwrite
done
echo "$LABEL: $(tail -n1 "$run.log")"

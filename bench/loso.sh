#!/bin/bash
# Leave-one-source-out on derm-real: train a recipe on one source (PH2 or ISIC 2016, from
# MANIFEST.tsv), evaluate it on its own validation split and on the other source it never saw.
#   bash bench/loso.sh LABEL [--set key=value ...]   # e.g. bash bench/loso.sh emaw (cpu_small)
#   bash bench/loso.sh cc --set train.ema_decay=null  # without weight averaging
#   bash bench/loso.sh base --set train.ema_decay=null --set data.colour_constancy=none
# Env: DATA (derm-real), WORK (bench/work/loso), CONFIG (cpu_small), SIZE (192), EPOCHS_PH2
# (40), EPOCHS_ISIC2016 (120): a fixed cosine schedule of about the same number of steps for
# both sources (122 and 34 training images), so that the load on the machine cannot change
# the result, only the time. TRAIN_ON ("PH2 ISIC2016"): the sources to train on.
# Then: python bench/loso_table.py  (bench/results/loso.md, .json)
set -eu
LABEL=$1; shift
DATA=${DATA:-../shared/data/derm-real}
WORK=${WORK:-bench/work/loso}
CONFIG=${CONFIG:-cpu_small}
EPOCHS_PH2=${EPOCHS_PH2:-40}
EPOCHS_ISIC2016=${EPOCHS_ISIC2016:-120}
TRAIN_ON=${TRAIN_ON:-PH2 ISIC2016}
SIZE=${SIZE:-192}
DERMASEG=${DERMASEG:-.venv/bin/dermaseg}
mkdir -p "$WORK"
for source in PH2 ISIC2016; do  # raw pair folders of one source, as links
  raw="$WORK/raw-$source"
  [ -d "$raw" ] && continue
  mkdir -p "$raw.tmp"
  awk -F'\t' -v s="$source" 'NR > 1 && $2 == s {print $1}' "$DATA/MANIFEST.tsv" |
    while read -r name; do
      ln -s "$(realpath "$DATA/$name.jpg")" "$raw.tmp/$name.jpg"
      ln -s "$(realpath "$DATA/${name}_segmentation.png")" "$raw.tmp/${name}_segmentation.png"
    done
  mv "$raw.tmp" "$raw"
done
for source in PH2 ISIC2016; do
  [ -d "$WORK/prep-$source" ] || "$DERMASEG" data prepare "$WORK/raw-$source" \
    -o "$WORK/prep-$source" --size "$SIZE" --val 0.2 --test 0 --random-split > "$WORK/prep-$source.log"
done
for train in $TRAIN_ON; do
  other=$([ "$train" = PH2 ] && echo ISIC2016 || echo PH2)
  run="$WORK/$LABEL/train-$train"; mkdir -p "$WORK/$LABEL"
  epochs=$([ "$train" = PH2 ] && echo "$EPOCHS_PH2" || echo "$EPOCHS_ISIC2016")
  "$DERMASEG" train --config "$CONFIG" --data "$WORK/prep-$train" -o "$run" \
    --set "train.max_epochs=$epochs" --set optim.anneal_by_time=false \
    --set train.max_minutes=120 --set train.early_stop_patience=1000 "$@" > "$run.log" 2>&1 || { tail "$run.log"; exit 1; }
  "$DERMASEG" evaluate "$run/best.ckpt" --data "$WORK/prep-$train" --split val \
    -o "$run/eval-val" -q --overwrite
  "$DERMASEG" evaluate "$run/best.ckpt" --data "$WORK/raw-$other" -o "$run/eval-$other" \
    -q --overwrite
  echo "$LABEL: trained on $train ($(tail -n1 "$run.log"))"
done

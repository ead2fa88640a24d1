#!/bin/bash
# The seed ensemble of a recipe's leave-one-source-out runs: the models of LABEL, LABEL-s2
# and LABEL-s3 (bench/loso.sh with train.seed 42, 2, 3), averaged as `dermaseg evaluate
# a,b,c` does, judged on the source they did not train on: what an ensemble of independently
# trained models (as a cross-validation's fold models) brings on a new source.
#   bash bench/loso_ensemble.sh LABEL      # writes WORK/ensemble-LABEL/train-*/eval-*
# Env: WORK (bench/work/loso), SEEDS ("s2 s3": the other members' suffixes).
# Then: python bench/loso_table.py  (its rows ensemble-LABEL)
set -eu
LABEL=$1
WORK=${WORK:-bench/work/loso}
SEEDS=${SEEDS:-s2 s3}
DERMASEG=${DERMASEG:-.venv/bin/dermaseg}
for train in PH2 ISIC2016; do
  other=$([ "$train" = PH2 ] && echo ISIC2016 || echo PH2)
  members="$WORK/$LABEL/train-$train/best.ckpt"
  for seed in $SEEDS; do members="$members,$WORK/$LABEL-$seed/train-$train/best.ckpt"; done
  "$DERMASEG" evaluate "$members" --data "$WORK/raw-$other" \
    -o "$WORK/ensemble-$LABEL/train-$train/eval-$other" -q --overwrite
  echo "ensemble-$LABEL: trained on $train, judged on $other"
done

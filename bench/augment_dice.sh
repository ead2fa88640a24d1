#!/bin/bash
# The val Dice of cpu_small with 0.1's per-sample torchvision augmentation against the one
# batched augmentation: seeds 1..3, 20 epochs each, a fixed cosine schedule (the load on the
# machine cannot change the epochs), the two runs of a seed side by side.
#   git archive 876b546 | tar -x -C /tmp/base       # the 0.1 tree
#   cd local-data && bash ../bench/augment_dice.sh  # a folder holding prep-real/ (192 px)
# Results: bench/results/augment_dice.md
set -u
OLD=${OLD:-/tmp/base}
run() {  # label pythonpath config seed
  PYTHONPATH=$2 ../.venv/bin/python -m dermaseg train --config "$3" --data prep-real \
    -o "aug-$1-$4" --set "train.seed=$4" --set train.max_epochs=20 --set train.max_minutes=60 \
    --set optim.anneal_by_time=false --set train.early_stop_patience=100 > "aug-$1-$4.log" 2>&1
}
for seed in 1 2 3; do
  run before "$OLD/src" "$OLD/configs/cpu_small.yaml" "$seed" &
  run after "$(cd .. && pwd)/src" cpu_small "$seed"
  wait
  for label in before after; do echo "$label seed $seed: $(tail -n1 "aug-$label-$seed.log")"; done
done

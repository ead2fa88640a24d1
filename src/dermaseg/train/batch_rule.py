"""The learning rate and warm-up for a batch size other than the recipe's.

`dermaseg plan` measures the training step at several batch sizes and may take another batch
than the recipe's (`dermaseg.train.probe.choose_batch`: on a GPU a larger one where it trains
faster). A recipe's learning rate was chosen for its own batch, so the plan scales it:

- Adam and AdamW: the square-root rule, lr x sqrt(k) for a batch k times the recipe's
  (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms": it
  keeps the optimiser's noise scale; Hoffer et al. 2017 reach it from the gradient's variance).
- SGD: the linear rule, lr x k (Goyal et al. 2017, "Accurate, large minibatch SGD").
- A larger batch also warms up: the learning rate climbs linearly over the first
  `WARMUP_EPOCHS` epochs (Goyal et al.'s 5), at most a tenth of the run's epochs and at least
  one, because the scaled rate is unstable in the first steps; a longer warm-up of the recipe's
  stays. A smaller batch takes the smaller rate and the recipe's warm-up.

`bench/batch_rule.py` compares the validation Dice at the recipe's batch and at larger ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dermaseg.config import OptimConfig

WARMUP_EPOCHS = 5
LINEAR = ("sgd",)  # the other optimisers (adam, adamw) take the square-root rule


@dataclass(frozen=True)
class BatchRule:
    """The learning rate and warm-up epochs for a batch size, and why."""

    lr: float
    warmup_epochs: int
    reason: str

    def overrides(self) -> dict[str, object]:
        return {"optim.lr": self.lr, "optim.warmup_epochs": self.warmup_epochs}


def scale_for_batch(optim: OptimConfig, recipe_batch: int, batch: int, epochs: int
                    ) -> BatchRule:
    """The rule of the module doc for training at `batch` with `optim`, the recipe's optimiser
    settings for its `recipe_batch`, over about `epochs` epochs (the warm-up's bound)."""
    if batch == recipe_batch:
        return BatchRule(optim.lr, optim.warmup_epochs, f"the recipe's, for its batch {batch}")
    ratio = batch / recipe_batch
    linear = optim.name in LINEAR
    lr = float(f"{optim.lr * (ratio if linear else math.sqrt(ratio)):.3g}")
    rule = (f"{optim.name}: {optim.lr:g} x {batch}/{recipe_batch} (linear rule)" if linear else
            f"{optim.name}: {optim.lr:g} x sqrt({batch}/{recipe_batch}) (square-root rule)")
    warmup = optim.warmup_epochs
    if ratio > 1:
        warmup = max(warmup, min(WARMUP_EPOCHS, max(1, epochs // 10)))
        rule += f", warmed up over {warmup} epoch{'s' if warmup != 1 else ''}"
    return BatchRule(lr, warmup, f"{rule}: the recipe's rate was set for batch {recipe_batch}")

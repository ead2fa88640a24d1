"""`dermaseg train` with an exponential moving average of the weights (Lightning's
EMAWeightAveraging): the weight-averaging trial of issue 19, run by bench/loso.sh and
bench/crossval.sh through their TRAIN variable. Validation, best.ckpt and the quality fit
all see the averaged weights. A trial, not for resuming: a last.ckpt written at the end of a
validation holds the averaged weights as the current ones.

    TRAIN="python bench/train_ema.py --decay 0.99" bash bench/loso.sh ema
    python bench/train_ema.py --decay 0.99 --config cpu_small --data PREP -o RUN [--set k=v]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning.pytorch.callbacks import EMAWeightAveraging

from dermaseg.config_io import load_config
from dermaseg.train.runner import train


class ValidatedEMA(EMAWeightAveraging):
    """Keeps the averaged weights in the model until the next training batch, so that the
    checkpoint written at the end of validation (best.ckpt, weights only) holds them;
    Lightning's callback swaps them back before its checkpoints are written."""

    def __init__(self, decay: float) -> None:
        super().__init__(decay=decay)
        self.swapped = False

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._average_model is not None and not self.swapped:
            self._swap_models(pl_module)
            self.swapped = True

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pass

    def _swap_back(self, pl_module) -> None:
        if self.swapped:
            self._swap_models(pl_module)
            self.swapped = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._swap_back(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._swap_back(pl_module)
        super().on_train_end(trainer, pl_module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--fold", type=int)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    overrides = args.overrides + ([] if args.fold is None else [f"data.fold={args.fold}"])
    config = load_config(args.config, overrides)
    summary = train(config, args.data, args.out, callbacks=[ValidatedEMA(args.decay)])
    best = summary.get("best", {})
    print(json.dumps({"run": str(args.out), "ema_decay": args.decay,
                      "best_epoch": summary.get("best_epoch"), "val_dice": best.get("val_dice"),
                      "epochs": summary.get("epochs"), "stopped_by": summary.get("stopped_by")}))


if __name__ == "__main__":
    main()

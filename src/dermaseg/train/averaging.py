"""`train.ema_decay`: an exponential moving average of the network's weights.

After every optimizer step the average moves toward the trained weights by 1 - decay, the
decay growing to `train.ema_decay` over the first steps (`warmed_up_decay`; the update is
`torch.optim.swa_utils`; BatchNorm statistics included). Validation, early stopping, the
plateau scheduler, best.ckpt and the quality fit all see the average: the model holds it
from the start of each validation until the next training batch, and from the end of the
run on. last.ckpt keeps both: `state_dict` holds the average (what any reader of the file
predicts with), `weight_average` the weights training goes on from, so `--resume` is exact.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.optim.swa_utils import PARAM_LIST, AveragedModel, get_ema_multi_avg_fn

from dermaseg.checkpoint import WEIGHT_AVERAGE, model_state_dict

MODEL_PREFIX = "model."  # SegmentationModule.model, the network: all that is averaged


class WeightAverage(Callback):
    """The average of `pl_module.model`'s weights, kept beside it during `fit`."""

    def __init__(self, decay: float) -> None:
        self.decay = decay  # in (0, 1): train.ema_decay is validated with the config
        self.average: AveragedModel | None = None
        self.holds_average = False  # the model holds the average, `average` the training weights
        self._updated_at_step = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.average is None:  # before a resume restores into it
            self.average = moving_average(_network(pl_module), self.decay)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the module is on its device, in its memory format (channels_last on a GPU), only now
        average = self._average().to(pl_module.device)
        if _channels_last(_network(pl_module)):
            average.module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.holds_average:
            self._swap(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step > self._updated_at_step:  # an optimizer step was taken
            self._average().update_parameters(_network(pl_module))
            self._updated_at_step = trainer.global_step

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.average is not None and not self.holds_average:
            self._swap(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.holds_average:  # the trained model is the average
            self._swap(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"updated_at_step": self._updated_at_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._updated_at_step = int(state_dict["updated_at_step"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Full checkpoints only (last.ckpt): Lightning calls no callback for weights-only
        ones, which hold whatever the model holds (the average, at validation's end)."""
        if self.average is None:
            return
        held = model_state_dict(checkpoint)
        other = self._average().module.state_dict()
        average, training = (held, other) if self.holds_average else (other, held)
        checkpoint["state_dict"].update({MODEL_PREFIX + name: value
                                         for name, value in average.items()})
        checkpoint[WEIGHT_AVERAGE] = {"training_weights": training,
                                      "n_averaged": self._average().n_averaged}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Resume: the average from `state_dict` (already in the model), the training weights
        back into the model. A checkpoint without an average starts one at the next step."""
        saved = checkpoint.get(WEIGHT_AVERAGE)
        if self.average is None or saved is None:
            return
        self.average.module.load_state_dict(model_state_dict(checkpoint))
        self.average.n_averaged.copy_(saved["n_averaged"])
        # Lightning has loaded `state_dict` into the model already
        _network(pl_module).load_state_dict(saved["training_weights"])
        self.holds_average = False

    def _swap(self, pl_module: L.LightningModule) -> None:
        averaged = _tensors(self._average().module)
        current = _tensors(_network(pl_module))
        for avg, cur in zip(averaged, current, strict=True):
            kept = cur.detach().clone()
            cur.detach().copy_(avg.detach())
            avg.detach().copy_(kept)
        self.holds_average = not self.holds_average

    def _average(self) -> AveragedModel:
        if self.average is None:
            raise RuntimeError("WeightAverage used outside fit")
        return self.average


def moving_average(network: torch.nn.Module, decay: float) -> AveragedModel:
    """A copy of `network` whose `update_parameters(network)` moves it toward `network`'s
    weights and buffers by 1 - `warmed_up_decay` (the first call copies them)."""
    return AveragedModel(network, use_buffers=True, multi_avg_fn=_WarmedUpEMA(decay))


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of the update after `updates` earlier ones: (1 + n) / (10 + n) until that
    reaches `decay` (TensorFlow's ExponentialMovingAverage with num_updates), so that the
    first weights, far from trained, leave the average within a few dozen steps instead of
    weighing 0.99^n (37 % after 100 steps)."""
    return min(decay, (1 + updates) / (10 + updates))


class _WarmedUpEMA:
    """AveragedModel's multi_avg_fn for `warmed_up_decay`."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, averaged: PARAM_LIST, current: PARAM_LIST,
                 num_averaged: torch.Tensor | int) -> None:
        decay = warmed_up_decay(self.decay, int(num_averaged))
        get_ema_multi_avg_fn(decay)(averaged, current, num_averaged)


def _network(pl_module: L.LightningModule) -> torch.nn.Module:
    network = getattr(pl_module, "model", None)
    if not isinstance(network, torch.nn.Module):
        raise TypeError("WeightAverage needs a LightningModule whose network is .model")
    return network


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _channels_last(network: torch.nn.Module) -> bool:
    weight = next((p for p in network.parameters() if p.dim() == 4), None)
    return (weight is not None and not weight.is_contiguous()
            and weight.is_contiguous(memory_format=torch.channels_last))

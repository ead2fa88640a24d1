"""The LightningModule: model + loss + metrics + optimiser/scheduler from a Config.

Batches are (images (N, 3, H, W), masks (N, 1, H, W) in {0, 1}, indices (N,)). Logged per
epoch: `train_loss` (the module's running mean, see `pop_train_loss`), `val_loss` and
`val_<metric>` for every metric of `dermaseg.train.torch_metrics.SegmentationMetrics`
(`val_iou` is the Jaccard index); not sent to experiment trackers (`dermaseg.train.tracking`
sends the metrics.csv rows). Checkpoints carry {"dermaseg": ModelMeta dict} for
`dermaseg.checkpoint` and the global RNG state for an exact resume; no pickled
objects, no hyper-parameters.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from dermaseg.config import Config, OptimConfig
from dermaseg.data.augment import BatchAugment, augment_on_device
from dermaseg.data.dataset import PreparedDataset
from dermaseg.errors import DermasegError
from dermaseg.model_meta import ModelMeta
from dermaseg.models.factory import build_model
from dermaseg.train.callbacks import NonFiniteGuard, TimeBudget, trainer_callbacks
from dermaseg.train.compiled import CompiledOrEager
from dermaseg.train.datamodule import SegmentationDataModule, sample_seed
from dermaseg.train.device_batches import DeviceSplit, TrainingBatches
from dermaseg.train.losses import SegmentationLoss
from dermaseg.train.torch_metrics import SegmentationMetrics

LOG_NAMES = {"jaccard": "iou"}  # metric name -> logged name (val_iou)


class SegmentationModule(L.LightningModule):
    """Trains `build_model(config.model)` with `SegmentationLoss(config.loss)`; `config` was
    validated when it was built (`dermaseg.config`).

    Raises:
        DermasegError: a model or loss setting that the code using it refuses.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.model = build_model(config.model)
        self.criterion = SegmentationLoss(config.loss)
        # The eval-mode model returns mask logits only: validate without the boundary term.
        self.val_criterion = (SegmentationLoss(config.loss.updated(boundary=0.0))
                              if config.loss.boundary > 0 else self.criterion)
        self.val_metrics = SegmentationMetrics(threshold=config.train.threshold)
        # the guard keeps non-finite losses out; torchmetrics' own check would wait for the GPU
        self.train_loss_avg = MeanMetric(nan_strategy="disable")
        self.train_loss_avg.persistent(True)  # in last.ckpt: a mid-epoch resume keeps the mean
        self.guard = NonFiniteGuard(config.train.nan_tolerance)
        size = config.data.image_size
        augment = BatchAugment(config.data.augment, size, size) \
            if augment_on_device(config.data.augment_on, torch.cuda.is_available()) else None
        self.batches = TrainingBatches(config, augment)
        self._rng_to_restore: dict[str, Any] | None = None
        self._lr_shape: LRShape | None = None
        # not a Module attribute: the weights (state_dict) stay `model`'s alone
        self.compiled: CompiledOrEager | None = None

    def compile_model(self, mode: str | None = None, backend: str | Any = "inductor") -> None:
        """The steps call the model through `torch.compile`; eager if compiling fails."""
        self.compiled = CompiledOrEager(self.model, mode, backend)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) if self.compiled is None else self.compiled(images)

    def on_fit_start(self) -> None:
        if self.device.type == "cuda" and self.config.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, SegmentationDataModule) and datamodule.gather_on_device:
            train_set = datamodule.train_set  # setup made it, and decided gather_on
            if train_set is None or not isinstance(train_set.base, PreparedDataset):
                raise DermasegError("data.gather_on: device needs a prepared training split")
            split = DeviceSplit(train_set.base, self.device)
            self.batches.split = split
            size = (split.images.nbytes + split.masks.nbytes) / 2**30
            rank_zero_info(f"data.gather_on: the {len(split.images)} training images are on "
                           f"{self.device} ({size:.2f} GiB); the loader yields indices alone")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches: draw each sample's augmentation parameters (CPU) when the
        augmentation runs on the device (`TrainingBatches.before_transfer`)."""
        if self.trainer is None or not self.trainer.training:
            return batch
        epoch, seed = self.current_epoch, self.config.train.seed
        return self.batches.before_transfer(
            batch, lambda indices: [sample_seed(seed, epoch, i) for i in indices])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the device: gather (split on the device), augment, channels_last, normalise."""
        return self.batches.after_transfer(batch, self.device)

    def on_train_start(self) -> None:
        self._warmup_plateau()  # epoch 0 starts at the first warm-up LR, not the full one
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if torch.cuda.is_available() and len(self._rng_to_restore.get("cuda", [])):
                torch.cuda.set_rng_state_all(list(self._rng_to_restore["cuda"]))
            self._rng_to_restore = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._warmup_plateau()
        if self._lr_shape is not None and self.config.optim.anneal_by_time:
            budget = next((cb for cb in trainer_callbacks(self.trainer)
                           if isinstance(cb, TimeBudget)), None)
            if budget is not None:
                spent = budget.fraction_spent()
                if self.trainer.world_size > 1:  # one LR on every process: rank 0's clock
                    spent = self.trainer.strategy.broadcast(spent)
                self._lr_shape.time_progress = spent

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._warmup_plateau()  # the next step's LR: what the next epoch's start records

    def training_step(self, batch, batch_idx: int):
        images, masks, indices = batch
        total, parts = self.criterion(self(images), masks)
        if self.guard.should_skip(total, parts, self.trainer, batch_idx,
                                  lambda: self._names(indices)):
            return None  # Lightning skips backward and the optimiser step
        # the weight made on the device: a number would be copied there, and wait for it
        weight = torch.full((), float(images.shape[0]), device=total.device)
        self.train_loss_avg.update(total.detach(), weight=weight)
        # not prog_bar: Lightning would read it on the host at every step (a sync); the bar
        # shows it through progress_lines.TimedLossBar
        self.log("loss", total.detach(), on_step=True, on_epoch=False, logger=False,
                 batch_size=images.shape[0])
        return total

    def validation_step(self, batch, batch_idx: int) -> None:
        images, masks, _ = batch
        logits = self(images)
        loss, _ = self.val_criterion(logits, masks)
        self.val_metrics.update(logits, masks)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, logger=False,
                 batch_size=images.shape[0])

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()  # reduced over processes by torchmetrics
        self.val_metrics.reset()
        for name, value in values.items():  # the same on every process: sync is a no-op mean
            self.log(f"val_{LOG_NAMES.get(name, name)}", value.float(),
                     prog_bar=name == "dice", sync_dist=True, logger=False)

    def pop_train_loss(self) -> float:
        """Mean training loss since the last call (over every process), then start afresh."""
        value = float(self.train_loss_avg.compute()) if self.train_loss_avg.update_count else \
            math.nan
        self.train_loss_avg.reset()
        return value

    def _names(self, indices: torch.Tensor) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "describe"):
            return datamodule.describe(indices.tolist())
        return [str(i) for i in indices.tolist()]

    def _warmup_plateau(self) -> None:
        """Linear LR warm-up for the plateau schedule (the others warm up in their lambda)."""
        optim = self.config.optim
        if optim.scheduler != "plateau" or optim.warmup_epochs <= 0:
            return
        warmup = optim.warmup_epochs * self.trainer.num_training_batches
        if self.global_step >= warmup:
            return
        for group in self.trainer.optimizers[0].param_groups:
            # a plateau cut since the last step lowers the LR the warm-up climbs to (the keys
            # travel in the optimizer's state: a resumed run goes on the same)
            target = group.get("warmup_target", optim.lr)
            if "warmup_lr" in group and group["lr"] < group["warmup_lr"]:
                target *= group["lr"] / group["warmup_lr"]
            group["warmup_target"] = target
            group["lr"] = group["warmup_lr"] = target * (self.global_step + 1) / warmup

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer = build_optimizer(optim, self.model)
        if optim.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=optim.plateau_factor,
                patience=optim.plateau_patience)
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": scheduler, "monitor": "val_loss", "interval": "epoch",
                "frequency": self.config.train.val_every}}
        total = self._total_steps()
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        shape = lr_shape(optim.scheduler, total, round(optim.warmup_epochs * per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
        self._lr_shape = shape
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        """Optimiser steps of the whole run, for the cosine/poly schedule.

        Counted from the dataset, not with `trainer.estimated_stepping_batches`: that builds
        the training loader before a resumed run's progress is restored, and Lightning keeps
        that loader, which then would not skip the batches the run already trained on.
        """
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, SegmentationDataModule):  # plain loaders given to fit()
            return max(1, int(trainer.estimated_stepping_batches))
        batches = datamodule.batches_per_epoch(trainer.world_size)
        steps = math.ceil(batches / trainer.accumulate_grad_batches) * (trainer.max_epochs or 1)
        return max(1, steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dermaseg"] = ModelMeta.from_config(self.config).to_dict()
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng"] = rng
        checkpoint.pop("hyper_parameters", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng")


def build_optimizer(optim: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser `optim` names (adam | adamw | sgd with Nesterov momentum 0.9) over the
    model's parameter groups (`param_groups()` when it has them)."""
    groups = getattr(model, "param_groups", None)  # also through torch.compile's wrapper
    params = groups() if groups is not None else model.parameters()
    # On a GPU, one fused kernel per step instead of several per parameter group.
    fused: dict[str, Any] = {"fused": True} if next(model.parameters()).is_cuda else {}
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay, **fused)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, **fused)
    return torch.optim.SGD(params, lr=optim.lr, momentum=0.9, nesterov=True,
                           weight_decay=optim.weight_decay)


class LRShape:
    """LR multiplier at optimiser step `step`: linear warm-up, then cosine/poly/constant."""

    def __init__(self, kind: str, total: int, warmup: int) -> None:
        self.kind, self.total, self.warmup = kind, total, warmup
        self.time_progress = 0.0  # fraction of the time budget spent (optim.anneal_by_time)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        progress = min(1.0, max(progress, self.time_progress))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "poly":
            return (1.0 - progress) ** 0.9
        return 1.0


def lr_shape(kind: str, total: int, warmup: int) -> LRShape:
    return LRShape(kind, total, warmup)


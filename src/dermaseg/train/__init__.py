"""Training: LightningModule, data module, callbacks and the `train()` runner."""

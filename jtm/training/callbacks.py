"""Small Lightning callbacks shared by the training modules."""
from __future__ import annotations

import lightning.pytorch as pl


class SetEpoch(pl.Callback):
    """Tell iterable datasets which epoch starts, so shuffles and random window offsets change per epoch.

    Lightning only calls ``set_epoch`` on samplers; our window loaders are iterable datasets.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)

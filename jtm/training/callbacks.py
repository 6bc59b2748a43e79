"""Small Lightning callbacks shared by the training modules."""
from __future__ import annotations

import time

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader


class SetEpoch(pl.Callback):
    """Tell the window loader which epoch starts, and where in it a resumed run picks up.

    Lightning only calls ``set_epoch`` on samplers; our window loaders are iterable datasets. When a run
    resumes from a mid-epoch checkpoint, Lightning neither calls ``on_train_epoch_start`` for that epoch nor
    replays its finished batches: it runs only the remaining ones. So at ``on_train_start`` (after the loop
    state is restored, before the first batch is drawn) the loader is put on the right epoch and told to skip
    the batches already trained on; otherwise the epoch's first batches would be seen twice and its last
    ones never.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = _window_dataset(trainer)
        if dataset is None:
            return
        dataset.set_epoch(trainer.current_epoch)
        epoch_loop = trainer.fit_loop.epoch_loop
        # `processed` counts the batches whose optimiser step is in the checkpoint (one written in
        # on_train_batch_end has not yet marked its batch `completed`). A checkpoint written at the end of an
        # epoch restarts at the next epoch's beginning, which on_train_epoch_start handles.
        done = epoch_loop.batch_progress.current.processed if epoch_loop.restarting else 0
        if 0 < done < len(dataset):
            if trainer.is_global_zero:
                print(f"resuming epoch {trainer.current_epoch} after batch {done} of {len(dataset)}")
            dataset.skip_batches(done)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = _window_dataset(trainer)
        if dataset is not None:
            dataset.set_epoch(trainer.current_epoch)


def _window_dataset(trainer: pl.Trainer):
    dataset = getattr(trainer.train_dataloader, "dataset", None)
    return dataset if hasattr(dataset, "set_epoch") and hasattr(dataset, "skip_batches") else None


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable: its position is restored by :class:`SetEpoch`.

    The window loader is a deterministic function of (seed, epoch), so the only state worth saving is the
    epoch, which Lightning's own loop state already holds; this class exists so that Lightning knows the
    mid-epoch position is handled and does not warn about unreliable resumption.
    """

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.dataset, "epoch", 0))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(state.get("epoch", 0))


class StepTimer(pl.Callback):
    """Where a run's wall time goes: inside the training steps, or around them (loader, logging, validation,
    checkpoints). ``summary()`` gives the figures ``metrics.json`` records under ``time/``.

    A step is timed from ``on_train_batch_start`` to ``on_train_batch_end``: forward, loss, backward and the
    optimiser step. Everything else between ``on_fit_start`` and ``on_fit_end`` counts as outside the step; of it,
    the validation loops are timed on their own (``time/validation_seconds``).
    The median step after the first ``warmup`` (``time/median_step_seconds``) is what an isolated benchmark of
    the step measures; the first steps pay one-off costs (oneDNN kernels, first allocations) that a short run
    cannot amortise.
    """

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup
        self.windows = 0
        self.step_seconds = 0.0
        self.durations: list[float] = []
        self.fit_seconds = 0.0
        self.validation_seconds = 0.0
        self._fit_start = self._step_start = self._validation_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        took = time.perf_counter() - self._step_start
        self.step_seconds += took
        self.durations.append(took)
        audio = batch.get("audio") if isinstance(batch, dict) else None
        self.windows += int(audio.shape[0]) if audio is not None else 0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validation_seconds += time.perf_counter() - self._validation_start

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start

    def summary(self) -> dict[str, float]:
        """Seconds in and around the steps of this start of the run (a resumed run counts only its own)."""
        outside = max(0.0, self.fit_seconds - self.step_seconds)
        warm = self.durations[self.warmup:] or self.durations
        median = float(np.median(warm)) if warm else 0.0
        return {
            "time/steps": float(len(self.durations)),
            "time/fit_seconds": round(self.fit_seconds, 3),
            "time/step_seconds": round(self.step_seconds, 3),
            "time/outside_step_seconds": round(outside, 3),
            "time/validation_seconds": round(self.validation_seconds, 3),
            "time/windows_per_second": round(self.windows / self.fit_seconds, 3) if self.fit_seconds else 0.0,
            "time/step_windows_per_second": round(self.windows / self.step_seconds, 3) if self.step_seconds else 0.0,
            "time/median_step_seconds": round(median, 4),
            "time/first_step_seconds": round(self.durations[0], 4) if self.durations else 0.0,
        }

"""CPC pretraining with Lightning: binds ``jtm.models`` (pure torch) to ``jtm.data`` (windows from a store).

Outputs of a run folder ``RUN``:
    RUN/run.json               the full configuration (a re-run with the same ``--out`` must match it)
    RUN/checkpoints/*.ckpt     resume checkpoints (every epoch, ``last.ckpt``, optionally every N steps)
    RUN/logs/tensorboard/      TensorBoard events: loss and accuracy per prediction step, train and validation
    RUN/logs/csv/version_N/    the same as CSV, one version per start (see ``jtm.training.logs.read_metrics``)
    RUN/encoder/               the trained encoder as model.safetensors + config.json
    RUN/metrics.json           final per-step loss and accuracy
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from jtm.allocator import retain_freed_memory
from jtm.data.store import Store
from jtm.data.views import VIEWS, RenderingViews
from jtm.data.windows import WindowBatches, split_tracks
from jtm.errors import JTMError
from jtm.fileio import disk_full_errors, folder_lock, load_json, write_json_atomic
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder, CPCLoss, sample_negatives
from jtm.training.callbacks import ResumableLoader, SetEpoch, StepTimer
from jtm.training.config import PretrainConfig, resolve_precision  # torch-free, so the CLI reads its defaults
from jtm.training.harness import (CHECKPOINTS, KeepsRNGState, check_run_folder, epoch_checkpoints, fit,
                                  logged_metrics, make_trainer, start_process)
from jtm.workers import is_first_process


class CPCPretrainModule(KeepsRNGState, pl.LightningModule):
    """CPC training step: encode windows, predict K future frames, InfoNCE against in-batch negatives."""

    def __init__(self, model: dict[str, Any], lr: float, beta1: float, beta2: float, eps: float,
                 schedule_step: int, ramp_epochs: int, seed: int) -> None:
        super().__init__()
        # Plain dicts and numbers only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.config = CPCConfig.from_dict(model)
        self.encoder = CPCEncoder(self.config)
        self.criterion = CPCLoss(self.config)
        self._per_k: dict[str, list[torch.Tensor | float]] = {}

    def _negatives_generator(self, stage_offset: int, step: int) -> torch.Generator:
        # Negatives come from a generator keyed by (seed, step, rank) rather than the global RNG, so that a
        # resumed run draws exactly the negatives the uninterrupted run would have drawn.
        seed = (self.hparams.seed * 1_000_003 + stage_offset * 7_919 + step) * 64 + self.global_rank
        return torch.Generator().manual_seed(seed % (2**63))

    @property
    def _shows_progress(self) -> bool:
        """Whether the run has a progress bar: the only reader of the ``*_acc_k1`` values logged for it."""
        return self.trainer.progress_bar_callback is not None

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str, step: int) -> torch.Tensor:
        audio = batch["audio"]
        z, c = self.encoder.cpc_inputs(audio, batch.get("view"))  # z: the targets (config.target, --views)
        batch_size, frames, _ = z.shape
        positions = frames - self.config.predict_steps
        if positions <= 0:
            raise JTMError(
                f"window of {audio.shape[-1]} samples gives {frames} frames, not enough to predict "
                f"{self.config.predict_steps} steps ahead; use a longer --window"
            )
        gen = self._negatives_generator(0 if stage == "train" else 1, step)
        idx = sample_negatives(batch_size, frames, positions, self.config.negatives, generator=gen,
                               negatives_from=self.config.negatives_from).to(z.device)
        out = self.criterion(c, z, negative_idx=idx)
        if stage == "train":
            self.log("train/loss_step", out.loss, on_step=True, on_epoch=False, batch_size=batch_size)
            if self._shows_progress:
                self.log("train_acc_k1", out.acc_per_step[0], prog_bar=True, logger=False, batch_size=batch_size)
        self._accumulate_per_k(stage, out.loss_per_step, out.acc_per_step, batch_size)
        return out.loss

    # Everything but the training loss of each step is summed here and logged once an epoch: the epoch's loss is
    # the mean of its K per-step losses. Each self.log call costs about 0.8 ms (Lightning moves the value's
    # bookkeeping to the device every call): 2K such calls every step were 3 % of the demo's pretraining time
    # (2 epochs: 43.0 against 41.5 windows/s, identical weights), and the 240 left in one demo epoch (two a
    # step) took 0.23 of its 9.8 s under cProfile.
    def _accumulate_per_k(self, stage: str, loss_k: torch.Tensor, acc_k: torch.Tensor, batch_size: int) -> None:
        sums, count = self._per_k.get(stage, [torch.zeros(2, len(loss_k)), 0.0])
        self._per_k[stage] = [sums + torch.stack([loss_k.detach(), acc_k.detach()]).float().cpu() * batch_size,
                              count + batch_size]

    def _log_per_k(self, stage: str, suffix: str) -> None:
        """Log the epoch's batch-weighted means per prediction step as ``{stage}/loss_k{k}{suffix}`` and
        ``{stage}/acc_k{k}{suffix}`` (averaged over processes under DDP)."""
        if stage not in self._per_k:
            return
        sums, count = self._per_k.pop(stage)
        means = sums / count
        metrics = {f"{stage}/{name}_k{k + 1}{suffix}": means[row, k]
                   for row, name in enumerate(("loss", "acc")) for k in range(means.shape[1])}
        metrics[f"{stage}/loss{suffix}"] = means[0].mean()
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)
        if stage == "val" and self._shows_progress:
            self.log("val_acc_k1", means[1, 0], prog_bar=True, logger=False, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self._per_k.pop("train", None)  # a resumed epoch restarts its means

    def on_train_epoch_end(self) -> None:
        self._log_per_k("train", "_epoch")  # the names Lightning gave them when logged every step

    def on_validation_epoch_end(self) -> None:
        self._log_per_k("val", "")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.global_step)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val", batch_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps)
        schedule = lr_factor_schedule(hp.schedule_step, hp.ramp_epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class LRFactor:
    """Learning-rate multiplier per epoch: linear warm-up over ``ramp`` epochs, halved every ``step`` epochs.

    A class rather than a closure so the scheduler's state stays picklable-free (plain numbers) in checkpoints.
    """

    def __init__(self, step: int, ramp: int) -> None:
        self.step, self.ramp = step, ramp

    def __call__(self, epoch: int) -> float:
        factor = min(1.0, (epoch + 1) / self.ramp) if self.ramp > 0 else 1.0
        if self.step > 0:
            factor *= 0.5 ** (epoch // self.step)
        return factor


def lr_factor_schedule(step: int, ramp: int) -> LRFactor:
    return LRFactor(step, ramp)


class PretrainData(pl.LightningDataModule):
    """Windows of a prepared store: a seeded hold-out of recordings for validation, the rest for training.

    The loaders are built in :meth:`setup`, when Lightning has set up the processes: under DDP each rank then
    takes its own share of every epoch's batches (see :class:`WindowBatches`). Built any earlier, they would see
    rank 0 of 1 in every process, and every rank would train on every batch.
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.store = Store.open(cfg.data)
        self.train_idx, self.val_idx = split_tracks(self.store, "train", cfg.val_fraction, cfg.seed)
        if cfg.views not in VIEWS:
            raise JTMError(f"views must be one of {', '.join(VIEWS)}, not {cfg.views!r}")
        if cfg.views == "renderings" and cfg.model.target == "z":
            raise JTMError("--views renderings needs --target frontend or cqt: the targets come from another rendering")
        # Checked now (throwaway single-process loaders), so a bad --labels-by or budget fails before any set-up.
        self._windows(self.train_idx, train=True, rank=0, world_size=1)
        if len(self.val_idx):
            self._windows(self.val_idx, train=False, rank=0, world_size=1)
        self.train_windows: WindowBatches | None = None
        self.val_windows: WindowBatches | None = None

    def _windows(self, tracks: Any, train: bool, rank: int | None = None,
                 world_size: int | None = None) -> WindowBatches:
        cfg = self.cfg
        budget = None if cfg.max_memory_gb is None else int(cfg.max_memory_gb * 1024**3)
        return WindowBatches(
            self.store, tracks, window=cfg.window, batch_size=cfg.batch_size,
            sampling=cfg.sampling if train else ("sequential" if cfg.sampling == "sequential" else "uniform"),
            labels_by=cfg.labels_by, max_memory_bytes=budget, seed=cfg.seed if train else cfg.seed + 10_000,
            random_offset=cfg.random_offset and train, drop_last=True, rank=rank, world_size=world_size,
            # Views come from the same split: a validation piece's other renderings are validation recordings.
            views=RenderingViews(self.store, tracks) if cfg.views == "renderings" else None,
        )

    def setup(self, stage: str | None = None) -> None:
        # The trainer's rank and world size are the process group's; without a trainer, WindowBatches asks
        # torch.distributed itself.
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (None, None)
        self.train_windows = self._windows(self.train_idx, train=True, rank=rank, world_size=world)
        self.val_windows = (self._windows(self.val_idx, train=False, rank=rank, world_size=world)
                            if len(self.val_idx) else None)

    def train_dataloader(self) -> DataLoader:
        if self.train_windows is None:
            self.setup("fit")
        windows = self.train_windows
        assert windows is not None
        if len(windows) == 0:
            each = f" for each of {windows.world_size} processes" if windows.world_size > 1 else ""
            raise JTMError(
                f"{self.cfg.data}: no complete training batch of {self.cfg.batch_size} windows of "
                f"{self.cfg.window} samples{each}; use a smaller --batch-size or --window, or more data"
            )
        return ResumableLoader(windows, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader | list:
        if self.train_windows is None:
            self.setup("validate")
        windows = self.val_windows
        return DataLoader(windows, batch_size=None, num_workers=0) if windows is not None and len(windows) else []


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train (or resume) CPC as configured; export the encoder to ``RUN/encoder``; return final metrics.

    The run folder is locked (:func:`jtm.fileio.folder_lock`) by the job's first process: a second run into it is
    refused. A full disk, even in Lightning's own log writers, is a :class:`jtm.fileio.DiskFullError`.
    """
    with folder_lock(cfg.out) if is_first_process() else nullcontext(), disk_full_errors(cfg.out):
        return _run_pretrain(cfg)


def _run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    check_run_folder(cfg)
    retain_freed_memory()  # a step re-uses the last step's pages instead of faulting them in (jtm.allocator)
    start_process(cfg.threads, cfg.seed)
    data = PretrainData(cfg)
    module = CPCPretrainModule(cfg.model.to_dict(), cfg.lr, cfg.beta1, cfg.beta2, cfg.eps,
                               cfg.schedule_step, cfg.ramp_epochs, cfg.seed)
    timer = StepTimer()
    callbacks: list[pl.Callback] = [SetEpoch(), timer, epoch_checkpoints(out, keep=-1)]
    if cfg.checkpoint_every_n_steps:
        # One rolling mid-epoch checkpoint; resumption takes whichever checkpoint is newest.
        callbacks.append(ModelCheckpoint(dirpath=out / CHECKPOINTS, filename="step",
                                         every_n_train_steps=cfg.checkpoint_every_n_steps, save_top_k=1,
                                         save_last=False, enable_version_counter=False))
    trainer = make_trainer(
        out, callbacks, progress=cfg.progress, log_every_n_steps=cfg.log_every_n_steps, max_epochs=cfg.epochs,
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision, cfg.accelerator), limit_train_batches=cfg.limit_train_batches,
        deterministic=False,
    )
    fit(trainer, module, data, out, {"run.json": cfg.to_dict()})

    metrics = logged_metrics(trainer)
    if not metrics and (out / "metrics.json").exists():
        # The checkpoint had already reached --epochs: nothing was trained, the run's results stand.
        if trainer.is_global_zero:
            print(f"{out}: already trained for {cfg.epochs} epochs; nothing to do")
        return load_json(out / "metrics.json")
    metrics.update(timer.summary())
    if trainer.is_global_zero:
        module.encoder.save_pretrained(out / "encoder")
        write_json_atomic(out / "metrics.json", metrics)
    return metrics

"""The run harness shared by pretraining and downstream training: one way to start a process, build the Trainer,
resume, and remember a run folder's configuration.

What every Lightning run of jtm gets from here (``jtm.training.pretrain``, ``jtm.training.downstream``):
    threads      ``torch.set_num_threads(threads or usable_cpus())``: the CPU affinity mask, not ``os.cpu_count()``
    seeding      ``seed_everything(seed, workers=True)`` before the model is built
    run.json     the configuration, refused on a re-run that changed anything but its ``RESUMABLE_CHANGES``
    loggers      ``RUN/logs/tensorboard/`` and ``RUN/logs/csv/version_N/`` (a new CSV version per start)
    checkpoints  ``RUN/checkpoints/``, written atomically (:class:`AtomicCheckpointIO`) with the torch RNG state;
                 a run resumes from the newest one that loads (:func:`find_resume_checkpoint`)
    rank 0       only the first process writes the run's files and prints
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from jtm.fileio import write_json_atomic
from jtm.hardware import usable_cpus
from jtm.training.checkpoints import AtomicCheckpointIO, find_resume_checkpoint
from jtm.training.runs import refuse_changed_config

CHECKPOINTS = "checkpoints"
"""The run folder's resume checkpoints."""

# Warnings Lightning raises on every run that say nothing about this one: the window datasets know their length
# exactly (they are never split across loader workers), and the loaders run in the main process on purpose.
# A frozen front end is in eval mode on purpose (DownstreamModel.train keeps it there), and tiny smoke runs
# have fewer batches than the logging interval.
EXPECTED_WARNINGS = (".*IterableDataset.*has `__len__` defined.*", ".*LeafSpec.*", ".*does not have many workers.*",
                     ".*module\\(s\\) in eval mode at the start of training.*",
                     ".*smaller than the logging interval.*")


class RunConfig(Protocol):
    """What the harness reads of a training configuration (``PretrainConfig``, ``DownstreamConfig``)."""

    out: str
    RESUMABLE_CHANGES: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]: ...


def check_run_folder(cfg: RunConfig) -> dict[str, Any] | None:
    """The run folder's previous ``run.json`` (None for a new folder), after refusing one made with a different
    configuration: a re-run resumes only the same run."""
    return refuse_changed_config(Path(cfg.out) / "run.json", cfg.to_dict(), cfg.RESUMABLE_CHANGES)


def start_process(threads: int | None, seed: int, quiet: bool = False) -> None:
    """Torch threads from the CPU affinity mask (unless ``threads``), Lightning's banners silenced when ``quiet``,
    and every RNG seeded; before anything random (data plans, model initialisation) is built."""
    torch.set_num_threads(threads or usable_cpus())
    if quiet:
        # The study trains dozens of small models; Lightning's per-run banners would drown its progress lines.
        for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)
    pl.seed_everything(seed, workers=True, verbose=False)


def epoch_checkpoints(out: Path, keep: int) -> ModelCheckpoint:
    """Resume checkpoints at every epoch's end, ``epoch{NNN}.ckpt`` (the newest ``keep``; -1: all) and ``last.ckpt``."""
    return ModelCheckpoint(dirpath=out / CHECKPOINTS, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           every_n_epochs=1, save_top_k=keep, save_last=True)


def make_trainer(out: Path, callbacks: list[pl.Callback], *, progress: bool, log_every_n_steps: int,
                 **settings: Any) -> pl.Trainer:
    """A Trainer logging to ``out/logs`` and checkpointing atomically; ``settings`` are the run's own (budget,
    accelerator, devices, strategy, precision, batch limits). The window loaders split batches among processes
    themselves, so Lightning's distributed sampler stays off."""
    return pl.Trainer(
        callbacks=callbacks,
        # A new CSV version per start: Lightning's CSV logger would delete an existing metrics.csv on resume
        # (read the stitched history with jtm.training.logs.read_metrics).
        logger=[TensorBoardLogger(out / "logs", name="tensorboard", version=""), CSVLogger(out / "logs", name="csv")],
        plugins=[AtomicCheckpointIO()], log_every_n_steps=log_every_n_steps, num_sanity_val_steps=0,
        enable_progress_bar=progress, use_distributed_sampler=False, **settings,
    )


def fit(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule, out: Path,
        files: dict[str, Any]) -> None:
    """Write ``files`` (name -> JSON content, ``run.json`` first) into ``out`` from the first process, then train,
    resuming from the newest usable checkpoint in ``out/checkpoints``."""
    if trainer.is_global_zero:
        for name, content in files.items():
            write_json_atomic(out / name, content)
    resume = find_resume_checkpoint(out / CHECKPOINTS)
    if resume is not None and trainer.is_global_zero:
        print(f"resuming from {resume}")
    with warnings.catch_warnings():
        for message in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)


def logged_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The last value of every metric the run logged (``train/...``, ``val/...``), as plain floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}


class KeepsRNGState:
    """Mixin for a LightningModule: its checkpoints carry the global torch RNG state, so that dropout (which draws
    from it) continues after a resume exactly as it would have without the interruption."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])

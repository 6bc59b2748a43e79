"""Downstream training with Lightning: a front end (pretrained CPC, random CPC, log-mel, or CPC from scratch)
plus a linear or MLP probe, on a seeded fraction of the labelled training recordings.

Outputs of a run folder ``RUN`` (see docs/ARCHITECTURE.md, "Downstream runs"):
    RUN/run.json            the configuration (a re-run with the same ``--out`` must match it)
    RUN/splits.json         the store track ids of train (the label subset), train_pool, val and test
    RUN/checkpoints/*.ckpt  resume checkpoints (last epoch and ``last.ckpt``)
    RUN/logs/tensorboard/   TensorBoard events (train/loss, val/loss, and train/acc, val/acc for classification)
    RUN/logs/csv/version_N/ the same as CSV, one version per start (``jtm.training.logs.read_metrics``)
    RUN/model/              the trained model (``DownstreamModel.save_pretrained``), with the frame threshold
                            tuned on the validation recordings for frame tasks: written by
                            ``jtm.pipelines.downstream.run_downstream``, which trains with :func:`train_downstream`

Protocol:
- Validation recordings are a seeded hold-out of the store's training recordings, carved *before* the label
  subset is drawn (``jtm.data.subsets.labelled_splits``), so every ``--label-fraction`` shares them; the test
  recordings are never subsampled. Only labelled recordings take part: for frame tasks those with at least one
  note, for classification those with a value in the column.
- Frame tasks use BCE with one positive weight, ``clip(negatives / positives, 1, max_pos_weight)`` over the
  training recordings' label cells (active notes are rare cells; AP is rank-based and the threshold is tuned
  afterwards, so the weight mainly helps the optimiser). Classification uses cross-entropy, optionally
  weighted by inverse class frequency of the training windows (``class_weights``).
- The frozen front ends (pretrained CPC without ``finetune``, random CPC) run without gradients in eval mode;
  ``finetune`` and ``supervised`` train the front end too, at ``frontend_lr`` (default: lr / 10 when
  fine-tuning a pretrained encoder, lr when training from scratch). The log-mel front end has no trainable
  parameters; its per-band normalisation statistics accumulate during training.
- Budget: ``epochs`` passes over the label subset, or (``steps``) a fixed number of optimizer steps whatever the
  subset's size, validated every ``eval_every`` steps, keeping the checkpoint of lowest validation loss
  (``RUN/best/best.ckpt``). ``jtm study`` goes further: it also picks the learning rate on validation and repeats
  over seeds (``jtm.pipelines.study``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from jtm.data.store import Store
from jtm.data.tasks import TaskData, class_weight_vector, is_frame_task, positive_weight, task_data
from jtm.data.windows import WindowBatches
from jtm.errors import JTMError
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.models.downstream import DownstreamModel, load_frontend_source, read_downstream_config
from jtm.models.logmel import LogMel
from jtm.training.callbacks import SetEpoch
from jtm.training.config import DownstreamConfig  # torch-free, so the CLI reads its defaults
from jtm.training.harness import (KeepsRNGState, check_run_folder, epoch_checkpoints, fit, logged_metrics,
                                  make_trainer, start_process)

class DownstreamData(pl.LightningDataModule):
    """Windows of the label subset for training; windows of the validation recordings for the logged loss.

    The loaders are built when Lightning asks for them, after it has set up the processes, so that under DDP
    each rank takes its own share of the batches (built earlier, every rank would see rank 0 of 1).
    """

    def __init__(self, cfg: DownstreamConfig, store: Store, data: TaskData) -> None:
        super().__init__()
        self.cfg, self.store, self.data = cfg, store, data
        # A throwaway single-process loader, so that a bad budget fails before any Lightning set-up.
        self._windows(data.splits.train, train=True, drop_last=False, rank=0, world_size=1)

    def _windows(self, tracks: np.ndarray, train: bool, drop_last: bool, rank: int | None = None,
                 world_size: int | None = None) -> WindowBatches:
        if rank is None and self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size  # the process group's
        cfg = self.cfg
        budget = None if cfg.max_memory_gb is None else int(cfg.max_memory_gb * 1024**3)
        labels = cfg.task if is_frame_task(cfg.task) else None  # class codes come from TaskData, see the module
        return WindowBatches(
            self.store, tracks, window=cfg.window, batch_size=cfg.batch_size,
            sampling=cfg.sampling if train else "sequential", max_memory_bytes=budget,
            seed=cfg.seed if train else cfg.seed + 10_000, random_offset=train, drop_last=drop_last, labels=labels,
            rank=rank, world_size=world_size,
        )

    def train_dataloader(self) -> DataLoader:
        windows = self._windows(self.data.splits.train, train=True, drop_last=True)
        if len(windows) == 0:
            # A small label subset may hold fewer windows than one batch: train on the partial batch.
            windows = self._windows(self.data.splits.train, train=True, drop_last=False)
        if len(windows) == 0 and windows.plan().batches:
            raise JTMError(
                f"{self.cfg.data}: {len(windows.plan().batches)} training batch(es) for {windows.world_size} "
                f"processes; use fewer --devices or a smaller --batch-size"
            )
        if len(windows) == 0:
            raise JTMError(
                f"{self.cfg.data}: the {len(self.data.splits.train)} training recording(s) of this label fraction "
                f"are all shorter than one window of {self.cfg.window} samples; use a smaller --window"
            )
        return DataLoader(windows, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.data.splits.val) == 0:
            return []
        windows = self._windows(self.data.splits.val, train=False, drop_last=False)
        return DataLoader(windows, batch_size=None, num_workers=0) if len(windows) else []


# ------------------------------------------------------------------------------------------- module


class DownstreamModule(KeepsRNGState, pl.LightningModule):
    """Binds a :class:`DownstreamModel` to its loss and optimiser."""

    def __init__(self, model: DownstreamModel, *, lr: float, frontend_lr: float, weight_decay: float,
                 beta1: float, beta2: float, eps: float, pos_weight: float | None,
                 class_weights: list[float] | None, class_of_track: np.ndarray | None) -> None:
        super().__init__()
        # Plain numbers only in the hyperparameters, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["model", "class_of_track"])
        self.model = model
        self.frame_task = model.is_frame_task
        self.register_buffer("pos_weight_t", torch.tensor(float(pos_weight if pos_weight is not None else 1.0)),
                             persistent=False)
        self.register_buffer("class_weights_t", None if class_weights is None else torch.tensor(class_weights),
                             persistent=False)
        self.register_buffer("class_of_track", None if class_of_track is None else torch.from_numpy(class_of_track),
                             persistent=False)

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self.model(batch["audio"])
        batch_size = batch["audio"].shape[0]
        if self.frame_task:
            target = batch["frames"].to(logits.dtype)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight_t)
            self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                     batch_size=batch_size)
            return loss
        target = self.class_of_track[batch["track"].long()]
        loss = torch.nn.functional.cross_entropy(logits.float(), target, weight=self.class_weights_t)
        acc = (logits.argmax(-1) == target).float().mean()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": acc}, on_step=stage == "train", on_epoch=True,
                      prog_bar=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        groups = [{"params": list(self.model.probe.parameters()), "lr": hp.lr}]
        frontend = [p for p in self.model.frontend.parameters() if p.requires_grad]
        if frontend and not self.model.frozen:
            groups.append({"params": frontend, "lr": hp.frontend_lr})
        return torch.optim.Adam(groups, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay)



# ------------------------------------------------------------------------------------------- running


def resolve_architecture(cfg: DownstreamConfig) -> DownstreamConfig:
    """Fill ``cfg.model`` for ``random``/``supervised`` from ``architecture`` (a run, encoder or file)."""
    if cfg.frontend_kind in ("random", "supervised") and cfg.model is None:
        if cfg.architecture:
            cfg = dataclasses.replace(cfg, model=load_frontend_source(cfg.architecture).config)
        else:
            cfg = dataclasses.replace(cfg, model=CPCConfig())
    return cfg


def build_model(cfg: DownstreamConfig, classes: list[str] | None) -> DownstreamModel:
    """The untrained downstream model (pretrained weights loaded for a pretrained front end)."""
    kind = cfg.frontend_kind
    if kind == "logmel":
        frontend: CPCEncoder | LogMel = LogMel()
    elif kind == "pretrained":
        frontend = load_frontend_source(cfg.encoder)
    else:
        assert cfg.model is not None
        frontend = CPCEncoder(cfg.model)  # random initialisation, seeded by seed_everything
    frozen = kind in ("pretrained", "random") and not cfg.finetune
    model = DownstreamModel.build(cfg.task, frontend, features=cfg.features, probe=cfg.probe, classes=classes,
                                  frozen=frozen, hidden=cfg.hidden, dropout=cfg.probe_dropout)
    # Lightning keeps each module's mode as it finds it: a loaded encoder arrives in eval mode and must train
    # when fine-tuned, a fresh one arrives in train mode and must not when frozen. train() sorts out both.
    return model.train()


def is_finished(out: str | Path) -> bool:
    """A downstream run whose model has been saved (training and threshold tuning done)."""
    return (Path(out) / "model" / "config.json").is_file()


def resolve_config(cfg: DownstreamConfig) -> DownstreamConfig:
    """``cfg`` validated, with an absolute store path and ``model`` filled in for random/supervised front ends."""
    cfg.validate()
    # An absolute store path lets `jtm evaluate` find the store from any working directory.
    return resolve_architecture(dataclasses.replace(cfg, data=str(Path(cfg.data).resolve())))


def finished_summary(cfg: DownstreamConfig) -> dict[str, Any] | None:
    """The summary of a run folder that already holds this run, finished (None when there is training to do),
    after refusing one trained with another configuration. ``cfg`` as :func:`resolve_config` returns it."""
    previous = check_run_folder(cfg)
    finished = previous is not None and (previous.get("epochs"), previous.get("steps")) == (cfg.epochs, cfg.steps)
    if finished and is_finished(cfg.out):
        model_cfg = read_downstream_config(Path(cfg.out) / "model")
        return {"out": str(Path(cfg.out)), "skipped": True, "threshold": model_cfg.get("threshold")}
    return None


def build_module(cfg: DownstreamConfig, model: DownstreamModel, store: Store, data: TaskData) -> DownstreamModule:
    """``model`` bound to its loss (positive or class weights from the training recordings) and optimiser."""
    pos_weight = None
    class_weights = None
    if model.is_frame_task:
        pos_weight = cfg.pos_weight if cfg.pos_weight is not None else positive_weight(
            store, data.splits.train, cfg.task, cfg.max_pos_weight)
    elif cfg.class_weights:
        assert data.class_of_track is not None and data.classes is not None
        class_weights = class_weight_vector(store, data.splits.train, data.class_of_track, len(data.classes),
                                            cfg.window)
    frontend_lr = cfg.frontend_lr if cfg.frontend_lr is not None else (cfg.lr * 0.1 if cfg.finetune else cfg.lr)
    return DownstreamModule(model, lr=cfg.lr, frontend_lr=frontend_lr, weight_decay=cfg.weight_decay,
                            beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, pos_weight=pos_weight,
                            class_weights=class_weights, class_of_track=data.class_of_track)


@dataclasses.dataclass
class TrainedDownstream:
    """A finished training run, before its model is saved: what the pipeline needs to tune and save it."""

    cfg: DownstreamConfig
    store: Store
    data: TaskData
    model: DownstreamModel
    """The trained model (the best checkpoint's weights with ``--steps``), on the CPU in eval mode."""
    is_global_zero: bool
    """Whether this process writes the run's files (always, but under DDP only rank 0)."""
    summary: dict[str, Any]
    """pos_weight, steps, n_train_tracks, n_val_tracks and the last logged metrics."""


def train_downstream(cfg: DownstreamConfig) -> TrainedDownstream:
    """Train (or resume) a downstream run as configured; ``cfg`` as :func:`resolve_config` returns it.

    Writes ``RUN/run.json``, ``RUN/splits.json``, checkpoints and logs; saving ``RUN/model`` (with the frame
    threshold tuned on validation) is the caller's job: ``jtm.pipelines.downstream.run_downstream``.
    """
    out = Path(cfg.out)
    start_process(cfg.threads, cfg.seed, quiet=not cfg.progress)
    store = Store.open(cfg.data)
    data = task_data(store, cfg.task, cfg.label_fraction, cfg.seed, cfg.val_fraction, cfg.subset_seed)
    model = build_model(cfg, data.classes)
    module = build_module(cfg, model, store, data)
    callbacks: list[pl.Callback] = [SetEpoch(), epoch_checkpoints(out, keep=1)]
    budget: dict[str, Any] = {"max_epochs": cfg.epochs}
    best = None
    if cfg.steps:
        # Validation every eval_every steps across epoch boundaries; the best checkpoint lives apart from the
        # resume checkpoints so that resumption never mistakes it for the newest state.
        budget = {"max_steps": cfg.steps, "max_epochs": -1, "val_check_interval": cfg.eval_every,
                  "check_val_every_n_epoch": None}
        if len(data.splits.val):
            best = ModelCheckpoint(dirpath=out / "best", filename="best", monitor="val/loss", mode="min",
                                   save_top_k=1, enable_version_counter=False)
            callbacks.append(best)
    trainer = make_trainer(
        out, callbacks, progress=cfg.progress, log_every_n_steps=cfg.log_every_n_steps, **budget,
        accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, precision=cfg.precision,
        enable_model_summary=cfg.progress, limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
    )
    ids = store.tracks["id"].astype(str).to_numpy()
    splits = {k: ids[getattr(data.splits, k)].tolist() for k in ("train", "train_pool", "val", "test")}
    fit(trainer, module, DownstreamData(cfg, store, data), out, {"run.json": cfg.to_dict(), "splits.json": splits})

    if best is not None and best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    summary = {"pos_weight": module.hparams.pos_weight, "steps": int(trainer.global_step),
               "n_train_tracks": int(len(data.splits.train)), "n_val_tracks": int(len(data.splits.val)),
               **logged_metrics(trainer)}
    return TrainedDownstream(cfg, store, data, module.model.cpu().eval(), trainer.is_global_zero, summary)

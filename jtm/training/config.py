"""The configurations of a pretraining run and a downstream run, each saved as ``RUN/run.json``.

Torch-free (unlike the training modules that use them), so the command line takes its option defaults from these
dataclasses without importing Lightning. ``jtm.training.pretrain`` and ``jtm.training.downstream`` re-export them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jtm.audio import HOP
from jtm.configs import (MAX_WIDTH, MAX_WINDOW, batch_size_field, bounded, check_bounds, count_field, load_config,
                         window_field)
from jtm.errors import JTMError
from jtm.models.config import FEATURE_LAYERS, CPCConfig

# Settings both kinds of run share (Adam's own defaults, Lightning's precision, the validation hold-out).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
PRECISION = "32-true"
EPOCHS = 10
VAL_FRACTION = 0.1
LOG_EVERY_N_STEPS = 10

PROBES = ("linear", "mlp")
ENCODER_KINDS = ("random", "logmel", "supervised")
"""Front ends named by keyword; any other ``encoder`` value is a path to a pretrained encoder."""


_Config = TypeVar("_Config", bound="_RunConfig")


class _RunConfig:
    """What both run configurations do alike: check their bounds when built, and become ``run.json``."""

    model: CPCConfig | None

    def __post_init__(self) -> None:
        check_bounds(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]  (every subclass is a dataclass)
        d["model"] = None if self.model is None else self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls: type[_Config], d: dict[str, Any], source: str | Path = "run.json") -> _Config:
        """Strictly, as :func:`jtm.configs.load_config`: an unknown key in a ``run.json`` is an error, a missing
        one takes its default (a pretraining ``run.json`` without ``model`` gets the default model)."""
        return load_config(cls, d, str(source))


@dataclass
class PretrainConfig(_RunConfig):
    """Everything a pretraining run depends on; saved as ``RUN/run.json``."""

    data: str
    out: str
    model: CPCConfig = field(default_factory=CPCConfig)
    window: int = window_field()
    batch_size: int = batch_size_field()
    epochs: int = count_field(EPOCHS)
    lr: float = 2e-4
    beta1: float = BETA1
    beta2: float = BETA2
    eps: float = EPS
    schedule_step: int = count_field(0, low=0)
    """Halve the learning rate every this many epochs (0: never)."""
    ramp_epochs: int = count_field(0, low=0)
    """Linear warm-up of the learning rate over this many epochs (0: none)."""
    sampling: str = "samesequence"
    """Where a batch's windows, hence the negatives, come from. One recording per batch (CPC_audio's samesequence)
    by default: negatives from other pieces can be told apart by timbre alone, same-piece ones need finer features."""
    labels_by: str | None = None
    views: str = "same"
    """``same``: CPC's targets come from the window itself. ``renderings``: from the same samples of another
    rendering of the piece (:mod:`jtm.data.views`; needs a corpus rendered more than once and
    ``model.target='frontend'``), so c must predict what the renderings share."""
    max_memory_gb: float | None = None
    val_fraction: float = bounded(VAL_FRACTION, 0.0, 1.0)
    random_offset: bool = True
    seed: int = 0
    precision: str = "auto"
    """Lightning precision. ``auto``: bf16 autocast (``bf16-mixed``) on a CPU with native bf16 (avx512_bf16 or
    AMX: 1.4-2.5x faster steps here, same loss within bf16 rounding), else ``32-true``. See resolve_precision."""
    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = bounded(1, 1, 4096)
    strategy: str = "auto"
    checkpoint_every_n_steps: int | None = count_field(None)
    limit_train_batches: int | float | None = count_field(None, low=0)
    log_every_n_steps: int = count_field(LOG_EVERY_N_STEPS)
    threads: int | None = bounded(None, 1, 4096)
    progress: bool = True

    # Settings that may change between a run and its resumption without changing what is trained.
    RESUMABLE_CHANGES = ("epochs", "progress", "threads", "devices", "num_nodes", "strategy", "accelerator",
                         "limit_train_batches", "log_every_n_steps", "checkpoint_every_n_steps", "data")


@dataclass
class DownstreamConfig(_RunConfig):
    """Everything a downstream run depends on; saved as ``RUN/run.json``."""

    data: str
    out: str
    task: str = "transcription"
    encoder: str = "random"
    """A pretrained run / ``encoder/`` folder / encoder file, or ``random``, ``logmel``, ``supervised``."""
    architecture: str | None = None
    """For ``random``/``supervised``: a run (or encoder) whose CPCConfig to copy; else ``model`` or defaults."""
    model: CPCConfig | None = None
    """The CPC architecture for ``random``/``supervised`` (filled in from ``architecture`` when given)."""
    probe: str = "linear"
    hidden: int = bounded(512, 1, MAX_WIDTH)
    """Hidden units of the MLP probe."""
    probe_dropout: float = bounded(0.1, 0.0, 0.99)
    finetune: bool = False
    features: str = "context"
    label_fraction: float = 1.0
    subset_seed: int | None = None
    """Seed of the label subset alone (None: ``seed``); a study's repeats share the hold-out, not the subset."""
    val_fraction: float = bounded(VAL_FRACTION, 0.0, 1.0)
    window: int = window_field()
    batch_size: int = batch_size_field()
    epochs: int = count_field(EPOCHS)
    steps: int | None = count_field(None)
    """Train for this many optimizer steps instead of ``epochs``: the same budget at every label fraction (with
    epochs, 10 % of the recordings would also mean 10 % of the steps)."""
    eval_every: int = count_field(50)
    """With ``steps``: validate every this many steps and keep the checkpoint of lowest validation loss."""
    lr: float = 1e-3
    frontend_lr: float | None = None
    weight_decay: float = 0.0
    beta1: float = BETA1
    beta2: float = BETA2
    eps: float = EPS
    class_weights: bool = False
    pos_weight: float | None = None
    """BCE positive weight for frame tasks; None computes it from the training labels."""
    max_pos_weight: float = 100.0
    sampling: str = "uniform"
    max_memory_gb: float | None = None
    seed: int = 0
    precision: str = PRECISION
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    limit_train_batches: int | float | None = count_field(None, low=0)
    limit_val_batches: int | float | None = count_field(None, low=0)
    log_every_n_steps: int = count_field(LOG_EVERY_N_STEPS)
    eval_context_frames: int | None = bounded(None, 0, MAX_WINDOW // HOP)
    """Context frames on each side of a chunk when predicting whole recordings (None: window frames // 8)."""
    tune_max_seconds: float | None = None
    """Use at most this many seconds of each validation recording to tune the threshold (None: all)."""
    threads: int | None = bounded(None, 1, 4096)
    progress: bool = True

    # Settings that may change between a run and its resumption without changing what is trained.
    RESUMABLE_CHANGES = ("epochs", "progress", "threads", "devices", "strategy", "accelerator", "data",
                         "limit_val_batches", "log_every_n_steps", "tune_max_seconds", "eval_context_frames")

    @property
    def context_frames(self) -> int:
        frames = self.window // HOP
        ctx = frames // 8 if self.eval_context_frames is None else int(self.eval_context_frames)
        return max(0, min(ctx, (frames - 1) // 2))

    @property
    def frontend_kind(self) -> str:
        """'pretrained', 'random', 'logmel' or 'supervised'."""
        return self.encoder if self.encoder in ENCODER_KINDS else "pretrained"

    def validate(self) -> None:

        if self.probe not in PROBES:
            raise JTMError(f"--probe must be one of {', '.join(PROBES)}, not {self.probe!r}")
        if self.features not in FEATURE_LAYERS:
            raise JTMError(f"--features must be one of {', '.join(FEATURE_LAYERS)}, not {self.features!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise JTMError(f"--label-fraction must lie in (0, 1], not {self.label_fraction}")
        if self.finetune and self.frontend_kind != "pretrained":
            raise JTMError(f"--finetune needs a pretrained encoder; {self.encoder!r} is "
                           + ("trained from scratch anyway" if self.encoder == "supervised" else "a fixed baseline"))
        if self.window % HOP:
            raise JTMError(f"--window ({self.window}) must be a multiple of {HOP} samples (one label frame)")


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning's precision for a run: ``auto`` becomes ``bf16-mixed`` on a CPU with native bf16, else ``32-true``."""
    if precision != "auto":
        return precision
    from jtm.hardware import cpu_has_bf16

    return "bf16-mixed" if accelerator == "cpu" and cpu_has_bf16() else "32-true"

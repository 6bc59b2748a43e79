"""The study's configuration and arms, importable without torch (the CLI reads its defaults from here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jtm.audio import HOP
from jtm.configs import (MAX_WIDTH, batch_size_field, bounded, check_bounds, count_field, load_config,
                         window_field)
from jtm.data.augment import AUGMENTATIONS, EQConfig
from jtm.errors import JTMError
from jtm.models.config import FEATURE_LAYERS


@dataclass(frozen=True)
class Method:
    """A study arm: which front end, which probe, fine-tuned or not."""

    encoder: str  # 'pretrained', 'random', 'logmel', 'cqt' (the gabor log spectrum at its constant-Q start) or
                  # 'supervised'
    probe: str
    finetune: bool = False
    head: str = "frames"  # note arms: 'frames' (NoteHead) or 'harmonic' (HarmonicNoteHead, the cqt spectrum only)

    @property
    def trains_encoder(self) -> bool:
        return self.finetune or self.encoder == "supervised"

    def runs_on(self, task: str) -> bool:
        """Note-head arms run only on the notes task, which runs only arms on frozen features."""
        if task == NOTE_TASK:
            return not self.trains_encoder
        return self.probe != "note"


SPECTRAL_ENCODERS = ("logmel", "cqt")
"""Front ends whose features are a log spectrum over frequency: the arms ``--augment eq`` can filter."""

NOTE_TASK = "notes"
"""Transcription scored as notes: frame F1, note F1 with and without offsets (``jtm.pipelines.study``)."""


METHODS: dict[str, Method] = {
    "random-linear": Method("random", "linear"),
    "logmel-linear": Method("logmel", "linear"),
    "logmel-mlp": Method("logmel", "mlp"),
    "cqt-linear": Method("cqt", "linear"),
    "cpc-linear": Method("pretrained", "linear"),
    "cpc-mlp": Method("pretrained", "mlp"),
    "cpc-finetune": Method("pretrained", "linear", finetune=True),
    "supervised": Method("supervised", "linear"),
    "random-note": Method("random", "note"),
    "logmel-note": Method("logmel", "note"),
    "cpc-note": Method("pretrained", "note"),
    "cqt-note": Method("cqt", "note"),
    "cqt-harmonic": Method("cqt", "note", head="harmonic"),
}


@dataclass
class StudyConfig:
    """Everything a study depends on; saved as ``DIR/study.json``."""

    data: str
    out: str
    pretrained: str | None = None
    """A CPC pretraining run (or encoder/): probed, fine-tuned, and the architecture of random/supervised."""
    tasks: tuple[str, ...] = ("transcription",)
    fractions: tuple[float, ...] = (0.1, 1.0)
    methods: tuple[str, ...] = tuple(METHODS)
    skip: tuple[str, ...] = ()
    """``task/method`` pairs left out, e.g. ``ensemble/supervised`` (the costly arm of a secondary task)."""
    seeds: int = bounded(3, 1, 1000)
    seed: int = 0
    """Base seed: the validation hold-out; repeat k uses seed + k for its subset, initialisation and order."""
    steps: int = count_field(300)
    eval_every: int = count_field(50)
    patience: int = count_field(3, low=0)
    probe_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    """Learning-rate grid of the probes on frozen features."""
    encoder_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    """Learning-rate grid of the arms that train an encoder (fine-tuning: the encoder runs at a tenth)."""
    batch_size: int = batch_size_field()
    window: int = window_field()
    features: str = "context"
    """CPC layer the frozen probes read: context, encoder, or both (concatenated)."""
    hidden: int = bounded(512, 1, MAX_WIDTH)
    dropout: float = bounded(0.2, 0.0, 0.99)
    val_fraction: float = bounded(0.15, 0.0, 1.0)
    max_val_seconds: float | None = 20.0
    """Seconds of each validation recording scored for selection and the threshold (None: all)."""
    max_eval_seconds: float | None = None
    """Seconds of each test recording scored (None: all)."""
    threads: int | None = bounded(None, 1, 4096)
    augment: str | None = None
    """Timbre augmentation of the training crops of the spectral arms (logmel-*, cqt-*): ``eq``, a random smooth
    equaliser per crop (:mod:`jtm.data.augment`); None: none."""
    augment_db: float | None = bounded(None, 0.0, 60.0)
    """Strength of ``eq``: its overall gain ranges over +-this many dB, the rest in proportion (None: 6 dB)."""

    MACHINE_KEYS = ("threads", "out", "data")

    def __post_init__(self) -> None:
        check_bounds(self)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path = "study.json") -> "StudyConfig":
        """Strictly, as :func:`jtm.configs.load_config` (JSON lists become the tuples)."""
        return load_config(cls, d, str(source))

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise JTMError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if self.pretrained is None and any(METHODS[m].encoder == "pretrained" for m in self.methods):
            needs = [m for m in self.methods if METHODS[m].encoder == "pretrained"]
            raise JTMError(f"methods {', '.join(needs)} need --pretrained RUN (a CPC pretraining run or its encoder/)")
        if not self.tasks:
            raise JTMError("no task given")
        pairs = {f"{t}/{m}" for t in self.tasks for m in self.methods}
        stray = [p for p in self.skip if p not in pairs]
        if stray:
            raise JTMError(f"--skip {', '.join(stray)}: not a task/method pair of this study "
                           f"({', '.join(sorted(pairs))})")
        idle = [t for t in self.tasks if not any(METHODS[m].runs_on(t) for m in self.methods)]
        if idle:
            raise JTMError(f"no method of this study runs on task(s) {', '.join(idle)} (the {NOTE_TASK} task takes "
                           "the arms on frozen features, e.g. cpc-note; the *-note arms run only on it)")
        for f in self.fractions:
            if not 0.0 < float(f) <= 1.0:
                raise JTMError(f"label fractions must lie in (0, 1], got {f}")
        if not self.probe_lrs or not self.encoder_lrs or min(self.probe_lrs + self.encoder_lrs) <= 0:
            raise JTMError("learning-rate grids must be non-empty and positive")
        if self.features not in FEATURE_LAYERS:
            raise JTMError(f"--features must be one of {', '.join(FEATURE_LAYERS)}, not {self.features!r}")
        if self.window % HOP:
            raise JTMError(f"--window ({self.window}) must be a multiple of {HOP} samples")
        self._validate_augment()

    def _validate_augment(self) -> None:
        if self.augment is None:
            if self.augment_db is not None:
                raise JTMError("--augment-db sets the strength of --augment eq; give --augment eq too")
            return
        if self.augment not in AUGMENTATIONS:
            raise JTMError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, not {self.augment!r}")
        others = [m for m in self.methods if METHODS[m].encoder not in SPECTRAL_ENCODERS or METHODS[m].trains_encoder]
        if others:
            raise JTMError(f"--augment {self.augment} filters log spectra, so it applies only to the "
                           f"{'/'.join(SPECTRAL_ENCODERS)} arms; {', '.join(others)} read no spectrum: run them in "
                           "a study without --augment")

    @property
    def eq(self) -> EQConfig | None:
        """The random equaliser of the spectral arms' training crops (None without ``--augment eq``)."""
        if self.augment is None:
            return None
        return EQConfig() if self.augment_db is None else EQConfig.of_strength(self.augment_db)

    def cells(self) -> list[tuple[str, str, float]]:
        """(task, method, fraction) of every cell, in the order they run."""
        return [(t, m, float(f)) for t in self.tasks for m in self.methods for f in sorted(self.fractions)
                if f"{t}/{m}" not in self.skip and METHODS[m].runs_on(t)]

    @property
    def budget(self):
        """The step budget and selection rule of every run (a :class:`jtm.training.selection.Budget`)."""
        from jtm.training.selection import Budget

        return Budget(self.steps, self.eval_every, self.patience)

    def cell_config(self, task: str, method: str, fraction: float, repeat: int) -> dict[str, Any]:
        """What one cell's result depends on (compared on a re-run)."""
        spec = METHODS[method]
        lrs = self.encoder_lrs if spec.trains_encoder else self.probe_lrs
        keep = ("pretrained", "seed", "steps", "eval_every", "patience", "batch_size", "window", "val_fraction",
                "max_val_seconds", "max_eval_seconds")
        d = {k: getattr(self, k) for k in keep}
        if spec.probe == "mlp":
            d.update(hidden=self.hidden, dropout=self.dropout)
        if spec.encoder in ("pretrained", "random") and not spec.trains_encoder:
            d["features"] = self.features
        if self.eq is not None:  # absent without augmentation, so the cells of earlier studies stay reusable
            d["augment"] = {"kind": self.augment, **self.eq.to_dict()}
        return {"task": task, "method": method, "fraction": float(fraction), "repeat": repeat,
                "lrs": list(lrs), **d}

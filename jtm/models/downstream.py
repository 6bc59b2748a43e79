"""Downstream models: a front end (CPC encoder or log-mel) followed by a probe, and their files.

``DownstreamModel.forward(wave (B, T)) -> logits``: (B, F, n_out) for frame tasks (transcription: 128 pitches;
pitch-instrument: 11 x 128 = 1408, instrument-major ``i * 128 + p``), (B, n_out) for classification (the probe
mean-pools the F frames). F = T // 160 for every front end.

Files (``save_pretrained`` / ``from_pretrained``, never pickle): ``model.safetensors`` with keys prefixed
``frontend.`` and ``probe.``, and ``config.json``::

    {"format": "jtm-downstream", "version": 1, "task": ..., "frontend": {"kind": "cpc"|"logmel", "config": {...}},
     "features": "context"|"encoder", "probe": {"kind": "linear"|"mlp", "in_dim": D, "n_out": N, "pool": bool,
     ...mlp options}, "classes": [...] | null, "threshold": float | null}

Also here: the single-file encoder checkpoint of the original command line (``logs/checkpoint<N>.pt``): a
safetensors file of CPC encoder weights whose metadata holds the :class:`CPCConfig` as JSON, and
:func:`load_frontend_source`, which turns any way of naming a pretrained encoder into a ``CPCEncoder``.
"""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import MISSING, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from jtm.audio import HOP
from jtm.data.instruments import INSTRUMENT_PROGRAMS, N_PITCHES
from jtm.data.tasks import is_frame_task
from jtm.configs import MAX_OUTPUTS, MAX_WIDTH, ConfigError, bounded, check_bounds, load_config
from jtm.errors import ModelFileError
from jtm.fileio import atomic_path, write_json_atomic
from jtm.models.config import FEATURE_LAYERS, CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.models.inference import Chunking, run_array
from jtm.models.logmel import LogMel, LogMelConfig
from jtm.models.pretrained import (CONFIG_NAME, WEIGHTS_NAME, load_weights_into, read_config_json,
                                   read_pretrained_weights)
from jtm.models.probes import build_probe

DOWNSTREAM_FORMAT = "jtm-downstream"
DOWNSTREAM_VERSION = 1
ENCODER_FILE_FORMAT = "jtm-cpc-encoder-file"



def task_outputs(task: str, classes: Sequence[str] | None = None) -> int:
    """Output units of ``task``: 128, 11 * 128, or the number of classes."""
    if task == "transcription":
        return N_PITCHES
    if task == "pitch-instrument":
        return len(INSTRUMENT_PROGRAMS) * N_PITCHES
    if not classes:
        raise ValueError(f"classification task {task!r} needs its class names")
    return len(classes)


# ------------------------------------------------------------------------------------------- the model


class DownstreamModel(nn.Module):
    """Front end + probe.

    ``frozen``: the front end is run without gradients and kept in eval mode (a linear/MLP probe on fixed
    features); otherwise it trains with the probe (fine-tuning, or training from scratch). Freezing is a
    property of how the model is trained, not of the saved model, so it is not written to ``config.json``.
    """

    def __init__(self, frontend: CPCEncoder | LogMel, probe: nn.Module, *, task: str, features: str,
                 probe_config: dict[str, Any], classes: Sequence[str] | None = None,
                 threshold: float | None = None, frozen: bool = False) -> None:
        super().__init__()
        if features not in FEATURE_LAYERS:
            raise ValueError(f"features must be one of {FEATURE_LAYERS}, got {features!r}")
        self.frontend = frontend
        self.probe = probe
        self.task = task
        self.features_from = features
        self.probe_config = dict(probe_config)
        self.classes = list(classes) if classes is not None else None
        self.threshold = threshold
        self.frozen = frozen
        if frozen:
            for p in self.frontend.parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------ construction
    @classmethod
    def build(cls, task: str, frontend: CPCEncoder | LogMel, *, features: str = "context", probe: str = "linear",
              classes: Sequence[str] | None = None, frozen: bool = False, hidden: int = 512,
              dropout: float = 0.1) -> "DownstreamModel":
        """A fresh probe of kind ``probe`` on ``frontend`` for ``task``."""
        if isinstance(frontend, LogMel):
            features = "encoder"  # the log-mel spectrogram is the only layer a log-mel front end has
        in_dim = feature_dim(frontend, features)
        probe_config: dict[str, Any] = {"kind": probe, "in_dim": in_dim, "n_out": task_outputs(task, classes),
                                        "pool": not is_frame_task(task)}
        if probe == "mlp":
            probe_config.update(hidden=int(hidden), dropout=float(dropout))
        return cls(frontend, _probe_from_config(probe_config), task=task, features=features,
                   probe_config=probe_config, classes=None if is_frame_task(task) else list(classes or []),
                   frozen=frozen)

    @property
    def frontend_kind(self) -> str:
        return "logmel" if isinstance(self.frontend, LogMel) else "cpc"

    @property
    def n_out(self) -> int:
        return int(self.probe_config["n_out"])

    @property
    def is_frame_task(self) -> bool:
        return is_frame_task(self.task)

    # ------------------------------------------------------------ forward
    def train(self, mode: bool = True) -> "DownstreamModel":
        super().train(mode)
        if self.frozen:
            # A frozen front end keeps its eval behaviour (dropout off, batch-norm statistics fixed).
            self.frontend.eval()
        return self

    def features(self, wave: Tensor) -> Tensor:
        """wave (B, T) -> front-end features (B, T // 160, D)."""
        if self.frozen:
            with torch.no_grad():
                return self._features(wave)
        return self._features(wave)

    def _features(self, wave: Tensor) -> Tensor:
        if isinstance(self.frontend, LogMel):
            return self.frontend(wave)
        return self.frontend.features(wave, self.features_from)

    def forward(self, wave: Tensor) -> Tensor:
        """wave (B, T) -> logits (B, F, n_out) for frame tasks, (B, n_out) for classification."""
        return self.probe(self.features(wave))

    # ------------------------------------------------------------ inference over whole recordings
    def frame_probabilities(self, wave: Tensor) -> Tensor:
        """wave (B, T) on the CPU -> frame probabilities (B, T // 160, n_out), the sigmoid of the logits: the
        frame function :mod:`jtm.models.inference` runs over chunks (evaluation, transcription)."""
        return torch.sigmoid(self(wave.to(_device(self))).float())

    def predict_frames(self, audio: np.ndarray, window: int, context_frames: int = 0,
                       batch_size: int = 8) -> np.ndarray:
        """Frame probabilities of a whole recording: float32 (T // 160, n_out) (sigmoid of the logits).

        The recording is cut by :func:`jtm.models.inference.run_chunked` into chunks of ``window`` samples, the
        model's training length. Each chunk predicts ``window // 160 - 2 * context_frames`` core frames and sees
        ``context_frames`` frames of real audio on each side (the first chunk starts at sample 0 and sees
        ``2 * context_frames`` after its core instead), which warms up the context network and the convolutions
        at the seams; cores tile the recording so every frame is predicted exactly once. The last chunk (or a
        short recording) is zero-padded to ``window`` samples. ``jtm transcribe`` of a file cuts it the same way.
        """
        if not self.is_frame_task:
            raise ValueError(f"predict_frames is for frame tasks, not {self.task!r}")
        window_frames = window // HOP
        core = window_frames - 2 * context_frames
        if core < 1 or context_frames < 0:
            raise ValueError(f"window of {window_frames} frames leaves no core with {context_frames} context frames")
        chunking = Chunking(core=core, left=context_frames, right=context_frames, batch_size=batch_size)
        was_training = self.training
        self.eval()
        try:
            return run_array(audio, self.frame_probabilities, chunking, self.n_out)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict_windows(self, audio: np.ndarray, window: int, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities of every window of a recording: ``(probs (n_windows, n_classes), starts (n,))``.

        Windows tile the recording without overlap from sample 0; a remainder of at least one frame gets one
        more window aligned with the recording's end (overlapping the previous one, so no padding is
        needed); a recording shorter than one window is a single zero-padded window.
        """
        if self.is_frame_task:
            raise ValueError("predict_windows is for classification tasks")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        starts = window_starts(len(audio), window, min_remainder=HOP)
        probs = []
        was_training = self.training
        self.eval()
        try:
            device = _device(self)
            for i in range(0, len(starts), batch_size):
                chunk = starts[i:i + batch_size]
                wave = np.zeros((len(chunk), window), dtype=np.float32)
                for b, s in enumerate(chunk):
                    piece = audio[s:s + window]
                    wave[b, :len(piece)] = piece
                logits = self(torch.from_numpy(wave).to(device)).float()
                probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(probs, axis=0), np.asarray(starts, dtype=np.int64)

    # ------------------------------------------------------------ files
    def config_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents (see the module docstring)."""
        frontend_config = self.frontend.config.to_dict()
        return {
            "format": DOWNSTREAM_FORMAT,
            "version": DOWNSTREAM_VERSION,
            "task": self.task,
            "frontend": {"kind": self.frontend_kind, "config": frontend_config},
            "features": self.features_from,
            "probe": dict(self.probe_config),
            "classes": self.classes,
            "threshold": None if self.threshold is None else float(self.threshold),
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` then ``config.json`` into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": DOWNSTREAM_FORMAT, "version": str(DOWNSTREAM_VERSION)})
        write_json_atomic(directory / CONFIG_NAME, self.config_dict())
        return directory

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str | Path = "config") -> "DownstreamModel":
        """An untrained model of the architecture ``config`` (a ``config.json`` dict) describes.

        Every key is checked (:class:`DownstreamFile`, with the front end's and the probe's sizes bounded) before
        any layer is built, so a hostile file is refused with the key it got wrong, never allocated."""
        try:
            spec = load_config(DownstreamFile, config, str(source))
            if spec.frontend.kind not in FRONTENDS:
                raise ModelFileError(f"{source}: unknown front end kind {spec.frontend.kind!r} (cpc or logmel)")
            front_config = FRONTENDS[spec.frontend.kind].from_dict(spec.frontend.config, source)
            width = _feature_width(front_config, spec.features)
            if spec.probe.in_dim != width:
                raise ModelFileError(f"{source}: probe.in_dim is {spec.probe.in_dim} but the front end's "
                                     f"{spec.features} features are {width} wide")
            frontend = CPCEncoder(front_config) if spec.frontend.kind == "cpc" else LogMel(front_config)
            probe_config = dict(config["probe"])
            model = cls(frontend, _probe_from_config(probe_config), task=spec.task, features=spec.features,
                        probe_config=probe_config, classes=spec.classes, threshold=spec.threshold)
        except (KeyError, TypeError, ValueError) as e:  # a ConfigError names the file and the key already
            raise ModelFileError(str(e) if str(source) in str(e) else f"{source}: {e}") from None
        expected = task_outputs(model.task, model.classes) if model.classes or is_frame_task(model.task) else None
        if expected is not None and expected != model.n_out:
            raise ModelFileError(f"{source}: probe has {model.n_out} outputs but task {model.task!r} needs {expected}")
        return model

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "DownstreamModel":
        """Load a folder written by :meth:`save_pretrained`; refusals raise ``ModelFileError`` naming the file."""
        directory = Path(directory)
        config = read_downstream_config(directory)
        model = cls.from_config(config, directory / CONFIG_NAME)
        load_weights_into(model, read_pretrained_weights(directory), directory / WEIGHTS_NAME)
        return model.to(map_location).eval()


FRONTENDS: dict[str, type] = {"cpc": CPCConfig, "logmel": LogMelConfig}
"""The config class of each front end ``kind`` a downstream ``config.json`` may name."""


def _feature_width(front: CPCConfig | LogMelConfig, features: str) -> int:
    """Width D of the features a probe reads, from the front end's config alone (before building it)."""
    if isinstance(front, LogMelConfig):
        return front.dim
    try:
        return front.layer_dim(features)
    except ConfigError as e:
        raise ModelFileError(str(e)) from None


@dataclass
class FrontendSpec:
    """The ``frontend`` object of a downstream ``config.json``: its kind, and the config of that kind."""

    kind: str
    config: dict[str, Any]


@dataclass
class ProbeSpec:
    """The ``probe`` object of a downstream ``config.json`` (what :func:`jtm.models.probes.build_probe` takes)."""

    kind: str
    in_dim: int = bounded(MISSING, 1, 2 * MAX_WIDTH)  # both layers: encoder_dim + context_dim
    n_out: int = bounded(MISSING, 1, MAX_OUTPUTS)
    pool: bool
    hidden: int | None = bounded(None, 1, MAX_WIDTH)
    dropout: float | None = bounded(None, 0.0, 0.99)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class DownstreamFile:
    """A downstream model's ``config.json`` (see the module docstring), read strictly before anything is built."""

    format: str
    version: int
    task: str
    frontend: FrontendSpec
    features: str
    probe: ProbeSpec
    classes: list[str] | None = None
    threshold: float | None = None


def window_starts(n: int, window: int, min_remainder: int = 1) -> list[int]:
    """Starts of the windows that classify a length-``n`` sequence (samples or frames alike): non-overlapping from
    0, plus one window aligned with the end when at least ``min_remainder`` is left over; [0] when n < window."""
    starts = list(range(0, n - window + 1, window)) if n >= window else [0]
    if n > window and n - (starts[-1] + window) >= min_remainder:
        starts.append(n - window)
    return starts


def read_downstream_config(directory: str | Path) -> dict[str, Any]:
    """``directory/config.json`` of a downstream model, checked for format and version."""
    path = Path(directory) / CONFIG_NAME
    config = read_config_json(path, expected="a downstream model folder")
    if not isinstance(config, dict) or config.get("format") != DOWNSTREAM_FORMAT:
        raise ModelFileError(f"{path}: not a {DOWNSTREAM_FORMAT!r} model config")
    if config.get("version") != DOWNSTREAM_VERSION:
        raise ModelFileError(f"{path}: version {config.get('version')!r} is not supported (expected {DOWNSTREAM_VERSION})")
    return config


def feature_dim(frontend: CPCEncoder | LogMel, features: str) -> int:
    """Width D of the features a probe reads."""
    return frontend.dim if isinstance(frontend, LogMel) else frontend.config.layer_dim(features)


def _probe_from_config(probe_config: dict[str, Any]) -> nn.Module:
    options = {k: probe_config[k] for k in ("hidden", "dropout") if k in probe_config}
    return build_probe(probe_config["kind"], int(probe_config["in_dim"]), int(probe_config["n_out"]),
                       pool=bool(probe_config["pool"]), **options)


def _device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


# ------------------------------------------------------------------------------------ encoder sources


def save_encoder_file(path: str | Path, weights: dict[str, Tensor] | nn.Module, config: CPCConfig) -> Path:
    """Write CPC encoder weights as one safetensors file, its config as JSON in the file's metadata (atomic).

    This is the format of the original command line's ``logs/checkpoint<N>.pt`` (the suffix is historical).
    """
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": ENCODER_FILE_FORMAT, "version": "1", "config": json.dumps(config.to_dict())}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_encoder_file(path: str | Path) -> CPCEncoder:
    """Read a file written by :func:`save_encoder_file`; anything else (e.g. a pickle) is ``ModelFileError``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: encoder checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(
            f"{path}: not a safetensors encoder file, refusing to load it ({e}); jtm never unpickles checkpoints"
        ) from None
    if metadata.get("format") != ENCODER_FILE_FORMAT or "config" not in metadata:
        raise ModelFileError(f"{path}: safetensors file without a jtm encoder config in its metadata")
    try:
        config = CPCConfig.from_dict(json.loads(metadata["config"]), f"{path} (metadata 'config')")
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: invalid encoder config in metadata ({e})") from None
    except ValueError as e:  # ConfigError: names the file and the key
        raise ModelFileError(str(e)) from None
    encoder = CPCEncoder(config)
    load_weights_into(encoder, tensors, path)
    return encoder.eval()


def load_frontend_source(source: str | Path) -> CPCEncoder:
    """A pretrained CPC encoder from a pretraining run folder (``RUN`` -> ``RUN/encoder``), an exported
    ``encoder/`` folder, a downstream run or model folder with a CPC front end, or a single encoder file."""
    path = Path(source)
    if path.is_file():
        return load_encoder_file(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: no such pretrained run, encoder folder or encoder file")
    for folder in (path / "encoder", path):
        if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
            try:
                return CPCEncoder.from_pretrained(folder)
            except ModelFileError:
                if folder == path and (path / "encoder").exists():
                    raise
    for folder in (path / "model", path):
        if (folder / CONFIG_NAME).is_file():
            try:
                model = DownstreamModel.from_pretrained(folder)
            except ModelFileError:
                continue
            if isinstance(model.frontend, CPCEncoder):
                return model.frontend
    if (path / "run.json").is_file() and not (path / "encoder").exists():
        raise ModelFileError(f"{path}: pretraining run has not exported its encoder yet (no {path / 'encoder'}); "
                             "finish or resume the run first")
    # Report the most specific problem: load the expected encoder folder to raise its own error.
    return CPCEncoder.from_pretrained(path / "encoder" if (path / "encoder").exists() else path)

"""A note transcriber a user can pick up: a front end, a note head (:class:`~jtm.models.note_head.NoteHead`, or
:class:`~jtm.models.harmonic_head.HarmonicNoteHead` on the constant-Q spectrum) on its raw features, and the
note-decoding thresholds chosen on validation, in one model folder.

``NoteTranscriber.probabilities(wave (B, T)) -> (onset, frame)``, each (B, T // 160, 128), in one pass;
:meth:`NoteTranscriber.stream` gives the same probabilities of a recording of any length chunk by chunk, in
bounded memory (what ``jtm transcribe`` and ``jtm evaluate`` of a note model run):

1. the front end's features run over the recording with :func:`jtm.models.inference.run_chunked` as
   :meth:`CPCEncoder.embed <jtm.models.cpc.CPCEncoder.embed>` (and the study's feature cache) computes them:
   chunks with a margin wider than the front end's receptive field, a forward recurrent context carried from
   chunk to chunk, the last chunk ending at the recording's end;
2. the head runs over that stream of features with :func:`jtm.models.inference.run_with_context`, seeing its
   receptive field (``layers * (kernel - 1) / 2`` frames) on each side, so its outputs equal one pass over the
   whole recording's features. A GRU head sees the whole input; it is given ``GRU_CONTEXT_FRAMES`` on each side
   (close, not exact).

The study's notes cells write this folder (``CELL/model``); :meth:`from_pretrained` reads it strictly (every key
checked and every size bounded before anything is allocated; weights with safetensors, never pickle):
``model.safetensors`` (keys ``frontend.*``, ``head.*``) and ``config.json`` = ``{"format":
"jtm-note-transcriber", "version": 1, "config": {"task": "notes", "frontend": {"kind": "cpc"|"logmel",
"config": {...}}, "features": "context"|"encoder"|"both"|"spectrum", "head": {"kind": "frames"|"harmonic", head
options}, "thresholds": {"onset", "sustain", "frame"}}}``. The front end is the pretrained or random CPC encoder
(weights included) or the log-mel spectrogram (no weights, never normalised: the study's standardisation is folded
into the head: into its first layer, or into the harmonic head's input buffers).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from jtm.configs import MAX_OUTPUTS, MAX_WIDTH, bounded, check_bounds, load_config
from jtm.errors import ModelFileError
from jtm.models.cpc import CPCEncoder, embed_margin_frames
from jtm.models.config import FEATURE_LAYERS
from jtm.models.downstream import FRONTENDS, FrontendSpec, feature_dim
from jtm.models.inference import Chunking, FramesFn, StepFn, frames_in, run_chunked, run_with_context
from jtm.models.logmel import LogMel
from jtm.models.harmonic_head import MAX_CHANNELS, HarmonicNoteHead
from jtm.models.note_head import MAX_KERNEL, MAX_LAYERS, NoteHead
from jtm.models.pretrained import (CONFIG_NAME, WEIGHTS_NAME, load_weights_into, read_config_json,
                                   read_pretrained_config, read_pretrained_weights, save_pretrained_files)

NOTE_TRANSCRIBER_FORMAT = "jtm-note-transcriber"
NOTE_TRANSCRIBER_VERSION = 1
NOTE_TASK = "notes"

GRU_CONTEXT_FRAMES = 500
"""Frames of features a GRU head sees on each side of a chunk when streamed (5 s; its own field is unbounded)."""
STREAM_CHUNK_SECONDS = 10.0
"""Audio per front-end chunk when streaming (its margin comes on top)."""


@dataclass
class NoteThresholds:
    """Thresholds chosen on validation recordings: ``onset`` starts a note (onset probability), ``sustain`` keeps
    it sounding (frame probability; :func:`jtm.evaluation.notes.decode_notes`), ``frame`` marks an active frame
    for the frame metrics (chosen by frame F1)."""

    onset: float = bounded(0.5, 1e-6, 1.0)
    sustain: float = bounded(0.5, 1e-6, 1.0)
    frame: float = bounded(0.5, 1e-6, 1.0)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class NoteHeadSpec:
    """The ``head`` object of ``config.json``: the head's ``kind`` (``frames``: :class:`NoteHead`, the default;
    ``harmonic``: :class:`HarmonicNoteHead`) and its options, bounded like every config. Options of the other
    kind keep their defaults and are not used."""

    in_dim: int = bounded(MISSING, 1, 2 * MAX_WIDTH)
    n_pitches: int = bounded(128, 1, MAX_OUTPUTS)
    kind: str = "frames"
    hidden: int = bounded(128, 2, MAX_WIDTH)
    context: str = "conv"
    layers: int = bounded(2, 1, MAX_LAYERS)
    kernel: int = bounded(5, 1, MAX_KERNEL)
    channels: int = bounded(16, 1, MAX_CHANNELS)
    dropout: float = bounded(0.1, 0.0, 0.99)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {', '.join(HEAD_KINDS)}, got {self.kind!r}")


HEAD_KINDS: dict[str, type[NoteHead] | type[HarmonicNoteHead]] = {"frames": NoteHead, "harmonic": HarmonicNoteHead}
"""The ``kind`` of a note head in ``config.json``, and its class."""


def build_note_head(kind: str = "frames", **options: Any) -> NoteHead | HarmonicNoteHead:
    """A note head of ``kind`` (see :class:`NoteHeadSpec`) from its options; options that its class does not take
    (the other kind's) are ignored, so a :class:`NoteHeadSpec` as a dict builds either."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    cls = HEAD_KINDS[kind]
    takes = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in takes})


@dataclass
class NoteTranscriberFile:
    """The ``config`` object of a note transcriber's ``config.json``, read strictly before anything is built."""

    task: str
    frontend: FrontendSpec
    features: str
    head: NoteHeadSpec
    thresholds: NoteThresholds


class NoteTranscriber(nn.Module):
    """Front end -> raw frame features -> note head (:class:`NoteHead` or :class:`HarmonicNoteHead`) -> onset and
    frame probabilities per pitch."""

    def __init__(self, frontend: CPCEncoder | LogMel, head: NoteHead | HarmonicNoteHead, features: str = "context",
                 thresholds: NoteThresholds | None = None) -> None:
        super().__init__()
        if isinstance(frontend, LogMel):
            features = "encoder"  # a log-mel front end has one layer
            if frontend.norm is not None:
                raise ValueError("a note transcriber reads raw log-mel features (normalize=False); fold any "
                                 "standardisation into the head (NoteHead.fold_standardisation)")
        if features not in FEATURE_LAYERS:
            raise ValueError(f"features must be one of {FEATURE_LAYERS}, got {features!r}")
        width = feature_dim(frontend, features)
        if head.config["in_dim"] != width:
            raise ValueError(f"the head reads {head.config['in_dim']} features, the front end's {features} "
                             f"features are {width} wide")
        self.frontend, self.head, self.features_from = frontend, head, features
        self.thresholds = thresholds or NoteThresholds()

    @property
    def head_context(self) -> int:
        """Frames of features the head sees on each side when streamed (its receptive field)."""
        field = self.head.receptive_field
        return GRU_CONTEXT_FRAMES if field is None else field

    # ------------------------------------------------------------ one pass
    def features(self, wave: Tensor) -> Tensor:
        """wave (B, T) -> raw front-end features (B, T // 160, D)."""
        if isinstance(self.frontend, LogMel):
            return self.frontend.spectrogram(wave)
        return self.frontend.features(wave, self.features_from)

    @torch.no_grad()
    def probabilities(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """wave (B, T) -> (onset, frame) probabilities, each (B, T // 160, 128), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self.head.probabilities(self.features(wave))
        finally:
            self.train(was_training)

    # ------------------------------------------------------------ streamed
    def feature_functions(self) -> tuple[FramesFn, StepFn | None, int]:
        """How :func:`run_chunked` computes the features: (frames_fn, step_fn, margin frames on each side)."""
        if isinstance(self.frontend, LogMel):
            c = self.frontend.config
            return self.frontend.spectrogram, None, -(-c.n_fft // c.hop) + 1
        return (*self.frontend.chunk_functions(self.features_from), embed_margin_frames(self.frontend.config))

    def chunking(self, chunk_seconds: float | None = None, context_seconds: float | None = None,
                 batch_size: int | None = None) -> Chunking:
        """How the front end cuts a recording: ``chunk_seconds`` (default 10 s) per chunk, its margin (or
        ``context_seconds`` if larger) on each side, the last chunk ending at the recording's end."""
        margin = self.feature_functions()[2]
        if context_seconds is not None:
            margin = max(margin, frames_in(context_seconds))
        core = max(1, frames_in(STREAM_CHUNK_SECONDS if chunk_seconds is None else chunk_seconds))
        return Chunking(core=core, left=margin, right=margin, batch_size=batch_size or 1, pad_end=False)

    def stream(self, audio: np.ndarray | Iterable[np.ndarray], chunking: Chunking | None = None
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first_frame, onset (n, 128), frame (n, 128))`` of a recording (float32 (T,) or a stream of sample
        blocks), chunk by chunk in order, equal to :meth:`probabilities` of the whole recording (see the module
        docstring); memory is bounded by one batch of chunks."""
        frames_fn, step_fn, _ = self.feature_functions()
        self.eval()
        n = self.head.config["n_pitches"]

        def head(feats: Tensor) -> Tensor:
            return torch.cat(self.head.probabilities(feats), dim=-1)

        features = run_chunked(audio, frames_fn, chunking or self.chunking(), step_fn=step_fn)
        for first, both in run_with_context(features, head, self.head_context):
            yield first, both[:, :n], both[:, n:]

    def predict(self, audio: np.ndarray, chunking: Chunking | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(onset, frame) probabilities of a whole recording (T,): float32 (T // 160, 128) each, streamed."""
        parts = list(self.stream(np.asarray(audio, dtype=np.float32).reshape(-1), chunking))
        n = self.head.config["n_pitches"]
        if not parts:
            return np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)
        return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    # ------------------------------------------------------------ files
    def config_dict(self) -> dict[str, Any]:
        """The ``config`` object of ``config.json`` (see the module docstring)."""
        kind = "logmel" if isinstance(self.frontend, LogMel) else "cpc"
        return {"task": NOTE_TASK, "frontend": {"kind": kind, "config": self.frontend.config.to_dict()},
                "features": self.features_from, "head": dict(self.head.config),
                "thresholds": dataclasses.asdict(self.thresholds)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` then ``config.json`` into ``directory``, each atomically."""
        return save_pretrained_files(directory, self, self.config_dict(), format=NOTE_TRANSCRIBER_FORMAT,
                                     version=NOTE_TRANSCRIBER_VERSION)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "NoteTranscriber":
        """Load a folder written by :meth:`save_pretrained` (eval mode); refusals raise ModelFileError naming the
        file."""
        directory = Path(directory)
        source = directory / CONFIG_NAME
        config = read_pretrained_config(directory, format=NOTE_TRANSCRIBER_FORMAT, version=NOTE_TRANSCRIBER_VERSION)
        try:
            spec = load_config(NoteTranscriberFile, config, str(source))
            if spec.task != NOTE_TASK:
                raise ValueError(f"task is {spec.task!r}, expected {NOTE_TASK!r}")
            if spec.frontend.kind not in FRONTENDS:
                raise ValueError(f"unknown front end kind {spec.frontend.kind!r} (cpc or logmel)")
            front_config = FRONTENDS[spec.frontend.kind].from_dict(spec.frontend.config, source)
            frontend = CPCEncoder(front_config) if spec.frontend.kind == "cpc" else LogMel(front_config)
            model = cls(frontend, build_note_head(**dataclasses.asdict(spec.head)), spec.features, spec.thresholds)
        except (KeyError, TypeError, ValueError) as e:  # a ConfigError names the file and the key already
            raise ModelFileError(str(e) if str(source) in str(e) else f"{source}: {e}") from None
        load_weights_into(model, read_pretrained_weights(directory), directory / WEIGHTS_NAME)
        return model.eval()


def is_note_transcriber(directory: str | Path) -> bool:
    """Whether ``directory/config.json`` declares a note transcriber (its format name; nothing else is checked,
    and a missing, special or malformed file is no note transcriber)."""
    try:
        data = read_config_json(Path(directory) / CONFIG_NAME)
    except ModelFileError:
        return False
    return isinstance(data, dict) and data.get("format") == NOTE_TRANSCRIBER_FORMAT

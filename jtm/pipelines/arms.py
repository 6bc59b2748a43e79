"""The kinds of study arm: a probe on cached frozen features (:class:`FrozenProbe`; :class:`FrozenNoteHead`, a
note head with onset and frame outputs, for the notes task), and a model trained end to end on audio.

Both present the same face to the protocol (:func:`jtm.training.selection.train_selected`): ``build(seed, lr)``
makes a fresh model and its optimiser, ``batches(seed)`` yields training batches for ever, ``loss(batch)`` scores
one, and ``predict(tracks, max_seconds)`` gives whole-recording outputs in the layout the scorers of
:mod:`jtm.pipelines.evaluate` read: frame probabilities (F, n_out) from sample 0 for frame tasks, class
probabilities of every window (n_windows, C) for classification (windows placed by ``window_starts``, as
``DownstreamModel.predict_windows`` places them). Training windows have the same length (``window`` samples =
``window // 160`` frames) and the same batch size in both kinds, so a step means the same amount of labelled data
everywhere.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jtm.data.augment import EQConfig, LogSpectrum, RandomEQ
from jtm.data.labels import HOP, track_onset_roll
from jtm.data.store import Store
from jtm.data.tasks import TaskData, frame_roll, is_frame_task, pos_weight_from_counts
from jtm.data.windows import WindowBatches
from jtm.errors import JTMError
from jtm.models.cpc import CPCEncoder
from jtm.models.downstream import DownstreamModel, window_starts
from jtm.models.harmonic_head import SPECTRUM_BINS
from jtm.models.logmel import LogMel
from jtm.models.note_transcriber import NoteTranscriber, build_note_head
from jtm.models.probes import build_probe
from jtm.pipelines.features import FeatureCache


@dataclass(frozen=True)
class TaskView:
    """What an arm needs to know of a task: the store, the splits of this seed, class codes and the loss."""

    store: Store
    task: str
    data: TaskData
    window: int
    batch_size: int
    pos_weight: float = 1.0

    @property
    def frame_task(self) -> bool:
        return is_frame_task(self.task)

    @property
    def n_out(self) -> int:
        if self.frame_task:
            return 128 if self.task == "transcription" else 11 * 128
        return len(self.data.classes or [])

    @property
    def window_frames(self) -> int:
        return self.window // HOP

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """BCE with the task's positive weight on (B, F, n_out) frames; cross-entropy on (B, C) classes."""
        if self.frame_task:
            weight = torch.tensor(self.pos_weight, dtype=logits.dtype)
            return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)
        return F.cross_entropy(logits.float(), target)


def frame_limit(max_seconds: float | None, sample_rate: int) -> int | None:
    """Frames in the first ``max_seconds`` of a recording (None: all): what every arm predicts and every truth
    is cut to, so predictions and labels always have the same length."""
    return None if max_seconds is None else int(max_seconds * sample_rate) // HOP


def log_spectrum_of(cache: FeatureCache) -> LogSpectrum | None:
    """How the cached features measure energy, for front ends whose features are a log spectrum: the log-mel
    front end (log of mel power + eps) and a gabor encoder's ``spectrum`` (log1p of gain x filter magnitude);
    None for the others (CPC layers are no spectrum)."""
    frontend = cache.frontend
    if isinstance(frontend, LogMel):
        return LogSpectrum(floor=frontend.config.eps, db_per_unit=10.0)
    if cache.layer == "spectrum":
        return LogSpectrum(floor=1.0, db_per_unit=20.0)
    return None


class FrozenProbe:
    """A linear or MLP probe on cached features of a frozen front end, standardised with statistics of the
    label subset (so every front end reaches the probe on the same scale).

    With ``eq``, every training crop of a log-spectral front end is filtered by a random equaliser
    (:class:`jtm.data.augment.RandomEQ`) before standardisation, so the probe learns from many timbres;
    validation, test and the statistics read the features as they are."""

    def __init__(self, view: TaskView, cache: FeatureCache, probe: str, hidden: int, dropout: float,
                 max_stat_frames: int = 200_000, eq: EQConfig | None = None) -> None:
        self.view, self.cache, self.kind, self.hidden, self.dropout = view, cache, probe, hidden, dropout
        self.eq, self.spectrum = eq, log_spectrum_of(cache)
        if eq is not None and self.spectrum is None:
            raise JTMError(f"the EQ augmentation filters a log spectrum; the {cache.layer!r} features of "
                           f"{type(cache.frontend).__name__} are not one (only log-mel and the gabor spectrum are)")
        train = view.data.splits.train
        self.train_tracks = np.asarray([t for t in train if len(cache(int(t))) >= view.window_frames], dtype=np.int64)
        if len(self.train_tracks) == 0:
            self.train_tracks = np.asarray(train, dtype=np.int64)
        self.mean, self.std = self._statistics(max_stat_frames)
        self._rolls: dict[int, np.ndarray] = {}

    def _statistics(self, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std (D,) over (at most ``max_frames`` evenly spaced) training frames."""
        total = sum(len(self.cache(int(t))) for t in self.train_tracks)
        stride = max(1, total // max_frames)
        frames = np.concatenate([np.asarray(self.cache(int(t))[::stride], dtype=np.float64)
                                 for t in self.train_tracks])
        return frames.mean(0).astype(np.float32), np.maximum(frames.std(0), 1e-5).astype(np.float32)

    def _inputs(self, feats: np.ndarray) -> Tensor:
        return torch.from_numpy((np.asarray(feats, dtype=np.float32) - self.mean) / self.std)

    def _roll(self, track: int) -> np.ndarray:
        if track not in self._rolls:
            self._rolls[track] = frame_roll(self.view.store, track, self.view.task, len(self.cache(track)))
        return self._rolls[track]

    def build(self, seed: int, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        options = {"hidden": self.hidden, "dropout": self.dropout} if self.kind == "mlp" else {}
        model = build_probe(self.kind, len(self.mean), self.view.n_out, pool=not self.view.frame_task, **options)
        return model, torch.optim.Adam(model.parameters(), lr=lr)

    def batches(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Random crops of ``window_frames`` frames: inputs (B, W, D), targets (B, W, n_out) or (B,)."""
        rng = np.random.default_rng([seed, 0xBA7C])
        augment = None if self.eq is None else RandomEQ(self.eq, self.spectrum, seed)
        lengths = np.asarray([len(self.cache(int(t))) for t in self.train_tracks], dtype=np.float64)
        w, v = self.view.window_frames, self.view
        while True:
            picks = rng.choice(len(self.train_tracks), size=v.batch_size, p=lengths / lengths.sum())
            xs, ys = [], []
            for i in picks:
                t = int(self.train_tracks[i])
                s = int(rng.integers(0, max(1, int(lengths[i]) - w + 1)))
                feats = np.asarray(self.cache(t)[s:s + w])
                xs.append(np.pad(feats, ((0, w - len(feats)), (0, 0))))
                if v.frame_task:
                    roll = self._roll(t)[s:s + w]
                    ys.append(np.pad(roll, ((0, w - len(roll)), (0, 0))))
                else:
                    ys.append(v.data.class_of_track[t])
            crops = np.stack(xs)
            x = self._inputs(crops if augment is None else augment(crops))
            y = torch.from_numpy(np.stack(ys)) if v.frame_task else torch.as_tensor(np.asarray(ys), dtype=torch.long)
            yield x, y

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self.view.loss(model(batch[0]), batch[1])

    @torch.no_grad()
    def predict(self, model: nn.Module, tracks: np.ndarray, max_seconds: float | None) -> list[np.ndarray]:
        limit = frame_limit(max_seconds, self.view.store.sample_rate)
        model.eval()
        out = []
        for t in tracks:
            feats = self._inputs(self.cache(int(t))[:limit])
            if self.view.frame_task:
                out.append(torch.sigmoid(model(feats.unsqueeze(0))[0]).numpy())
            else:
                w = self.view.window_frames
                windows = [F.pad(feats[s:s + w], (0, 0, 0, w - len(feats[s:s + w])))
                           for s in window_starts(len(feats), w)]
                out.append(torch.softmax(model(torch.stack(windows)), dim=-1).numpy())
        return out

    def export(self, model: nn.Module) -> DownstreamModel:
        """The probe as a :class:`DownstreamModel` on its front end, with the standardisation folded into the
        probe's first linear layer (``W' = W / std``, ``b' = b - W' mean``), so it runs on raw features."""
        probe = _fold_standardisation(model, self.mean, self.std)
        frontend = self.cache.frontend
        if isinstance(frontend, LogMel):
            frontend = LogMel(dataclasses.replace(frontend.config, normalize=False))
        out = DownstreamModel.build(self.view.task, frontend, features=self.cache.layer, probe=self.kind,
                                    classes=self.view.data.classes, frozen=True, hidden=self.hidden,
                                    dropout=self.dropout)
        out.probe.load_state_dict(probe.state_dict())
        return out.eval()


def _fold_standardisation(model: nn.Module, mean: np.ndarray, std: np.ndarray) -> nn.Module:
    probe = copy.deepcopy(model)
    first = next(m for m in probe.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        scale = torch.from_numpy(1.0 / std)
        first.weight.mul_(scale)
        first.bias.sub_(first.weight @ torch.from_numpy(mean))
    return probe


NOTE_HEAD = {"hidden": 128, "context": "conv", "layers": 2, "kernel": 5, "dropout": 0.1}
"""The note head the study trains (``jtm.models.note_head.NoteHead`` options): two residual convolutions of 5
frames per branch, so each frame sees 40 ms on each side."""
HARMONIC_HEAD = {"kind": "harmonic", "channels": 16, "dropout": 0.1}
"""The pitch-equivariant note head of the cqt-harmonic arm (``jtm.models.harmonic_head.HarmonicNoteHead``)."""
NOTE_HEADS = {"frames": NOTE_HEAD, "harmonic": HARMONIC_HEAD}
"""The study's options of each kind of note head (``Method.head``)."""
ONSET_WIDTH = 3
"""Onset targets mark each note's first 3 frames (30 ms; :func:`jtm.data.labels.onset_roll`)."""
ONSET_MAX_POS_WEIGHT = 10.0
"""Cap of the onset BCE's positive weight. Onset cells are about 1 in 500: at the frame loss's cap of 100 the
onset probabilities saturate (on the demo's store the onset threshold chosen on validation sat at the top of the
grid, and note F1 was lower); with no weight they all stay low."""


class FrozenNoteHead(FrozenProbe):
    """A note head (onset and frame logits with temporal context: :class:`NoteHead`, or :class:`HarmonicNoteHead`
    with ``options["kind"] == "harmonic"``) on cached standardised features of a frozen front end: the same
    features, crops, batches and budget as :class:`FrozenProbe`, with an onset target next to the frame target.

    Targets are (B, W, 256) crops: the piano roll in ``[..., :128]``, the onset roll (each note's first
    ``ONSET_WIDTH`` frames, :func:`jtm.data.labels.onset_roll`) in ``[..., 128:]``. The loss is the frame BCE (the
    task's positive weight) plus the onset BCE (its own positive weight, capped at ``ONSET_MAX_POS_WEIGHT``).
    """

    def __init__(self, view: TaskView, cache: FeatureCache, max_stat_frames: int = 200_000,
                 options: dict[str, Any] | None = None, eq: EQConfig | None = None) -> None:
        super().__init__(view, cache, "note", hidden=0, dropout=0.0, max_stat_frames=max_stat_frames, eq=eq)
        self.options = dict(NOTE_HEAD if options is None else options)
        if self.options.get("kind") == "harmonic" and len(self.mean) != SPECTRUM_BINS:
            raise JTMError(f"the harmonic note head reads the {SPECTRUM_BINS}-bin constant-Q spectrum (a gabor encoder "
                           f"with --gabor-filters {SPECTRUM_BINS}, the default); these {cache.layer!r} features are "
                           f"{len(self.mean)} wide")
        onsets = [self._roll(int(t))[:, 128:] for t in self.train_tracks]
        n_pos = sum(int(o.sum()) for o in onsets)
        self.onset_pos_weight = pos_weight_from_counts(n_pos, sum(o.size for o in onsets), ONSET_MAX_POS_WEIGHT)

    def _roll(self, track: int) -> np.ndarray:
        if track not in self._rolls:
            n = len(self.cache(track))
            frames = frame_roll(self.view.store, track, self.view.task, n)
            onsets = track_onset_roll(self.view.store.notes(track), n, ONSET_WIDTH)
            self._rolls[track] = np.concatenate([frames, onsets], axis=1)
        return self._rolls[track]

    def targets(self, track: int, n_frames: int | None = None) -> np.ndarray:
        """Frame roll and onset roll of a track side by side: bool (F, 256), cut to ``n_frames``."""
        return self._roll(track)[:n_frames]

    def build(self, seed: int, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = build_note_head(in_dim=len(self.mean), n_pitches=128, **self.options)
        return model, torch.optim.Adam(model.parameters(), lr=lr)

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        logits = model(batch[0])
        target = batch[1].to(logits.frame.dtype)
        onset_weight = torch.tensor(self.onset_pos_weight, dtype=logits.onset.dtype)
        onset = F.binary_cross_entropy_with_logits(logits.onset, target[..., 128:], pos_weight=onset_weight)
        return self.view.loss(logits.frame, target[..., :128]) + onset

    @torch.no_grad()
    def predict(self, model: nn.Module, tracks: np.ndarray, max_seconds: float | None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(onset, frame) probabilities of whole recordings, each float32 (F, 128) from sample 0."""
        limit = frame_limit(max_seconds, self.view.store.sample_rate)
        out = []
        for t in tracks:
            onset, frame = model.probabilities(self._inputs(self.cache(int(t))[:limit]).unsqueeze(0))
            out.append((onset[0].numpy(), frame[0].numpy()))
        return out

    def export(self, model: nn.Module) -> NoteTranscriber:
        """A :class:`NoteTranscriber`: the front end whose features the head read, and the head on its raw
        (unstandardised) features; the caller sets the thresholds chosen on validation."""
        head = model.fold_standardisation(torch.from_numpy(self.mean), torch.from_numpy(self.std))
        frontend = self.cache.frontend
        if isinstance(frontend, LogMel):
            frontend = LogMel(dataclasses.replace(frontend.config, normalize=False))
        return NoteTranscriber(frontend, head, self.cache.layer).eval()


class EndToEnd:
    """A CPC-architecture model trained on audio windows: fine-tuned from the pretrained encoder (the probe at
    ``lr``, the encoder at ``lr / 10``) or trained from scratch (everything at ``lr``)."""

    def __init__(self, view: TaskView, frontend: CPCEncoder, finetune: bool, features: str = "context",
                 context_frames: int | None = None) -> None:
        self.view, self.source, self.finetune, self.features = view, frontend, finetune, features
        w = view.window_frames
        self.context_frames = max(0, min(w // 8 if context_frames is None else context_frames, (w - 1) // 2))

    def build(self, seed: int, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        frontend = copy.deepcopy(self.source) if self.finetune else CPCEncoder(self.source.config)
        model = DownstreamModel.build(self.view.task, frontend, features=self.features, probe="linear",
                                      classes=self.view.data.classes, frozen=False)
        frontend_lr = lr / 10 if self.finetune else lr
        groups = [{"params": list(model.probe.parameters()), "lr": lr},
                  {"params": list(model.frontend.parameters()), "lr": frontend_lr}]
        return model.train(), torch.optim.Adam(groups)

    def batches(self, seed: int) -> Iterator[dict[str, Tensor]]:
        v = self.view
        labels = v.task if v.frame_task else None

        def plan(drop_last: bool) -> WindowBatches:
            return WindowBatches(v.store, v.data.splits.train, window=v.window, batch_size=v.batch_size,
                                 sampling="uniform", seed=seed, random_offset=True, drop_last=drop_last,
                                 labels=labels, rank=0, world_size=1)

        # Full batches only, so every step sees the same amount of labelled audio; a subset too small for one
        # full batch trains on its partial batch rather than not at all.
        windows = plan(drop_last=True)
        if len(windows) == 0:
            windows = plan(drop_last=False)
        if len(windows) == 0:
            raise JTMError(f"{v.store.path}: the {len(v.data.splits.train)} training recording(s) of this label "
                           f"subset are all shorter than one window of {v.window} samples; use a smaller --window")
        epoch = 0
        while True:
            windows.set_epoch(epoch)
            for batch in windows:
                yield {k: torch.from_numpy(np.asarray(a)) for k, a in batch.items()}
            epoch += 1

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(batch["audio"])
        if self.view.frame_task:
            return self.view.loss(logits, batch["frames"])
        target = torch.from_numpy(self.view.data.class_of_track)[batch["track"].long()]
        return self.view.loss(logits, target)

    @torch.no_grad()
    def predict(self, model: DownstreamModel, tracks: np.ndarray, max_seconds: float | None) -> list[np.ndarray]:
        v = self.view
        frames = frame_limit(max_seconds, v.store.sample_rate)
        limit = None if frames is None else frames * HOP
        out = []
        for t in tracks:
            audio = v.store.audio(int(t))[:limit]
            if v.frame_task:
                out.append(model.predict_frames(audio, v.window, self.context_frames, v.batch_size))
            else:
                out.append(model.predict_windows(audio, v.window, v.batch_size)[0])
        return out

    def export(self, model: DownstreamModel) -> DownstreamModel:
        return model.eval()



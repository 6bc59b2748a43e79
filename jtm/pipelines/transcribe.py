"""``jtm transcribe``: audio files -> MIDI (and optionally a piano-roll PNG and a MusicNet-format notes CSV).

Two kinds of model:

- A downstream model trained for ``transcription`` (128 pitches) or ``pitch-instrument`` (11 x 128 outputs,
  instrument-major) gives a probability per (frame, output) at 100 frames per second. Files of any length are
  read and processed in chunks by the runner evaluation uses (:func:`jtm.models.inference.run_chunked`, the file
  streamed by :mod:`jtm.pipelines.chunked`): by default cut exactly as the run's own evaluation cuts recordings
  (:meth:`Transcriber.chunking`: training-length windows whose outer eighth on each side is context, the run's
  batch size), so a file gets the frame probabilities ``jtm evaluate`` gives the same audio; without a run.json,
  10 s chunks with 1 s of context on each side. Notes are assembled incrementally by :class:`NoteStitcher`,
  which reuses :func:`jtm.evaluation.notes.roll_to_notes` on a small rolling window of frames; the notes equal
  those of ``roll_to_notes`` on the whole file's probabilities (the evaluation's settings: ``min_frames=2``, no
  gap merging).
- A note transcriber (:class:`jtm.models.note_transcriber.NoteTranscriber`, a study's notes cell) gives onset
  and frame probabilities per pitch, streamed by :meth:`NoteTranscriber.stream` (the front end in 10 s chunks
  with its margin, the head with its receptive field on each side: the probabilities of one pass over the whole
  file, as ``jtm evaluate`` and the study compute them). :class:`OnsetNoteStitcher` decodes notes from onsets
  with the thresholds chosen on validation, equal to :func:`jtm.evaluation.notes.decode_notes` on the whole
  file.

Neither the audio nor the probabilities of a whole file are ever held in memory.

Outputs (each written atomically, only once the whole input has been read and validated):
``OUT/<stem>.mid`` (one MIDI instrument per predicted instrument; a transcription model's notes go to a piano),
``OUT/<stem>.png`` (``piano_roll=True``), ``OUT/<stem>.csv`` (``csv=True``, MusicNet's label columns).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jtm.audio import FRAME_RATE, probe_audio
from jtm.data.instruments import INSTRUMENT_PROGRAMS, MUSICNET_INSTRUMENTS, N_PITCHES
from jtm.data.tasks import FRAME_TASKS
from jtm.errors import JTMError, ModelFileError
from jtm.evaluation.notes import MIN_NOTE_FRAMES, NoteList, decode_notes, make_notes, roll_to_notes
from jtm.fileio import atomic_path, load_json
from jtm.pipelines.chunked import BatchOutcome, Stopwatch, checked_frames, iter_frames, process_files, stream_audio
from jtm.pipelines.embed import output_names

if TYPE_CHECKING:
    from jtm.models.downstream import DownstreamModel
    from jtm.models.inference import Chunking
    from jtm.models.note_transcriber import NoteTranscriber

PIANO_PROGRAM = 1
"""GM program of the instrument a plain (instrument-less) transcription is written to: acoustic grand piano."""



# ------------------------------------------------------------------------------------------ notes, streamed


class NoteStitcher:
    """Turn a stream of frame probabilities into notes, chunk by chunk, in bounded memory.

    Feed consecutive blocks of probabilities (n, C) with :meth:`push`, then call :meth:`finish`. Channels are
    ``n_instruments`` blocks of 128 pitches (instrument-major, like the pitch-instrument outputs).

    How: pending frames are kept from the onset of the earliest note that may still be running (a channel
    active in the last pending frame). ``roll_to_notes`` runs on the pending frames; every note starting before
    that cut is complete and is emitted; frames of emitted notes that reach past the cut are blanked so they
    are not found again. The result equals ``roll_to_notes`` on the whole roll. A note held for longer than
    ``max_pending_frames`` (60 s by default; only a stuck prediction does that) is cut there and restarted, which
    is what bounds the memory.
    """

    def __init__(self, n_instruments: int = 1, threshold: float = 0.5, min_frames: int = MIN_NOTE_FRAMES,
                 frame_rate: float = FRAME_RATE, max_pending_frames: int = 6000) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.n_instruments = n_instruments
        self.n_channels = n_instruments * N_PITCHES
        self.threshold = float(threshold)
        self.min_frames = min_frames
        self.frame_rate = frame_rate
        self.max_pending_frames = max(1, max_pending_frames)
        self._pending = np.zeros((0, self.n_channels), dtype=np.float32)
        self._pending_start = 0  # global frame index of _pending[0]
        self._frames = 0  # frames pushed so far
        # per instrument: lists of (start_frame, end_frame, pitch, confidence) arrays, global frames
        self._parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = [
            [] for _ in range(n_instruments)]

    @property
    def frames(self) -> int:
        return self._frames

    def push(self, probs: np.ndarray) -> None:
        """Add the next block of probabilities, shape (n, n_instruments * 128), values in [0, 1]."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != self.n_channels:
            raise ValueError(f"expected (frames, {self.n_channels}) probabilities, got {probs.shape}")
        self._frames += probs.shape[0]
        buf = np.concatenate([self._pending, probs]) if self._pending.size else probs
        n = buf.shape[0]
        if n == 0:
            return
        active = buf >= self.threshold
        running = active[-1]
        if running.any():
            # Onset of each running run: one past the last inactive frame of its channel (0 if none).
            rev_inactive = ~active[::-1][:, running]
            has_gap = rev_inactive.any(axis=0)
            starts = np.where(has_gap, n - np.argmax(rev_inactive, axis=0), 0)
            cut = int(starts.min())
        else:
            cut = n
        if n >= self.max_pending_frames and cut == 0:
            cut = n  # a note stuck on for a minute: close it here (bounds memory) and let it restart
        if cut == 0:
            self._pending = buf
            return
        self._emit(buf, cut)
        rest = buf[cut:]
        if rest.size:
            # Frames continuing a note that was just emitted (its channel active at cut - 1) must not start a
            # second note: blank the leading active run of those channels.
            rest = rest.copy()
            leading = np.cumprod(active[cut:], axis=0).astype(bool) & active[cut - 1]
            rest[leading] = 0.0
        self._pending = rest
        self._pending_start += cut

    def _emit(self, buf: np.ndarray, cut: int) -> None:
        """Emit the notes of ``buf`` (pending frames) whose onset frame is before ``cut``."""
        for i in range(self.n_instruments):
            notes = roll_to_notes(buf[:, i * N_PITCHES:(i + 1) * N_PITCHES], self.threshold, self.frame_rate,
                                  min_frames=self.min_frames)
            if not len(notes):
                continue
            start = np.round(notes.onset * self.frame_rate).astype(np.int64)
            end = np.round(notes.offset * self.frame_rate).astype(np.int64)
            keep = start < cut
            if keep.any():
                self._parts[i].append((start[keep] + self._pending_start, end[keep] + self._pending_start,
                                       notes.pitch[keep], notes.confidence[keep]))

    def finish(self) -> list[NoteList]:
        """Close the stream (notes still running end at the last frame); one ``NoteList`` per instrument."""
        if self._pending.shape[0]:
            self._emit(self._pending, self._pending.shape[0])
            self._pending_start += self._pending.shape[0]
            self._pending = self._pending[:0]
        out = []
        for parts in self._parts:
            if parts:
                s, e, p, c = (np.concatenate(x) for x in zip(*parts))
                out.append(make_notes(s / self.frame_rate, e / self.frame_rate, p, c))
            else:
                out.append(make_notes([], [], np.zeros(0, dtype=np.int16)))
        return out


class OnsetNoteStitcher:
    """:func:`jtm.evaluation.notes.decode_notes` (notes from onsets, sustained by frames) over a stream of
    (onset, frame) probability blocks, in bounded memory: the notes equal those of ``decode_notes`` on the whole
    recording's probabilities.

    How: ``decode_notes`` runs on the pending frames. A note whose end is not yet known (it reaches the last
    pending frame) is open; every note starting before the earliest open note is complete and is emitted, and
    the frames before that cut are dropped. A run of onset frames crossing the cut belongs to a note already
    emitted and must not start a second one: the pending frames are decoded after one extra frame holding the
    onsets active just before them (whose own notes are dropped). A note held for longer than
    ``max_pending_frames`` (60 s by default; only a stuck prediction does that) is closed there.
    """

    def __init__(self, onset_threshold: float, frame_threshold: float, frame_rate: float = FRAME_RATE,
                 max_pending_frames: int = 6000) -> None:
        for name, value in (("onset", onset_threshold), ("frame", frame_threshold)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} threshold must be in (0, 1], got {value}")
        self.onset_threshold, self.frame_threshold = float(onset_threshold), float(frame_threshold)
        self.frame_rate = frame_rate
        self.max_pending_frames = max(1, max_pending_frames)
        self._onset = self._frame = np.zeros((0, N_PITCHES), dtype=np.float32)
        self._onset_before = np.zeros(N_PITCHES, dtype=bool)  # onsets active in the frame before the pending ones
        self._pending_start = 0  # global frame index of the first pending frame
        self._frames = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def frames(self) -> int:
        return self._frames

    def push(self, onset: np.ndarray, frame: np.ndarray) -> None:
        """Add the next block of onset and frame probabilities, each (n, 128)."""
        onset, frame = np.asarray(onset, dtype=np.float32), np.asarray(frame, dtype=np.float32)
        if onset.shape != frame.shape or onset.ndim != 2 or onset.shape[1] != N_PITCHES:
            raise ValueError(f"expected onset and frame probabilities (frames, {N_PITCHES}), got {onset.shape} "
                             f"and {frame.shape}")
        self._frames += len(onset)
        self._onset = np.concatenate([self._onset, onset])
        self._frame = np.concatenate([self._frame, frame])
        n = len(self._onset)
        start, end, pitch, confidence = self._decode()
        running = end >= n
        cut = int(start[running].min()) if running.any() else n
        if n >= self.max_pending_frames and cut == 0:
            cut = n  # a note stuck on for a minute: close it here (bounds memory)
        self._emit(start, end, pitch, confidence, cut)
        if cut:
            self._onset_before = self._onset[cut - 1] >= self.onset_threshold
        self._onset, self._frame = self._onset[cut:], self._frame[cut:]
        self._pending_start += cut

    def _decode(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(start frame, end frame, pitch, confidence) of the notes of the pending frames (local frames)."""
        # The extra first frame: onsets continuing from before the pending frames start no note there.
        before = self._onset_before.astype(np.float32)[None]
        onset = np.concatenate([before, self._onset])
        frame = np.concatenate([np.zeros_like(before), self._frame])
        notes = decode_notes(onset, frame, self.onset_threshold, self.frame_threshold, self.frame_rate)
        start = np.round(notes.onset * self.frame_rate).astype(np.int64) - 1
        end = np.round(notes.offset * self.frame_rate).astype(np.int64) - 1
        real = start >= 0
        return start[real], end[real], notes.pitch[real], notes.confidence[real]

    def _emit(self, start: np.ndarray, end: np.ndarray, pitch: np.ndarray, confidence: np.ndarray, cut: int) -> None:
        keep = start < cut
        if keep.any():
            at = self._pending_start
            self._parts.append((start[keep] + at, end[keep] + at, pitch[keep], confidence[keep]))

    def finish(self) -> NoteList:
        """Close the stream (notes still sounding end at the last frame): every note, sorted by (onset, pitch)."""
        if len(self._onset):
            self._emit(*self._decode(), cut=len(self._onset))
            self._pending_start += len(self._onset)
            self._onset, self._frame = self._onset[:0], self._frame[:0]
        if not self._parts:
            return make_notes([], [], np.zeros(0, dtype=np.int16))
        s, e, p, c = (np.concatenate(x) for x in zip(*self._parts))
        return make_notes(s / self.frame_rate, e / self.frame_rate, p, c)


# ------------------------------------------------------------------------------------------ the model


@dataclass
class Transcriber:
    """A loaded model and what its outputs mean: a frame model (a downstream run's), or a note transcriber
    (onset and frame outputs, notes decoded from onsets)."""

    model: "DownstreamModel | NoteTranscriber"
    task: str
    threshold: float
    """Frame probability threshold: of frame-wise decoding, or of a note transcriber's sustain."""
    source: Path
    programs: tuple[int, ...]
    """GM program of each block of 128 outputs: (1,) for transcription and notes, INSTRUMENT_PROGRAMS for
    pitch-instrument."""
    evaluation: "Chunking | None" = None
    """How the run's evaluation cut recordings (``Chunking.for_run`` of its run.json), when known."""
    onset_threshold: float | None = None
    """A note transcriber's onset threshold (None for a frame model)."""

    @property
    def decodes_onsets(self) -> bool:
        return self.onset_threshold is not None

    def chunking(self, chunk_seconds: float | None = None, context_seconds: float | None = None,
                 batch_size: int | None = None) -> "Chunking":
        """How files are cut; each argument left None keeps the default.

        The default reproduces the run's evaluation: ``jtm evaluate`` and threshold tuning
        (``DownstreamModel.predict_frames``) cut recordings into training-length windows whose outer
        ``eval_context_frames`` on each side are context, in batches of the run's batch size; the model only
        ever saw windows that long, and its threshold was tuned that way, so transcription does the same.
        Without a run.json: 10 s chunks with 1 s of context, one at a time.
        """
        from jtm.models.inference import Chunking, frames_in

        if self.decodes_onsets:  # the front end's own chunking (see NoteTranscriber.chunking)
            return self.model.chunking(chunk_seconds, context_seconds, batch_size)
        base = self.evaluation or Chunking.in_seconds(10.0, 1.0, batch_size=1)
        context = None if context_seconds is None else frames_in(context_seconds)
        return dataclasses.replace(
            base, core=base.core if chunk_seconds is None else max(1, frames_in(chunk_seconds)),
            left=base.left if context is None else context, right=base.right if context is None else context,
            batch_size=base.batch_size if batch_size is None else batch_size)

    @property
    def n_instruments(self) -> int:
        return len(self.programs)


def resolve_downstream_dir(path: str | Path) -> Path:
    """The downstream model folder: ``RUN/model`` given ``RUN``, or the ``model/`` folder itself."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model folder")
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    if (path / "encoder" / "config.json").is_file():
        raise ModelFileError(f"{path}: this is a pretraining run (an encoder, no task head); transcription needs a "
                             "downstream run trained with jtm downstream --task transcription or pitch-instrument")
    raise ModelFileError(f"{path}: not a downstream run folder (RUN/model/config.json) nor its model/ folder")


def load_transcriber(path: str | Path, threshold: float | None = None,
                     onset_threshold: float | None = None) -> Transcriber:
    """Load a downstream run (or its ``model/``), or a note transcriber (a study's notes cell or its ``model/``),
    for transcription; refuse models of other tasks.

    The threshold is ``threshold`` if given, else the one tuned on validation data (``config.json``), else 0.5;
    a note transcriber's onset threshold likewise from ``onset_threshold``.
    """
    from jtm.models.downstream import DownstreamModel
    from jtm.models.note_transcriber import is_note_transcriber

    folder = resolve_downstream_dir(path)
    if is_note_transcriber(folder):
        return _load_note_transcriber(folder, threshold, onset_threshold)
    if onset_threshold is not None:
        raise JTMError(f"{folder}: --onset-threshold is for note models (a study's notes cell); this model "
                       "decodes notes from frames")
    cfg = load_json(folder / "config.json")
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if task not in FRAME_TASKS:
        raise JTMError(f"{folder}: the model was trained for the task {task!r}; transcription needs a "
                       f"'transcription' or 'pitch-instrument' model")
    model = DownstreamModel.from_pretrained(folder).eval()
    if threshold is None:
        saved = cfg.get("threshold")
        threshold = float(saved) if isinstance(saved, (int, float)) and 0 < saved <= 1 else 0.5
    if not 0.0 < threshold <= 1.0:
        raise JTMError(f"--threshold must be in (0, 1], got {threshold}")
    programs = (PIANO_PROGRAM,) if task == "transcription" else tuple(INSTRUMENT_PROGRAMS)
    return Transcriber(model=model, task=task, threshold=float(threshold), source=folder, programs=programs,
                       evaluation=_evaluation_chunking(folder.parent / "run.json"))


def _load_note_transcriber(folder: Path, threshold: float | None, onset_threshold: float | None) -> Transcriber:
    from jtm.models.note_transcriber import NOTE_TASK, NoteTranscriber

    model = NoteTranscriber.from_pretrained(folder)
    chosen = {"--threshold": model.thresholds.sustain if threshold is None else threshold,
              "--onset-threshold": model.thresholds.onset if onset_threshold is None else onset_threshold}
    for option, value in chosen.items():
        if not 0.0 < value <= 1.0:
            raise JTMError(f"{option} must be in (0, 1], got {value}")
    return Transcriber(model=model, task=NOTE_TASK, threshold=float(chosen["--threshold"]), source=folder,
                       programs=(PIANO_PROGRAM,), onset_threshold=float(chosen["--onset-threshold"]))


def _evaluation_chunking(run_json: Path) -> "Chunking | None":
    """The chunking of the run's evaluation, from its run.json (None without one)."""
    from jtm.models.inference import Chunking

    if not run_json.is_file():
        return None
    try:
        cfg = load_json(run_json)
    except Exception:  # the model folder is what matters; a damaged run.json only loses the chunking hint
        return None
    return Chunking.for_run(cfg) if isinstance(cfg, dict) else None


def iter_probabilities(tr: Transcriber, path: str | Path, chunking: "Chunking | None" = None
                       ) -> Iterator[np.ndarray]:
    """Frame probabilities of a file, chunk core by chunk core, float32 (n, n_out) each, in order (the file
    streamed; ``chunking`` defaults to :meth:`Transcriber.chunking`, the run's evaluation)."""
    tr.model.eval()
    for _, probs in iter_frames(path, tr.model.frame_probabilities, chunking or tr.chunking()):
        yield probs


def iter_note_probabilities(tr: Transcriber, path: str | Path, chunking: "Chunking | None" = None
                            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A note transcriber's (onset, frame) probabilities of a file, float32 (n, 128) each, chunk by chunk in
    order (the file streamed; :meth:`NoteTranscriber.stream`, as ``jtm evaluate`` of the model predicts)."""
    stream = tr.model.stream(stream_audio(path), chunking or tr.chunking())
    for _, onset, frame in checked_frames(path, stream):
        yield onset, frame


def _decode_file(tr: Transcriber, path: Path, chunking: "Chunking") -> tuple[list[NoteList], int]:
    """The notes of a file (one NoteList per instrument) and its number of frames, streamed."""
    if tr.decodes_onsets:
        assert tr.onset_threshold is not None
        onsets = OnsetNoteStitcher(tr.onset_threshold, tr.threshold)
        for onset, frame in iter_note_probabilities(tr, path, chunking):
            onsets.push(onset, frame)
        return [onsets.finish()], onsets.frames
    stitcher = NoteStitcher(tr.n_instruments, tr.threshold)
    for probs in iter_probabilities(tr, path, chunking):
        stitcher.push(probs)
    return stitcher.finish(), stitcher.frames


# ------------------------------------------------------------------------------------------ files


@dataclass
class TranscribeResult:
    """One transcribed file: its outputs, note count and speed."""

    source: Path
    midi: Path
    outputs: list[Path] = field(default_factory=list)
    n_notes: int = 0
    instruments: list[str] = field(default_factory=list)
    duration: float = 0.0
    seconds: float = 0.0

    @property
    def speed(self) -> float:
        """Seconds of audio per second of computation (x real time)."""
        return self.duration / self.seconds if self.seconds > 0 else float("inf")


def transcribe_file(tr: Transcriber, path: str | Path, out_dir: str | Path, *, stem: str | None = None,
                    piano_roll: bool = False, csv: bool = False, chunk_seconds: float | None = None,
                    context_seconds: float | None = None, batch_size: int | None = None) -> TranscribeResult:
    """Transcribe one audio file into ``out_dir/<stem>.mid`` (+ ``.png`` / ``.csv``), all written atomically.

    Chunking defaults to :meth:`Transcriber.chunking` (the run's evaluation setting); memory is bounded by one
    batch of chunks whatever the file's length. Raises :class:`~jtm.errors.DataError` naming the file for bad
    input; nothing is written then.
    """
    from jtm.evaluation.midi import notes_to_csv, notes_to_midi

    chunking = tr.chunking(chunk_seconds, context_seconds, batch_size)
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    watch = Stopwatch()
    per_instrument, n_frames = _decode_file(tr, path, chunking)
    notes = {prog: nl for prog, nl in zip(tr.programs, per_instrument) if len(nl) or tr.n_instruments == 1}
    duration = n_frames / FRAME_RATE
    try:
        duration = probe_audio(path).duration
    except Exception:  # validated while streaming; the header only refines the speed figure
        pass
    result = TranscribeResult(source=path, midi=out_dir / f"{stem}.mid", duration=duration,
                              n_notes=sum(len(n) for n in notes.values()),
                              instruments=[MUSICNET_INSTRUMENTS.get(p, f"program {p}") for p in notes])
    notes_to_midi(notes, result.midi)
    result.outputs.append(result.midi)
    if csv:
        result.outputs.append(notes_to_csv(notes, out_dir / f"{stem}.csv"))
    if piano_roll:
        result.outputs.append(write_notes_png(notes, out_dir / f"{stem}.png", duration, title=path.name))
    result.seconds = watch.seconds
    return result


def notes_png(notes_by_program: dict[int, NoteList], duration: float, title: str = "") -> bytes:
    """A piano roll of transcribed notes (one colour per instrument) over the whole file, as PNG bytes.

    The notes are rasterised straight into an image the width of the figure (difference array + cumsum per
    pitch row), so drawing costs the same for 10 or 10 000 notes and for a file of any length; one matplotlib
    patch per note took longer than the transcription itself.
    """
    import io

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    dpi = 100
    width = float(np.clip(duration * 0.25, 8.0, 24.0))
    fig = Figure(figsize=(width, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    span = max(duration, 1e-3)
    n_px = int(width * dpi)
    image = np.ones((N_PITCHES, n_px, 3), dtype=np.float32)  # white background, rows = MIDI pitch
    cmap = colormaps["tab10"]
    handles, pitches = [], []
    for i, (program, nl) in enumerate(sorted(notes_by_program.items())):
        if not len(nl):
            continue
        start = np.clip((nl.onset / span * n_px).astype(np.int64), 0, n_px - 1)
        end = np.clip(np.ceil(nl.offset / span * n_px).astype(np.int64), start + 1, n_px)  # >= 1 pixel wide
        diff = np.zeros((N_PITCHES, n_px + 1), dtype=np.int32)
        pitch = nl.pitch.astype(np.int64)
        np.add.at(diff, (pitch, start), 1)
        np.add.at(diff, (pitch, end), -1)
        on = np.cumsum(diff[:, :-1], axis=1) > 0
        image[on] = np.asarray(cmap(i % 10)[:3], dtype=np.float32)
        handles.append(Patch(color=cmap(i % 10), label=MUSICNET_INSTRUMENTS.get(program, f"program {program}")))
        pitches.append(pitch)
    ax.imshow(image, origin="lower", aspect="auto", interpolation="nearest",
              extent=(0.0, span, -0.5, N_PITCHES - 0.5))
    if pitches:
        allp = np.concatenate(pitches)
        ax.set_ylim(int(allp.min()) - 2.5, int(allp.max()) + 2.5)
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    else:
        ax.set_ylim(20.5, 108.5)
        ax.text(0.5, 0.5, "no notes detected", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.grid(True, alpha=0.25)
    ax.set_title(title or "transcription")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def write_notes_png(notes_by_program: dict[int, NoteList], path: Path, duration: float, title: str = "") -> Path:
    png = notes_png(notes_by_program, duration, title)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


def transcribe_files(model: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *,
                     threshold: float | None = None, onset_threshold: float | None = None, piano_roll: bool = False,
                     csv: bool = False, on_error: str = "raise", chunk_seconds: float | None = None,
                     context_seconds: float | None = None, batch_size: int | None = None, threads: int | None = None,
                     echo: Callable[[str], None] | None = print) -> BatchOutcome:
    """Transcribe every input with one model loaded once; print each file's real-time factor.

    Returns a :class:`~jtm.pipelines.chunked.BatchOutcome` of :class:`TranscribeResult` s and skipped inputs.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    names = output_names(inputs, "")
    tr = load_transcriber(model, threshold, onset_threshold)
    say = echo or (lambda s: None)
    chunking = tr.chunking(chunk_seconds, context_seconds, batch_size)
    decoding = (f"notes from onsets: onset threshold {tr.onset_threshold:.2f}, sustain threshold {tr.threshold:.2f}"
                if tr.decodes_onsets else f"threshold {tr.threshold:.2f}")
    say(f"model {tr.source} ({tr.task}, {decoding}); chunks of {chunking.core / FRAME_RATE:g} s "
        f"with {chunking.left / FRAME_RATE:g} s of context on each side, {chunking.batch_size} per batch")
    stem_of = {Path(p): n for p, n in zip(inputs, names)}

    def one(path: Path) -> TranscribeResult:
        r = transcribe_file(tr, path, out_dir, stem=stem_of[path], piano_roll=piano_roll, csv=csv,
                            chunk_seconds=chunk_seconds, context_seconds=context_seconds, batch_size=batch_size)
        say(f"{path} -> {r.midi}: {r.n_notes} notes ({', '.join(r.instruments) or 'none'}); "
            f"{r.duration:.1f} s of audio in {r.seconds:.2f} s = {r.speed:.0f}x real time")
        return r

    return process_files(inputs, one, on_error=on_error, echo=echo)

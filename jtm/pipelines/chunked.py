"""Frame-level inference over audio files of any length, in bounded memory.

A file is decoded block by block (soundfile), mixed to mono and resampled to 16 kHz with a streaming soxr
resampler (bit-identical to ``jtm.audio.resample`` on the whole file), then cut into chunks of ``chunk_frames``
frames with ``context_frames`` of extra audio on each side. The model sees the chunk with its context; only the
core frames are kept, so the receptive field of the convolutions (and some warm-up of a recurrent context
network) is covered at chunk boundaries and the stitched frames line up exactly with the whole-file frame grid
(frame ``f`` covers samples ``[160 f, 160 (f + 1))``, ``T // 160`` frames in all).

At no point is more than one chunk (plus its context) of audio, or one chunk of model outputs, held in memory:
consumers receive the frames chunk by chunk and decide what to keep.

Validation matches :func:`jtm.audio.load_audio` (missing, empty, non-audio, truncated, NaN/inf input all raise
:class:`~jtm.errors.DataError` naming the file); truncation and non-finite samples are only discovered while
reading, so consumers must not publish a result before the stream is exhausted.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
import soxr

from jtm.audio import SAMPLE_RATE, probe_audio, to_mono
from jtm.errors import DataError

HOP = 160
"""Samples per frame at 16 kHz (100 frames per second), as in ``jtm.data.labels``."""

READ_BLOCK = 1 << 16
"""Frames decoded per read: large enough to amortise the call, small enough to be negligible in memory."""


def stream_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, block: int = READ_BLOCK) -> Iterator[np.ndarray]:
    """Yield a file's audio as consecutive float32 mono blocks (n,) at ``sample_rate``.

    Concatenated, the blocks equal ``jtm.audio.load_audio(path, sample_rate)[0]``. Raises :class:`DataError`
    naming the file when it is missing, empty, unreadable, has no samples, is shorter than its header says,
    or holds NaN/inf samples (the last two only once reading reaches the problem).
    """
    info = probe_audio(path)
    path = info.path
    resampler = None
    if info.sample_rate != sample_rate:
        resampler = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    total = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                total += data.shape[0]
                mono = to_mono(data)
                if not np.isfinite(mono).all():
                    raise DataError(path, "audio contains NaN or infinite samples")
                out = mono if resampler is None else resampler.resample_chunk(mono)
                if out.size:
                    yield out
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(path, f"not a readable audio file ({e})") from None
    if total == 0:
        raise DataError(path, "audio has no samples")
    if info.frames > 0 and total < info.frames:
        raise DataError(path, f"audio is truncated: header says {info.frames} frames, file holds {total}")
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail


@dataclass(frozen=True)
class Chunk:
    """One piece of a long signal, ready for a frame model.

    ``audio`` (L,) holds the core samples plus up to ``context`` frames of audio on each side; the model's
    output frames ``[skip, skip + n_frames)`` are the core frames, global frames
    ``[first_frame, first_frame + n_frames)`` of the file.
    """

    audio: np.ndarray
    first_frame: int
    skip: int
    n_frames: int


def iter_chunks(blocks: Iterable[np.ndarray], chunk_frames: int = 1000, context_frames: int = 100,
                hop: int = HOP) -> Iterator[Chunk]:
    """Re-cut a stream of sample blocks into overlapping chunks (see :class:`Chunk`).

    Every chunk starts its audio on a frame boundary, so a model with ``F = L // hop`` outputs keeps the global
    frame grid. The cores tile the signal's ``T // hop`` whole frames exactly once; trailing samples that do not
    fill a frame give no frame, as in training. Only the samples from ``context`` frames before the current
    core onwards are buffered.
    """
    if chunk_frames < 1 or context_frames < 0:
        raise ValueError("chunk_frames must be >= 1 and context_frames >= 0")
    core, ctx = chunk_frames * hop, context_frames * hop
    it = iter(blocks)
    parts: list[np.ndarray] = []
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # global sample index of buf[0]
    start = 0  # global sample index of the current core
    eof = False
    while True:
        need = start + core + ctx
        have = buf_start + buf.size
        while not eof and have < need:
            try:
                nxt = np.asarray(next(it), dtype=np.float32)
            except StopIteration:
                eof = True
                break
            parts.append(nxt)
            have += nxt.size
        if parts:
            buf = np.concatenate([buf, *parts])
            parts = []
        end_avail = buf_start + buf.size
        core_end = min(start + core, end_avail)
        n_frames = (core_end - start) // hop
        if n_frames <= 0:
            return
        in_start = max(0, start - ctx)
        in_end = min(end_avail, start + core + ctx)
        audio = buf[in_start - buf_start:in_end - buf_start]
        yield Chunk(audio=audio, first_frame=start // hop, skip=(start - in_start) // hop, n_frames=n_frames)
        start += core
        keep_from = max(0, start - ctx)
        if keep_from > buf_start:
            # A copy rather than a view, so the consumed part of the buffer is actually freed.
            buf = buf[keep_from - buf_start:].copy()
            buf_start = keep_from


FrameFn = Callable[[Chunk], np.ndarray]
"""A frame model on one chunk: returns the outputs of the chunk's core frames, (chunk.n_frames, D).

It is called on the chunks of a file in order, so it may carry state (a recurrent network's hidden state)
from one chunk to the next."""

BatchFn = Callable[[list[Chunk]], list[np.ndarray]]
"""A frame model on a batch of consecutive chunks: one (chunk.n_frames, D) array per chunk, in order."""


def core_frames(out: np.ndarray, chunk: Chunk) -> np.ndarray:
    """Keep a chunk's core from a model's outputs over the whole chunk: (>= L // 160, D) -> (n_frames, D)."""
    if out.ndim != 2 or out.shape[0] < chunk.skip + chunk.n_frames:
        raise RuntimeError(f"frame model returned shape {tuple(out.shape)} for {chunk.audio.size} samples; "
                           f"expected ({chunk.audio.size // HOP}, D)")
    return out[chunk.skip:chunk.skip + chunk.n_frames]


def stack_chunks(chunks: Sequence[Chunk]) -> np.ndarray:
    """The chunks' audio as one (B, L_max) float32 batch, zero-padded on the right.

    Only the last chunk of a file can be shorter; padding after its end changes none of its core frames for
    convolutions with the usual margin and forward-running context networks.
    """
    length = max(c.audio.size for c in chunks)
    batch = np.zeros((len(chunks), length), dtype=np.float32)
    for i, c in enumerate(chunks):
        batch[i, :c.audio.size] = c.audio
    return batch


def frames_in(seconds: float) -> int:
    """Frames in ``seconds`` of audio at 100 frames per second (at least 0)."""
    return max(0, int(round(seconds * SAMPLE_RATE / HOP)))


def iter_frames(path: str | Path, frame_fn: FrameFn | None = None, chunk_seconds: float = 10.0,
                context_seconds: float = 1.0, *, batch_fn: BatchFn | None = None, batch_size: int = 1,
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Run a frame model over a file chunk by chunk; yield ``(first_frame, outputs (n, D))`` for each core.

    Give either ``frame_fn`` (one chunk at a time) or ``batch_fn`` with ``batch_size`` (that many consecutive
    chunks at once: faster for short chunks, memory grows with the batch).
    Raises :class:`DataError` naming the file for bad input (possibly after some chunks were yielded) and
    when the file holds less than one frame (10 ms) of audio.
    """
    if (frame_fn is None) == (batch_fn is None):
        raise ValueError("give exactly one of frame_fn and batch_fn")
    if batch_fn is None:
        assert frame_fn is not None
        single = frame_fn

        def batch_fn(chunks: list[Chunk]) -> list[np.ndarray]:
            return [single(c) for c in chunks]

        batch_size = 1
    n_total = 0
    pending: list[Chunk] = []
    chunks = iter_chunks(stream_audio(path), max(1, frames_in(chunk_seconds)), frames_in(context_seconds))

    def run(batch: list[Chunk]) -> Iterator[tuple[int, np.ndarray]]:
        outs = batch_fn(batch)
        for chunk, out in zip(batch, outs, strict=True):
            out = np.asarray(out)
            if out.ndim != 2 or out.shape[0] != chunk.n_frames:
                raise RuntimeError(f"frame model returned shape {out.shape} for a chunk of {chunk.n_frames} frames")
            yield chunk.first_frame, out

    for chunk in chunks:
        pending.append(chunk)
        n_total += chunk.n_frames
        if len(pending) >= max(1, batch_size):
            yield from run(pending)
            pending = []
    if pending:
        yield from run(pending)
    if n_total == 0:
        raise DataError(path, f"audio is shorter than one {1000 * HOP // SAMPLE_RATE} ms frame")


# ------------------------------------------------------------------------------------------- many files

T = TypeVar("T")


@dataclass
class BatchOutcome:
    """What a run over many inputs produced: one result per processed file, and the files skipped."""

    results: list = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of each input left out under ``on_error='skip'``."""


def process_files(paths: Sequence[str | Path], fn: Callable[[Path], T], on_error: str = "raise",
                  echo: Callable[[str], None] | None = None) -> BatchOutcome:
    """Apply ``fn`` to each input; a :class:`DataError` stops the run (``raise``) or is counted (``skip``).

    Errors that are not about the input (bugs, out of memory) always propagate.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    outcome = BatchOutcome()
    for p in paths:
        try:
            outcome.results.append(fn(Path(p)))
        except DataError as e:
            if on_error == "raise":
                raise
            outcome.skipped.append((str(e.path), e.problem))
            if echo is not None:
                echo(f"skipped {e}")
    return outcome


class Stopwatch:
    """Wall-clock seconds since creation (``perf_counter``), for real-time factors."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def summary_line(outcome: BatchOutcome, verb: str = "processed") -> str:
    """One line about a batch: files, audio seconds, compute seconds, overall real-time factor, skips.

    ``outcome.results`` must have ``duration`` (audio seconds) and ``seconds`` (compute seconds).
    """
    audio = sum(r.duration for r in outcome.results)
    compute = sum(r.seconds for r in outcome.results)
    speed = f"{audio / compute:.0f}x" if compute > 0 else "n/a"
    line = f"{verb} {len(outcome.results)} file(s): {audio:.1f} s of audio in {compute:.2f} s, {speed} real time overall"
    if outcome.skipped:
        line += f"; skipped {len(outcome.skipped)} bad input(s)"
    return line

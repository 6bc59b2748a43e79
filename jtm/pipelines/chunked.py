"""Frame models over audio files of any length, in bounded memory: the file side of the chunked runner.

A file is decoded block by block (soundfile), mixed to mono and resampled to 16 kHz with a streaming soxr
resampler (bit-identical to ``jtm.audio.resample`` on the whole file), and the blocks are fed to
:func:`jtm.models.inference.run_chunked`, the one runner that evaluation, threshold tuning, embedding and
transcription share. It cuts them into chunks with context, runs the model on batches of chunks and yields the
core frames in order, on the whole file's frame grid; at no point is more than one batch of chunks of audio, or
of model outputs, held in memory: consumers receive the frames chunk by chunk and decide what to keep.

Validation matches :func:`jtm.audio.load_audio` (missing, empty, non-audio, truncated, NaN/inf input all raise
:class:`~jtm.errors.DataError` naming the file); truncation and non-finite samples are only discovered while
reading, so consumers must not publish a result before the stream is exhausted.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import soundfile as sf
import soxr

from jtm.audio import FRAME_RATE, SAMPLE_RATE, probe_audio, to_mono
from jtm.errors import DataError

if TYPE_CHECKING:
    from jtm.models.inference import Chunking, FramesFn, StepFn

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


def iter_frames(path: str | Path, frames_fn: "FramesFn", chunking: "Chunking", *,
                step_fn: "StepFn | None" = None) -> Iterator[tuple[int, np.ndarray]]:
    """Run a frame model over a file with :func:`jtm.models.inference.run_chunked`, the file streamed; yield
    ``(first_frame, outputs (n, D))`` for each chunk's core, in order.

    Raises :class:`DataError` naming the file for bad input (possibly after some chunks were yielded) and
    when the file holds less than one frame (10 ms) of audio.
    """
    from jtm.models.inference import run_chunked

    yield from checked_frames(path, run_chunked(stream_audio(path), frames_fn, chunking, step_fn=step_fn))


def checked_frames(path: str | Path, outputs: Iterable[tuple]) -> Iterator[tuple]:
    """Pass on a file's outputs ``(first_frame, (n, D), ...)``; a file that gave no frame at all is a
    :class:`DataError` naming it (less than one frame, 10 ms, of audio)."""
    n_total = 0
    for item in outputs:
        n_total += len(item[1])
        yield item
    if n_total == 0:
        raise DataError(Path(path), f"audio is shorter than one {1000 / FRAME_RATE:g} ms frame")


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

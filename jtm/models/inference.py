"""The one chunked runner: a frame model over a recording of any length, in bounded memory.

A frame model is any ``frames_fn(wave (B, T)) -> (B, T // HOP, D)`` (a CPC encoder, a downstream model's
sigmoid, a log-mel front end). The recording, given whole (a numpy array) or as a stream of sample blocks (a
file being decoded), is cut into chunks on the global frame grid (frame ``f`` covers samples
``[HOP f, HOP (f + 1))``, ``T // HOP`` frames in all):

- each chunk keeps ``core`` frames and sees ``left`` frames of real audio before them and ``right`` after
  (fewer at the recording's edges: the first chunk starts at sample 0, so it sees ``left + right`` frames after
  its core instead); cores tile the recording, so every frame is predicted exactly once;
- ``pad_end=True`` (evaluation and transcription): every chunk is exactly ``left + core + right`` frames long, the
  last one zero-padded, so the model only ever sees inputs of its training length;
  ``pad_end=False`` (embedding): the last chunk ends at the recording's end, as one pass over it would;
- ``batch_size`` consecutive chunks of equal length run as one batch (a recurrent network is far faster on a
  batch than step by step);
- ``step_fn(frames (1, n, D), state) -> (out (1, n, D'), state)``, if given, runs on the core frames of each
  chunk in order and carries its state from chunk to chunk: a forward recurrent network stitched this way equals
  one pass over the whole recording.

With a finite receptive field no longer than the context, or a causal recurrent stage carried by ``step_fn``,
the stitched frames equal one pass over the whole recording (``pad_end=False``).

Memory: one batch of chunks (plus one block of the stream) of audio, and one batch of outputs.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jtm.audio import FRAME_RATE, HOP
from jtm.configs import MAX_BATCH_SIZE, MAX_WINDOW

FramesFn = Callable[[Tensor], Tensor]
"""A frame model: wave float32 (B, T) on the CPU -> outputs (B, T // HOP, D) (any device and float dtype)."""

StepFn = Callable[[Tensor, object], tuple[Tensor, object]]
"""A stateful stage after the frame model: (core frames (1, n, D), state or None) -> ((1, n, D'), new state)."""


@dataclass(frozen=True)
class Chunking:
    """How a recording is cut into chunks (see the module docstring); lengths in frames."""

    core: int
    left: int = 0
    right: int = 0
    batch_size: int = 8
    pad_end: bool = True

    def __post_init__(self) -> None:
        if self.core < 1 or self.left < 0 or self.right < 0 or self.batch_size < 1:
            raise ValueError(f"invalid chunking {self}: need core >= 1, left >= 0, right >= 0, batch_size >= 1")

    @property
    def window(self) -> int:
        """Frames of input each chunk holds: ``left + core + right``."""
        return self.left + self.core + self.right

    @classmethod
    def for_window(cls, window: int, context: int | None = None, batch_size: int = 8) -> "Chunking":
        """Chunks as long as a model's training window (``window`` samples) whose outer ``context`` frames on
        each side are context (None: an eighth of the window), clamped so that at least one core frame is left:
        how ``jtm evaluate``, threshold tuning and ``jtm transcribe`` of a run cut recordings."""
        frames = window // HOP
        if frames < 1:
            raise ValueError(f"a window of {window} samples holds no {HOP}-sample frame")
        ctx = frames // 8 if context is None else int(context)
        ctx = max(0, min(ctx, (frames - 1) // 2))
        return cls(core=frames - 2 * ctx, left=ctx, right=ctx, batch_size=batch_size, pad_end=True)

    @classmethod
    def for_run(cls, run_config: Mapping[str, Any]) -> "Chunking | None":
        """The chunking of a downstream run's evaluation, from its ``run.json`` (keys ``window``,
        ``eval_context_frames``, ``batch_size``; see :meth:`for_window`); None when it records no usable window."""
        def whole(key: str, least: int, most: int) -> int | None:
            value = run_config.get(key)
            # beyond the configs' own bounds (jtm.configs) is a hostile run.json: never allocate what it claims
            usable = isinstance(value, int) and not isinstance(value, bool) and least <= value <= most
            return value if usable else None

        window = whole("window", 2 * HOP, MAX_WINDOW)
        if window is None:
            return None
        return cls.for_window(window, whole("eval_context_frames", 0, MAX_WINDOW // HOP),
                              whole("batch_size", 1, MAX_BATCH_SIZE) or 8)

    @classmethod
    def in_seconds(cls, chunk_seconds: float, context_seconds: float, batch_size: int = 1,
                   pad_end: bool = True) -> "Chunking":
        """``chunk_seconds`` of core (at least one frame) with ``context_seconds`` on each side."""
        ctx = frames_in(context_seconds)
        return cls(core=max(1, frames_in(chunk_seconds)), left=ctx, right=ctx, batch_size=batch_size,
                   pad_end=pad_end)


def frames_in(seconds: float) -> int:
    """Whole frames in ``seconds`` of audio (rounded, at least 0)."""
    return max(0, int(round(seconds * FRAME_RATE)))


@dataclass(frozen=True)
class _Chunk:
    wave: np.ndarray  # (L,) float32: the chunk's input samples
    first_frame: int  # global index of the first core frame
    skip: int  # core frames start at this output frame of the chunk
    n_frames: int  # core frames


class _SampleWindow:
    """A stream of sample blocks read through a sliding range: blocks entirely before the range are dropped,
    and a read copies only the samples asked for (a whole recording given as one block is never copied)."""

    def __init__(self, blocks: Iterable[np.ndarray]) -> None:
        self._blocks: Iterator[np.ndarray] = iter(blocks)
        self._held: deque[tuple[int, np.ndarray]] = deque()  # (global index of the block's first sample, block)
        self.end = 0  # one past the last sample pulled so far
        self.exhausted = False

    def fill(self, upto: int) -> None:
        """Pull blocks until sample ``upto`` is held or the stream ends."""
        while not self.exhausted and self.end < upto:
            block = next(self._blocks, None)
            if block is None:
                self.exhausted = True
                break
            block = np.asarray(block, dtype=np.float32).reshape(-1)
            if block.size:
                self._held.append((self.end, block))
                self.end += block.size

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, min(stop, end))`` as float32 (n,); a view when they lie in one block."""
        stop = min(stop, self.end)
        pieces = [block[max(0, start - at):stop - at] for at, block in self._held
                  if at < stop and at + block.size > start]
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def drop_before(self, start: int) -> None:
        while self._held and self._held[0][0] + self._held[0][1].size <= start:
            self._held.popleft()


def _cut(samples: _SampleWindow, chunking: Chunking) -> Iterator[_Chunk]:
    """The chunks of a recording, in order (see the module docstring for where each one lies)."""
    first = 0
    while True:
        start = max(0, first - chunking.left)  # in frames
        stop = start + chunking.window
        samples.fill(stop * HOP)
        n_frames = min(chunking.core, samples.end // HOP - first)
        if n_frames <= 0:
            return
        wave = samples.read(start * HOP, stop * HOP)
        if chunking.pad_end and wave.size < chunking.window * HOP:
            wave = np.concatenate([wave, np.zeros(chunking.window * HOP - wave.size, dtype=np.float32)])
        yield _Chunk(wave, first, first - start, n_frames)
        first += chunking.core
        samples.drop_before(max(0, first - chunking.left) * HOP)


def _batches(chunks: Iterable[_Chunk], batch_size: int) -> Iterator[list[_Chunk]]:
    """Consecutive chunks in groups of at most ``batch_size``, all of one input length (so nothing is padded)."""
    batch: list[_Chunk] = []
    for chunk in chunks:
        if batch and chunk.wave.size != batch[0].wave.size:
            yield batch
            batch = []
        batch.append(chunk)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _core_outputs(frames_fn: FramesFn, batch: list[_Chunk]) -> list[Tensor]:
    """Run the frame model on one batch; each chunk's core frames, (n_frames, D) float32 on the CPU."""
    wave = torch.from_numpy(np.stack([c.wave for c in batch]))
    with torch.inference_mode():
        out = frames_fn(wave)
    if out.dim() != 3 or out.shape[0] != len(batch) or out.shape[1] != wave.shape[1] // HOP:
        raise RuntimeError(f"frame model returned shape {tuple(out.shape)} for input {tuple(wave.shape)}; "
                           f"expected ({len(batch)}, {wave.shape[1] // HOP}, D)")
    out = out.detach().float().cpu()
    return [out[b, c.skip:c.skip + c.n_frames] for b, c in enumerate(batch)]


def run_chunked(audio: np.ndarray | Iterable[np.ndarray], frames_fn: FramesFn, chunking: Chunking, *,
                step_fn: StepFn | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Run ``frames_fn`` (then ``step_fn``) over a recording chunk by chunk; yield ``(first_frame, outputs)``.

    ``audio``: the whole recording, float32 (T,), or an iterable of consecutive sample blocks (n_i,) read
    lazily. ``outputs`` float32 (n, D) are the frames ``[first_frame, first_frame + n)``; the cores tile
    ``T // HOP`` frames in order (a recording shorter than one frame yields nothing). The caller puts the model
    in eval mode; the runner computes without gradients.
    """
    blocks = [audio] if isinstance(audio, np.ndarray) else audio
    state = None
    for batch in _batches(_cut(_SampleWindow(blocks), chunking), chunking.batch_size):
        for chunk, out in zip(batch, _core_outputs(frames_fn, batch)):
            if step_fn is not None:
                with torch.inference_mode():
                    stepped, state = step_fn(out[None], state)
                out = stepped[0].detach().float().cpu()
            yield chunk.first_frame, out.numpy()


def run_array(audio: np.ndarray, frames_fn: FramesFn, chunking: Chunking, dim: int, *,
              step_fn: StepFn | None = None) -> np.ndarray:
    """:func:`run_chunked` over a whole recording (T,) into one float32 array (T // HOP, dim)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    out = np.zeros((audio.size // HOP, dim), dtype=np.float32)
    for first, frames in run_chunked(audio, frames_fn, chunking, step_fn=step_fn):
        out[first:first + len(frames)] = frames
    return out


def run_with_context(frames: Iterable[tuple[int, np.ndarray]], frames_fn: Callable[[Tensor], Tensor], context: int,
                     min_block: int = 256) -> Iterator[tuple[int, np.ndarray]]:
    """A second stage over a stream of frames (``(first_frame, (n, D))`` blocks in order, as :func:`run_chunked`
    yields them), for a stage that sees ``context`` frames on each side, such as 1-D convolutions over time.

    ``frames_fn(x (1, n, D)) -> (1, n, D')`` runs on a window of the stream holding ``context`` frames beyond
    the outputs it keeps on each side, except at the stream's two ends, where it sees the edge itself; so a
    stage whose receptive field is at most ``context`` frames, and which pads the ends of its input with zeros
    (``Conv1d(padding=...)``), gives exactly its outputs on the whole stream at once. Yields
    ``(first_frame, (n, D'))`` in order, tiling the stream. Memory: one input block plus ``2 context +
    min_block`` frames.
    """
    if context < 0 or min_block < 1:
        raise ValueError(f"need context >= 0 and min_block >= 1, got {context}, {min_block}")
    held: np.ndarray | None = None  # the frames [held_start, held_start + len(held)) of the stream
    held_start = done = 0  # done: the first frame not yet output

    def outputs(stop: int) -> np.ndarray:
        assert held is not None
        with torch.inference_mode():
            out = frames_fn(torch.from_numpy(np.ascontiguousarray(held))[None])
        return out[0, done - held_start:stop - held_start].detach().float().cpu().numpy()

    for first, block in frames:
        block = np.asarray(block, dtype=np.float32)
        if held is None:
            held, held_start = block, first
        else:
            held = np.concatenate([held, block])
        ready = held_start + len(held) - context  # outputs before this frame see all their context
        if ready - done >= min_block:
            yield done, outputs(ready)
            done = ready
            keep_from = max(held_start, done - context)
            held, held_start = held[keep_from - held_start:], keep_from
    if held is not None and held_start + len(held) > done:
        yield done, outputs(held_start + len(held))

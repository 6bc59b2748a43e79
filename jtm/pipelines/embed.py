"""``jtm embed``: CPC features of audio files as ``.npy`` arrays.

For each input ``<stem>.<ext>`` the output folder gets ``<stem>.npy``, float32:
- ``pool="none"``: (F, D), one row per 10 ms frame, F = (samples at 16 kHz) // 160 (100 rows per second);
- ``pool="mean"``: (1, D), the mean over the file's frames (one row per file, so files stack with
  ``np.concatenate``).
D is the encoder's ``context_dim`` (``layer="context"``, the c vectors) or ``encoder_dim`` (``layer="encoder"``,
the z vectors).

Files of any length are streamed through the chunked runner (:mod:`jtm.pipelines.chunked`,
:func:`jtm.models.inference.run_chunked`) with bounded memory: frame rows are spooled to a temporary file beside
the output and the ``.npy`` is assembled and renamed into place only when the whole input has been read and
validated. The result equals ``CPCEncoder.embed`` on the whole file (both use
:meth:`~jtm.models.cpc.CPCEncoder.chunk_functions`): the convolutional encoder sees a margin around each chunk,
and a GRU/LSTM/RNN context carries its hidden state from chunk to chunk. (Reverse-mode recurrent contexts, whose
state flows from the end of the file, and transformer contexts see ``context_seconds`` of audio on each side of
a chunk instead: an approximation.)
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jtm.audio import FRAME_RATE, probe_audio
from jtm.errors import JTMError, ModelFileError
from jtm.fileio import atomic_path, disk_full_errors, save_npy_atomic
from jtm.pipelines.chunked import Stopwatch, iter_frames, process_files

if TYPE_CHECKING:
    from jtm.models.cpc import CPCEncoder

LAYERS = ("context", "encoder", "spectrum")
POOLS = ("none", "mean")


def load_encoder(path: str | Path) -> "CPCEncoder":
    """A pretrained CPC encoder in eval mode, from a pretraining run folder or its ``encoder/`` folder (or
    anything else :func:`jtm.models.downstream.load_frontend_source` accepts: a downstream run with a CPC
    front end, a single encoder file)."""
    from jtm.models.downstream import load_frontend_source

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such encoder folder or pretraining run")
    return load_frontend_source(path).eval()


class RowSpool:
    """Collect float32 rows (n, D) of unknown total count on disk; publish them as one ``.npy`` atomically.

    Rows go to an unnamed-looking temporary file in the target's folder, so memory stays at one chunk; on
    :meth:`publish` the ``.npy`` header is written for the final shape and the rows are copied after it.
    """

    def __init__(self, target: Path, dim: int) -> None:
        self.target = Path(target)
        self.dim = dim
        self.rows = 0
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.NamedTemporaryFile(prefix=f".{self.target.name}.", suffix=".rows",
                                                 dir=self.target.parent, delete=True)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows of shape {rows.shape} do not match the spool's width {self.dim}")
        self._file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def publish(self) -> Path:
        """Write ``target`` as a (rows, dim) float32 ``.npy`` (allow_pickle-free format) and drop the spool."""
        self._file.flush()
        self._file.seek(0)
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
        with atomic_path(self.target) as tmp:
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                shutil.copyfileobj(self._file, f, length=1 << 22)
        self.close()
        return self.target

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RowSpool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EmbedResult:
    """One embedded file: where its features went, their shape, and how fast it ran."""

    source: Path
    output: Path
    shape: tuple[int, ...]
    duration: float
    seconds: float

    @property
    def speed(self) -> float:
        """Seconds of audio per second of computation (the real-time factor: > 1 is faster than real time)."""
        return self.duration / self.seconds if self.seconds > 0 else float("inf")


def output_names(paths: Sequence[str | Path], suffix: str) -> list[str]:
    """``<stem><suffix>`` for each input; two inputs with the same stem would overwrite each other, so refuse."""
    names = [Path(p).stem + suffix for p in paths]
    seen: dict[str, Path] = {}
    for p, name in zip(paths, names):
        if name in seen:
            raise JTMError(f"{p} and {seen[name]} would both be written to {name}; rename one of them or run "
                           "them into different output folders")
        seen[name] = Path(p)
    return names


def embed_file(encoder: "CPCEncoder", path: str | Path, target: str | Path, *, layer: str = "context",
               pool: str = "none", chunk_seconds: float = 10.0, context_seconds: float = 1.0) -> EmbedResult:
    """Embed one audio file (any format, rate, channels, length) into ``target`` (.npy, written atomically).

    Raises :class:`~jtm.errors.DataError` naming the file for bad input; nothing is written then.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    from jtm.models.cpc import embed_margin_frames
    from jtm.models.inference import Chunking, frames_in

    path, target = Path(path), Path(target)
    watch = Stopwatch()
    dim = encoder.config.layer_dim(layer)
    frames_fn, step_fn = encoder.eval().chunk_functions(layer)
    # As CPCEncoder.embed, so the rows equal its output: one chunk at a time, the last one ending with the file,
    # and never less context than the encoder's receptive field.
    context = max(frames_in(context_seconds), embed_margin_frames(encoder.config))
    chunking = Chunking(core=max(1, frames_in(chunk_seconds)), left=context, right=context, batch_size=1,
                        pad_end=False)
    frames = iter_frames(path, frames_fn, chunking, step_fn=step_fn)
    if pool == "mean":
        # float64 running sum: an hour is 360 000 frames, enough for float32 sums to lose digits.
        total, count = np.zeros(dim, dtype=np.float64), 0
        for _, rows in frames:
            total += rows.sum(axis=0, dtype=np.float64)
            count += rows.shape[0]
        mean = (total / count).astype(np.float32)[None]
        save_npy_atomic(target, mean)
        shape: tuple[int, ...] = mean.shape
        n_frames = count
    else:
        with disk_full_errors(target, exact=True), RowSpool(target, dim) as spool:
            for _, rows in frames:
                spool.append(rows)
            spool.publish()
            shape = (spool.rows, dim)
            n_frames = spool.rows
    duration = n_frames / FRAME_RATE
    try:
        duration = probe_audio(path).duration
    except Exception:  # already validated while streaming; the header is only for the speed figure
        pass
    return EmbedResult(path, target, shape, duration, watch.seconds)


def embed_files(model: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *, layer: str = "context",
                pool: str = "none", on_error: str = "raise", chunk_seconds: float = 10.0,
                context_seconds: float = 1.0, threads: int | None = None,
                echo: Callable[[str], None] | None = print):
    """Embed every input into ``out_dir/<stem>.npy`` with one encoder loaded once.

    Returns a :class:`~jtm.pipelines.chunked.BatchOutcome` whose ``results`` are :class:`EmbedResult` s and whose
    ``skipped`` lists (path, reason) of bad inputs under ``on_error="skip"``.
    """
    import torch

    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    names = output_names(inputs, ".npy")
    encoder = load_encoder(model)
    target_of = {Path(p): out_dir / n for p, n in zip(inputs, names)}
    say = echo or (lambda s: None)

    def one(path: Path):
        result = embed_file(encoder, path, target_of[path], layer=layer, pool=pool, chunk_seconds=chunk_seconds,
                            context_seconds=context_seconds)
        say(f"{path} -> {result.output} {result.shape}  ({result.duration:.1f} s of audio in "
            f"{result.seconds:.2f} s, {result.speed:.0f}x real time)")
        return result

    outcome = process_files(inputs, one, on_error=on_error, echo=echo)
    return outcome

"""Audio input: read any soundfile-supported file, validate it, mix to mono and resample with soxr."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from jtm.errors import DataError

SAMPLE_RATE = 16_000
"""The rate every model in jtm works at: a 160x encoder then gives 100 frames per second."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono audio (T,) with soxr's high-quality filter; a no-op when the rates match."""
    if orig_sr == target_sr:
        return audio
    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(T,) or (T, channels) -> (T,), averaging channels (stereo and 5.1 alike)."""
    return audio if audio.ndim == 1 else audio.mean(axis=1, dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono, resampled to ``sample_rate`` (None keeps the file's rate).

    Returns ``(audio, rate)`` with ``audio`` of shape (T,) in [-1, 1].
    Raises :class:`DataError` naming the file for empty, truncated, non-audio or non-finite input.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    try:
        with sf.SoundFile(path) as f:
            orig_sr = f.samplerate
            expected = f.frames
            audio = f.read(dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(path, f"not a readable audio file ({e})") from None
    if audio.size == 0:
        raise DataError(path, "audio has no samples")
    if expected > 0 and len(audio) < expected:
        raise DataError(path, f"audio is truncated: header says {expected} frames, file holds {len(audio)}")
    audio = to_mono(audio)
    if not np.isfinite(audio).all():
        raise DataError(path, "audio contains NaN or infinite samples")
    if sample_rate is not None:
        audio = resample(audio, orig_sr, sample_rate)
        return audio, sample_rate
    return audio, orig_sr


def find_audio_files(folder: str | Path) -> list[Path]:
    """Every audio file under ``folder`` (recursively), sorted so that runs are reproducible."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)

"""Audio input: read any soundfile-supported file, validate it, mix to mono and resample with soxr."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from jtm.errors import DataError
from jtm.fileio import check_regular_file

SAMPLE_RATE = 16_000
"""The rate every model in jtm works at."""
HOP = 160
"""Samples per frame: every front end's stride and every label frame (10 ms at ``SAMPLE_RATE``); frame ``f``
of a signal covers samples ``[HOP f, HOP (f + 1))``."""
FRAME_RATE = SAMPLE_RATE / HOP
"""Frames per second (100.0)."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono audio (T,) with soxr's high-quality filter; a no-op when the rates match."""
    if orig_sr == target_sr:
        return audio
    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(T,) or (T, channels) -> (T,), averaging channels (stereo and 5.1 alike)."""
    return audio if audio.ndim == 1 else audio.mean(axis=1, dtype=np.float32)


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: its native rate, channels, frame count and container format."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        """Seconds of audio the header announces."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe_audio(path: str | Path) -> AudioInfo:
    """Read and check a file's header; raise :class:`DataError` for missing, empty or non-audio files."""
    path = Path(path)
    if check_regular_file(path) == 0:  # also refuses a FIFO, which would block the decoder
        raise DataError(path, "file is empty")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(path, f"not a readable audio file: no {path.suffix or 'known'} decoder could parse it "
                              f"(libsndfile: {_decoder_message(e)})") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise DataError(path, f"not a readable audio file (rate {info.samplerate}, {info.channels} channels)")
    wav = wav_data_sizes(path)
    if wav is not None:
        declared, available, frame_bytes = wav
        if declared > available:
            raise DataError(path, f"audio is truncated: header says {declared // frame_bytes} frames, file holds "
                                  f"{available // frame_bytes}")
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames), str(info.format))


def wav_data_sizes(path: Path) -> tuple[int, int, int] | None:
    """For a RIFF/WAVE file: (bytes its data chunk declares, bytes actually present, bytes per frame).

    libsndfile quietly shortens a truncated WAV to the bytes present (its frame count then matches what it
    reads), so the truncation is only visible by comparing the header's data size with the file size.
    None for other formats, and for WAVs whose data size is a streaming placeholder (0 or 0xFFFFFFFF).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, frame_bytes = 12, 0
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
                if chunk_id == b"fmt " and chunk_size >= 16:
                    frame_bytes = struct.unpack("<H", f.read(14)[12:14])[0]
                elif chunk_id == b"data":
                    if chunk_size in (0, 0xFFFFFFFF) or frame_bytes <= 0:
                        return None
                    return chunk_size, size - (pos + 8), frame_bytes
                pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    except (OSError, struct.error):
        return None
    return None


def _decoder_message(error: Exception) -> str:
    # libsndfile's text for a file it cannot parse often blames the path ("does not exist or is not a regular
    # file") even when the file is there; keep only its last, most specific clause.
    message = str(error).split(": ")[-1].strip()
    if "does not exist" in message:  # the file exists (checked first): the decoder failed on its contents
        return "unrecognised or corrupt data"
    return message or type(error).__name__


def load_audio(path: str | Path, sample_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono, resampled to ``sample_rate`` (None keeps the file's rate).

    Returns ``(audio, rate)`` with ``audio`` of shape (T,) in [-1, 1].
    Raises :class:`DataError` naming the file for empty, truncated, non-audio or non-finite input.
    """
    info = probe_audio(path)
    path = info.path
    try:
        audio, orig_sr = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(path, f"not a readable audio file ({e})") from None
    if audio.size == 0:
        raise DataError(path, "audio has no samples")
    if info.frames > 0 and len(audio) < info.frames:
        raise DataError(path, f"audio is truncated: header says {info.frames} frames, file holds {len(audio)}")
    audio = to_mono(audio)
    if not np.isfinite(audio).all():
        raise DataError(path, "audio contains NaN or infinite samples")
    if sample_rate is not None:
        return resample(audio, orig_sr, sample_rate), sample_rate
    return audio, orig_sr


def find_audio_files(folder: str | Path) -> list[Path]:
    """Every audio file under ``folder`` (recursively), sorted so that runs are reproducible."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)

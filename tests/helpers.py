"""Builders of tiny test inputs: MusicNet-layout folders and plain audio folders of numpy sine tones.

Reusable by any test: ``from tests.helpers import make_musicnet_folder`` (or the fixtures in conftest).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

LABEL_RATE = 44_100
METADATA_COLUMNS = ("id", "composer", "composition", "movement", "ensemble", "source", "transcriber", "catalog_name", "seconds")
LABEL_HEADER = ("start_time", "end_time", "instrument", "note", "start_beat", "end_beat", "note_value")


def midi_hz(pitch: int) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def sine(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.3, channels: int = 1) -> np.ndarray:
    """A sine tone, float32 (T,) or (T, channels) with every channel identical."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.repeat(x[:, None], channels, axis=1)


@dataclass
class FakeTrack:
    """What was written for one track: its notes at 44.1 kHz sample indices (label CSV rows)."""

    id: str
    split: str
    audio_path: Path
    label_path: Path
    notes: pd.DataFrame  # columns start_time, end_time, instrument, note
    metadata: dict[str, str] = field(default_factory=dict)


def write_labels(path: Path, notes: pd.DataFrame) -> None:
    """Write a MusicNet label CSV (the full official header; beat columns filled with plausible values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = notes.copy()
    full["start_beat"] = np.arange(len(full), dtype=float)
    full["end_beat"] = 1.0
    full["note_value"] = "Quarter"
    full[list(LABEL_HEADER)].to_csv(path, index=False)


def make_notes(rng: np.random.Generator, seconds: float, n_notes: int, instruments: tuple[int, ...] = (1, 41, 43)) -> pd.DataFrame:
    """Random notes inside ``seconds`` of audio, times in 44.1 kHz samples."""
    total = int(seconds * LABEL_RATE)
    starts = np.sort(rng.integers(0, total - LABEL_RATE // 4, size=n_notes))
    ends = np.minimum(starts + rng.integers(LABEL_RATE // 20, LABEL_RATE // 2, size=n_notes), total)
    return pd.DataFrame(
        {
            "start_time": starts,
            "end_time": ends,
            "instrument": rng.choice(instruments, size=n_notes),
            "note": rng.integers(40, 90, size=n_notes),
        }
    )


def render(notes: pd.DataFrame, seconds: float, sample_rate: int) -> np.ndarray:
    """Sum of sine tones, one per note, at the note's MIDI pitch (float32 (T,)); plus a quiet bed tone
    so that no track is silent."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    x = 0.05 * np.sin(2 * np.pi * 220.0 * t)
    for s, e, p in zip(notes["start_time"], notes["end_time"], notes["note"]):
        a, b = int(s * sample_rate / LABEL_RATE), int(e * sample_rate / LABEL_RATE)
        x[a:b] += 0.1 * np.sin(2 * np.pi * midi_hz(int(p)) * t[a:b])
    return (x / max(1.0, np.abs(x).max() / 0.9)).astype(np.float32)


def make_musicnet_folder(
    root: str | Path,
    n_train: int = 3,
    n_test: int = 1,
    seconds: float | list[float] = 3.0,
    sample_rate: int = LABEL_RATE,
    notes_per_track: int = 6,
    ensembles: tuple[str, ...] = ("Solo Piano", "String Quartet"),
    composers: tuple[str, ...] = ("Bach", "Beethoven"),
    metadata: bool = True,
    first_id: int = 1000,
    seed: int = 0,
    subtype: str = "PCM_16",
) -> list[FakeTrack]:
    """Write a MusicNet-layout folder under ``root`` and return what was written, train tracks first.

    Ids are ``first_id, first_id + 1, ...``; ensembles and composers cycle over the given tuples;
    ``seconds`` is one duration for all tracks or one per track.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    durations = [seconds] * n if isinstance(seconds, (int, float)) else list(seconds)
    tracks: list[FakeTrack] = []
    rows = []
    for k in range(n):
        split = "train" if k < n_train else "test"
        ident = str(first_id + k)
        notes = make_notes(rng, durations[k], notes_per_track)
        audio_path = root / f"{split}_data" / f"{ident}.wav"
        label_path = root / f"{split}_labels" / f"{ident}.csv"
        audio_path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(audio_path, render(notes, durations[k], sample_rate), sample_rate, subtype=subtype)
        write_labels(label_path, notes)
        meta = {
            "composer": composers[k % len(composers)],
            "composition": f"Piece {k}",
            "movement": "1. Allegro",
            "ensemble": ensembles[k % len(ensembles)],
            "source": "test",
            "transcriber": "numpy",
            "catalog_name": f"Op. {k}",
            "seconds": str(int(durations[k])),
        }
        rows.append({"id": ident, **meta})
        tracks.append(FakeTrack(ident, split, audio_path, label_path, notes, meta if metadata else {}))
    if metadata:
        pd.DataFrame(rows, columns=list(METADATA_COLUMNS)).to_csv(root / "musicnet_metadata.csv", index=False)
    return tracks


def make_audio_folder(
    root: str | Path,
    files: dict[str, tuple[int, int, float]] | None = None,
    freq: float = 440.0,
) -> dict[str, Path]:
    """Write unlabelled audio files: ``{relative name: (sample_rate, channels, seconds)}`` -> paths.

    The default writes two files, one in a sub-folder and one with a non-ASCII name.
    """
    root = Path(root)
    files = files or {"a.wav": (44_100, 1, 2.0), "sub/Dvořák – Largo.flac": (48_000, 2, 2.0)}
    out = {}
    for name, (sr, channels, seconds) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, sine(freq, seconds, sr, channels=channels), sr)
        out[name] = path
    return out

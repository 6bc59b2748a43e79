"""Read a MusicNet-layout folder (or a plain folder of audio): pair audio with labels and metadata.

Layout: ``{train,test}_data/<id>.wav``, ``{train,test}_labels/<id>.csv``, ``musicnet_metadata.csv``.
Label times are sample indices at 44.1 kHz (MusicNet's rate), whatever rate the audio file has.

Row numbers in errors are **1-based data rows**: row 1 is the first line after the header
(so row N is line N + 1 of the file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from jtm.audio import AUDIO_EXTENSIONS, find_audio_files
from jtm.data.instruments import INSTRUMENT_PROGRAMS, N_PITCHES
from jtm.data.labels import Notes
from jtm.errors import DataError
from jtm.fileio import check_regular_file

LABEL_SAMPLE_RATE = 44_100
"""MusicNet label times count samples at 44.1 kHz."""

SPLITS = ("train", "test")
METADATA_FILENAMES = ("musicnet_metadata.csv", "metadata.csv")
LABEL_COLUMNS = ("start_time", "end_time", "instrument", "note")
OnError = Literal["raise", "skip"]
Skipped = list[tuple[str, str]]
"""(path, reason) of every input left out under ``on_error='skip'``."""


@dataclass(frozen=True)
class TrackSource:
    """One input recording: its id, split, audio file, label CSV (None without labels) and metadata."""

    id: str
    split: str
    audio_path: Path
    label_path: Path | None
    metadata: dict[str, str] = field(default_factory=dict)


def is_musicnet_folder(path: str | Path) -> bool:
    """True when ``path`` has a ``train_data/`` or ``test_data/`` folder."""
    path = Path(path)
    return any((path / f"{split}_data").is_dir() for split in SPLITS)


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")


def report(error: DataError, on_error: str, skipped: Skipped | None) -> None:
    """Raise ``error``, or under ``on_error='skip'`` record it as a skip ``(path, reason)``."""
    if on_error == "raise" or skipped is None:
        raise error
    reason = error.problem if error.row is None else f"row {error.row}: {error.problem}"
    skipped.append((str(error.path), reason))


# ----------------------------------------------------------------------------------------------- labels
MAX_CSV_BYTES = 64 * 2**20
"""Largest label or metadata CSV read: about 1.5 million notes at ~45 bytes a row, far beyond any real recording."""


def _read_csv_as_text(path: Path) -> pd.DataFrame:
    """Read a CSV with every field as text (NaN where a field is empty or missing)."""
    check_regular_file(path, MAX_CSV_BYTES, "CSV file")  # a FIFO would block; a huge file would exhaust memory
    if path.stat().st_size == 0:
        raise DataError(path, "CSV file is empty (no header)")
    try:
        frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(path, "CSV file is empty (no header)") from None
    except pd.errors.ParserError as e:
        # e.g. "Expected 7 fields in line 5, saw 8": line counts the header as line 1.
        m = re.search(r"line (\d+)", str(e))
        row = int(m.group(1)) - 1 if m else None
        raise DataError(path, f"malformed CSV row ({e})".replace("\n", " "), row=row) from None
    except UnicodeDecodeError:
        raise DataError(path, "not a UTF-8 text CSV file") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_labels(path: str | Path) -> Notes:
    """Read and strictly validate one MusicNet label CSV; return its notes at 44.1 kHz, sorted by start.

    The header must contain ``start_time,end_time,instrument,note`` (other columns are ignored).
    The first bad row raises ``DataError(path, problem, row=N)`` (N 1-based, header excluded) for a
    missing value, a non-numeric or non-integer field, a negative time, ``end_time <= start_time``,
    a pitch outside 0-127, or an instrument that is not one of MusicNet's 11 GM programs.
    Validation is vectorised over the whole table.
    """
    path = Path(path)
    frame = _read_csv_as_text(path)
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            path, f"header lacks column(s) {', '.join(missing)}; it must contain {','.join(LABEL_COLUMNS)}"
        )
    # Each check is a row mask and its message; the first row with any problem is reported, with the first
    # message (in check order) that applies to it.
    values, problems = _parse_label_columns(frame)
    ok = np.ones(len(frame), dtype=bool)
    for mask, _ in problems:
        ok &= ~mask
    problems += _label_range_problems(values, ok)
    _raise_first_problem(path, frame, problems)
    start, end = values["start_time"], values["end_time"]
    inst, pitch = values["instrument"], values["note"]
    order = np.argsort(start, kind="stable")
    return Notes(
        start[order].astype(np.int64),
        end[order].astype(np.int64),
        inst[order].astype(np.int16),
        pitch[order].astype(np.int16),
    )


def _parse_label_columns(frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, str]]]:
    """Each label column as float64 (n,) (NaN where unreadable), and the format problems: rows where a value is
    missing, non-numeric, non-finite or not an integer."""
    problems: list[tuple[np.ndarray, str]] = []
    values: dict[str, np.ndarray] = {}
    for col in LABEL_COLUMNS:
        text = frame[col]
        num = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        values[col] = num
        absent = text.isna().to_numpy()
        non_numeric = ~absent & np.isnan(num)
        non_finite = ~absent & ~non_numeric & ~np.isfinite(num)
        with np.errstate(invalid="ignore"):
            non_integer = np.isfinite(num) & (num != np.round(num))
        problems += [
            (absent, f"missing value in column {col!r}"),
            (non_numeric, f"non-numeric value in column {col!r}"),
            (non_finite, f"non-finite value in column {col!r}"),
            (non_integer, f"non-integer value in column {col!r}"),
        ]
    return values, problems


def _label_range_problems(values: dict[str, np.ndarray], ok: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """Problems of the well-formed rows (``ok``): negative or empty times, pitches and instruments out of range."""
    start, end = values["start_time"], values["end_time"]
    inst, pitch = values["instrument"], values["note"]
    with np.errstate(invalid="ignore"):
        return [
            (ok & (start < 0), "negative start_time"),
            (ok & (end <= start), "end_time is not after start_time"),
            (ok & ((pitch < 0) | (pitch >= N_PITCHES)), f"note (pitch) outside 0-{N_PITCHES - 1}"),
            (
                ok & ~np.isin(inst, INSTRUMENT_PROGRAMS),
                f"instrument is not one of MusicNet's GM programs {list(INSTRUMENT_PROGRAMS)}",
            ),
        ]


def _raise_first_problem(path: Path, frame: pd.DataFrame, problems: list[tuple[np.ndarray, str]]) -> None:
    """Raise ``DataError(path, problem, row=N)`` for the first row with a problem (N 1-based, header excluded)."""
    bad = np.zeros(len(frame), dtype=bool)
    for mask, _ in problems:
        bad |= mask
    if bad.any():
        first = int(np.argmax(bad))
        what = next(msg for mask, msg in problems if mask[first])
        shown = ", ".join(f"{c}={frame[c].iloc[first]!r}" for c in LABEL_COLUMNS)
        raise DataError(path, f"{what} ({shown})", row=first + 1)


def convert_notes(notes: Notes, orig_sr: int, target_sr: int, length: int | None = None) -> Notes:
    """Rescale note times from ``orig_sr`` to ``target_sr`` samples (rounded to the nearest sample).

    With ``length`` (samples at ``target_sr``), notes starting at or after it are dropped and ends are
    clipped to it. A note never collapses to zero length: its end is at least start + 1.
    """
    start = np.rint(notes.start.astype(np.float64) * target_sr / orig_sr).astype(np.int64)
    end = np.rint(notes.end.astype(np.float64) * target_sr / orig_sr).astype(np.int64)
    end = np.maximum(end, start + 1)
    out = Notes(start, end, notes.instrument, notes.pitch)
    if length is not None:
        out = out.take(start < length)
        out = Notes(out.start, np.minimum(out.end, length), out.instrument, out.pitch)
    return out


# --------------------------------------------------------------------------------------------- metadata
def find_metadata_csv(root: str | Path) -> Path | None:
    root = Path(root)
    for name in METADATA_FILENAMES:
        if (root / name).is_file():
            return root / name
    return None


def read_metadata(path: str | Path) -> tuple[list[str], dict[str, tuple[int, dict[str, str]]]]:
    """Read ``musicnet_metadata.csv`` (official or derived column order; only ``id`` is required).

    Returns ``(columns, rows)``: the metadata column names other than ``id`` and
    ``{id: (row number, {column: value})}`` with every value a string (ids stay strings: '1727').
    """
    path = Path(path)
    frame = _read_csv_as_text(path)
    if "id" not in frame.columns:
        raise DataError(path, f"metadata header lacks the 'id' column (has: {', '.join(frame.columns)})")
    frame = frame.fillna("")
    ids = frame["id"].str.strip()
    empty = (ids == "").to_numpy()
    if empty.any():
        raise DataError(path, "empty id", row=int(np.argmax(empty)) + 1)
    dup = ids.duplicated().to_numpy()
    if dup.any():
        r = int(np.argmax(dup))
        raise DataError(path, f"duplicate id {ids.iloc[r]!r}", row=r + 1)
    columns = [c for c in frame.columns if c != "id"]
    records = frame[columns].to_dict(orient="records")
    rows = {i: (r + 1, {k: str(v) for k, v in rec.items()}) for r, (i, rec) in enumerate(zip(ids, records))}
    return columns, rows


# ----------------------------------------------------------------------------------------------- folders
def read_musicnet_folder(root: str | Path, *, on_error: OnError = "raise", skipped: Skipped | None = None) -> list[TrackSource]:
    """Pair the audio, label CSVs and metadata of a MusicNet-layout folder.

    Audio without a label CSV, a label CSV without audio, and a metadata row whose id has no audio are
    errors (``DataError`` naming the file, and the row for the metadata CSV); with ``on_error='skip'``
    each is appended to ``skipped`` and left out. Audio without a metadata row is kept with empty
    metadata values. Label contents are validated later, by :func:`read_labels`.
    Returns the tracks ordered by split (train, test) then id.
    """
    check_on_error(on_error)
    root = Path(root)
    if skipped is None:
        skipped = []
    meta_path = find_metadata_csv(root)
    columns, meta_rows = read_metadata(meta_path) if meta_path is not None else ([], {})
    tracks: list[TrackSource] = []
    seen: dict[str, Path] = {}
    for split in SPLITS:
        data_dir, label_dir = root / f"{split}_data", root / f"{split}_labels"
        audio = {p.stem: p for p in find_audio_files(data_dir)} if data_dir.is_dir() else {}
        labels = {p.stem: p for p in sorted(label_dir.glob("*.csv")) if p.is_file()} if label_dir.is_dir() else {}
        for stem in sorted(set(labels) - set(audio)):
            report(DataError(labels[stem], f"label file has no audio file ({data_dir.name}/{stem}.wav)"), on_error, skipped)
        for stem in sorted(audio):
            path = audio[stem]
            if stem not in labels:
                report(
                    DataError(path, f"audio file has no label file (expected {label_dir.name}/{stem}.csv)"),
                    on_error,
                    skipped,
                )
                continue
            if stem in seen:
                report(DataError(path, f"duplicate id {stem!r} (also {seen[stem]})"), on_error, skipped)
                continue
            seen[stem] = path
            meta = meta_rows[stem][1] if stem in meta_rows else {c: "" for c in columns}
            tracks.append(TrackSource(stem, split, path, labels[stem], meta))
    all_audio_ids = {
        p.stem for split in SPLITS if (root / f"{split}_data").is_dir() for p in find_audio_files(root / f"{split}_data")
    }
    for ident, (row, _) in meta_rows.items():
        if ident not in all_audio_ids:
            assert meta_path is not None
            report(DataError(meta_path, f"metadata row for id {ident!r} that has no audio file", row=row), on_error, skipped)
    return tracks


def read_audio_folder(root: str | Path, *, exclude: Path | None = None) -> list[TrackSource]:
    """Every audio file under ``root`` (recursively) as an unlabelled 'train' track.

    The id is the path relative to ``root`` without extension, with '/' separators. Files under
    ``exclude`` (e.g. a store built inside the folder) are ignored.
    """
    root = Path(root)
    tracks = []
    for path in find_audio_files(root):
        if exclude is not None and exclude.resolve() in path.resolve().parents:
            continue
        ident = path.relative_to(root).with_suffix("").as_posix()
        tracks.append(TrackSource(ident, "train", path, None, {}))
    return tracks


def read_source(
    src: str | Path, *, on_error: OnError = "raise", skipped: Skipped | None = None, exclude: Path | None = None
) -> tuple[list[TrackSource], bool]:
    """Tracks of a MusicNet-layout folder or a plain audio folder; returns ``(tracks, is_musicnet)``.

    Duplicate ids in a plain folder (``a.wav`` beside ``a.flac``) are errors naming the second file.
    """
    check_on_error(on_error)
    src = Path(src)
    if not src.is_dir():
        raise DataError(src, "source folder not found")
    if skipped is None:
        skipped = []
    if is_musicnet_folder(src):
        return read_musicnet_folder(src, on_error=on_error, skipped=skipped), True
    tracks, seen = [], {}
    for t in read_audio_folder(src, exclude=exclude):
        if t.id in seen:
            report(DataError(t.audio_path, f"duplicate id {t.id!r} (also {seen[t.id]})"), on_error, skipped)
            continue
        seen[t.id] = t.audio_path
        tracks.append(t)
    return tracks, False


__all__ = [
    "AUDIO_EXTENSIONS",
    "LABEL_SAMPLE_RATE",
    "TrackSource",
    "convert_notes",
    "find_metadata_csv",
    "is_musicnet_folder",
    "read_audio_folder",
    "read_labels",
    "read_metadata",
    "read_musicnet_folder",
    "read_source",
]

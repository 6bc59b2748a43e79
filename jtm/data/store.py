"""The prepared store: int16 audio shards (memory-mapped lazily), a track table and a note table.

See docs/ARCHITECTURE.md for the on-disk format. ``Store.open`` refuses a folder whose ``store.json``
is missing, unreadable, of another format or version, or not marked complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jtm.data.labels import NoteIndex, Notes
from jtm.errors import DataError
from jtm.fileio import regular_file_problem

STORE_FORMAT = "jtm-store"
STORE_VERSION = 1
CORE_COLUMNS = ("id", "split", "shard", "offset", "length", "path")
"""tracks.csv's own columns; the metadata columns follow them."""

TIMBRE_COLUMN = "timbre"
"""Metadata column of a synth corpus rendered with several timbres (``jtm data synth --renderings``)."""
HELDOUT_TIMBRE = "heldout"
"""Its value for a recording whose timbre no training recording has (the held-out-timbre test set)."""

_NOTE_FIELDS = ("track", "start", "end", "instrument", "pitch")


def read_store_json(store: str | Path) -> dict[str, Any] | None:
    """The parsed ``store.json`` of a folder, or None when it is missing or unreadable."""
    path = Path(store) / "store.json"
    if regular_file_problem(path) is not None:  # missing, or a FIFO that would block the read
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Store:
    """A prepared store opened read-only. Build one with :func:`jtm.data.prepare.prepare_store`.

    ``tracks`` is a DataFrame (one row per track; ``id``, ``split``, ``path`` and metadata as strings,
    ``shard``, ``offset``, ``length`` as int64). Track ``i`` is row ``i``.
    """

    def __init__(self, path: Path, info: dict[str, Any], tracks: pd.DataFrame, notes: dict[str, np.ndarray]) -> None:
        self.path = path
        self.info = info
        self.tracks = tracks
        self.sample_rate: int = int(info["sample_rate"])
        self._shard = tracks["shard"].to_numpy(np.int64)
        self._offset = tracks["offset"].to_numpy(np.int64)
        self._length = tracks["length"].to_numpy(np.int64)
        self._note_track = notes["track"]
        self._notes = Notes(notes["start"], notes["end"], notes["instrument"], notes["pitch"])
        # note_bounds[i]:note_bounds[i+1] are track i's notes (the table is sorted by track, start).
        self._note_bounds = np.searchsorted(self._note_track, np.arange(len(tracks) + 1), side="left")
        self._note_index: NoteIndex | None = None
        self._shards: dict[int, tuple[Path, int, int]] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> "Store":
        """Open a complete store; ``DataError`` naming the file when it is not one."""
        path = Path(path)
        info_path = path / "store.json"
        if not info_path.is_file():
            raise DataError(path, "not a prepared store (no store.json; run `jtm data prepare SRC STORE` to build it)")
        info = read_store_json(path)
        if not isinstance(info, dict):
            raise DataError(info_path, "store.json is not valid JSON")
        if info.get("format") != STORE_FORMAT or info.get("version") != STORE_VERSION:
            raise DataError(
                info_path, f"unsupported store format {info.get('format')!r} version {info.get('version')!r}"
            )
        if info.get("complete") is not True:
            raise DataError(info_path, "store is incomplete (an interrupted prepare); run prepare again")
        tracks_path = path / "tracks.csv"
        if not tracks_path.is_file():
            raise DataError(tracks_path, "missing")
        # Everything as text first, so ids such as '0012' stay strings and empty metadata stays ''.
        tracks = pd.read_csv(tracks_path, dtype=str, keep_default_na=False, encoding="utf-8")
        missing = [c for c in CORE_COLUMNS if c not in tracks.columns]
        if missing:
            raise DataError(tracks_path, f"lacks column(s) {', '.join(missing)}")
        for c in ("shard", "offset", "length"):
            tracks[c] = tracks[c].astype(np.int64)
        notes_path = path / "notes.npz"
        if not notes_path.is_file():
            raise DataError(notes_path, "missing")
        with np.load(notes_path, allow_pickle=False) as z:
            lacking = [k for k in _NOTE_FIELDS if k not in z.files]
            if lacking:
                raise DataError(notes_path, f"lacks array(s) {', '.join(lacking)}")
            notes = {k: z[k] for k in _NOTE_FIELDS}
        for shard in np.unique(tracks["shard"].to_numpy()):
            if not (path / "shards" / f"{int(shard):05d}.npy").is_file():
                raise DataError(path / "shards" / f"{int(shard):05d}.npy", "shard file missing")
        return cls(path, info, tracks, notes)

    # ------------------------------------------------------------------ audio
    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def lengths(self) -> np.ndarray:
        """Track lengths in samples, (n_tracks,) int64."""
        return self._length

    def _shard_layout(self, k: int) -> tuple[Path, int, int]:
        """(path, byte offset of the samples, number of samples) of shard ``k``, from its .npy header.

        Audio is read with positional file reads rather than through a memory map: a map keeps every page
        it has touched counted in the process's resident memory, which would hide the loader's memory
        budget behind the page cache.
        """
        layout = self._shards.get(k)
        if layout is None:
            path = self.path / "shards" / f"{k:05d}.npy"
            try:
                with open(path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read_header(f)
                    data_offset = f.tell()
            except (OSError, ValueError) as e:
                raise DataError(path, f"not a readable .npy shard ({e})") from None
            if dtype != np.dtype("<i2") or len(shape) != 1 or fortran:
                raise DataError(path, f"shard must be 1-D little-endian int16, found {dtype} {shape}")
            if path.stat().st_size < data_offset + 2 * shape[0]:
                raise DataError(path, "shard is truncated")
            layout = (path, data_offset, int(shape[0]))
            self._shards[k] = layout
        return layout

    def audio_int16(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Track ``i``'s int16 samples ``[start, stop)`` as a fresh array, (T,) int16."""
        i = int(i)
        n = int(self._length[i])
        stop = n if stop is None else min(int(stop), n)
        start = max(0, int(start))
        path, data_offset, _ = self._shard_layout(int(self._shard[i]))
        first = int(self._offset[i]) + start
        count = max(0, stop - start)
        return np.fromfile(path, dtype="<i2", count=count, offset=data_offset + 2 * first).astype(np.int16, copy=False)

    def audio(self, i: int) -> np.ndarray:
        """Track ``i`` as float32 in [-1, 1): (T,) at ``sample_rate``."""
        return self.audio_int16(i).astype(np.float32) / np.float32(32768.0)

    # ------------------------------------------------------------------ notes
    @property
    def has_labels(self) -> bool:
        """True when the store has a non-empty note table."""
        return len(self._notes) > 0

    def notes(self, i: int) -> Notes:
        """Track ``i``'s notes at the store's rate, sorted by start; arrays (N,)."""
        lo, hi = int(self._note_bounds[int(i)]), int(self._note_bounds[int(i) + 1])
        return self._notes.take(slice(lo, hi))

    def note_index(self) -> NoteIndex:
        """The whole note table prepared for batched look-ups (see :mod:`jtm.data.labels`); built once."""
        if self._note_index is None:
            self._note_index = NoteIndex.build(self._note_track, self._notes, len(self))
        return self._note_index

    # ------------------------------------------------------------------ selection
    def indices(self, split: str | None = None) -> np.ndarray:
        """Track indices of ``split`` ('train'/'test'; None: all), int64 (n,)."""
        if split is None:
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(self.tracks["split"].to_numpy() == split).astype(np.int64)

    def categories(self, column: str, indices: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """Codes of ``column`` per track: ``(codes (n,) int64, sorted category names)``.

        Over all tracks, or the tracks in ``indices`` (codes then align with ``indices``).
        An unknown column or a track without a value is a ``DataError`` naming tracks.csv.
        """
        table = self.path / "tracks.csv"
        if column not in self.tracks.columns:
            raise DataError(table, f"no column {column!r}; available: {', '.join(self.tracks.columns)}")
        idx = self.indices() if indices is None else np.asarray(indices, dtype=np.int64)
        values = self.tracks[column].astype(str).to_numpy()[idx]
        empty = np.flatnonzero(np.char.strip(values.astype(str)) == "")
        if len(empty):
            ids = self.tracks["id"].to_numpy()[idx[empty[:5]]]
            raise DataError(
                table, f"column {column!r} has no value for {len(empty)} track(s), e.g. id {', '.join(map(repr, ids))}"
            )
        names, codes = np.unique(values, return_inverse=True)
        return codes.astype(np.int64).reshape(-1), [str(n) for n in names]

    WORK_COLUMNS = ("composer", "composition", "movement")
    """Metadata naming a work: recordings that agree on all three (and name them) are one work."""

    def work_keys(self, indices: np.ndarray) -> np.ndarray:
        """(n,) int64: for each track index, the smallest index of a track of the same work among ``indices``.

        Several performances of one MusicNet movement, or several timbre renderings of one synth piece, get one
        key (:mod:`jtm.data.subsets` keeps them on one side of every split). A track whose work is not named
        (a metadata column missing or empty) is its own work.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if not all(c in self.tracks.columns for c in self.WORK_COLUMNS) or len(indices) == 0:
            return indices.copy()
        meta = self.tracks.iloc[indices][list(self.WORK_COLUMNS)].astype(str)
        named = (meta.apply(lambda col: col.str.strip() != "")).all(axis=1).to_numpy()
        work = meta.agg("\x1f".join, axis=1).to_numpy()
        keys = indices.copy()
        first: dict[str, int] = {}
        for k in np.argsort(indices):
            if named[k]:
                keys[k] = first.setdefault(work[k], int(indices[k]))
        return keys

    def heldout_timbre(self, indices: np.ndarray) -> np.ndarray:
        """(n,) bool: which of the tracks ``indices`` have a held-out timbre (all False for other corpora)."""
        indices = np.asarray(indices, dtype=np.int64)
        if TIMBRE_COLUMN not in self.tracks.columns:
            return np.zeros(len(indices), dtype=bool)
        return (self.tracks[TIMBRE_COLUMN].to_numpy()[indices] == HELDOUT_TIMBRE).astype(bool)

    def summary(self) -> dict[str, Any]:
        """Counts for reports: tracks and minutes per split, composer/ensemble counts when present."""
        split = self.tracks["split"]
        minutes = self.tracks.groupby("split")["length"].sum() / self.sample_rate / 60
        out: dict[str, Any] = {
            "n_tracks": {str(k): int(v) for k, v in split.value_counts().sort_index().items()},
            "minutes": {str(k): round(float(v), 3) for k, v in minutes.items()},
            "total_minutes": round(float(self._length.sum()) / self.sample_rate / 60, 3),
            "n_notes": int(len(self._notes)),
        }
        for column, key in (("composer", "composers"), ("ensemble", "ensembles")):
            if column in self.tracks.columns:
                values = self.tracks[column][self.tracks[column].str.strip() != ""]
                if len(values):
                    out[key] = {str(k): int(v) for k, v in values.value_counts().sort_index().items()}
        return out

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, {len(self)} tracks, {self._length.sum() / self.sample_rate / 60:.1f} min)"


__all__ = ["Notes", "Store"]

"""Frame labels from note tables: piano rolls and pitch x instrument rolls, fully vectorised.

Frames are ``HOP = 160`` samples (10 ms at 16 kHz). For a window starting at sample ``start``,
frame ``f`` covers samples ``[start + 160 f, start + 160 (f + 1))``.

Activity convention: frame ``f`` is active for a note iff the note overlaps any part of the frame,
i.e. ``note.start < frame_end and note.end > frame_start`` (note ends are exclusive sample indices).

Everything here is numpy: per batch, notes overlapping each window are gathered with ``searchsorted``
on a (track, start) key, each note is expanded into the frames it covers with ``np.repeat`` (a
run-length expansion, equivalent to integrating a difference array but touching only active cells),
and the cells are set with one scatter. No Python loop runs per note or per window.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import numpy as np

from jtm.audio import HOP  # noqa: F401  (re-exported: label frames are the audio frames)
from jtm.data.instruments import INSTRUMENT_PROGRAMS, N_PITCHES

N_INSTRUMENTS = len(INSTRUMENT_PROGRAMS)

# program (1-based GM, 0..128) -> position on the instrument axis, -1 for programs MusicNet lacks.
_PROGRAM_TO_INDEX = np.full(129, -1, dtype=np.int64)
_PROGRAM_TO_INDEX[list(INSTRUMENT_PROGRAMS)] = np.arange(N_INSTRUMENTS)

# Track index is packed above the sample index in one int64 key so that a single searchsorted over the
# whole (track, start)-sorted note table finds per-track ranges for many windows at once.
# 2**40 samples is ~2 years of audio at 16 kHz, far beyond any recording.
_TRACK_SHIFT = 40


class Notes(NamedTuple):
    """A note table; all arrays have shape (N,).

    ``start``/``end`` are int64 sample indices (end exclusive), ``instrument`` int16 1-based GM program,
    ``pitch`` int16 MIDI pitch 0-127. The sample rate is the caller's (16 kHz inside a store).
    """

    start: np.ndarray
    end: np.ndarray
    instrument: np.ndarray
    pitch: np.ndarray

    @classmethod
    def empty(cls) -> "Notes":
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0, np.int16)
        )

    def __len__(self) -> int:  # type: ignore[override]  # number of notes, not number of fields
        return int(self.start.shape[0])

    def take(self, index: np.ndarray | slice) -> "Notes":
        """The notes selected by ``index`` (a boolean mask, integer indices or a slice)."""
        return Notes(self.start[index], self.end[index], self.instrument[index], self.pitch[index])


class NoteSource(Protocol):
    """What the batched labellers need from a store (``jtm.data.store.Store`` provides it)."""

    def note_index(self) -> "NoteIndex": ...


class NoteIndex(NamedTuple):
    """The whole note table of a store, prepared for batched window look-ups.

    ``key`` (N,) int64 is ``track << 40 | start`` (sorted); ``notes`` the table in the same order;
    ``max_length`` (n_tracks,) int64 the longest note per track (0 for tracks without notes), which
    bounds how far before a window a note overlapping it can start.
    """

    key: np.ndarray
    notes: Notes
    max_length: np.ndarray

    @classmethod
    def build(cls, track: np.ndarray, notes: Notes, n_tracks: int) -> "NoteIndex":
        """From per-note ``track`` (N,) and ``notes`` sorted by (track, start)."""
        track = track.astype(np.int64, copy=False)
        key = (track << _TRACK_SHIFT) | notes.start.astype(np.int64, copy=False)
        max_length = np.zeros(n_tracks, dtype=np.int64)
        if len(track):
            np.maximum.at(max_length, track, (notes.end - notes.start).astype(np.int64))
        return cls(key, notes, max_length)


def _channels(notes: Notes, by_instrument: bool) -> np.ndarray:
    """Label channel of each note: the pitch, or ``instrument_index * 128 + pitch``. Shape (N,) int64."""
    pitch = notes.pitch.astype(np.int64)
    if not by_instrument:
        return pitch
    program = notes.instrument.astype(np.int64)
    inst = np.where((program >= 0) & (program <= 128), _PROGRAM_TO_INDEX[np.clip(program, 0, 128)], -1)
    if (inst < 0).any():
        bad = int(program[inst < 0][0])
        raise ValueError(f"unknown instrument number {bad}; MusicNet uses GM programs {list(INSTRUMENT_PROGRAMS)}")
    return inst * N_PITCHES + pitch


def _fill(
    row: np.ndarray,
    note_start: np.ndarray,
    note_end: np.ndarray,
    channel: np.ndarray,
    window_start: np.ndarray,
    n_rows: int,
    n_frames: int,
    n_channels: int,
    dtype: type = bool,
) -> np.ndarray:
    """Rasterise notes into an (n_rows, n_frames, n_channels) roll of ``dtype`` (1/True where active).

    Each note ``k`` belongs to output row ``row[k]`` whose window starts at ``window_start[row[k]]``;
    notes need not overlap their window (non-overlapping ones produce empty frame ranges).
    """
    ws = window_start[row]
    # First active frame: the first f with start + 160 (f+1) > note.start, i.e. floor((note.start - start) / 160).
    f0 = np.clip(np.floor_divide(note_start - ws, HOP), 0, n_frames)
    # One past the last active frame: the f with start + 160 f >= note.end, i.e. ceil((note.end - start) / 160).
    f1 = np.clip(-np.floor_divide(ws - note_end, HOP), 0, n_frames)
    span = np.maximum(f1 - f0, 0)
    # Expand every note into its active (row, frame, channel) cells and set them in one scatter.
    # The cells number notes x frames-per-note (thousands per batch), far fewer than the roll's
    # n_rows x n_frames x n_channels entries, so this beats a dense difference array + cumsum,
    # especially for the 1408-channel pitch x instrument roll.
    total = int(span.sum())
    frame = np.repeat(f0, span) + (np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(span) - span, span))
    flat = (np.repeat(row, span) * n_frames + frame) * n_channels + np.repeat(channel, span)
    out = np.zeros(n_rows * n_frames * n_channels, dtype=dtype)
    out[flat] = 1
    return out.reshape(n_rows, n_frames, n_channels)


def _window_roll(notes: Notes, start: int, n_frames: int, by_instrument: bool) -> np.ndarray:
    end = start + n_frames * HOP
    sel = notes.take((notes.start < end) & (notes.end > start))
    n_channels = N_INSTRUMENTS * N_PITCHES if by_instrument else N_PITCHES
    roll = _fill(
        np.zeros(len(sel), np.int64),
        sel.start.astype(np.int64),
        sel.end.astype(np.int64),
        _channels(sel, by_instrument),
        np.array([start], np.int64),
        1,
        n_frames,
        n_channels,
    )
    return roll[0]


def piano_roll(notes: Notes, start: int, n_frames: int) -> np.ndarray:
    """Pitch activity of one window: bool (n_frames, 128); ``notes`` in the window's sample units."""
    return _window_roll(notes, int(start), int(n_frames), by_instrument=False)


def pitch_instrument_roll(notes: Notes, start: int, n_frames: int) -> np.ndarray:
    """Pitch x instrument activity of one window: bool (n_frames, 11, 128), instruments in
    ``INSTRUMENT_PROGRAMS`` order."""
    roll = _window_roll(notes, int(start), int(n_frames), by_instrument=True)
    return roll.reshape(n_frames, N_INSTRUMENTS, N_PITCHES)


def track_piano_roll(notes: Notes, n_frames: int) -> np.ndarray:
    """Whole-track piano roll from sample 0: bool (n_frames, 128)."""
    return piano_roll(notes, 0, n_frames)


def track_pitch_instrument_roll(notes: Notes, n_frames: int) -> np.ndarray:
    """Whole-track pitch x instrument roll from sample 0: bool (n_frames, 11, 128)."""
    return pitch_instrument_roll(notes, 0, n_frames)


notes_to_frames = track_piano_roll
"""Alias of :func:`track_piano_roll` (frame-level ground truth for evaluation)."""


def _batch_roll(
    source: NoteSource | NoteIndex,
    tracks: Sequence[int] | np.ndarray,
    starts: Sequence[int] | np.ndarray,
    n_frames: int,
    by_instrument: bool,
    dtype: type,
) -> np.ndarray:
    index = source if isinstance(source, NoteIndex) else source.note_index()
    tracks = np.asarray(tracks, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    n_rows = len(tracks)
    ends = starts + n_frames * HOP
    # Notes of track t overlapping [s, e): start < e and end > s. With the track's longest note D,
    # end > s implies start > s - D, so candidates are the notes with start in (s - D, e).
    lo_start = np.maximum(starts - index.max_length[tracks] + 1, 0)
    lo = np.searchsorted(index.key, (tracks << _TRACK_SHIFT) | lo_start, side="left")
    hi = np.searchsorted(index.key, (tracks << _TRACK_SHIFT) | ends, side="left")
    counts = hi - lo
    total = int(counts.sum())
    # Flatten the ranges [lo_b, hi_b) into one index array without a Python loop.
    row = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.repeat(lo, counts) + within
    sel = index.notes.take(idx)
    n_channels = N_INSTRUMENTS * N_PITCHES if by_instrument else N_PITCHES
    return _fill(
        row,
        sel.start.astype(np.int64),
        sel.end.astype(np.int64),
        _channels(sel, by_instrument),
        starts,
        n_rows,
        n_frames,
        n_channels,
        dtype,
    )


def batch_piano_roll(
    store: NoteSource | NoteIndex,
    tracks: Sequence[int] | np.ndarray,
    starts: Sequence[int] | np.ndarray,
    n_frames: int,
    dtype: type = bool,
) -> np.ndarray:
    """Piano rolls of B windows (possibly from different tracks) of a store: (B, n_frames, 128) of ``dtype``.

    ``tracks`` (B,) are store track indices, ``starts`` (B,) window starts in samples at the store's rate.
    ``dtype=np.float32`` gives training targets directly (1.0 where active), without a bool copy.
    """
    return _batch_roll(store, tracks, starts, int(n_frames), by_instrument=False, dtype=dtype)


# The same parameters as batch_piano_roll on purpose (duplicates): callers switch between the two by task.
def batch_pitch_instrument_roll(
    store: NoteSource | NoteIndex,
    tracks: Sequence[int] | np.ndarray,
    starts: Sequence[int] | np.ndarray,
    n_frames: int,
    dtype: type = bool,
) -> np.ndarray:
    """Pitch x instrument rolls of B windows: (B, n_frames, 11, 128) of ``dtype``, instruments in
    ``INSTRUMENT_PROGRAMS`` order."""
    roll = _batch_roll(store, tracks, starts, int(n_frames), by_instrument=True, dtype=dtype)
    return roll.reshape(len(roll), n_frames, N_INSTRUMENTS, N_PITCHES)


# ------------------------------------------------------------------------------------------- onset labels


def onset_roll(notes: Notes, start: int, n_frames: int, width: int = 1) -> np.ndarray:
    """Note starts of one window: bool (n_frames, 128), True at the frame holding each note's first sample and,
    with ``width`` > 1, at the next ``width - 1`` frames the note still sounds in.

    Only notes that start inside the window mark frames (a note already sounding at the window's start has no
    onset there). ``width = 1`` is the exact onset; a wider target is a timing tolerance for training (front ends
    with 64-128 ms analysis windows smear an onset over several 10 ms frames); the decoder starts a note at the
    first frame of a run of onset frames, so both decode to the same notes.
    """
    start, n_frames = int(start), int(n_frames)
    if width < 1:
        raise ValueError(f"width must be >= 1 frame, got {width}")
    first = np.floor_divide(notes.start.astype(np.int64) - start, HOP)
    pitch = notes.pitch.astype(np.int64)
    roll = np.zeros((n_frames, N_PITCHES), dtype=bool)
    for k in range(width):
        frame = first + k
        # the frame must still overlap the note: frame start (start + 160 frame) before the note's end
        keep = (first >= 0) & (frame < n_frames) & (start + frame * HOP < notes.end.astype(np.int64))
        roll[frame[keep], pitch[keep]] = True
    return roll


def track_onset_roll(notes: Notes, n_frames: int, width: int = 1) -> np.ndarray:
    """Whole-track onset roll from sample 0: bool (n_frames, 128) (see :func:`onset_roll`)."""
    return onset_roll(notes, 0, n_frames, width)

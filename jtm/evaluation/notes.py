"""Frame piano rolls <-> note lists.

A transcription model emits one probability per (frame, pitch); notes are what a musician (and the MusicNet
note-level metric) reads. ``roll_to_notes`` turns a roll into notes by thresholding and finding runs of active
frames per pitch, entirely with vectorised numpy (no per-pitch or per-frame Python loop), so it stays fast on
whole tracks (100 frames/s x 128 pitches).

Times are in seconds. Frame ``f`` covers ``[f / frame_rate, (f + 1) / frame_rate)``, matching
``jtm.data.labels`` (10 ms frames at 16 kHz), so a run of frames ``[s, e)`` becomes a note with onset
``s / frame_rate`` and offset ``e / frame_rate`` (offset exclusive).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jtm.audio import FRAME_RATE

MIN_NOTE_FRAMES = 2
"""Shortest note kept, in frames: frame classifiers emit one-frame blips, which are not notes."""


class NoteList(NamedTuple):
    """A set of notes as parallel arrays, all of shape (n_notes,).

    onset, offset: float64 seconds (offset > onset); pitch: int16 MIDI number (0..127);
    confidence: float32 in [0, 1] (mean frame probability of the note, 1.0 for ground truth / binary rolls).
    """

    onset: np.ndarray
    offset: np.ndarray
    pitch: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        # A NamedTuple's len() is its field count; the number of notes is what callers mean.
        return int(self.onset.shape[0])

    @property
    def intervals(self) -> np.ndarray:
        """(n_notes, 2) float64 ``[onset, offset]`` in seconds, the layout mir_eval expects."""
        return np.stack([self.onset, self.offset], axis=1).reshape(-1, 2)


def make_notes(
    onset: np.ndarray | list[float],
    offset: np.ndarray | list[float],
    pitch: np.ndarray | list[int],
    confidence: np.ndarray | list[float] | None = None,
) -> NoteList:
    """Build a validated ``NoteList`` from array-likes (confidence defaults to 1.0); sorted by (onset, pitch).

    Raises ValueError for mismatched lengths, non-finite or negative times, offset <= onset, or a pitch
    outside 0..127.
    """
    on = np.asarray(onset, dtype=np.float64).reshape(-1)
    off = np.asarray(offset, dtype=np.float64).reshape(-1)
    p = np.asarray(pitch).reshape(-1)
    conf = (
        np.ones(on.shape[0], dtype=np.float32)
        if confidence is None
        else np.asarray(confidence, dtype=np.float32).reshape(-1)
    )
    if not (on.shape == off.shape == p.shape == conf.shape):
        raise ValueError(
            f"note arrays differ in length: onset {on.shape[0]}, offset {off.shape[0]}, "
            f"pitch {p.shape[0]}, confidence {conf.shape[0]}"
        )
    if not (np.isfinite(on).all() and np.isfinite(off).all()):
        raise ValueError("note times must be finite")
    if (on < 0).any():
        raise ValueError("note onsets must be >= 0 s")
    if (off <= on).any():
        raise ValueError("every note needs offset > onset")
    if p.size and (not np.issubdtype(p.dtype, np.integer) and not np.all(p == np.round(p))):
        raise ValueError("pitches must be whole MIDI numbers")
    if p.size and (p.min() < 0 or p.max() > 127):
        raise ValueError(f"pitches must lie in 0..127, got {p.min()}..{p.max()}")
    order = np.lexsort((p, on))
    return NoteList(on[order], off[order], p.astype(np.int16)[order], conf[order])


def empty_notes() -> NoteList:
    """A ``NoteList`` with no notes."""
    return make_notes([], [], np.zeros(0, dtype=np.int16))


def roll_to_notes(
    roll: np.ndarray,
    threshold: float = 0.5,
    frame_rate: float = FRAME_RATE,
    min_frames: int = MIN_NOTE_FRAMES,
    onset_threshold: float | None = None,
    merge_gap: int = 0,
) -> NoteList:
    """Turn a frame piano roll into notes.

    Args:
        roll: (N, P) frame probabilities in [0, 1] or a boolean roll; column ``p`` is MIDI pitch ``p``.
        threshold: a frame is active when ``roll >= threshold`` (booleans are active when True).
        frame_rate: frames per second (100 for the 10 ms frames of ``jtm.data.labels``).
        min_frames: runs shorter than this many frames (after gap merging) are dropped; frame classifiers emit
            one-frame blips that are not notes. Use 1 to keep every run (e.g. for ground-truth rolls).
        onset_threshold: optional hysteresis: a run only becomes a note if its peak probability reaches this
            (higher) value, so a note is started by a confident frame and may be sustained by weaker ones.
        merge_gap: bridge holes of at most this many inactive frames inside one pitch's activity (1 = the
            common "one-frame flicker" case). 0 (default) keeps runs separate, which is what ground truth needs,
            because a repeated note at the same pitch is separated by exactly such a gap only when it is real.

    Returns:
        ``NoteList`` sorted by (onset, pitch); confidence is the mean probability over the note's active frames
        (bridged gap frames are not counted), i.e. 1.0 for a boolean roll.

    Limitation: two ground-truth notes of the same pitch that touch (one ends in the frame the next starts)
    are indistinguishable in a roll and come back as one note; pass explicit notes to the note metric if known.

    Steps: :func:`_active_runs` (runs of active frames per pitch), :func:`_run_statistics` (their sums and
    peaks), :func:`_bridge_gaps` (``merge_gap``), then the runs that are long and confident enough become notes.
    """
    roll = _checked_roll(roll, min_frames, merge_gap)
    prob = roll.astype(np.float32, copy=False)
    active = roll if roll.dtype == bool else prob >= threshold
    runs = _bridge_gaps(_run_statistics(prob, _active_runs(active)), merge_gap)
    keep = (runs.end - runs.start) >= min_frames
    if onset_threshold is not None:
        keep &= runs.peak >= onset_threshold
    confidence = (runs.total[keep] / np.maximum(runs.length[keep], 1)).astype(np.float32)
    if roll.dtype == bool:
        confidence = np.ones_like(confidence)
    return make_notes(runs.start[keep] / frame_rate, runs.end[keep] / frame_rate, runs.pitch[keep],
                      np.clip(confidence, 0.0, 1.0))


class _Runs(NamedTuple):
    """Runs of active frames, parallel arrays (n_runs,) sorted by pitch then start: ``pitch``, ``start`` and
    ``end`` (frames, end exclusive), ``total`` and ``peak`` (sum and maximum of the probabilities of their active
    frames), ``length`` (active frames in the run: bridged gaps are not counted)."""

    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    total: np.ndarray
    peak: np.ndarray
    length: np.ndarray


def _checked_roll(roll: np.ndarray, min_frames: int, merge_gap: int) -> np.ndarray:
    """``roll`` as an array, after checking its shape and the decoding arguments (ValueError)."""
    roll = np.asarray(roll)
    if roll.ndim != 2:
        raise ValueError(f"roll must be (frames, pitches), got shape {roll.shape}")
    if min_frames < 1:
        raise ValueError("min_frames must be >= 1")
    if merge_gap < 0:
        raise ValueError("merge_gap must be >= 0")
    if roll.shape[1] > 128:
        raise ValueError(f"a piano roll has at most 128 pitch columns, got {roll.shape[1]}")
    return roll


def _active_runs(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pitch, start, end) of every run of active frames of a boolean (N, P) roll, sorted by pitch then start."""
    n_frames, n_pitches = active.shape
    # Pitch-major so each pitch's frames are contiguous; padding with an inactive frame on both sides makes every
    # run produce exactly one +1 (start) and one -1 (end) in the time difference.
    padded = np.zeros((n_pitches, n_frames + 2), dtype=np.int8)
    padded[:, 1:-1] = active.T
    d = np.diff(padded, axis=1)
    # np.nonzero walks row-major: sorted by pitch then frame, so the i-th start pairs with the i-th end.
    run_pitch, run_start = np.nonzero(d == 1)
    _, run_end = np.nonzero(d == -1)
    return run_pitch, run_start, run_end


def _run_statistics(prob: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> _Runs:
    """Sum and peak of the probabilities ``prob`` (N, P) over each run, and its length."""
    run_pitch, run_start, run_end = runs
    n_frames, n_pitches = prob.shape
    # Sums via reduceat over the flattened pitch-major array; interleaving [start, end, start, end, ...] makes the
    # even outputs the in-run sums (a cumsum would cost a float64 copy of the whole roll). A trailing zero keeps an
    # index equal to the last position valid.
    flat = np.zeros(n_pitches * n_frames + 1, dtype=np.float64)
    flat[:-1] = prob.T.reshape(-1)
    base = run_pitch.astype(np.int64) * n_frames
    if run_start.size:
        idx = np.empty(2 * run_start.size, dtype=np.int64)
        idx[0::2] = base + run_start
        idx[1::2] = base + run_end
        run_sum = np.add.reduceat(flat, idx)[0::2]
        run_peak = np.maximum.reduceat(flat, idx)[0::2]
    else:
        run_sum = np.zeros(0, dtype=np.float64)
        run_peak = np.zeros(0, dtype=np.float64)
    run_len = (run_end - run_start).astype(np.int64)
    return _Runs(run_pitch, run_start, run_end, run_sum, run_peak, run_len)


def _bridge_gaps(runs: _Runs, merge_gap: int) -> _Runs:
    """Runs of one pitch separated by at most ``merge_gap`` inactive frames joined into one (sums, peaks and
    lengths combined); unchanged for ``merge_gap`` 0."""
    if merge_gap <= 0 or runs.start.size <= 1:
        return runs
    # A run continues the previous note if it is on the same pitch and the hole between them is short.
    gap = runs.start[1:] - runs.end[:-1]
    continues = (runs.pitch[1:] == runs.pitch[:-1]) & (gap <= merge_gap)
    first = np.flatnonzero(np.concatenate([[True], ~continues]))
    last = np.concatenate([first[1:] - 1, [runs.start.size - 1]])
    return _Runs(runs.pitch[first], runs.start[first], runs.end[last], np.add.reduceat(runs.total, first),
                 np.maximum.reduceat(runs.peak, first), np.add.reduceat(runs.length, first))


def notes_to_roll(notes: NoteList, n_frames: int, frame_rate: float = 100.0, n_pitches: int = 128) -> np.ndarray:
    """Render notes back to a boolean (n_frames, n_pitches) roll (inverse of ``roll_to_notes`` on its own output).

    A note covers frames ``[round(onset * frame_rate), round(offset * frame_rate))``, clipped to the roll;
    notes that round to zero frames or fall outside the pitch range are skipped.
    """
    start = np.clip(np.round(notes.onset * frame_rate).astype(np.int64), 0, n_frames)
    end = np.clip(np.round(notes.offset * frame_rate).astype(np.int64), 0, n_frames)
    pitch = notes.pitch.astype(np.int64)
    ok = (end > start) & (pitch >= 0) & (pitch < n_pitches)
    # Difference array + cumsum: overlapping notes just add, and the whole render is two vectorised passes.
    diff = np.zeros((n_frames + 1, n_pitches), dtype=np.int32)
    np.add.at(diff, (start[ok], pitch[ok]), 1)
    np.add.at(diff, (end[ok], pitch[ok]), -1)
    return np.cumsum(diff[:-1], axis=0) > 0


def notes_to_onset_roll(notes: NoteList, n_frames: int, frame_rate: float = 100.0, n_pitches: int = 128) -> np.ndarray:
    """Boolean (n_frames, n_pitches) roll with True at each note's first frame, ``floor(onset * frame_rate)``
    (the frame holding the onset, as ``jtm.data.labels.onset_roll``); onsets outside the roll are skipped."""
    frame = np.floor(notes.onset * frame_rate + 1e-9).astype(np.int64)
    pitch = notes.pitch.astype(np.int64)
    ok = (frame >= 0) & (frame < n_frames) & (pitch >= 0) & (pitch < n_pitches)
    roll = np.zeros((n_frames, n_pitches), dtype=bool)
    roll[frame[ok], pitch[ok]] = True
    return roll


def decode_notes(onset: np.ndarray, frame: np.ndarray, onset_threshold: float = 0.5, frame_threshold: float = 0.5,
                 frame_rate: float = 100.0) -> NoteList:
    """Notes from onset and frame probabilities, the Onsets-and-Frames way.

    A note starts at the first frame of every run of frames whose onset probability is ``>= onset_threshold``
    (one note per run, so an onset smeared over neighbouring frames gives one note). It lasts while the frame
    probability of its pitch stays ``>= frame_threshold`` (its onset frame counts even if the frame branch has
    not risen yet), and ends at the next onset of the same pitch, so repeated notes are split even when the
    frame activity never drops between them. Frames above threshold with no onset start no note: the frame
    branch fires on sustained and decaying energy, and letting its rises start notes brings back the split and
    spurious notes that frame-wise decoding suffers from.

    Args:
        onset, frame: (N, P) probabilities in [0, 1] (or booleans), column ``p`` = MIDI pitch ``p``.
        onset_threshold, frame_threshold: tune both on validation recordings, never on test.
        frame_rate: frames per second.

    Returns:
        ``NoteList`` sorted by (onset, pitch); onset = start frame / frame_rate, offset = end frame / frame_rate
        (exclusive); confidence = the onset probability at the note's start.
    """
    onset, frame = np.asarray(onset), np.asarray(frame)
    if onset.shape != frame.shape or onset.ndim != 2:
        raise ValueError(f"onset {onset.shape} and frame {frame.shape} must be the same (frames, pitches) shape")
    if onset.shape[1] > 128:
        raise ValueError(f"a piano roll has at most 128 pitch columns, got {onset.shape[1]}")
    n_frames = onset.shape[0]
    on = onset >= onset_threshold if onset.dtype != bool else onset
    active = frame >= frame_threshold if frame.dtype != bool else frame
    # Pitch-major: np.nonzero then walks pitch by pitch in time order, so the next start of the same pitch is the
    # next element whenever the pitch matches.
    starts = on.T & ~np.concatenate([np.zeros((on.shape[1], 1), bool), on.T[:, :-1]], axis=1)
    pitch, start = np.nonzero(starts)
    # First inactive frame at or after each frame (n_frames when none): a reversed running minimum.
    idx = np.where(~active.T, np.arange(n_frames), n_frames)
    next_off = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
    after = np.minimum(start + 1, n_frames - 1) if n_frames else start
    end = np.where(start + 1 < n_frames, next_off[pitch, after], n_frames) if len(start) else start
    end = np.maximum(end, start + 1)
    same_pitch_next = np.r_[pitch[1:] == pitch[:-1], False]
    next_start = np.r_[start[1:], n_frames]
    end = np.where(same_pitch_next, np.minimum(end, next_start), end)
    confidence = np.asarray(onset, dtype=np.float32)[start, pitch] if len(start) else np.zeros(0, np.float32)
    return make_notes(start / frame_rate, end / frame_rate, pitch, np.clip(confidence, 0.0, 1.0))

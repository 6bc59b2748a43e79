"""Frame labels: hand-made notes against hand-computed rolls; batched equals per-window; speed."""
from __future__ import annotations

import time

import numpy as np
import pytest

from jtm.data.instruments import INSTRUMENT_PROGRAMS
from jtm.data.labels import (
    HOP,
    NoteIndex,
    Notes,
    batch_piano_roll,
    batch_pitch_instrument_roll,
    piano_roll,
    pitch_instrument_roll,
    track_piano_roll,
)


def notes(*rows: tuple[int, int, int, int]) -> Notes:
    """Notes from (start, end, instrument, pitch) rows."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return Notes(a[:, 0], a[:, 1], a[:, 2].astype(np.int16), a[:, 3].astype(np.int16))


def test_piano_roll_overlap_convention() -> None:
    n = notes(
        (0, 160, 1, 60),  # exactly frame 0
        (159, 161, 1, 61),  # touches the last sample of frame 0 and the first of frame 1
        (320, 321, 1, 62),  # one sample: frame 2
        (480, 10_000, 41, 63),  # frame 3 to the end
        (10_000, 20_000, 1, 64),  # after the window
    )
    roll = piano_roll(n, 0, 5)
    expected = np.zeros((5, 128), bool)
    expected[0, 60] = True
    expected[[0, 1], 61] = True
    expected[2, 62] = True
    expected[3:, 63] = True
    np.testing.assert_array_equal(roll, expected)


def test_piano_roll_window_offset_and_notes_before_window() -> None:
    n = notes((0, 1000, 1, 70), (1000, 1100, 1, 71))
    roll = piano_roll(n, 800, 3)  # frames [800,960) [960,1120) [1120,1280)
    assert roll[:, 70].tolist() == [True, True, False]
    assert roll[:, 71].tolist() == [False, True, False]
    assert roll.sum() == 3


def test_end_is_exclusive() -> None:
    roll = piano_roll(notes((0, 320, 1, 60)), 0, 3)
    assert roll[:, 60].tolist() == [True, True, False]


def test_pitch_instrument_roll() -> None:
    n = notes((0, 160, 1, 60), (0, 320, 41, 60), (160, 320, 74, 90))
    roll = pitch_instrument_roll(n, 0, 2)
    assert roll.shape == (2, 11, 128)
    piano, violin, flute = (INSTRUMENT_PROGRAMS.index(p) for p in (1, 41, 74))
    assert roll[:, piano, 60].tolist() == [True, False]
    assert roll[:, violin, 60].tolist() == [True, True]
    assert roll[:, flute, 90].tolist() == [False, True]
    assert roll.sum() == 4
    # The pitch roll is the pitch x instrument roll collapsed over instruments.
    np.testing.assert_array_equal(piano_roll(n, 0, 2), roll.any(axis=1))


def test_unknown_instrument_rejected() -> None:
    with pytest.raises(ValueError, match="unknown instrument"):
        pitch_instrument_roll(notes((0, 10, 2, 60)), 0, 1)


def test_track_piano_roll_and_empty() -> None:
    n = notes((0, 500, 1, 60))
    assert track_piano_roll(n, 10)[:, 60].tolist() == [True] * 4 + [False] * 6
    assert not track_piano_roll(Notes.empty(), 4).any()


def _random_index(rng: np.random.Generator, n_tracks: int, n_notes: int, length: int) -> tuple[NoteIndex, list[Notes]]:
    per_track = []
    tracks, parts = [], []
    for t in range(n_tracks):
        start = np.sort(rng.integers(0, length, n_notes))
        end = start + rng.integers(1, 40_000, n_notes)  # some notes are far longer than a window
        inst = rng.choice(INSTRUMENT_PROGRAMS, n_notes).astype(np.int16)
        pitch = rng.integers(0, 128, n_notes).astype(np.int16)
        per_track.append(Notes(start, end, inst, pitch))
        tracks.append(np.full(n_notes, t))
        parts.append(per_track[-1])
    all_notes = Notes(*(np.concatenate([getattr(p, f) for p in parts]) for f in Notes._fields))
    return NoteIndex.build(np.concatenate(tracks), all_notes, n_tracks), per_track


def test_batch_equals_per_window() -> None:
    rng = np.random.default_rng(0)
    index, per_track = _random_index(rng, n_tracks=5, n_notes=300, length=2_000_000)
    tracks = rng.integers(0, 5, 16)
    starts = rng.integers(0, 2_000_000, 16)
    starts[0] = 0
    n_frames = 20480 // HOP
    batch = batch_piano_roll(index, tracks, starts, n_frames)
    batch_pi = batch_pitch_instrument_roll(index, tracks, starts, n_frames)
    np.testing.assert_array_equal(batch_piano_roll(index, tracks, starts, n_frames, dtype=np.float32), batch)
    assert batch.shape == (16, n_frames, 128) and batch_pi.shape == (16, n_frames, 11, 128)
    assert batch.any()
    for b, (t, s) in enumerate(zip(tracks, starts)):
        np.testing.assert_array_equal(batch[b], piano_roll(per_track[t], int(s), n_frames))
        np.testing.assert_array_equal(batch_pi[b], pitch_instrument_roll(per_track[t], int(s), n_frames))


def test_batch_speed() -> None:
    """8 windows of 20480 samples from a MusicNet-sized table: well under 1 ms per window."""
    rng = np.random.default_rng(1)
    index, _ = _random_index(rng, n_tracks=300, n_notes=3000, length=5_000_000)  # ~900k notes
    tracks, starts = rng.integers(0, 300, 8), rng.integers(0, 5_000_000, 8)
    for fn in (batch_piano_roll, batch_pitch_instrument_roll):
        fn(index, tracks, starts, 128, dtype=np.float32)  # warm-up
        t0 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            fn(index, tracks, starts, 128, dtype=np.float32)
        per_window = (time.perf_counter() - t0) / reps / 8
        assert per_window < 1e-3, f"{fn.__name__}: {per_window * 1e3:.3f} ms per window"

"""Piano roll <-> notes conversion and the MIDI / MusicNet-CSV writers."""
from __future__ import annotations

import csv

import numpy as np
import pretty_midi
import pytest

from jtm.evaluation.midi import MUSICNET_CSV_HEADER, notes_to_csv, notes_to_midi
from jtm.evaluation.notes import make_notes, notes_to_roll, roll_to_notes


def _known_roll() -> np.ndarray:
    # 20 frames x 128 pitches at 100 fps:
    #   pitch 60: frames 2..5 (4 frames), a 1-frame gap, frames 7..9  -> two notes
    #   pitch 64: frames 0..19 (whole roll, touches both edges)       -> one note 0.00..0.20 s
    #   pitch 67: frame 12 only                                       -> a blip
    #   pitch 72: frames 15..16 at probability 0.55                  -> a weak 2-frame note
    roll = np.zeros((20, 128), dtype=np.float32)
    roll[2:6, 60] = 0.9
    roll[7:10, 60] = 0.7
    roll[:, 64] = 1.0
    roll[12, 67] = 0.95
    roll[15:17, 72] = 0.55
    return roll


def test_roll_to_notes_exact_onsets_offsets_pitches() -> None:
    notes = roll_to_notes(_known_roll(), threshold=0.5, frame_rate=100.0, min_frames=2)
    # Sorted by (onset, pitch); the blip at pitch 67 is dropped by min_frames=2.
    np.testing.assert_allclose(notes.onset, [0.00, 0.02, 0.07, 0.15])
    np.testing.assert_allclose(notes.offset, [0.20, 0.06, 0.10, 0.17])
    np.testing.assert_array_equal(notes.pitch, [64, 60, 60, 72])
    np.testing.assert_allclose(notes.confidence, [1.0, 0.9, 0.7, 0.55], rtol=1e-6)


def test_min_frames_keeps_or_drops_blips() -> None:
    keep = roll_to_notes(_known_roll(), 0.5, min_frames=1)
    assert 67 in keep.pitch.tolist()
    drop = roll_to_notes(_known_roll(), 0.5, min_frames=3)
    # min 3 frames: the 2-frame pitch-72 note goes too, the 3-frame pitch-60 note stays.
    assert sorted(drop.pitch.tolist()) == [60, 60, 64]


def test_merge_gap_and_onset_threshold() -> None:
    merged = roll_to_notes(_known_roll(), 0.5, merge_gap=1)
    p60 = merged.pitch == 60
    np.testing.assert_allclose(merged.onset[p60], [0.02])
    np.testing.assert_allclose(merged.offset[p60], [0.10])
    # Mean over the 7 active frames, the bridged gap frame excluded: (4 * 0.9 + 3 * 0.7) / 7.
    np.testing.assert_allclose(merged.confidence[p60], [(4 * 0.9 + 3 * 0.7) / 7], rtol=1e-6)
    # Hysteresis: the 0.55 note never reaches 0.8 and is not started; the 0.7 run at pitch 60 neither.
    hyst = roll_to_notes(_known_roll(), 0.5, onset_threshold=0.8)
    assert 72 not in hyst.pitch.tolist()
    assert (hyst.pitch == 60).sum() == 1


def test_round_trip_roll_notes_roll() -> None:
    rng = np.random.default_rng(0)
    roll = rng.random((300, 128)) < 0.05
    back = notes_to_roll(roll_to_notes(roll, 0.5, 100.0, min_frames=1), 300, 100.0)
    np.testing.assert_array_equal(back, roll)
    # Other direction: notes -> roll -> the same notes (separated notes only, so nothing merges).
    notes = make_notes([0.1, 0.5, 0.3], [0.4, 0.9, 0.35], [60, 60, 30])
    again = roll_to_notes(notes_to_roll(notes, 100), 0.5, min_frames=1)
    np.testing.assert_allclose(again.onset, notes.onset)
    np.testing.assert_allclose(again.offset, notes.offset)
    np.testing.assert_array_equal(again.pitch, notes.pitch)


def test_empty_roll_and_bad_input() -> None:
    assert len(roll_to_notes(np.zeros((0, 128)), 0.5)) == 0
    assert len(roll_to_notes(np.zeros((50, 128)), 0.5)) == 0
    with pytest.raises(ValueError):
        roll_to_notes(np.zeros((4, 4, 4)), 0.5)
    with pytest.raises(ValueError):
        make_notes([0.5], [0.5], [60])  # zero-length note


def test_midi_written_and_reread(tmp_path) -> None:
    piano = make_notes([0.0, 0.5], [0.25, 1.0], [60, 64], [1.0, 0.5])
    violin = make_notes([0.12], [0.87], [76], [0.8])
    path = notes_to_midi({1: piano, 41: violin}, tmp_path / "out.mid")
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    pm = pretty_midi.PrettyMIDI(str(path))
    by_program = {inst.program: inst for inst in pm.instruments}
    assert sorted(by_program) == [0, 40]  # pretty_midi programs are 0-based
    assert by_program[40].name == "Violin"
    p = sorted(by_program[0].notes, key=lambda n: n.start)
    assert [n.pitch for n in p] == [60, 64]
    np.testing.assert_allclose([n.start for n in p], [0.0, 0.5], atol=1e-3)
    np.testing.assert_allclose([n.end for n in p], [0.25, 1.0], atol=1e-3)
    assert [n.velocity for n in p] == [127, 64]
    (v,) = by_program[40].notes
    assert v.pitch == 76 and abs(v.start - 0.12) < 1e-3 and abs(v.end - 0.87) < 1e-3


def test_csv_in_musicnet_format(tmp_path) -> None:
    piano = make_notes([0.5, 0.0], [1.0, 0.25], [64, 60])
    horn = make_notes([0.0], [0.1], [55])
    path = notes_to_csv({61: horn, 1: piano}, tmp_path / "labels.csv", sample_rate=44100)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == MUSICNET_CSV_HEADER
    assert rows[0] == "start_time,end_time,instrument,note,start_beat,end_beat,note_value".split(",")
    assert rows[1:] == [
        ["0", "11025", "1", "60", "0", "0", ""],
        ["0", "4410", "61", "55", "0", "0", ""],
        ["22050", "44100", "1", "64", "0", "0", ""],
    ]
    with pytest.raises(ValueError):
        notes_to_csv({0: piano}, tmp_path / "bad.csv")  # programs are 1-based


# ------------------------------------------------------------------------------------ onsets and note decoding


def _synthetic_notes():
    """Notes at 16 kHz on 10 ms frames: overlapping pitches, a repeated note that touches its predecessor, a
    one-frame note, and a note running to the end of the roll."""
    from jtm.data.labels import HOP, Notes

    frames = np.array([[0, 25, 48], [10, 30, 60], [30, 50, 60], [12, 13, 72], [40, 100, 21], [95, 100, 108]])
    start, end, pitch = frames[:, 0] * HOP, frames[:, 1] * HOP, frames[:, 2]
    table = Notes(start.astype(np.int64), end.astype(np.int64), np.ones(len(frames), np.int16), pitch.astype(np.int16))
    return table, make_notes(frames[:, 0] / 100, frames[:, 1] / 100, pitch)


def test_notes_to_rolls_to_notes_round_trip() -> None:
    """notes -> frame roll + onset roll (the training labels) -> decoded notes: the same notes, including a
    repeated note that touches the previous one (frame-wise decoding would merge the two)."""
    from jtm.data.labels import track_onset_roll, track_piano_roll
    from jtm.evaluation.notes import decode_notes, notes_to_onset_roll

    table, expected = _synthetic_notes()
    frame, onset = track_piano_roll(table, 100), track_onset_roll(table, 100)
    assert onset.sum() == len(expected) and onset[30, 60] and onset[10, 60] and not onset[11:30, 60].any()
    wide = track_onset_roll(table, 100, width=3)  # the training targets: each note's first 3 frames
    assert wide[10:13, 60].all() and not wide[13, 60] and wide[12, 72] and not wide[13, 72]  # a 1-frame note: 1
    for onsets, frames in ((onset, frame), (onset.astype(np.float32), frame.astype(np.float32)), (wide, frame),
                           (notes_to_onset_roll(expected, 100), notes_to_roll(expected, 100))):
        got = decode_notes(onsets, frames, 0.5, 0.5)
        np.testing.assert_allclose(got.onset, expected.onset)
        np.testing.assert_allclose(got.offset, expected.offset)
        np.testing.assert_array_equal(got.pitch, expected.pitch)
    merged = roll_to_notes(frame, 0.5, min_frames=1)
    assert (merged.pitch == 60).sum() == 1  # frames alone cannot split the touching repeat


def test_onset_roll_marks_only_notes_starting_in_the_window() -> None:
    from jtm.data.labels import HOP, onset_roll

    table, _ = _synthetic_notes()
    roll = onset_roll(table, 20 * HOP + 7, 30)  # the note starting at frame 10 began before this window
    assert {(int(f), int(p)) for f, p in zip(*np.nonzero(roll))} == {(9, 60), (19, 21)}


def test_decoding_of_probabilities() -> None:
    """An onset smeared over two frames starts one note at its first frame; the note ends where the frame
    probability drops; frame activity without an onset starts no note; thresholds change the outcome."""
    from jtm.evaluation.notes import decode_notes

    onset = np.zeros((40, 128), np.float32)
    frame = np.zeros((40, 128), np.float32)
    onset[5:7, 60] = [0.6, 0.9]
    frame[6:20, 60] = 0.8  # the onset frame (5) counts though the frame branch rises one frame late
    frame[20:25, 60] = 0.4
    frame[10:30, 64] = 0.9  # sustained energy, no onset: not a note
    onset[30, 67] = 0.4  # a weak onset
    frame[30:35, 67] = 0.9
    notes = decode_notes(onset, frame, onset_threshold=0.5, frame_threshold=0.5)
    assert notes.pitch.tolist() == [60] and notes.onset.tolist() == [0.05] and notes.offset.tolist() == [0.20]
    assert notes.confidence.tolist() == [pytest.approx(0.6)]
    low = decode_notes(onset, frame, onset_threshold=0.3, frame_threshold=0.3)
    assert low.pitch.tolist() == [60, 67] and low.offset.tolist() == [0.25, 0.35]
    assert len(decode_notes(np.zeros((0, 128)), np.zeros((0, 128)))) == 0
    with pytest.raises(ValueError):
        decode_notes(onset, frame[:10])


def test_note_f1_with_and_without_offsets() -> None:
    from jtm.evaluation.metrics import note_prf

    ref = make_notes([0.0, 1.0], [0.5, 2.0], [60, 62])
    est = make_notes([0.03, 1.0], [0.5, 1.2], [60, 62])  # onsets right, the second offset far off
    assert note_prf(ref, est)["f1"] == 1.0
    assert note_prf(ref, est, offset_ratio=0.2)["f1"] == pytest.approx(0.5)


def test_note_thresholds_come_from_onset_f1_then_offset_f1() -> None:
    """Onsets at 0.8 (true) and 0.3 (spurious); frames at 0.6 while a note sounds and 0.4 in its release tail:
    the onset threshold must drop the spurious onsets and the frame threshold must cut the tails."""
    from jtm.evaluation.metrics import tune_note_thresholds

    rng = np.random.default_rng(0)
    onset = np.zeros((3000, 128), np.float32)
    frame = np.zeros((3000, 128), np.float32)
    starts = np.arange(20, 2900, 60)
    pitches = rng.integers(40, 80, len(starts))
    for s, p in zip(starts, pitches):
        onset[s, p] = 0.8
        frame[s:s + 20, p] = 0.6
        frame[s + 20:s + 40, p] = 0.4  # a release tail: the note has ended
        onset[s + 30, (p + 7) % 128] = 0.3  # a spurious onset elsewhere
    ref = make_notes(starts / 100, (starts + 20) / 100, pitches)
    onset_threshold, frame_threshold = tune_note_thresholds(ref, onset, frame)
    assert 0.3 < onset_threshold <= 0.8 and 0.4 < frame_threshold <= 0.6

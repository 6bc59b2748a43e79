"""``jtm transcribe``: MIDI/CSV/PNG outputs for many formats, streamed note stitching, models, bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pretty_midi
import pytest
import soundfile as sf

from jtm.errors import DataError, JTMError, ModelFileError
from jtm.evaluation.notes import roll_to_notes
from jtm.pipelines.transcribe import NoteStitcher, load_transcriber, transcribe_file, transcribe_files
from tests.apply_helpers import FORMATS, make_bad_files, make_downstream_run, make_pretrain_run, run_cli, write_tone


@pytest.fixture(scope="module")
def piano_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transcription model that hears C4 (60) and G4 (67) all the time."""
    return make_downstream_run(tmp_path_factory.mktemp("tr") / "piano", notes={1: [60, 67]}, threshold=0.4)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pitch-instrument model that hears a piano C4 and a violin A4 all the time."""
    return make_downstream_run(tmp_path_factory.mktemp("tr") / "pi", task="pitch-instrument",
                               notes={1: [60], 41: [69]})


def test_transcribe_every_format_rate_and_channel_count(piano_run: Path, tmp_path: Path) -> None:
    files = [write_tone(tmp_path / "in" / name, 1.53, sr, ch, subtype) for name, sr, ch, subtype in FORMATS]
    code, out, err = run_cli(["transcribe", *files, "--model", piano_run, "-o", tmp_path / "out", "--csv",
                              "--piano-roll"])
    assert code == 0, err
    for path in files:
        duration = sf.info(str(path)).duration
        midi = pretty_midi.PrettyMIDI(str(tmp_path / "out" / f"{path.stem}.mid"))
        assert len(midi.instruments) == 1 and midi.instruments[0].program == 0  # GM 1: piano
        notes = sorted((n.pitch, n.start, n.end) for n in midi.instruments[0].notes)
        assert [p for p, _, _ in notes] == [60, 67]
        for _, start, end in notes:
            assert start == pytest.approx(0.0, abs=0.002)
            assert end == pytest.approx(round(duration * 16000) // 160 / 100, abs=0.002)
        csv = pd.read_csv(tmp_path / "out" / f"{path.stem}.csv")
        assert list(csv.columns[:4]) == ["start_time", "end_time", "instrument", "note"]
        assert sorted(csv["note"]) == [60, 67] and set(csv["instrument"]) == {1}
        assert (tmp_path / "out" / f"{path.stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.count("x real time") == len(files) + 1  # one line per file and the overall line
    assert "model " in out and "threshold 0.40" in out


def test_pitch_instrument_model_writes_one_midi_instrument_per_instrument(ensemble_run: Path, tmp_path: Path) -> None:
    path = write_tone(tmp_path / "duo.wav", 2.0, 22_050, 2)
    tr = load_transcriber(ensemble_run / "model")
    result = transcribe_file(tr, path, tmp_path / "out", csv=True)
    midi = pretty_midi.PrettyMIDI(str(result.midi))
    programs = {inst.program: [n.pitch for n in inst.notes] for inst in midi.instruments}
    assert programs == {0: [60], 40: [69]}  # GM 1 piano, GM 41 violin (pretty_midi programs are 0-based)
    assert result.instruments == ["Acoustic Grand Piano", "Violin"] or len(result.instruments) == 2
    assert set(pd.read_csv(tmp_path / "out" / "duo.csv")["instrument"]) == {1, 41}


def test_long_input_is_chunked_into_one_note_per_pitch(piano_run: Path, tmp_path: Path) -> None:
    path = write_tone(tmp_path / "long.flac", 31.7, 44_100, 1)
    tr = load_transcriber(piano_run)
    result = transcribe_file(tr, path, tmp_path, chunk_seconds=2.5, context_seconds=0.3, batch_size=3)
    midi = pretty_midi.PrettyMIDI(str(result.midi))
    notes = midi.instruments[0].notes
    # The notes run through every chunk seam: stitched into one note per pitch covering all 3170 frames.
    assert sorted(n.pitch for n in notes) == [60, 67]
    assert all(n.end == pytest.approx(31.7, abs=0.011) for n in notes)
    assert result.duration == pytest.approx(31.7, abs=1e-3) and result.speed > 0


@pytest.mark.parametrize("chunk", [1, 7, 64, 500])
def test_note_stitcher_equals_roll_to_notes_on_the_whole_roll(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    roll = np.zeros((3000, 2 * 128), dtype=np.float32)
    for _ in range(250):
        c, s, n = rng.integers(0, 256), rng.integers(0, 3000), rng.integers(1, 300)
        roll[s:s + n, c] = rng.uniform(0.3, 1.0)
    stitcher = NoteStitcher(2, threshold=0.5)
    for i in range(0, len(roll), chunk):
        stitcher.push(roll[i:i + chunk])
    got = stitcher.finish()
    for k in range(2):
        ref = roll_to_notes(roll[:, k * 128:(k + 1) * 128], 0.5, 100.0, min_frames=2)
        assert len(got[k]) == len(ref)
        for a, b in zip(got[k], ref):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_note_stitcher_memory_is_bounded_for_a_stuck_note() -> None:
    stitcher = NoteStitcher(1, threshold=0.5, max_pending_frames=500)
    for _ in range(30):
        stitcher.push(np.ones((100, 128), dtype=np.float32))
        assert stitcher._pending.shape[0] <= 600
    notes = stitcher.finish()[0]
    assert len(notes) > 128 and notes.offset.max() == pytest.approx(30.0)


def test_model_folder_checks(tmp_path: Path) -> None:
    classifier = make_downstream_run(tmp_path / "cls", task="ensemble", classes=["Solo Piano", "String Quartet"])
    with pytest.raises(JTMError, match="'ensemble'.*transcription"):
        load_transcriber(classifier)
    pretrain = make_pretrain_run(tmp_path / "pre")
    with pytest.raises(ModelFileError, match="pretraining run"):
        load_transcriber(pretrain)
    with pytest.raises(ModelFileError, match="no such"):
        load_transcriber(tmp_path / "missing")
    code, _, err = run_cli(["transcribe", write_tone(tmp_path / "a.wav", 0.5, 16_000), "--model", classifier,
                            "-o", tmp_path / "o"])
    assert code == 1 and "transcription" in err and "Traceback" not in err


def test_bad_inputs_name_the_file_and_skip_counts(piano_run: Path, tmp_path: Path) -> None:
    bad = make_bad_files(tmp_path / "bad")
    tr = load_transcriber(piano_run)
    for kind, path in bad.items():
        with pytest.raises(DataError) as info:
            transcribe_file(tr, path, tmp_path / "o0")
        assert str(path) in str(info.value), kind
    assert not (tmp_path / "o0").exists() or not any((tmp_path / "o0").iterdir())

    good = write_tone(tmp_path / "good.ogg", 1.0, 48_000, 2)
    for kind, path in bad.items():
        code, _, err = run_cli(["transcribe", good, path, "--model", piano_run, "-o", tmp_path / f"o_{kind}"])
        assert code == 1 and str(path) in err and "Traceback" not in err, (kind, err)

    lines: list[str] = []
    outcome = transcribe_files(piano_run, [good, *bad.values()], tmp_path / "o1", on_error="skip",
                               echo=lines.append)
    assert len(outcome.results) == 1 and len(outcome.skipped) == 4
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["good.mid"]
    code, out, _ = run_cli(["transcribe", good, *bad.values(), "--model", piano_run, "-o", tmp_path / "o2",
                            "--on-error", "skip"])
    assert code == 0 and "skipped 4 bad input(s)" in out


def test_threshold_option_overrides_the_tuned_threshold(piano_run: Path, tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a.wav", 1.0, 16_000)
    tr = load_transcriber(piano_run, threshold=0.9999)
    assert tr.threshold == 0.9999
    assert transcribe_file(tr, path, tmp_path).n_notes == 2  # the model is certain (sigmoid(12) = 0.999994)
    assert transcribe_file(load_transcriber(piano_run, threshold=1.0), path, tmp_path).n_notes == 0
    with pytest.raises(JTMError, match="threshold"):
        load_transcriber(piano_run, threshold=1.5)


def test_default_chunking_reproduces_the_runs_evaluation(tmp_path: Path) -> None:
    """With a run.json, transcription sees the audio exactly as ``jtm evaluate`` (predict_frames) did
    (end to end against ``jtm evaluate`` in tests/test_inference.py); options override one setting each."""
    from jtm.audio import load_audio
    from jtm.models.inference import Chunking
    from jtm.pipelines.transcribe import iter_probabilities

    run = make_downstream_run(tmp_path / "run", notes={1: [60]})
    tr = load_transcriber(run)
    assert tr.chunking() == Chunking(core=12, left=2, right=2, batch_size=8)  # 16-frame windows
    assert tr.chunking(chunk_seconds=0.5, batch_size=2) == Chunking(core=50, left=2, right=2, batch_size=2)
    assert tr.chunking(context_seconds=0.1) == Chunking(core=12, left=10, right=10, batch_size=8)
    path = write_tone(tmp_path / "a.wav", 3.0, 22_050, 2, freq=330.0)
    ours = np.concatenate(list(iter_probabilities(tr, path)))
    audio, _ = load_audio(path)
    np.testing.assert_array_equal(ours, tr.model.predict_frames(audio, 2560, context_frames=2, batch_size=8))
    # Without a run.json (a bare model/ folder elsewhere): 10 s chunks with 1 s of context, one at a time.
    bare = tmp_path / "bare"
    (run / "model").rename(bare)
    assert load_transcriber(bare).chunking() == Chunking(core=1000, left=100, right=100, batch_size=1)


# ------------------------------------------------------------------------------------------ note models


def _onset_frame_probabilities(rng: np.random.Generator, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Onset and frame probabilities with smeared onsets, long and short notes, repeated notes, flicker."""
    onset = rng.uniform(0.0, 0.3, (n, 128)).astype(np.float32)
    frame = rng.uniform(0.0, 0.3, (n, 128)).astype(np.float32)
    for _ in range(400):
        p, s, length = rng.integers(20, 100), rng.integers(0, n), rng.integers(1, 400)
        onset[s:s + rng.integers(1, 4), p] = rng.uniform(0.5, 1.0)
        frame[s:s + length, p] = rng.uniform(0.4, 1.0, len(frame[s:s + length, p]))
    return onset, frame


@pytest.mark.parametrize("chunk", [1, 5, 64, 700])
def test_onset_note_stitcher_equals_decode_notes_on_the_whole_recording(chunk: int) -> None:
    from jtm.evaluation.notes import decode_notes
    from jtm.pipelines.transcribe import OnsetNoteStitcher

    onset, frame = _onset_frame_probabilities(np.random.default_rng(chunk))
    stitcher = OnsetNoteStitcher(onset_threshold=0.5, frame_threshold=0.45)
    for i in range(0, len(onset), chunk):
        stitcher.push(onset[i:i + chunk], frame[i:i + chunk])
    got, ref = stitcher.finish(), decode_notes(onset, frame, 0.5, 0.45, 100.0)
    assert len(ref) > 300 and len(got) == len(ref) and stitcher.frames == len(onset)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_onset_note_stitcher_memory_is_bounded_for_a_stuck_note() -> None:
    from jtm.pipelines.transcribe import OnsetNoteStitcher

    stitcher = OnsetNoteStitcher(0.5, 0.5, max_pending_frames=500)
    ones = np.ones((100, 128), dtype=np.float32)
    for _ in range(30):
        stitcher.push(np.zeros_like(ones), ones)  # frames on for ever, one onset at the start
        assert len(stitcher._onset) <= 600
    notes = stitcher.finish()
    assert len(notes) == 0  # no onset, no note: frames alone start nothing
    stitcher = OnsetNoteStitcher(0.5, 0.5, max_pending_frames=500)
    for k in range(30):
        stitcher.push(ones if k == 0 else np.zeros_like(ones), ones)
        assert len(stitcher._onset) <= 600
    notes = stitcher.finish()
    # one onset per pitch, frames on for 30 s: each note is closed when it has been pending for 5 s
    assert len(notes) == 128 and notes.onset.max() == 0 and notes.offset.max() == pytest.approx(5.0)


def make_note_model(folder: Path, audio: np.ndarray) -> Path:
    """A tiny random note transcriber whose saved thresholds sit inside its probabilities on ``audio``, so it
    transcribes some notes."""
    import torch

    from jtm.models.logmel import LogMel, LogMelConfig
    from jtm.models.note_head import NoteHead
    from jtm.models.note_transcriber import NoteThresholds, NoteTranscriber

    torch.manual_seed(3)
    model = NoteTranscriber(LogMel(LogMelConfig(n_mels=32, normalize=False)), NoteHead(32, hidden=16)).eval()
    with torch.no_grad():
        model.head.input.weight.mul_(0.3)
    onset, frame = model.predict(audio)
    model.thresholds = NoteThresholds(onset=float(np.quantile(onset, 0.995)), sustain=float(np.quantile(frame, 0.9)),
                                      frame=float(np.quantile(frame, 0.8)))
    model.save_pretrained(folder / "model")
    return folder


def test_a_note_model_transcribes_files_as_its_one_pass_probabilities_decode(tmp_path: Path) -> None:
    """jtm transcribe --model NOTE_MODEL: streamed in chunks, the notes are decode_notes of one pass over the
    file with the saved thresholds; --threshold / --onset-threshold override them."""
    from jtm.audio import load_audio
    from jtm.evaluation.notes import decode_notes
    from jtm.pipelines.transcribe import iter_note_probabilities

    path = write_tone(tmp_path / "in.flac", 12.3, 22_050, 2, freq=311.0)
    audio, _ = load_audio(path)
    audio = audio + np.random.default_rng(0).normal(0, 0.05, audio.shape).astype(np.float32)
    path = tmp_path / "in.wav"
    sf.write(str(path), audio, 16_000, subtype="FLOAT")
    folder = make_note_model(tmp_path / "cell", audio)
    tr = load_transcriber(folder)
    assert tr.task == "notes" and tr.decodes_onsets and tr.threshold == tr.model.thresholds.sustain
    onset, frame = tr.model.predict(audio)
    streamed = list(iter_note_probabilities(tr, path, tr.chunking(chunk_seconds=1.7)))
    np.testing.assert_allclose(np.concatenate([o for o, _ in streamed]), onset, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([f for _, f in streamed]), frame, atol=1e-5)
    expected = decode_notes(onset, frame, tr.onset_threshold, tr.threshold, 100.0)
    assert len(expected) > 5
    code, out, err = run_cli(["transcribe", path, "--model", folder, "-o", tmp_path / "out", "--csv",
                              "--piano-roll", "--chunk-seconds", "2.5"])
    assert code == 0, err
    assert "onset threshold" in out and "x real time" in out
    csv = pd.read_csv(tmp_path / "out" / "in.csv")
    got = sorted(zip(csv["note"], csv["start_time"], csv["end_time"]))  # samples at 44.1 kHz
    frames = np.round(np.stack([expected.onset, expected.offset]) * 100).astype(int) * 441
    assert got == sorted(zip(expected.pitch.tolist(), *frames.tolist()))
    assert (tmp_path / "out" / "in.png").read_bytes()[:4] == b"\x89PNG"
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "out" / "in.mid"))
    assert len(midi.instruments[0].notes) == len(expected)
    strict = load_transcriber(folder / "model", threshold=0.999, onset_threshold=0.999)
    assert transcribe_file(strict, path, tmp_path / "strict").n_notes < len(expected)
    with pytest.raises(JTMError, match="onset-threshold"):
        load_transcriber(folder, onset_threshold=0.0)
    frame_model = make_downstream_run(tmp_path / "frames", notes={1: [60]})
    with pytest.raises(JTMError, match="note models"):
        load_transcriber(frame_model, onset_threshold=0.5)

"""The synth corpus: MusicNet layout, labels that match the audio, determinism, resumption, errors.

One tiny corpus (about 30 s of audio in 5 s excerpts) is built per module and shared by the tests.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from jtm.data.instruments import MUSICNET_INSTRUMENTS
from jtm.data.synth import LABEL_COLUMNS, METADATA_COLUMNS, build_corpus, split_pieces
from jtm.data.synth.catalogue import make_plan
from jtm.errors import DataError

ARGS = dict(minutes=0.5, max_seconds=5.0, test_fraction=0.3, workers=2, progress=False)
RATE = 44_100


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = build_corpus(out, seed=0, **ARGS)
    return out, summary


@pytest.fixture(scope="module")
def metadata(corpus) -> pd.DataFrame:
    out, _ = corpus
    return pd.read_csv(out / "musicnet_metadata.csv")


def _split_of(out: Path, piece_id: int) -> str:
    found = [s for s in ("train", "test") if (out / f"{s}_data" / f"{piece_id}.wav").exists()]
    assert len(found) == 1, f"piece {piece_id} in {found}"
    return found[0]


def test_layout_and_metadata(corpus, metadata):
    out, summary = corpus
    for name in ("train_data", "test_data", "train_labels", "test_labels"):
        assert (out / name).is_dir()
    with open(out / "musicnet_metadata.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == METADATA_COLUMNS
    assert len(metadata) == summary.n_pieces >= 4
    assert metadata["id"].is_unique and metadata["id"].between(1000, 9999).all()
    assert (metadata["source"] == "music21 corpus").all()
    assert metadata["transcriber"].str.contains("TimGM6mb").all()
    assert metadata[["composer", "composition", "movement", "ensemble", "catalog_name"]].notna().all().all()

    splits = {int(i): _split_of(out, int(i)) for i in metadata["id"]}
    assert summary.n_test == sum(s == "test" for s in splits.values()) >= 1
    assert summary.n_train == sum(s == "train" for s in splits.values()) >= 1
    # Nothing else lies in the split folders (no litter, no piece outside the metadata).
    for split in ("train", "test"):
        ids = {i for i, s in splits.items() if s == split}
        assert {int(p.stem) for p in (out / f"{split}_data").iterdir()} == ids
        assert {int(p.stem) for p in (out / f"{split}_labels").iterdir()} == ids
    assert sum(summary.ensembles.values()) == summary.n_pieces
    assert summary.ensembles == metadata["ensemble"].value_counts().to_dict()
    assert abs(summary.seconds - metadata["seconds"].sum()) <= len(metadata)  # metadata rounds to whole seconds
    assert set(summary.to_dict()) >= {"n_pieces", "n_train", "n_test", "seconds", "seconds_elapsed", "ensembles",
                                      "composers"}


def test_wav_format_and_labels(corpus, metadata):
    out, _ = corpus
    for piece_id in metadata["id"]:
        split = _split_of(out, int(piece_id))
        wav = out / f"{split}_data" / f"{piece_id}.wav"
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (RATE, 1, "PCM_16", "WAV")
        row = metadata[metadata["id"] == piece_id].iloc[0]
        assert abs(info.frames / RATE - row["seconds"]) <= 0.5
        assert info.frames / RATE <= ARGS["max_seconds"] + 1.0

        lab = out / f"{split}_labels" / f"{piece_id}.csv"
        with open(lab, newline="") as f:
            assert tuple(next(csv.reader(f))) == LABEL_COLUMNS
        df = pd.read_csv(lab)
        assert len(df) > 0
        for col in ("start_time", "end_time", "instrument", "note"):
            assert pd.api.types.is_integer_dtype(df[col]), col
        assert (df["start_time"] >= 0).all() and (df["start_time"] < df["end_time"]).all()
        assert (df["end_time"] <= info.frames).all()
        assert df["instrument"].isin(list(MUSICNET_INSTRUMENTS)).all()
        assert df["note"].between(0, 127).all()
        assert (df["end_beat"] > 0).all() and (df["start_beat"] >= 0).all()
        assert df["note_value"].astype(str).str.len().gt(0).all()
        assert df["start_time"].is_monotonic_increasing


def _salience(spectrum: np.ndarray, bin_hz: float, pitch: int) -> float:
    """Weighted spectral magnitude at the first three harmonics of a MIDI pitch (max over +-1 bin)."""
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    total = 0.0
    for h in (1, 2, 3):
        k = int(round(h * f0 / bin_hz))
        if k + 1 < len(spectrum):
            total += float(spectrum[max(k - 1, 0):k + 2].max()) / h
    return total


def test_labels_match_audio_spectrum(corpus, metadata):
    """During a labelled note the audio has clearly more energy at that pitch's harmonics than at a pitch that is
    not sounding (nor related to a sounding one by an octave, fifth or fourth)."""
    out, _ = corpus
    rng = np.random.default_rng(0)
    n_fft = 4096
    window = np.hanning(n_fft)
    bin_hz = RATE / n_fft
    wins = trials = 0
    for piece_id in metadata["id"]:
        split = _split_of(out, int(piece_id))
        audio, _ = sf.read(out / f"{split}_data" / f"{piece_id}.wav")
        df = pd.read_csv(out / f"{split}_labels" / f"{piece_id}.csv")
        held = df[df["end_time"] - df["start_time"] > n_fft + 1500]
        for note in held.sample(min(15, len(held)), random_state=0).itertuples():
            at = note.start_time + 1000  # past the attack transient
            spectrum = np.abs(np.fft.rfft(audio[at:at + n_fft] * window))
            sounding = set(df[(df["start_time"] < at + n_fft) & (df["end_time"] > at)]["note"])
            unrelated = [q for q in range(40, 90)
                         if all(abs(q - s) not in (0, 1, 5, 7, 12, 19, 24) for s in sounding)]
            if not unrelated:
                continue
            other = int(rng.choice(unrelated))
            trials += 1
            wins += _salience(spectrum, bin_hz, note.note) > 2 * _salience(spectrum, bin_hz, other)
    assert trials >= 20
    assert wins / trials >= 0.75, f"labelled pitch dominated only {wins}/{trials} times"


def test_single_note_render_has_its_pitch():
    """The renderer plays the labelled key: an isolated A4 violin note peaks at 440 Hz (or a harmonic)."""
    from jtm.data.synth import PieceNotes, SynthNote, default_soundfont, render

    piece = PieceNotes(notes=(SynthNote(2000, 2000 + RATE // 2, 41, 69, 0.0, 1.0, "Quarter", 90, 0),),
                       n_samples=RATE)
    audio = render(piece, default_soundfont()).astype(np.float64)
    assert np.abs(audio).max() == round(10 ** (-1 / 20) * 32767)  # peak-normalised to -1 dBFS
    assert np.abs(audio[:1900]).max() == 0  # silent before the note-on
    seg = audio[6000:6000 + 8192] * np.hanning(8192)
    spectrum = np.abs(np.fft.rfft(seg))
    peak_hz = np.argmax(spectrum) * RATE / 8192
    assert min(abs(peak_hz - 440 * h) for h in (1, 2, 3)) < 15


def test_deterministic_and_seed_dependent(corpus, tmp_path):
    out, _ = corpus
    again = build_corpus(tmp_path / "again", seed=0, **ARGS)
    assert _hashes(tmp_path / "again") == _hashes(out)
    assert again.n_pieces > 0
    build_corpus(tmp_path / "other", seed=1, **ARGS)
    assert _hashes(tmp_path / "other") != _hashes(out)


def test_resume_skips_existing_and_matches_fresh(corpus, tmp_path):
    out, _ = corpus
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    reference = _hashes(out)
    wavs = sorted(copy.glob("*_data/*.wav"))
    kept, removed = wavs[0], wavs[-1]
    kept_mtime = kept.stat().st_mtime_ns
    removed.unlink()  # as if the first run was killed before this piece was written
    (copy / "musicnet_metadata.csv").unlink()
    litter = kept.parent / f".{kept.name}.abcd.tmp"  # a killed atomic write
    litter.write_bytes(b"half a file")
    build_corpus(copy, seed=0, **ARGS)
    assert _hashes(copy) == reference
    assert kept.stat().st_mtime_ns == kept_mtime  # skipped, not re-rendered


def test_refuses_other_settings_in_same_folder(corpus, tmp_path):
    out, _ = corpus
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with pytest.raises(DataError, match="other settings"):
        build_corpus(copy, seed=5, **ARGS)


def test_bad_soundfont_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="soundfont not found"):
        build_corpus(tmp_path / "a", soundfont=tmp_path / "missing.sf2", **ARGS)
    junk = tmp_path / "junk.sf2"
    junk.write_bytes(b"RIFF not really a soundfont")
    with pytest.raises(DataError, match="not a loadable soundfont") as err:
        build_corpus(tmp_path / "b", soundfont=junk, **ARGS)
    assert str(junk) in str(err.value)
    assert not (tmp_path / "b").exists()  # failed before touching the output folder


def test_split_is_a_stratified_partition():
    rng = np.random.default_rng(1)
    names = ["Solo Piano"] * 12 + ["String Quartet"] * 8 + ["Wind Quintet"] * 3 + ["Solo Cello"] * 2
    pieces = [(1000 + i, e) for i, e in enumerate(rng.permutation(names))]
    split = split_pieces(pieces, 0.2, seed=0)
    assert set(split) == {pid for pid, _ in pieces}
    test = [e for pid, e in pieces if split[pid] == "test"]
    train = [e for pid, e in pieces if split[pid] == "train"]
    assert len(test) == 5 and len(set(test)) >= 2 and len(set(train)) == 4
    assert split == split_pieces(list(reversed(pieces)), 0.2, seed=0)  # order of the input does not matter
    assert split_pieces(pieces[:2], 0.01, seed=0) != {p: "train" for p, _ in pieces[:2]}  # >= 1 test when n >= 2


def test_plan_mixes_composers_and_ensembles():
    plan = make_plan(0)
    assert [s.id for s in plan] == list(range(1000, 1000 + len(plan)))
    head = plan[:30]
    assert len({s.composer for s in head}) >= 4
    assert len({s.ensemble for s in head}) >= 5
    assert make_plan(0) == plan and make_plan(1) != plan
    arranged = [s for s in plan if s.corpus_path.startswith("bach/")]
    assert all("arr. for" in s.composition for s in arranged)

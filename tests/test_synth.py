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
from jtm.data.synth import LABEL_COLUMNS, METADATA_COLUMNS, PieceNotes, build_corpus, split_pieces
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


# --- timbre diversity: several renderings per piece, several soundfonts, the held-out-timbre split ----------------

TIMBRE_ARGS = dict(ARGS, renderings=2)


def _fonts(folder: Path) -> tuple[list[Path], Path]:
    """Two training soundfonts and one held-out soundfont (copies of the default under other names)."""
    from jtm.data.synth import default_soundfont

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in ("FontA.sf2", "FontB.sf2", "Held.sf2")]
    for p in paths:
        shutil.copyfile(default_soundfont(), p)
    return paths[:2], paths[2]


@pytest.fixture(scope="module")
def timbre_corpus(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """Built through the CLI, with ``--soundfont`` given twice and a held-out soundfont."""
    from typer.testing import CliRunner

    import jtm.cli  # noqa: F401  (registers the commands)
    from jtm.cli.app import app

    base = tmp_path_factory.mktemp("timbre")
    fonts, held = _fonts(base / "fonts")
    out = base / "corpus"
    args = ["data", "synth", str(out), "--minutes", "0.5", "--max-seconds", "5", "--test-fraction", "0.3",
            "--workers", "2", "--renderings", "2", "--soundfont", str(fonts[0]), "--soundfont", str(fonts[1]),
            "--heldout-soundfont", str(held)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, fonts, held


def _recordings(out: Path) -> dict[int, dict]:
    from jtm.data.synth import read_recordings

    recs = read_recordings(out)
    for rid, rec in recs.items():
        rec["wav"] = out / f"{rec['split']}_data" / f"{rid}.wav"
        rec["csv"] = out / f"{rec['split']}_labels" / f"{rid}.csv"
    return recs


def test_renderings_share_split_labels_and_length(timbre_corpus):
    out, _, _ = timbre_corpus
    recs = _recordings(out)
    metadata = pd.read_csv(out / "musicnet_metadata.csv")
    assert set(metadata["id"]) == set(recs)
    assert {_split_of(out, rid) for rid in recs} == {"train", "test"}
    by_piece: dict[int, list[dict]] = {}
    for rid, rec in recs.items():
        assert _split_of(out, rid) == rec["split"]
        by_piece.setdefault(rec["piece"], []).append(rec)
    for piece, group in by_piece.items():
        assert len({r["split"] for r in group}) == 1, f"piece {piece} is on both sides of the split"
        normal = sorted(r["rendering"] for r in group if not r["heldout"])
        assert normal == [0, 1]
        assert len(group) == 2 + (group[0]["split"] == "test")  # + the held-out rendering of a test piece
        # Labels are byte-identical across timbres, and every recording has the same number of samples.
        assert len({r["csv"].read_bytes() for r in group}) == 1
        assert len({sf.info(str(r["wav"])).frames for r in group}) == 1
        assert len({r["wav"].read_bytes() for r in group}) == len(group)  # but they sound different
    rows = metadata.set_index("id")
    for rid, rec in recs.items():  # every recording is its own row with its piece's metadata
        assert rows.loc[rid, "composition"] == rows.loc[rec["piece"], "composition"]


def test_heldout_timbres_never_reach_training(timbre_corpus):
    from jtm.data.synth import heldout_timbre_ids, piece_of
    from jtm.data.synth.timbre import in_training_family

    out, fonts, held = timbre_corpus
    recs = _recordings(out)
    heldout = heldout_timbre_ids(out)
    test_pieces = {r["piece"] for r in recs.values() if r["split"] == "test"}
    assert heldout and {recs[i]["piece"] for i in heldout} == test_pieces
    assert all(recs[i]["split"] == "test" and recs[i]["soundfont"] == held.name for i in heldout)
    train = [r for r in recs.values() if r["split"] == "train"]
    assert train and all(in_training_family(r["timbre"], n_train_soundfonts=2) for r in train)
    assert {r["soundfont"] for r in train} == {f.name for f in fonts}  # both training soundfonts are used
    assert {r["soundfont"] for r in recs.values() if not r["heldout"]} == {f.name for f in fonts}
    transcribers = pd.read_csv(out / "musicnet_metadata.csv").set_index("id")["transcriber"]
    assert all(Path(recs[i]["soundfont"]).stem in transcribers[i] for i in recs)
    assert piece_of(out) == {i: r["piece"] for i, r in recs.items()}


def test_reference_rendering_is_the_one_timbre_corpus(corpus, timbre_corpus):
    """Rendering 0 keeps the corpus of a plain build: same ids, splits and bytes (the fonts are copies)."""
    plain, _ = corpus
    out, _, _ = timbre_corpus
    first = {rid: r for rid, r in _recordings(out).items() if r["rendering"] == 0}
    assert set(first) == {int(p.stem) for p in plain.glob("*_data/*.wav")}
    for rid, rec in first.items():
        split = _split_of(plain, rid)
        assert rec["split"] == split
        assert rec["wav"].read_bytes() == (plain / f"{split}_data" / f"{rid}.wav").read_bytes()
    assert not (plain / "jtm_timbre.json").exists()


def test_timbre_corpus_is_deterministic_and_resumable(timbre_corpus, tmp_path):
    out, fonts, held = timbre_corpus
    again = tmp_path / "again"
    summary = build_corpus(again, seed=0, soundfont=fonts, heldout_soundfont=[held], **TIMBRE_ARGS)
    assert _hashes(again) == _hashes(out)
    assert summary.n_recordings == 2 * summary.n_pieces + summary.n_test
    assert summary.n_heldout == summary.n_test
    wavs = sorted(again.glob("*_data/1????.wav"))
    wavs[0].unlink()  # a rendering killed before it was written
    build_corpus(again, seed=0, soundfont=fonts, heldout_soundfont=[held], **TIMBRE_ARGS)
    assert _hashes(again) == _hashes(out)
    with pytest.raises(DataError, match="other settings"):  # one font fewer is another corpus
        build_corpus(again, seed=0, soundfont=fonts[:1], heldout_soundfont=[held], **TIMBRE_ARGS)


def _piece() -> PieceNotes:
    """Two piano notes, A4 then E5, with silence before, between and after."""
    from jtm.data.synth import SynthNote

    notes = (SynthNote(2000, 2000 + RATE // 2, 1, 69, 0.0, 1.0, "Quarter", 90, 0),
             SynthNote(RATE, RATE + RATE // 2, 1, 76, 2.0, 1.0, "Quarter", 70, 0))
    return PieceNotes(notes=notes, n_samples=2 * RATE)


def test_timbre_effects_keep_note_timing():
    """EQ, reverb, gain, program and detuning change the sound, never when it starts or how long it is."""
    from jtm.data.synth import Timbre, default_soundfont, render

    plain = render(_piece(), default_soundfont())
    wet = Timbre(programs=((1, 3),), velocity_scale=1.2, velocity_offset=-8, gain_db=-6.0, low_shelf_db=4.0,
                 high_shelf_db=-8.0, reverb_seconds=1.2, reverb_db=-8.0, reverb_seed=3, detune_cents=8.0)
    audio = render(_piece(), default_soundfont(), wet)
    assert audio.shape == plain.shape == (2 * RATE,)
    assert np.abs(audio[:2000]).max() == 0  # nothing before the first labelled onset: all filters are causal
    first = int(np.flatnonzero(np.abs(plain) > 100)[0])
    assert abs(int(np.flatnonzero(np.abs(audio) > 100)[0]) - first) < 0.01 * RATE
    assert np.abs(audio).max() == pytest.approx(10 ** (-7 / 20) * 32767, abs=1)  # -1 dBFS peak, then -6 dB
    assert not np.array_equal(audio, plain)


def test_detuning_is_a_few_cents():
    from jtm.data.synth import Timbre, default_soundfont, render

    def peak_hz(cents: float) -> float:
        audio = render(_piece(), default_soundfont(), Timbre(detune_cents=cents)).astype(np.float64)
        seg = audio[4000:4000 + 16384] * np.hanning(16384)
        spectrum = np.abs(np.fft.rfft(seg, 16 * 16384))
        freqs = np.fft.rfftfreq(16 * 16384, 1 / RATE)
        band = (freqs > 400) & (freqs < 480)
        return float(freqs[band][np.argmax(spectrum[band])])

    for cents in (-8.0, 8.0):
        assert peak_hz(cents) / peak_hz(0.0) == pytest.approx(2 ** (cents / 1200), abs=2e-3)


def test_drawn_timbres_keep_the_instrument_class():
    from jtm.data.synth.timbre import HELDOUT_PROGRAMS, RENDERED_CLASS, draw_timbre, in_training_family

    available = frozenset(range(1, 129))
    labels = set(MUSICNET_INSTRUMENTS)
    assert set(RENDERED_CLASS.values()) <= labels
    seen_train, seen_held = set(), set()
    for k in range(300):
        rng = np.random.default_rng(k)
        heldout = bool(k % 2)
        t = draw_timbre(rng, labels, available, soundfont=0, heldout=heldout)
        for label, rendered in t.programs:
            assert RENDERED_CLASS[rendered] == label
        assert -9.0 <= t.gain_db <= 0 and abs(t.detune_cents) <= 8.0
        assert in_training_family(t, n_train_soundfonts=1) is not heldout
        (seen_held if heldout else seen_train).update(t.programs)
    assert seen_held == {(label, p) for label, progs in HELDOUT_PROGRAMS.items() for p in progs}
    assert (1, 2) in seen_train
    assert draw_timbre(np.random.default_rng(5), labels, available, 0, False) == \
        draw_timbre(np.random.default_rng(5), labels, available, 0, False)


def test_timbre_options_are_checked(tmp_path):
    from jtm.data.synth import default_soundfont, heldout_timbre_ids

    with pytest.raises(ValueError, match="renderings"):
        build_corpus(tmp_path / "a", seed=0, **dict(ARGS, renderings=0))
    with pytest.raises(ValueError, match="heldout_soundfont"):
        build_corpus(tmp_path / "b", seed=0, heldout_timbre=False, heldout_soundfont=[default_soundfont()], **ARGS)
    with pytest.raises(DataError, match="soundfont not found"):
        build_corpus(tmp_path / "c", seed=0, soundfont=[default_soundfont(), tmp_path / "nope.sf2"], **ARGS)
    assert not any((tmp_path / name).exists() for name in "abc")
    assert heldout_timbre_ids(tmp_path) == set()  # no sidecar: a one-timbre corpus
    (tmp_path / "jtm_timbre.json").write_text('{"format": "jtm-synth-timbre", "recordings": [{"id": 1}]}')
    with pytest.raises(DataError, match="jtm_timbre.json"):
        heldout_timbre_ids(tmp_path)

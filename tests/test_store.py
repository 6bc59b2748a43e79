"""prepare_store + Store: round trips, resampling, idempotence, atomicity, bad inputs and skips."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr

import jtm.data.prepare as prepare_mod
from jtm.data.prepare import prepare_store
from jtm.data.store import Store
from jtm.errors import DataError
from tests.helpers import make_audio_folder, make_musicnet_folder, sine, write_labels


def prep(src: Path, store: Path, **kw) -> prepare_mod.PrepareSummary:
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return prepare_store(src, store, **kw)


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ round trips
def test_round_trip_audio_notes_and_tables(tmp_path: Path) -> None:
    tracks = make_musicnet_folder(tmp_path / "src", n_train=3, n_test=1, seconds=[3.0, 2.0, 2.5, 2.0])
    summary = prep(tmp_path / "src", tmp_path / "store", shard_mb=0.1)  # small shards: several files
    assert summary.n_tracks == 4 and summary.n_skipped == 0
    assert summary.seconds_of_audio == pytest.approx(9.5, abs=1e-3)
    assert summary.throughput > 0 and summary.to_dict()["n_tracks"] == 4
    store = Store.open(tmp_path / "store")
    assert len(store) == 4 and store.sample_rate == 16000 and store.has_labels
    assert len(list((tmp_path / "store" / "shards").glob("*.npy"))) > 1
    assert not (tmp_path / "store" / ".work").exists()
    t = store.tracks
    assert list(t.columns[:6]) == ["id", "split", "shard", "offset", "length", "path"]
    assert {"composer", "ensemble", "seconds"} <= set(t.columns)
    assert t["id"].tolist() == [tr.id for tr in tracks] and isinstance(t["id"][0], str)
    assert t["split"].tolist() == ["train", "train", "train", "test"]
    np.testing.assert_array_equal(store.indices("test"), [3])
    for i, tr in enumerate(tracks):
        x, sr = sf.read(tr.audio_path, dtype="float32")
        ref = soxr.resample(x, sr, 16000, quality="HQ")
        got = store.audio(i)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.max(np.abs(got - ref)) < 1.0 / 32768 + 1e-6  # int16 quantisation only
        assert store.audio_int16(i).dtype == np.int16
        # The label CSV round trip: 44.1 kHz sample indices -> 16 kHz, rounded.
        notes = store.notes(i)
        csv = pd.read_csv(tr.label_path).sort_values("start_time", kind="stable")
        np.testing.assert_array_equal(notes.start, np.rint(csv["start_time"] * 16000 / 44100).astype(np.int64))
        np.testing.assert_array_equal(notes.end, np.rint(csv["end_time"] * 16000 / 44100).astype(np.int64))
        np.testing.assert_array_equal(notes.pitch, csv["note"])
        np.testing.assert_array_equal(notes.instrument, csv["instrument"])
    with np.load(tmp_path / "store" / "notes.npz", allow_pickle=False) as z:
        assert z["track"].dtype == np.int32 and z["start"].dtype == np.int64 and z["pitch"].dtype == np.int16
        key = z["track"].astype(np.int64) * 10**9 + z["start"]
        assert (np.diff(key) >= 0).all()  # sorted by (track, start)


def test_audio_int16_is_a_copy(prepared_store) -> None:
    store, _ = prepared_store
    a = store.audio_int16(0)
    a[:] = 0
    assert store.audio_int16(0).any()


@pytest.mark.parametrize("sr", [44_100, 48_000, 22_050, 8_000, 96_000])
def test_resampling_keeps_pitch_and_length(tmp_path: Path, sr: int) -> None:
    seconds = 2.0
    make_audio_folder(tmp_path / "src", {"tone.wav": (sr, 1, seconds)}, freq=440.0)
    prep(tmp_path / "src", tmp_path / "store")
    store = Store.open(tmp_path / "store")
    x = store.audio(0)
    assert len(x) == round(seconds * sr * 16000 / sr)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak_hz = np.argmax(spectrum) * 16000 / len(x)
    assert abs(peak_hz - 440.0) < 1.0


def test_plain_folder_multichannel_and_non_ascii(tmp_path: Path) -> None:
    make_audio_folder(
        tmp_path / "src",
        {"a.wav": (44_100, 1, 2.0), "sub/Dvořák – Largo.flac": (48_000, 2, 2.0), "surround.wav": (22_050, 6, 1.5)},
    )
    s = prep(tmp_path / "src", tmp_path / "store")
    assert s.n_tracks == 3
    store = Store.open(tmp_path / "store")
    assert store.tracks["id"].tolist() == ["a", "sub/Dvořák – Largo", "surround"]
    assert store.tracks["path"].tolist()[1] == "sub/Dvořák – Largo.flac"
    assert set(store.tracks["split"]) == {"train"} and not store.has_labels
    assert len(store.notes(0)) == 0
    assert store.summary()["n_tracks"] == {"train": 3}


def test_process_pool(tmp_path: Path) -> None:
    make_musicnet_folder(tmp_path / "src", n_train=3, n_test=1)
    prep(tmp_path / "src", tmp_path / "pool", workers=2)
    prep(tmp_path / "src", tmp_path / "serial", workers=1)
    a, b = Store.open(tmp_path / "pool"), Store.open(tmp_path / "serial")
    for i in range(len(a)):
        np.testing.assert_array_equal(a.audio_int16(i), b.audio_int16(i))


# ------------------------------------------------------------------ idempotence and atomicity
def test_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_musicnet_folder(tmp_path / "src")
    prep(tmp_path / "src", tmp_path / "store")
    before = tree_digest(tmp_path / "store")
    capsys.readouterr()
    s = prep(tmp_path / "src", tmp_path / "store")
    assert s.up_to_date and "up to date" in capsys.readouterr().out
    assert tree_digest(tmp_path / "store") == before
    # A changed source is noticed and rebuilt.
    extra = make_musicnet_folder(tmp_path / "more", n_train=1, n_test=0, first_id=5000)[0]
    (tmp_path / "src" / "train_data" / "5000.wav").write_bytes(extra.audio_path.read_bytes())
    (tmp_path / "src" / "train_labels" / "5000.csv").write_bytes(extra.label_path.read_bytes())
    s = prep(tmp_path / "src", tmp_path / "store")
    assert not s.up_to_date and s.n_tracks == 5


def test_rerun_removes_work_files_a_build_killed_after_store_json_left(tmp_path: Path) -> None:
    """Killed between writing store.json and removing ``.work/``, a build leaves a complete store and its work
    files; the next run finds the store up to date and must still remove them (seen in the kill campaign)."""
    make_musicnet_folder(tmp_path / "src")
    prep(tmp_path / "src", tmp_path / "store")
    before = tree_digest(tmp_path / "store")
    leftover = tmp_path / "store" / ".work" / "1000-abc.json"
    leftover.parent.mkdir()
    leftover.write_text("{}")
    assert prep(tmp_path / "src", tmp_path / "store").up_to_date
    assert not leftover.parent.exists() and tree_digest(tmp_path / "store") == before


def test_interrupted_run_never_opens_and_rerun_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_musicnet_folder(tmp_path / "src")
    store = tmp_path / "store"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption while packing shards")

    monkeypatch.setattr(prepare_mod, "_write_shards", boom)
    with pytest.raises(KeyboardInterrupt):
        prep(tmp_path / "src", store)
    with pytest.raises(DataError, match="not a prepared store"):
        Store.open(store)
    assert len(list((store / ".work").glob("*.json"))) == 4  # decoded tracks survive for the re-run
    monkeypatch.undo()

    decoded = []
    real = prepare_mod.load_audio

    def counting(path, *args, **kwargs):
        decoded.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prepare_mod, "load_audio", counting)
    s = prep(tmp_path / "src", store)
    assert s.n_tracks == 4 and Store.open(store)
    assert decoded == []  # every track came from its finished work files
    assert not (store / ".work").exists()

    # Rebuilding an existing store: store.json goes first, so an interruption leaves nothing openable.
    (tmp_path / "src" / "musicnet_metadata.csv").write_text(
        (tmp_path / "src" / "musicnet_metadata.csv").read_text() + "\n"
    )
    monkeypatch.setattr(prepare_mod, "_write_notes", boom)
    with pytest.raises(KeyboardInterrupt):
        prep(tmp_path / "src", store)
    with pytest.raises(DataError):
        Store.open(store)


def test_incomplete_store_json_refused(prepared_store, tmp_path: Path) -> None:
    import json
    import shutil

    store, _ = prepared_store
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    info = json.loads((copy / "store.json").read_text())
    info["complete"] = False
    (copy / "store.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="incomplete"):
        Store.open(copy)


# ------------------------------------------------------------------ bad inputs
def _bad_audio_cases(folder: Path) -> dict[str, str]:
    """Write one bad audio file per case into ``folder``; return {file name: expected message part}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    good = folder / "_tmp.wav"
    sf.write(good, sine(440, 2.0, 16000), 16000, subtype="PCM_16")
    (folder / "truncated.wav").write_bytes(good.read_bytes()[: 44 + 10_000])
    good.unlink()
    (folder / "text.wav").write_text("this is not audio at all " * 20)
    nan = sine(440, 2.0, 16000)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "silent.wav", np.zeros(32000, np.float32), 16000)
    sf.write(folder / "short.wav", sine(440, 1.0, 16000), 16000)
    return {
        "empty.wav": "empty",
        "truncated.wav": "audio is truncated: header says",
        "text.wav": "not a readable audio file",
        "nan.wav": "NaN",
        "silent.wav": "audio is silent",
        "short.wav": "too short",
    }


def test_each_bad_audio_file_raises_naming_it(tmp_path: Path) -> None:
    cases = _bad_audio_cases(tmp_path / "bad")
    for name, message in cases.items():
        src = tmp_path / f"src_{name}"
        src.mkdir()
        (src / name).write_bytes((tmp_path / "bad" / name).read_bytes())
        sf.write(src / "good.wav", sine(440, 2.0, 16000), 16000)
        with pytest.raises(DataError) as e:
            prep(src, tmp_path / f"store_{name}")
        assert name in str(e.value) and message in str(e.value), str(e.value)
        with pytest.raises(DataError):
            Store.open(tmp_path / f"store_{name}")


def test_short_message_and_min_seconds(tmp_path: Path) -> None:
    make_audio_folder(tmp_path / "src", {"s.wav": (16000, 1, 1.0)})
    with pytest.raises(DataError, match=r"s.wav: audio is too short: 1.000 s, less than min_seconds=1.28 s"):
        prep(tmp_path / "src", tmp_path / "store")
    assert prep(tmp_path / "src", tmp_path / "store", min_seconds=0.5).n_tracks == 1


def test_skip_mode_counts_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    tracks = make_musicnet_folder(src, n_train=4, n_test=1)
    cases = _bad_audio_cases(tmp_path / "bad")
    for name in cases:  # bad audio files with valid labels, in the train split
        (src / "train_data" / name).write_bytes((tmp_path / "bad" / name).read_bytes())
        write_labels(src / "train_labels" / name.replace(".wav", ".csv"), tracks[0].notes)
    bad_csv = tracks[1].label_path
    bad_csv.write_text(bad_csv.read_text().replace("\n", "\n1,2,99,60,0,1,Q\n", 1))  # bad instrument, row 1
    tracks[2].label_path.unlink()  # audio without labels
    (src / "test_labels" / "999.csv").write_text("start_time,end_time,instrument,note\n")  # labels without audio
    with open(src / "musicnet_metadata.csv", "a") as f:
        f.write("4242,X,y,z,e,s,t,c,1\n")  # metadata row for a missing id
    s = prep(src, tmp_path / "store", on_error="skip")
    out = capsys.readouterr().out
    assert s.n_tracks == 3 and s.n_skipped == len(cases) + 4 == len(s.skipped)
    reasons = dict(s.skipped)
    assert "row 1" in reasons[str(bad_csv)] and "instrument" in reasons[str(bad_csv)]
    assert any("4242" in r for r in reasons.values())
    assert all(Path(p).name in out for p in reasons)  # printed too
    store = Store.open(tmp_path / "store")
    assert len(store) == 3 and store.info["n_skipped"] == s.n_skipped


def test_raise_mode_bad_csv_names_file_and_row(tmp_path: Path) -> None:
    tracks = make_musicnet_folder(tmp_path / "src")
    lines = tracks[0].label_path.read_text().splitlines()
    lines[3] = "10,5,1,60,0,1,Q"  # data row 3
    tracks[0].label_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        prep(tmp_path / "src", tmp_path / "store")
    assert e.value.path == tracks[0].label_path and e.value.row == 3


def test_every_track_skipped_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.wav").write_bytes(b"")
    with pytest.raises(DataError, match="every track was skipped"):
        prep(src, tmp_path / "store", on_error="skip")
    with pytest.raises(DataError, match="no audio files"):
        prep(tmp_path / "store", tmp_path / "store2")


# ------------------------------------------------------------------ queries
def test_summary_and_categories(prepared_store) -> None:
    store, tracks = prepared_store
    s = store.summary()
    assert s["n_tracks"] == {"test": 1, "train": 4}
    assert s["ensembles"] == {"Solo Piano": 3, "String Quartet": 2}
    assert sum(s["composers"].values()) == 5
    codes, names = store.categories("ensemble")
    assert names == ["Solo Piano", "String Quartet"]
    assert codes.dtype == np.int64 and codes.tolist() == [0, 1, 0, 1, 0]
    codes, names = store.categories("composer", store.indices("test"))
    assert len(codes) == 1
    with pytest.raises(DataError, match="no column 'nope'; available: id, split"):
        store.categories("nope")


def test_categories_missing_value(tmp_path: Path) -> None:
    make_musicnet_folder(tmp_path / "src")
    meta = tmp_path / "src" / "musicnet_metadata.csv"
    meta.write_text("\n".join(meta.read_text().splitlines()[:-1]) + "\n")  # last track: no metadata row
    prep(tmp_path / "src", tmp_path / "store")
    store = Store.open(tmp_path / "store")
    assert store.tracks["ensemble"].iloc[-1] == ""
    with pytest.raises(DataError, match="column 'ensemble' has no value for 1 track"):
        store.categories("ensemble")
    assert len(store.categories("ensemble", store.indices("train"))[0]) == 3

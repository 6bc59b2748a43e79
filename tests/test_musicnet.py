"""Reading MusicNet-layout folders: label CSV validation, metadata, pairing of audio and labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jtm.data.musicnet import (
    convert_notes,
    is_musicnet_folder,
    read_labels,
    read_metadata,
    read_musicnet_folder,
    read_source,
)
from jtm.errors import DataError

HEADER = "start_time,end_time,instrument,note,start_beat,end_beat,note_value\n"
GOOD = "100,200,1,60,0,1,Quarter\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_read_labels_good(tmp_path: Path) -> None:
    p = write(tmp_path / "1.csv", HEADER + "500,900,41,70,1,1,Half\n" + GOOD)
    notes = read_labels(p)
    assert notes.start.tolist() == [100, 500]  # sorted by start
    assert notes.end.tolist() == [200, 900]
    assert notes.instrument.tolist() == [1, 41] and notes.pitch.tolist() == [60, 70]
    assert notes.start.dtype == np.int64 and notes.pitch.dtype == np.int16


def test_minimal_header_and_empty_table(tmp_path: Path) -> None:
    assert len(read_labels(write(tmp_path / "a.csv", "start_time,end_time,instrument,note\n"))) == 0
    assert len(read_labels(write(tmp_path / "b.csv", "note,instrument,end_time,start_time\n60,1,10,5\n"))) == 1


@pytest.mark.parametrize(
    "row, problem",
    [
        ("100,200,1\n", "missing value in column 'note'"),
        ("100,abc,1,60,0,1,Q\n", "non-numeric value in column 'end_time'"),
        ("100,200,1,60.5,0,1,Q\n", "non-integer value in column 'note'"),
        ("200,200,1,60,0,1,Q\n", "end_time is not after start_time"),
        ("300,200,1,60,0,1,Q\n", "end_time is not after start_time"),
        ("100,200,1,128,0,1,Q\n", "outside 0-127"),
        ("100,200,1,-1,0,1,Q\n", "outside 0-127"),
        ("100,200,2,60,0,1,Q\n", "instrument is not one of MusicNet"),
        ("-5,200,1,60,0,1,Q\n", "negative start_time"),
        ("100,inf,1,60,0,1,Q\n", "non-finite"),
    ],
)
def test_bad_label_row_names_file_and_row(tmp_path: Path, row: str, problem: str) -> None:
    p = write(tmp_path / "labels.csv", HEADER + GOOD + GOOD + row + GOOD)
    with pytest.raises(DataError) as e:
        read_labels(p)
    assert e.value.row == 3  # 1-based data row: the third line after the header
    assert e.value.path == p
    assert problem in str(e.value) and "labels.csv, row 3" in str(e.value)


def test_first_bad_row_reported(tmp_path: Path) -> None:
    p = write(tmp_path / "l.csv", HEADER + GOOD + "1,2,1,200,0,1,Q\n" + "5,1,1,60,0,1,Q\n")
    with pytest.raises(DataError, match="row 2"):
        read_labels(p)


def test_bad_header_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="header lacks column.*note"):
        read_labels(write(tmp_path / "h.csv", "start_time,end_time,instrument\n1,2,1\n"))
    with pytest.raises(DataError, match="empty"):
        read_labels(write(tmp_path / "e.csv", ""))
    with pytest.raises(DataError, match="row 2"):
        read_labels(write(tmp_path / "x.csv", HEADER + GOOD + "1,2,1,60,0,1,Q,extra,more\n"))
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(DataError, match="b.csv"):
        read_labels(binary)


def test_convert_notes_rounding_and_clipping() -> None:
    from jtm.data.labels import Notes

    n = Notes(np.array([0, 44100, 441, 88000]), np.array([44100, 88200, 442, 200000]),
              np.array([1, 1, 1, 1], np.int16), np.array([60, 61, 62, 63], np.int16))
    out = convert_notes(n, 44100, 16000, length=40000)
    assert out.start.tolist() == [0, 16000, 160, 31927]
    assert out.end.tolist() == [16000, 32000, 161, 40000]  # 1-sample note keeps >= 1 sample; end clipped


def test_metadata(tmp_path: Path) -> None:
    p = write(tmp_path / "m.csv", "id,composer,ensemble\n0012,Bach,Solo Piano\n13,,Duo\n")
    cols, rows = read_metadata(p)
    assert cols == ["composer", "ensemble"]
    assert rows["0012"] == (1, {"composer": "Bach", "ensemble": "Solo Piano"})  # ids stay strings
    assert rows["13"][1]["composer"] == ""
    with pytest.raises(DataError, match="row 2: duplicate id"):
        read_metadata(write(tmp_path / "d.csv", "id,composer\n1,a\n1,b\n"))
    with pytest.raises(DataError, match="'id'"):
        read_metadata(write(tmp_path / "n.csv", "composer\nBach\n"))


def test_folder_pairing(musicnet_folder) -> None:
    root, tracks = musicnet_folder
    assert is_musicnet_folder(root) and not is_musicnet_folder(root / "train_data")
    found = read_musicnet_folder(root)
    assert [(t.id, t.split) for t in found] == [(t.id, t.split) for t in tracks]
    assert found[0].metadata["composer"] == "Bach" and found[0].label_path == tracks[0].label_path


def test_folder_pairing_errors_and_skips(musicnet_folder) -> None:
    root, tracks = musicnet_folder
    tracks[1].label_path.unlink()  # audio without labels
    orphan = write(root / "train_labels" / "777.csv", HEADER + GOOD)  # labels without audio
    with open(root / "musicnet_metadata.csv", "a", encoding="utf-8") as f:
        f.write("555,Nobody,x,y,z,s,t,c,3\n")  # metadata for a missing id: data row 5
    with pytest.raises(DataError) as e:
        read_musicnet_folder(root)
    assert "777.csv" in str(e.value) and "no audio" in str(e.value)
    orphan.unlink()
    with pytest.raises(DataError, match=f"{tracks[1].id}.wav: audio file has no label file"):
        read_musicnet_folder(root)
    write(tracks[1].label_path, HEADER + GOOD)
    with pytest.raises(DataError, match=r"musicnet_metadata.csv, row 5: metadata row for id '555'"):
        read_musicnet_folder(root)
    tracks[1].label_path.unlink()
    write(orphan, HEADER + GOOD)
    skipped: list = []
    found = read_musicnet_folder(root, on_error="skip", skipped=skipped)
    assert len(found) == len(tracks) - 1
    assert len(skipped) == 3
    assert any("555" in reason for _, reason in skipped)


def test_audio_without_metadata_row_is_kept(musicnet_folder) -> None:
    root, tracks = musicnet_folder
    meta = (root / "musicnet_metadata.csv").read_text().splitlines()
    (root / "musicnet_metadata.csv").write_text("\n".join(meta[:-1]) + "\n")
    found = read_musicnet_folder(root)
    assert len(found) == len(tracks)
    assert set(found[-1].metadata.values()) == {""} and "composer" in found[-1].metadata


def test_plain_folder(audio_folder) -> None:
    root, _ = audio_folder
    write(root / "notes.txt", "not audio, ignored")
    tracks, is_mn = read_source(root)
    assert not is_mn
    assert [t.id for t in tracks] == ["a", "sub/Dvořák – Largo"]
    assert all(t.split == "train" and t.label_path is None for t in tracks)

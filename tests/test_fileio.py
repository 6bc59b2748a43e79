"""Atomic writes: nothing half-written under the final name, and ordinary file permissions."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from jtm.fileio import atomic_path, load_npy, save_npy_atomic, write_text_atomic


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        save_npy_atomic(tmp_path / "b.npy", np.arange(3))
    finally:
        os.umask(old)
    for name in ("a.txt", "b.npy"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npy(tmp_path / "obj.npy")

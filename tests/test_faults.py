"""Faults at any moment: SIGKILL leaves no workers, two runs into one folder, a full disk (docs/RELIABILITY.md)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jtm.data.prepare import prepare_store
from jtm.data.store import Store
from jtm.fileio import DiskFullError, FolderLockedError, LOCK_NAME, atomic_path, folder_lock, save_npy_atomic
from jtm.pipelines.study_config import StudyConfig
from jtm.training.checkpoints import load_checkpoint
from jtm.training.pretrain import PretrainConfig, run_pretrain
from tests.helpers import make_musicnet_folder
from tests.proc_helpers import alive, descendants, sigkill_tree_check

JTM = [sys.executable, "-m", "jtm.cli"]
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--window", "2560", "--batch-size", "8", "--encoder-dim", "32", "--context-dim", "32", "--negatives", "8",
        "--predict-steps", "4", "--norm", "batch", "--lr", "2e-3", "--threads", "1", "--no-progress"]


def wait_for(condition, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended (code {proc.returncode}) before the awaited moment")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("faults")
    make_musicnet_folder(base / "src", n_train=4, n_test=1, seconds=3.0)
    prepare_store(base / "src", base / "store", workers=1, progress=False)
    return base / "store"


# ------------------------------------------------------------------------------ no worker outlives a killed command
def test_sigkill_of_data_prepare_leaves_no_worker_running(tmp_path: Path) -> None:
    make_musicnet_folder(tmp_path / "src", n_train=10, n_test=2, seconds=4.0)
    proc = subprocess.Popen([*JTM, "data", "prepare", str(tmp_path / "src"), str(tmp_path / "store"), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    # Kill once both decoding workers run (and the first tracks are being written): the pool is at full size.
    wait_for(lambda: len(descendants(proc.pid)) >= 2 and any((tmp_path / "store" / ".work").glob("*.npy")), proc=proc)
    assert not sigkill_tree_check(proc), "pool workers outlived the SIGKILLed command"
    rerun = subprocess.run([*JTM, "data", "prepare", str(tmp_path / "src"), str(tmp_path / "store"), "--workers", "2"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(Store.open(tmp_path / "store").tracks) == 12


def test_die_with_parent_ends_an_orphaned_worker(tmp_path: Path) -> None:
    """The pool initializer alone: a grandchild whose parent is SIGKILLed ends within a second."""
    script = ("import os, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import os, time; from jtm.workers import die_with_parent; "
              "die_with_parent(os.getppid()); print(os.getpid(), flush=True); time.sleep(60)'], stdout=subprocess.PIPE)\n"
              "print(child.stdout.readline().decode().strip(), flush=True)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    worker = int(parent.stdout.readline())
    assert alive(worker)
    assert not sigkill_tree_check(parent, timeout=5.0)


# ------------------------------------------------------------------------------------- two runs into one folder
HOLDER = ("import sys, time\nfrom jtm.fileio import folder_lock\n"
          "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.readline()\n")


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until its stdin is closed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_data_prepare_into_a_store_is_refused_then_runs_after(tmp_path: Path) -> None:
    make_musicnet_folder(tmp_path / "src", n_train=2, n_test=1, seconds=2.0)
    cmd = [*JTM, "data", "prepare", str(tmp_path / "src"), str(tmp_path / "store"), "--workers", "1"]
    holder = hold_lock(tmp_path / "store")
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert refused.returncode == 1
    assert f"{tmp_path / 'store'}: another jtm command (pid {holder.pid})" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "store" / "store.json").exists() and not (tmp_path / "store" / ".work").exists()
    holder.stdin.close()
    holder.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "store" / LOCK_NAME).exists(), "a finished run leaves no lock file behind"


def test_a_sigkilled_holder_never_keeps_the_folder_locked(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "run")
    with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"):
        with folder_lock(tmp_path / "run"):
            pass
    assert not sigkill_tree_check(holder)
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the stale file stays, but nobody holds it
    with folder_lock(tmp_path / "run"):
        with folder_lock(tmp_path / "run"):  # nested use in one process is allowed
            pass


def test_second_pretrain_into_a_run_folder_is_refused(store: Path, tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "run")
    cfg = PretrainConfig(data=str(store), out=str(tmp_path / "run"), window=2560, batch_size=8, epochs=1,
                         limit_train_batches=2, threads=1, progress=False)
    try:
        with pytest.raises(FolderLockedError, match=f"{tmp_path / 'run'}: another jtm command \\(pid {holder.pid}\\)"):
            run_pretrain(cfg)
        assert not (tmp_path / "run" / "run.json").exists()
    finally:
        holder.stdin.close()
        holder.wait()


def test_second_study_into_a_study_folder_is_refused(store: Path, tmp_path: Path) -> None:
    from jtm.pipelines.study import run_study

    holder = hold_lock(tmp_path / "study")
    try:
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"):
            run_study(StudyConfig(data=str(store), out=str(tmp_path / "study"), tasks=("transcription",),
                                  methods=("logmel-linear",), fractions=(1.0,), seeds=1, steps=2))
        assert not (tmp_path / "study" / "study.json").exists()
    finally:
        holder.stdin.close()
        holder.wait()


# ------------------------------------------------------------------------------------------------- a full disk
def test_enospc_in_a_writer_is_a_disk_full_error_and_the_old_file_survives(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "shard.npy"
    save_npy_atomic(target, np.arange(5, dtype=np.int16))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(DiskFullError, match=f"{target}: the disk is full"):
        save_npy_atomic(target, np.zeros(5, dtype=np.int16))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target), np.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["shard.npy"]  # no temporary left behind


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 24 MB tmpfs mounted at tmp_path/disk (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the monkeypatched ENOSPC test covers the translation")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system is full; return it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        block = b"\0" * 2**16
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_data_prepare_on_a_full_disk_stops_clearly_and_succeeds_after_freeing(small_disk: Path, tmp_path: Path) -> None:
    make_musicnet_folder(tmp_path / "src", n_train=3, n_test=1, seconds=3.0)
    cmd = [*JTM, "data", "prepare", str(tmp_path / "src"), str(small_disk / "store"), "--workers", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    other = small_disk / "other_store"
    prepare_store(tmp_path / "src", other, workers=1, progress=False)
    make_musicnet_folder(tmp_path / "src", n_train=6, n_test=1, seconds=3.0, first_id=2000)  # the source grows
    filler = fill(small_disk)
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert failed.returncode == 1
    assert "the disk is full" in failed.stderr and str(small_disk / "store") in failed.stderr
    assert "Traceback" not in failed.stderr
    assert len(Store.open(other).tracks) == 4  # what was already there stays readable
    filler.unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(Store.open(small_disk / "store").tracks) == 11
    assert not list(small_disk.rglob("*.tmp"))


def test_pretrain_on_a_full_disk_stops_clearly_keeps_checkpoints_and_resumes(store: Path, small_disk: Path) -> None:
    run = small_disk / "run"
    cmd = [*JTM, "pretrain", "--data", str(store), "--out", str(run), *TINY, "--epochs"]
    first = subprocess.run([*cmd, "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    filler = fill(small_disk)
    failed = subprocess.run([*cmd, "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "the disk is full" in failed.stderr and str(run) in failed.stderr
    assert "Traceback" not in failed.stderr
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # the previous state is intact
    filler.unlink()
    again = subprocess.run([*cmd, "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert not list(small_disk.rglob("*.tmp"))

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
from jtm.fileio import DiskFullError, FolderLockedError, LOCK_NAME, folder_lock, save_npy_atomic
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


def tiny_pretrain(store: Path, out: Path, epochs: int) -> PretrainConfig:
    from jtm.models.config import CPCConfig

    return PretrainConfig(data=str(store), out=str(out), window=2560, batch_size=8, epochs=epochs, threads=1, lr=2e-3,
                          limit_train_batches=3, progress=False,
                          model=CPCConfig(encoder_dim=32, context_dim=32, negatives=8, predict_steps=4, norm="batch"))


def test_pretrain_on_a_full_disk_stops_clearly_keeps_checkpoints_and_resumes(store: Path, small_disk: Path) -> None:
    run = small_disk / "run"
    run_pretrain(tiny_pretrain(store, run, epochs=1))
    filler = fill(small_disk)
    failed = subprocess.run([*JTM, "pretrain", "--data", str(store), "--out", str(run), *TINY, "--epochs", "2",
                             "--limit-train-batches", "3"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "the disk is full" in failed.stderr and str(run) in failed.stderr
    assert "Traceback" not in failed.stderr
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # the previous state is intact
    filler.unlink()
    run_pretrain(tiny_pretrain(store, run, epochs=2))
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert not list(small_disk.rglob("*.tmp"))


def test_embed_on_a_full_disk_stops_clearly_and_succeeds_after_freeing(small_disk: Path, tmp_path: Path) -> None:
    from tests.helpers import make_audio_folder

    audio = make_audio_folder(tmp_path / "audio", {"long.wav": (16000, 1, 120.0)})["long.wav"]
    cmd = [*JTM, "embed", str(audio), "--model", str(encoder_folder(tmp_path)), "--out", str(small_disk / "emb")]
    filler = fill(small_disk)
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert failed.returncode == 1
    assert f"{small_disk / 'emb' / 'long.npy'}: the disk is full" in failed.stderr and "Traceback" not in failed.stderr
    assert not (small_disk / "emb" / "long.npy").exists() and not list(small_disk.rglob("*.tmp"))
    filler.unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert np.load(small_disk / "emb" / "long.npy").shape[0] == 12000  # 100 frames per second


# ------------------------------------------------------------------------------------------ hostile or broken files
def run_isolated(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: a hang becomes a test failure (TimeoutExpired), not a stuck suite."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def encoder_folder(tmp_path: Path) -> Path:
    from jtm.models.config import CPCConfig
    from jtm.models.cpc import CPCEncoder

    folder = tmp_path / "encoder"
    CPCEncoder(CPCConfig(encoder_dim=16, context_dim=16, negatives=4, predict_steps=2)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("declared", ["file+1000", "2**63", "2**40"])
def test_safetensors_header_length_beyond_the_file_is_refused(tmp_path: Path, declared: str) -> None:
    from jtm.errors import ModelFileError
    from jtm.models.pretrained import read_pretrained_weights

    folder = encoder_folder(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    n = len(data) + 1000 if declared == "file+1000" else eval(declared)
    weights.write_bytes(n.to_bytes(8, "little") + data[8:])
    with pytest.raises(ModelFileError, match=f"{weights}: .*header"):
        read_pretrained_weights(folder)


def claiming_wav(path: Path, data_bytes: int, present: int) -> Path:
    """An 8-bit mono 16 kHz WAV whose data chunk declares ``data_bytes`` (frames) but holds ``present``."""
    import struct

    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 16000, 1, 8)
    body = b"WAVE" + fmt + struct.pack("<4sI", b"data", data_bytes) + bytes([128]) * present
    path.write_bytes(struct.pack("<4sI", b"RIFF", min(len(body), 2**32 - 1)) + body)
    return path


def test_wav_claiming_2_31_frames_is_refused_without_allocating_them(tmp_path: Path) -> None:
    import tracemalloc

    from jtm.audio import load_audio
    from jtm.errors import DataError

    wav = claiming_wav(tmp_path / "huge claim.wav", 2**31, 16000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="huge claim.wav: audio is truncated: header says 2147483648 frames"):
            load_audio(wav)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MB allocated for a 16 kB file"


def test_label_csv_of_ten_million_rows_is_refused_quickly_with_a_limit(tmp_path: Path) -> None:
    from jtm.data.musicnet import read_labels
    from jtm.errors import DataError

    csv = tmp_path / "1000.csv"
    with open(csv, "wb") as f:
        f.write(b"start_time,end_time,instrument,note,start_beat,end_beat,note_value\n")
        f.write(b"0,1000,1,60,0,1,Quarter\n" * 10**7)
    started = time.perf_counter()
    with pytest.raises(DataError, match=f"{csv}: CSV file is too large"):
        read_labels(csv)
    assert time.perf_counter() - started < 5.0  # refused from its size, never parsed


def test_odd_file_names_are_prepared(tmp_path: Path) -> None:
    from tests.helpers import make_audio_folder

    names = ["-leading dash.wav", "with  spaces .wav", "Dvořák – Largo ♪.flac", "--.wav"]
    make_audio_folder(tmp_path / "src", {n: (16000, 1, 1.5) for n in names})
    done = subprocess.run([*JTM, "data", "prepare", str(tmp_path / "src"), str(tmp_path / "store"), "--workers", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(Store.open(tmp_path / "store").tracks["path"]) == sorted(names)


def test_symlink_loops_in_an_audio_folder_are_ignored(tmp_path: Path) -> None:
    from jtm.audio import find_audio_files
    from tests.helpers import make_audio_folder

    made = make_audio_folder(tmp_path / "src", {"a.wav": (16000, 1, 1.5), "sub/b.wav": (16000, 1, 1.5)})
    (tmp_path / "src" / "sub" / "loop").symlink_to(tmp_path / "src")  # a folder that contains itself
    (tmp_path / "src" / "x.wav").symlink_to(tmp_path / "src" / "y.wav")
    (tmp_path / "src" / "y.wav").symlink_to(tmp_path / "src" / "x.wav")  # a file link loop
    (tmp_path / "src" / "self.wav").symlink_to(tmp_path / "src" / "self.wav")
    assert find_audio_files(tmp_path / "src") == sorted(made.values())
    summary = prepare_store(tmp_path / "src", tmp_path / "store", workers=1, progress=False, min_seconds=1.0)
    assert summary.n_tracks == 2


def test_a_fifo_or_folder_where_a_file_is_expected_is_an_error_not_a_hang(tmp_path: Path) -> None:
    folder = encoder_folder(tmp_path)
    (tmp_path / "labels.csv").mkdir()
    fifos = {name: tmp_path / name for name in ("pipe.wav", "pipe.csv", "pipe.json")}
    for fifo in fifos.values():
        os.mkfifo(fifo)
    fifo_model = tmp_path / "fifo_model"
    fifo_model.mkdir()
    os.mkfifo(fifo_model / "config.json")
    os.mkfifo(fifo_model / "model.safetensors")
    code = f"""
from pathlib import Path
from jtm.audio import load_audio
from jtm.data.musicnet import read_labels
from jtm.errors import JTMError
from jtm.fileio import load_json
from jtm.models.pretrained import read_pretrained_config, read_pretrained_weights
calls = [(load_audio, {str(fifos['pipe.wav'])!r}), (load_audio, {str(tmp_path)!r}),
         (read_labels, {str(fifos['pipe.csv'])!r}), (read_labels, {str(tmp_path / 'labels.csv')!r}),
         (load_json, {str(fifos['pipe.json'])!r}),
         (lambda p: read_pretrained_config(p, format='jtm-cpc-encoder', version=1), {str(fifo_model)!r}),
         (read_pretrained_weights, {str(fifo_model)!r})]
for fn, arg in calls:
    try:
        fn(arg)
        print('ACCEPTED', arg)
    except JTMError as e:
        print('ERROR', e)
"""
    done = run_isolated(code, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 7 and all(line.startswith("ERROR") for line in lines), done.stdout
    assert "pipe.wav: not a regular file (a FIFO" in lines[0]
    assert "is a folder" in lines[1] and "is a folder" in lines[3]
    assert "pipe.csv: not a regular file (a FIFO" in lines[2]
    assert "pipe.json: not a regular file (a FIFO" in lines[4]
    assert "config.json: not a regular file" in lines[5] and "model.safetensors: not a regular file" in lines[6]
    assert folder.is_dir()


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A read-only folder: a read-only tmpfs as root (root ignores permission bits), else chmod 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if made.returncode != 0:
            pytest.skip(f"root cannot be denied by permissions and a read-only tmpfs cannot be mounted: {made.stderr}")
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_a_read_only_output_folder_is_a_clear_error(tmp_path: Path, read_only_folder: Path, store: Path) -> None:
    from jtm.errors import JTMError

    make_musicnet_folder(tmp_path / "src", n_train=2, n_test=1, seconds=2.0)
    done = subprocess.run([*JTM, "data", "prepare", str(tmp_path / "src"), str(read_only_folder), "--workers", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{read_only_folder}: cannot write into this folder" in done.stderr and "Traceback" not in done.stderr
    unwritable = f"{read_only_folder}.*: cannot write into this folder"
    with pytest.raises(JTMError, match=unwritable):
        prepare_store(tmp_path / "src", read_only_folder / "store", workers=1, progress=False)
    with pytest.raises(JTMError, match=unwritable):
        run_pretrain(tiny_pretrain(store, read_only_folder / "run", epochs=1))
    with pytest.raises(JTMError, match=unwritable):
        save_npy_atomic(read_only_folder / "x.npy", np.zeros(3))


# ------------------------------------------------------------------------------------------- kill at any moment
def test_data_prepare_killed_at_random_moments_reruns_to_the_same_store(tmp_path: Path) -> None:
    """Two seeded kills (the full run: ``make faults``, tests/fault_injection.py)."""
    from tests.fault_injection import inject, prepare_scenario

    make_musicnet_folder(tmp_path / "src", n_train=8, n_test=1, seconds=3.0)
    result = inject(prepare_scenario(tmp_path / "src"), tmp_path / "runs", kills=2, seed=1)
    assert result["kills"] == 2


def test_pretrain_killed_at_random_moments_resumes_to_the_same_encoder(store: Path, tmp_path: Path) -> None:
    from tests.fault_injection import inject, pretrain_scenario

    result = inject(pretrain_scenario(store, epochs=1), tmp_path, kills=2, seed=1)
    assert result["kills"] == 2


def test_an_up_to_date_store_in_a_read_only_folder_is_reported_up_to_date(tmp_path: Path) -> None:
    make_musicnet_folder(tmp_path / "src", n_train=2, n_test=1, seconds=2.0)
    prepare_store(tmp_path / "src", tmp_path / "store", workers=1, progress=False)
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    view = tmp_path / "read_only_store"
    view.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "store"), str(view)]).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=False)
        with pytest.raises(OSError):
            (view / "probe").write_text("x")
        assert prepare_store(tmp_path / "src", view, workers=1, progress=False).up_to_date
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)

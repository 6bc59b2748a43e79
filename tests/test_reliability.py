"""Reliability of pretraining: crash and resume, damaged or hostile checkpoints, determinism (DDP: test_ddp.py)."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jtm.data.prepare import prepare_store
from jtm.errors import ModelFileError
from jtm.models.config import CPCConfig
from jtm.training.checkpoints import find_resume_checkpoint, load_checkpoint
from jtm.training.logs import read_metrics
from jtm.training.pretrain import PretrainConfig, run_pretrain
from tests.helpers import make_musicnet_folder

JTM = [sys.executable, "-m", "jtm.cli"]
TINY = ["--window", "2560", "--batch-size", "8", "--encoder-dim", "32", "--context-dim", "32", "--negatives", "8",
        "--predict-steps", "4", "--norm", "batch", "--lr", "2e-3", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 train tracks of 8 s: about 30 batches of 8 windows of 2560 samples per epoch."""
    base = tmp_path_factory.mktemp("reliability")
    make_musicnet_folder(base / "src", n_train=7, n_test=1, seconds=8.0)
    prepare_store(base / "src", base / "store", workers=1, progress=False)
    return base / "store"


def pretrain_cmd(store: Path, out: Path, *extra: str) -> list[str]:
    return [*JTM, "pretrain", "--data", str(store), "--out", str(out), *TINY, *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "encoder" / "model.safetensors")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(store: Path, tmp_path: Path) -> None:
    cmd = pretrain_cmd(store, tmp_path / "run", "--epochs", "2", "--checkpoint-every-n-steps", "4")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step_ckpt = tmp_path / "run" / "checkpoints" / "step.ckpt"
    deadline = time.time() + 120
    # Kill once a mid-epoch checkpoint of the second epoch exists: epoch 0 is then fully checkpointed.
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "run" / "checkpoints" / "epoch000.ckpt").exists() and step_ckpt.exists():
            if load_checkpoint(step_ckpt)["epoch"] == 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(find_resume_checkpoint(tmp_path / "run" / "checkpoints"))["global_step"]

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    assert "resuming epoch 1 after batch" in resumed.stdout
    assert killed_at > 0

    reference = subprocess.run(pretrain_cmd(store, tmp_path / "ref", "--epochs", "2"), capture_output=True, text=True,
                               timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    # Global step, epoch, optimiser state, LR schedule, data position and RNG all continued exactly.
    a, b = weights(tmp_path / "run"), weights(tmp_path / "ref")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt")["global_step"]
    # The history stitched from both starts covers every step once.
    steps = read_metrics(tmp_path / "run")["step"]
    assert steps.is_monotonic_increasing


def test_truncated_checkpoint_is_reported_and_previous_used(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"global_step": 5, "state_dict": {"w": torch.ones(3)}}, folder / "epoch000.ckpt")
    time.sleep(0.01)
    torch.save({"global_step": 9, "state_dict": {"w": torch.ones(3000)}}, folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    assert find_resume_checkpoint(folder) == folder / "epoch000.ckpt"
    out = capsys.readouterr().out
    assert "last.ckpt" in out and "truncated or corrupt" in out


class _Exploit:
    """Unpickling this would create a marker file; a safe loader must never call it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_bearing_checkpoint_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoints" / "last.ckpt"
    evil.parent.mkdir()
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Exploit(marker)}, f)
    torch.save({"state": {"w": torch.ones(1)}, "payload": _Exploit(marker)}, tmp_path / "torch_evil.ckpt")
    for path in (evil, tmp_path / "torch_evil.ckpt"):
        with pytest.raises(ModelFileError, match="refused|corrupt"):
            load_checkpoint(path)
    assert find_resume_checkpoint(evil.parent) is None
    assert not marker.exists()


def tiny(store: Path, out: Path, seed: int) -> PretrainConfig:
    return PretrainConfig(data=str(store), out=str(out), seed=seed, window=2560, batch_size=8, epochs=1,
                          model=CPCConfig(encoder_dim=32, context_dim=32, negatives=8, predict_steps=4,
                                          dropout=0.1, context="transformer", heads=4),
                          limit_train_batches=5, log_every_n_steps=1, threads=1, progress=False)


def test_same_seed_same_losses_other_seed_different(store: Path, tmp_path: Path) -> None:
    def losses(name: str, seed: int) -> list[float]:
        run_pretrain(tiny(store, tmp_path / name, seed))
        return read_metrics(tmp_path / name)["train/loss_step"].dropna().tolist()

    first, again, other = losses("a", 0), losses("b", 0), losses("c", 1)
    assert len(first) == 5
    assert first == again
    assert first != other

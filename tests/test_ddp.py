"""DDP on two CPU processes: each rank trains (and validates) on its own share of the epoch's windows.

The CLI is run through a small driver that records the (track, start) of every window each rank's
training_step and validation_step receive, one file per rank and stage, then compared with the plan a
single-process ``WindowBatches`` makes for the same epoch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from jtm.data.prepare import prepare_store
from jtm.data.store import Store
from jtm.data.windows import WindowBatches, split_tracks
from jtm.training.checkpoints import load_checkpoint
from tests.helpers import make_musicnet_folder

ROOT = Path(__file__).resolve().parents[1]
WINDOW, BATCH, SEED, VAL_FRACTION, EPOCHS, WORLD = 2560, 8, 0, 0.2, 2, 2

DRIVER = '''
import json, os, sys
from jtm.training import pretrain

RECORD = os.environ["JTM_TEST_RECORD"]

def recording(original, stage):
    def step(self, batch, batch_idx):
        windows = [[int(t), int(s)] for t, s in zip(batch["track"].tolist(), batch["start"].tolist())]
        with open(os.path.join(RECORD, f"{stage}-rank{self.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": self.current_epoch, "world": self.trainer.world_size,
                                "windows": windows}) + "\\n")
        return original(self, batch, batch_idx)
    return step

pretrain.CPCPretrainModule.training_step = recording(pretrain.CPCPretrainModule.training_step, "train")
pretrain.CPCPretrainModule.validation_step = recording(pretrain.CPCPretrainModule.validation_step, "val")

from jtm.cli import main
main()
'''


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train recordings for training and 1 held out, of 4.1 s: 12 training batches and 3 validation batches."""
    base = tmp_path_factory.mktemp("ddp")
    make_musicnet_folder(base / "src", n_train=5, n_test=1, seconds=4.1)
    prepare_store(base / "src", base / "store", workers=1, progress=False)
    return base / "store"


def planned(store: Path, train: bool, epoch: int) -> list[tuple[int, int]]:
    """The windows of one epoch as a single process plans them, truncated to a multiple of the world size."""
    s = Store.open(store)
    train_idx, val_idx = split_tracks(s, "train", VAL_FRACTION, SEED)
    windows = WindowBatches(s, train_idx if train else val_idx, window=WINDOW, batch_size=BATCH, sampling="uniform",
                            seed=SEED if train else SEED + 10_000, random_offset=train, drop_last=True,
                            rank=0, world_size=1)
    windows.set_epoch(epoch)
    batches = windows.plan().batches
    batches = batches[: len(batches) - len(batches) % WORLD]
    return [(int(windows.track_indices[p]), int(st)) for b in batches for p, st in zip(b.pos, b.start)]


def seen(record: Path, stage: str, rank: int) -> dict[int, list[tuple[int, int]]]:
    """Windows a rank's steps received, per epoch."""
    by_epoch: dict[int, list[tuple[int, int]]] = {}
    path = record / f"{stage}-rank{rank}.jsonl"
    assert path.is_file(), f"rank {rank} recorded no {stage} step"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        assert row["world"] == WORLD
        by_epoch.setdefault(row["epoch"], []).extend(tuple(w) for w in row["windows"])
    return by_epoch


def test_two_ddp_ranks_see_disjoint_windows_that_cover_the_epoch(store: Path, tmp_path: Path) -> None:
    record, run = tmp_path / "record", tmp_path / "run"
    record.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, str(driver), "pretrain", "--data", str(store), "--out", str(run),
           "--window", str(WINDOW), "--batch-size", str(BATCH), "--seed", str(SEED), "--sampling", "uniform",
           "--val-fraction", str(VAL_FRACTION), "--epochs", str(EPOCHS),
           "--encoder-dim", "16", "--context-dim", "16", "--negatives", "4", "--predict-steps", "2",
           "--threads", "1", "--no-progress", "--accelerator", "cpu", "--devices", str(WORLD), "--strategy", "ddp"]
    env = {**os.environ, "JTM_TEST_RECORD": str(record), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    for stage, train in (("train", True), ("val", False)):
        ranks = [seen(record, stage, r) for r in range(WORLD)]
        assert sorted(ranks[0]) == sorted(ranks[1]) == list(range(EPOCHS)), stage
        for epoch in range(EPOCHS):
            expected = planned(store, train, 0 if not train else epoch)  # validation is the same every epoch
            mine = [r[epoch] for r in ranks]
            assert expected and all(mine), (stage, epoch)
            # No window is seen by both ranks, and together they saw the whole (truncated) plan, each window once.
            assert not set(mine[0]) & set(mine[1]), f"{stage} epoch {epoch}: ranks share windows"
            assert Counter(mine[0] + mine[1]) == Counter(expected), f"{stage} epoch {epoch}: not the planned windows"
            assert len(mine[0]) == len(mine[1])
    # Training epochs differ (reshuffled, new offsets): both epochs were really planned separately.
    assert planned(store, True, 0) != planned(store, True, 1)

    # Only rank 0 prints the final JSON and writes the run's files.
    finals = [line for line in result.stdout.splitlines() if line.startswith("{") and '"encoder"' in line]
    assert len(finals) == 1, result.stdout
    for name in ("run.json", "metrics.json", "encoder/model.safetensors"):
        assert (run / name).is_file(), name
    # One optimiser step per rank's batch: each rank took half of the (truncated) plan's batches per epoch.
    steps = sum(len(planned(store, True, e)) for e in range(EPOCHS)) // (WORLD * BATCH)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == steps

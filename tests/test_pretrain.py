"""End to end: synth a few real-score pieces, prepare them, pretrain a tiny CPC model, export and reload it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jtm.data.prepare import prepare_store
from jtm.data.synth import build_corpus
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.training.logs import read_metrics
from jtm.training.pretrain import PretrainConfig, run_pretrain

NEGATIVES = 16
# Batch norm and a high learning rate make a tiny model learn within a few hundred steps; the per-frame
# channel norm (the default, as in CPC_audio) wants the default 2e-4 and far more steps.
TINY = dict(encoder_dim=48, context_dim=48, negatives=NEGATIVES, predict_steps=4, norm="batch")


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 100 s of rendered scores (8 pieces), prepared into a 16 kHz store."""
    base = tmp_path_factory.mktemp("synth")
    build_corpus(base / "corpus", minutes=1.5, max_seconds=12, test_fraction=0.15, seed=1, workers=2, progress=False)
    prepare_store(base / "corpus", base / "store", workers=1, progress=False)
    return base / "store"


def tiny_config(store: Path, out: Path, **overrides) -> PretrainConfig:
    model = CPCConfig(**{**TINY, **overrides.pop("model", {})})
    settings = dict(window=5120, batch_size=8, epochs=4, lr=2e-3, val_fraction=0.25, threads=1, progress=False,
                    log_every_n_steps=1)
    settings.update(overrides)
    return PretrainConfig(data=str(store), out=str(out), model=model, **settings)


@pytest.mark.slow
def test_pretrain_learns_exports_and_reloads(synth_store: Path, tmp_path: Path) -> None:
    # Uniform negatives: the accuracy bound below is for negatives drawn from every piece; the default
    # (samesequence, one recording per batch) is a harder task and has its own test below.
    cfg = tiny_config(synth_store, tmp_path / "run", sampling="uniform")
    metrics = run_pretrain(cfg)

    # CPC at k=1 must end clearly above chance, 1 / (1 + negatives).
    chance = 1 / (1 + NEGATIVES)
    assert metrics["val/acc_k1"] > 3 * chance, metrics
    # Nearer futures are easier to predict than far ones. The loss, not the accuracy: on this tiny validation set
    # (288 positions) the accuracies of k = 1 and k = 4 lie within one standard error (0.02) of each other.
    assert metrics["val/loss_k1"] < metrics["val/loss_k4"], metrics

    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["model"]["encoder_dim"] == 48
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch*.ckpt")) == [f"epoch{e:03d}.ckpt" for e in range(4)]
    assert any((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))

    # Loss and accuracy are logged per prediction step, for train and validation.
    log = read_metrics(run)
    for k in range(1, 5):
        for name in (f"train/loss_k{k}_epoch", f"train/acc_k{k}_epoch", f"val/loss_k{k}", f"val/acc_k{k}"):
            assert log[name].notna().sum() == 4, name
    # metrics.json says where the wall time went: every optimiser step timed, the rest counted as outside.
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["time/steps"] == log["train/loss_step"].notna().sum() > 0
    assert 0 < saved["time/step_seconds"] < saved["time/fit_seconds"]
    assert saved["time/outside_step_seconds"] == pytest.approx(saved["time/fit_seconds"] - saved["time/step_seconds"], abs=2e-3)
    assert 0 < saved["time/validation_seconds"] < saved["time/outside_step_seconds"]  # 4 validations, part of it
    assert saved["time/windows_per_second"] == pytest.approx(8 * saved["time/steps"] / saved["time/fit_seconds"], rel=0.01)
    # The warm median (what benchmarks/cpc_step.py measures) and the first step are recorded apart.
    assert 0 < saved["time/median_step_seconds"] <= saved["time/step_seconds"] - saved["time/first_step_seconds"]
    assert 0 < saved["time/first_step_seconds"] < saved["time/step_seconds"]

    encoder = CPCEncoder.from_pretrained(run / "encoder")
    wave = torch.randn(1, 3200)
    with torch.no_grad():
        z, c = encoder(wave)
    assert z.shape == (1, 20, 48) and c.shape == (1, 20, 48)

    # Re-running the finished command resumes from its last checkpoint and trains no further.
    again = run_pretrain(cfg)
    assert again["val/acc_k1"] == pytest.approx(metrics["val/acc_k1"])


def test_rerun_with_other_settings_is_refused(synth_store: Path, tmp_path: Path) -> None:
    from jtm.errors import JTMError

    run_pretrain(tiny_config(synth_store, tmp_path / "run", epochs=1, limit_train_batches=1))
    with pytest.raises(JTMError, match="different configuration.*lr"):
        run_pretrain(tiny_config(synth_store, tmp_path / "run", epochs=1, lr=1e-2, limit_train_batches=1))


@pytest.mark.parametrize("sampling,labels_by", [("samesequence", None), ("samecategory", "ensemble"),
                                                 ("sequential", None)])
def test_every_sampler_and_context_trains(synth_store: Path, tmp_path: Path, sampling: str, labels_by: str | None) -> None:
    context = {"samesequence": "lstm", "samecategory": "transformer", "sequential": "rnn"}[sampling]
    cfg = tiny_config(synth_store, tmp_path / "run", epochs=1, limit_train_batches=2, batch_size=2,
                      sampling=sampling, labels_by=labels_by, model={"context": context, "encoder": "sinc",
                                                                      "norm": "instance"})
    metrics = run_pretrain(cfg)
    assert np.isfinite(metrics["val/loss"])
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()


def test_runs_take_their_threads_from_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container or taskset may allow fewer cores than the machine has: torch gets the allowed ones, unless
    --threads says otherwise (both kinds of run start through jtm.training.harness.start_process)."""
    import os

    from jtm.training.harness import start_process

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    try:
        start_process(None, seed=0)
        assert torch.get_num_threads() == 1
        start_process(2, seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_per_step_curves_are_batch_weighted_epoch_means() -> None:
    """The K per-step losses and accuracies are summed over the epoch and logged once, under the names Lightning
    gave them when they were logged every step, as batch-size-weighted means; so is the epoch's loss, the mean
    over k (the step's loss is the mean of its K losses)."""
    import torch

    from jtm.models.config import CPCConfig
    from jtm.training.pretrain import CPCPretrainModule

    module = CPCPretrainModule(CPCConfig(encoder_dim=8, context_dim=8, predict_steps=3).to_dict(), 1e-3, 0.9, 0.999,
                               1e-8, 0, 0, 0)
    logged: dict = {}
    module.log_dict = lambda metrics, **kw: logged.update({k: float(v) for k, v in metrics.items()})
    module._accumulate_per_k("train", torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.25, 0.0]), 2)
    module._accumulate_per_k("train", torch.tensor([4.0, 5.0, 6.0]), torch.tensor([1.0, 1.0, 1.0]), 6)
    module.on_train_epoch_end()
    assert logged == {"train/loss_k1_epoch": 3.25, "train/loss_k2_epoch": 4.25, "train/loss_k3_epoch": 5.25,
                      "train/acc_k1_epoch": 0.875, "train/acc_k2_epoch": 0.8125, "train/acc_k3_epoch": 0.75,
                      "train/loss_epoch": 4.25}
    module.on_train_epoch_end()  # nothing accumulated since: nothing logged again
    assert len(logged) == 7

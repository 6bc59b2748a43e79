"""Downstream runs end to end on a tiny store: every task, front end and probe trains, saves RUN/model, and
`evaluate` writes metrics.json with the documented keys; plus the model-level contracts (files, stitching)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jtm.errors import JTMError, ModelFileError
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.models.downstream import (DownstreamModel, load_encoder_file, load_frontend_source, save_encoder_file)
from jtm.models.logmel import LogMel
from jtm.pipelines.evaluate import evaluate_run, format_metrics
from jtm.data.tasks import task_data
from jtm.pipelines.downstream import run_downstream
from jtm.training.config import DownstreamConfig

TINY = CPCConfig(encoder_dim=32, context_dim=32, predict_steps=4, negatives=8)
FRAME_KEYS = {"frame_ap", "frame_precision", "frame_recall", "frame_f1", "note_precision", "note_recall", "note_f1",
              "threshold", "per_track", "headline", "headline_metric", "task", "split", "n_tracks"}
CLASS_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "confusion", "class_names", "track_accuracy",
              "track_macro_f1", "per_track", "headline", "n_windows"}


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretraining run folder as far as downstream runs care: RUN/encoder (tiny, untrained weights)."""
    run = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    CPCEncoder(TINY).save_pretrained(run / "encoder")
    return run


def _cfg(store, out: Path, **kw) -> DownstreamConfig:
    base = dict(data=str(store.path), out=str(out), window=2560, batch_size=2, epochs=1, limit_train_batches=2,
                limit_val_batches=1, hidden=16, progress=False, threads=1, model=TINY)
    base.update(kw)
    return DownstreamConfig(**base)


CASES = [
    # task, encoder, probe, finetune, features
    ("transcription", "pretrained", "linear", False, "context"),
    ("transcription", "pretrained", "mlp", True, "encoder"),
    ("pitch-instrument", "logmel", "mlp", False, "context"),
    ("ensemble", "random", "linear", False, "context"),
    ("ensemble", "supervised", "mlp", False, "context"),
]


@pytest.mark.parametrize("task,encoder,probe,finetune,features", CASES)
def test_run_and_evaluate(prepared_store, pretrained_run: Path, tmp_path: Path, task: str, encoder: str, probe: str,
                          finetune: bool, features: str) -> None:
    store, _ = prepared_store
    source = str(pretrained_run if not finetune else pretrained_run / "encoder") if encoder == "pretrained" else encoder
    cfg = _cfg(store, tmp_path / "run", task=task, encoder=source, probe=probe, finetune=finetune, features=features,
               class_weights=task == "ensemble")
    summary = run_downstream(cfg)
    assert not summary["skipped"]
    run = tmp_path / "run"
    for name in ("run.json", "splits.json", "model/config.json", "model/model.safetensors", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "logs" / "csv").glob("version_*/metrics.csv"))

    config = json.loads((run / "model" / "config.json").read_text())
    assert config["format"] == "jtm-downstream" and config["version"] == 1 and config["task"] == task
    assert config["frontend"]["kind"] == ("logmel" if encoder == "logmel" else "cpc")
    assert config["probe"]["kind"] == probe
    if task == "ensemble":
        assert config["classes"] == ["Solo Piano", "String Quartet"] and config["threshold"] is None
        assert config["probe"]["pool"] is True and config["probe"]["n_out"] == 2
    else:
        assert 0.0 < config["threshold"] < 1.0 and config["classes"] is None
        assert config["probe"]["n_out"] == (128 if task == "transcription" else 11 * 128)

    metrics = evaluate_run(run, progress=False)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["n_tracks"] == 1 and saved["split"] == "test"
    if task == "ensemble":
        assert CLASS_KEYS <= set(saved)
        assert (run / "confusion.csv").is_file() and (run / "confusion.png").is_file()
        assert saved["headline_metric"] == "accuracy"
    else:
        assert FRAME_KEYS <= set(saved)
        assert 0.0 <= saved["frame_ap"] <= 1.0
        with np.load(run / "excerpt.npz", allow_pickle=False) as z:
            assert z["truth"].dtype == bool and z["truth"].shape == z["prob"].shape and z["truth"].shape[1] == 128
        if task == "pitch-instrument":
            assert {"pitch_instrument_ap", "ap_per_instrument", "mean_instrument_ap"} <= set(saved)
            assert len(saved["ap_per_instrument"]) == 11
            assert saved["headline_metric"] == "pitch_instrument_ap"
        # Whole recording: every frame of the test track is scored once.
        test = int(store.indices("test")[0])
        assert saved["n_frames"] == store.lengths[test] // 160
    assert format_metrics(metrics).startswith(task)

    if encoder == "pretrained" and not finetune:
        # A frozen front end keeps the pretrained weights untouched.
        trained = DownstreamModel.from_pretrained(run / "model")
        original = load_frontend_source(pretrained_run)
        for (k, v), w in zip(trained.frontend.state_dict().items(), original.state_dict().values()):
            assert torch.equal(v, w), k


def test_rerun_skips_and_refuses_other_config(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    cfg = _cfg(store, tmp_path / "run", task="transcription", encoder="logmel")
    assert not run_downstream(cfg)["skipped"]
    stamp = (tmp_path / "run" / "model" / "model.safetensors").stat().st_mtime_ns
    assert run_downstream(cfg)["skipped"]
    assert (tmp_path / "run" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(JTMError, match="different configuration"):
        run_downstream(_cfg(store, tmp_path / "run", task="transcription", encoder="logmel", lr=0.5))


def test_bad_requests_fail_clearly(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    with pytest.raises(JTMError, match="no column"):
        run_downstream(_cfg(store, tmp_path / "a", task="no_such_column", encoder="logmel"))
    with pytest.raises(JTMError, match="finetune"):
        run_downstream(_cfg(store, tmp_path / "b", encoder="logmel", finetune=True))
    with pytest.raises(ModelFileError):
        run_downstream(_cfg(store, tmp_path / "c", encoder=str(tmp_path / "missing_run")))


def test_fractions_share_validation_and_test(prepared_store) -> None:
    store, _ = prepared_store
    full = task_data(store, "transcription", 1.0, seed=0, val_fraction=0.25)
    small = task_data(store, "transcription", 0.3, seed=0, val_fraction=0.25)
    np.testing.assert_array_equal(full.splits.val, small.splits.val)
    np.testing.assert_array_equal(full.splits.test, small.splits.test)
    assert set(small.splits.train) < set(full.splits.train)
    assert not set(full.splits.train) & set(full.splits.val)
    classes = task_data(store, "ensemble", 0.3, seed=0, val_fraction=0.25)
    # Class codes are defined over every labelled recording, whichever subset is trained on.
    assert classes.classes == ["Solo Piano", "String Quartet"]


def test_stitched_prediction_equals_one_pass() -> None:
    """With enough context per chunk, predicting chunk by chunk equals running the whole recording at once."""
    torch.manual_seed(0)
    model = DownstreamModel.build("transcription", LogMel(), probe="linear").eval()
    audio = np.random.default_rng(0).standard_normal(16000 * 2 + 123).astype(np.float32) * 0.1
    whole = torch.sigmoid(model(torch.from_numpy(audio)[None]))[0].detach().numpy()
    stitched = model.predict_frames(audio, window=2560, context_frames=4, batch_size=3)
    assert stitched.shape == (len(audio) // 160, 128)
    np.testing.assert_allclose(stitched, whole, atol=1e-4)
    # Without context, every frame is still predicted exactly once.
    assert model.predict_frames(audio, window=2560, context_frames=0).shape == stitched.shape


def test_window_classification_covers_the_recording() -> None:
    model = DownstreamModel.build("ensemble", LogMel(), classes=["a", "b", "c"]).eval()
    probs, starts = model.predict_windows(np.zeros(2560 * 3 + 500, np.float32), window=2560)
    np.testing.assert_array_equal(starts, [0, 2560, 5120, 2560 * 3 + 500 - 2560])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    probs, starts = model.predict_windows(np.zeros(1000, np.float32), window=2560)
    assert probs.shape == (1, 3) and starts.tolist() == [0]


def test_model_files_round_trip_and_refuse_pickles(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = CPCEncoder(TINY)
    model = DownstreamModel.build("pitch-instrument", encoder, probe="mlp", hidden=8)
    model.threshold = 0.35
    model.save_pretrained(tmp_path / "m")
    loaded = DownstreamModel.from_pretrained(tmp_path / "m")
    assert loaded.threshold == 0.35 and loaded.config_dict() == model.config_dict()
    keys = set(loaded.state_dict())
    assert keys and all(k.startswith(("frontend.", "probe.")) for k in keys)
    x = torch.randn(1, 1600)
    torch.testing.assert_close(loaded(x), model.eval()(x))

    save_encoder_file(tmp_path / "checkpoint0.pt", encoder, TINY)
    again = load_encoder_file(tmp_path / "checkpoint0.pt")
    assert again.config == TINY
    torch.save({"weights": torch.zeros(1)}, tmp_path / "pickled.pt")
    with pytest.raises(ModelFileError, match="safetensors"):
        load_encoder_file(tmp_path / "pickled.pt")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ModelFileError):
        DownstreamModel.from_pretrained(tmp_path / "m")


def test_more_epochs_resume_from_the_checkpoint(prepared_store, tmp_path: Path, capsys) -> None:
    store, _ = prepared_store
    run_downstream(_cfg(store, tmp_path / "run", task="ensemble", encoder="logmel"))
    summary = run_downstream(_cfg(store, tmp_path / "run", task="ensemble", encoder="logmel", epochs=2))
    assert not summary["skipped"]
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["epochs"] == 2


def test_cli_downstream_and_evaluate(prepared_store, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import jtm.cli  # noqa: F401  (registers the commands)
    from jtm.cli.app import app

    store, _ = prepared_store
    run = tmp_path / "run"
    common = ["--window", "2560", "--batch-size", "2", "--epochs", "1", "--limit-train-batches", "1",
              "--limit-val-batches", "1", "--threads", "1", "--no-progress"]
    result = CliRunner().invoke(app, ["downstream", "--data", str(store.path), "--task", "transcription",
                                      "--encoder", "logmel", "--probe", "linear", "--label-fraction", "0.5",
                                      "--out", str(run), *common])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["evaluate", str(run), "--split", "test", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "frame_ap" in result.output and (run / "metrics.json").is_file()
    assert json.loads((run / "run.json").read_text())["label_fraction"] == 0.5


def test_step_budget_is_the_same_at_every_label_fraction(prepared_store, tmp_path: Path, monkeypatch) -> None:
    """With --steps, a small label subset trains for as many optimizer steps as the full set (with epochs it would
    get a fraction of them), and the checkpoint kept is the one of lowest validation loss."""
    store, _ = prepared_store
    counted: list[int] = []
    original_step = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        counted.append(1)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    steps, reported = {}, {}
    for fraction in (0.3, 1.0):
        out = tmp_path / f"f{fraction}"
        cfg = _cfg(store, out, encoder="logmel", label_fraction=fraction, steps=7, eval_every=3,
                   limit_train_batches=None, limit_val_batches=None, val_fraction=0.25)
        counted.clear()
        reported[fraction] = run_downstream(cfg)["steps"]
        steps[fraction] = len(counted)
        best = torch.load(out / "best" / "best.ckpt", map_location="cpu", weights_only=True)
        saved = DownstreamModel.from_pretrained(out / "model").probe.state_dict()
        for key, value in saved.items():
            torch.testing.assert_close(value, best["state_dict"][f"model.probe.{key}"])
    assert steps == reported == {0.3: 7, 1.0: 7}


def test_training_layer_trains_and_leaves_the_model_to_the_pipeline(prepared_store, tmp_path: Path) -> None:
    """train_downstream writes the run's configuration, splits and checkpoints and returns the trained model;
    tuning the threshold and saving RUN/model is the pipeline's step (jtm.pipelines.downstream)."""
    from jtm.training.downstream import resolve_config, train_downstream

    store, _ = prepared_store
    run = train_downstream(resolve_config(_cfg(store, tmp_path / "run", encoder="logmel")))
    assert run.is_global_zero and run.model.is_frame_task and not run.model.training
    assert run.summary["steps"] == 2 and run.summary["n_val_tracks"] == len(run.data.splits.val)
    assert (tmp_path / "run" / "run.json").is_file() and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "run" / "model").exists()


def test_a_refused_memory_budget_leaves_no_run_json(prepared_store, tmp_path: Path) -> None:
    """A budget below one recording fails before anything is written, so the corrected command is not refused as a
    changed configuration."""
    store, _ = prepared_store
    with pytest.raises(JTMError, match="memory budget"):
        run_downstream(_cfg(store, tmp_path / "run", encoder="logmel", max_memory_gb=1e-6))
    assert not (tmp_path / "run" / "run.json").exists()
    assert not run_downstream(_cfg(store, tmp_path / "run", encoder="logmel"))["skipped"]

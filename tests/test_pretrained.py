"""save_pretrained / from_pretrained: exact round trip, and refusal of anything that is not safetensors."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from jtm.errors import ModelFileError
from jtm.models import CPCConfig, CPCEncoder

CONFIG = CPCConfig(encoder="sinc", encoder_dim=16, context="transformer", context_dim=16, heads=4, norm="batch")


def _saved(tmp_path):
    torch.manual_seed(0)
    model = CPCEncoder(CONFIG)
    model(torch.randn(2, 3200))  # move the batch-norm running stats away from their initial values
    model.eval()
    model.save_pretrained(tmp_path / "enc")
    return model, tmp_path / "enc"


def test_round_trip_is_exact(tmp_path):
    model, folder = _saved(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "jtm-cpc-encoder" and meta["version"] == 1
    loaded = CPCEncoder.from_pretrained(folder)
    assert loaded.config == CONFIG
    wave = torch.randn(2, 4800)
    for a, b in zip(model(wave), loaded(wave)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


class _Marker:
    """Unpickling this creates a file: proof that a loader unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_is_refused_and_never_unpickled(tmp_path):
    _, folder = _saved(tmp_path)
    marker = tmp_path / "UNPICKLED"
    torch.save({"weights": _Marker(str(marker))}, folder / "model.safetensors")  # a torch pickle, renamed
    with pytest.raises(ModelFileError, match="model.safetensors"):
        CPCEncoder.from_pretrained(folder)
    with open(folder / "model.safetensors", "wb") as f:  # a bare pickle
        pickle.dump(_Marker(str(marker)), f)
    with pytest.raises(ModelFileError, match="model.safetensors"):
        CPCEncoder.from_pretrained(folder)
    assert not marker.exists()


def test_config_cannot_point_elsewhere(tmp_path):
    _, folder = _saved(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "weights": "../evil.pt"}))
    with pytest.raises(ModelFileError, match="config.json"):
        CPCEncoder.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["missing-weights", "missing-config", "truncated", "bad-json", "wrong-format",
                                    "bad-config-value", "wrong-shapes"])
def test_broken_folders_are_model_file_errors(tmp_path, damage):
    _, folder = _saved(tmp_path)
    weights, config = folder / "model.safetensors", folder / "config.json"
    meta = json.loads(config.read_text())
    if damage == "missing-weights":
        weights.unlink()
    elif damage == "missing-config":
        config.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: os.path.getsize(weights) // 2])
    elif damage == "bad-json":
        config.write_text("{not json")
    elif damage == "wrong-format":
        config.write_text(json.dumps({**meta, "format": "something-else"}))
    elif damage == "bad-config-value":
        config.write_text(json.dumps({**meta, "config": {**meta["config"], "norm": "group"}}))
    elif damage == "wrong-shapes":
        config.write_text(json.dumps({**meta, "config": {**meta["config"], "encoder_dim": 32}}))
    with pytest.raises(ModelFileError, match="model.safetensors|config.json"):
        CPCEncoder.from_pretrained(folder)


def test_benchmark_is_importable_and_runs_tiny():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpc_step.py"
    spec = importlib.util.spec_from_file_location("cpc_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run("tiny", steps=2, warmup=1, batch=2, window=3200, naive_steps=1, matmul_size=128)
    assert result["ms_step_median"] > 0 and result["model_gflop_per_step"] > 0 and "naive_over_efficient" in result

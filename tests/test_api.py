"""The public Python API: ``from jtm import CPCEncoder, load_audio``, save/from_pretrained round trips."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jtm
from jtm import CPCEncoder, load_audio
from tests.apply_helpers import make_pretrain_run, tiny_encoder, write_tone


def test_import_jtm_is_cheap() -> None:
    # Run in a fresh interpreter: this test process has long imported torch.
    code = "import sys, jtm; print(sorted(m for m in ('torch', 'lightning', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names() -> None:
    assert jtm.__version__
    for name in ("CPCEncoder", "load_audio", "CPCConfig", "DownstreamModel", "DataError", "JTMError"):
        assert name in jtm.__all__ and name in dir(jtm)
        assert getattr(jtm, name) is not None
    with pytest.raises(AttributeError):
        jtm.no_such_name  # noqa: B018


def test_save_and_from_pretrained_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    enc = tiny_encoder(3)
    path = write_tone(tmp_path / "a.flac", 2.3, 44_100, 2)
    wave, sr = load_audio(path)
    assert sr == 16_000 and wave.dtype == np.float32 and wave.ndim == 1
    enc.save_pretrained(tmp_path / "enc")
    again = CPCEncoder.from_pretrained(tmp_path / "enc")
    for layer in ("context", "encoder"):
        np.testing.assert_array_equal(enc.embed(wave, sr, layer=layer), again.embed(wave, sr, layer=layer))
    assert again.embed(wave, sr).shape == (len(wave) // 160, enc.config.context_dim)
    # Any rate and channel layout goes in; resampling happens inside embed.
    raw, raw_sr = load_audio(path, sample_rate=None)
    assert raw_sr == 44_100
    np.testing.assert_allclose(again.embed(raw, raw_sr), again.embed(wave, sr), atol=1e-5)


def test_a_pretraining_run_folder_is_accepted_where_an_encoder_is(tmp_path: Path) -> None:
    from jtm.pipelines.embed import load_encoder

    run = make_pretrain_run(tmp_path / "run", seed=5)
    wave = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    from_folder = CPCEncoder.from_pretrained(run / "encoder").embed(wave, 16_000)
    np.testing.assert_array_equal(load_encoder(run).embed(wave, 16_000), from_folder)
    np.testing.assert_array_equal(load_encoder(run / "encoder").embed(wave, 16_000), from_folder)


def test_from_pretrained_accepts_a_pretraining_run_folder(tmp_path: Path) -> None:
    run = make_pretrain_run(tmp_path / "run", seed=2)
    wave = np.random.default_rng(1).standard_normal(8_000).astype(np.float32) * 0.1
    np.testing.assert_array_equal(CPCEncoder.from_pretrained(run).embed(wave, 16_000),
                                  CPCEncoder.from_pretrained(run / "encoder").embed(wave, 16_000))

"""``jtm embed``: formats, rates, channels, pooling, layers, chunked long input, bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jtm.audio import load_audio
from jtm.errors import DataError
from jtm.pipelines.chunked import stream_audio
from jtm.pipelines.embed import embed_file, embed_files, load_encoder
from tests.apply_helpers import FORMATS, make_bad_files, make_pretrain_run, run_cli, write_tone


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pretrain_run(tmp_path_factory.mktemp("embed") / "pre")


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embed_audio")
    return {name: write_tone(root / name, 1.37, sr, ch, subtype) for name, sr, ch, subtype in FORMATS}


def test_embed_every_format_rate_and_channel_count(pretrain_run: Path, audio_files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    code, out, err = run_cli(["embed", *audio_files.values(), "--model", pretrain_run, "-o", tmp_path / "feats"])
    assert code == 0, err
    encoder = load_encoder(pretrain_run)
    for name, path in audio_files.items():
        feats = np.load(tmp_path / "feats" / (Path(name).stem + ".npy"), allow_pickle=False)
        info = sf.info(str(path))
        expected = info.frames / info.samplerate * 100
        assert feats.dtype == np.float32 and feats.shape[1] == encoder.config.context_dim
        assert abs(feats.shape[0] - expected) <= 1, (name, feats.shape, expected)
        # The chunked pipeline equals the public API on the whole file.
        wave, sr = load_audio(path)
        np.testing.assert_allclose(feats, encoder.embed(wave, sr), rtol=1e-4, atol=1e-5)
    assert "real time" in out and "embedded 4 file(s)" in out


def test_embed_pool_mean_and_encoder_layer_from_the_encoder_folder(pretrain_run: Path, audio_files: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    path = audio_files["stereo22k.flac"]
    code, _, err = run_cli(["embed", path, "--model", pretrain_run / "encoder", "-o", tmp_path,
                            "--pool", "mean", "--layer", "encoder"])
    assert code == 0, err
    pooled = np.load(tmp_path / "stereo22k.npy", allow_pickle=False)
    encoder = load_encoder(pretrain_run)
    assert pooled.shape == (1, encoder.config.encoder_dim)
    wave, sr = load_audio(path)
    np.testing.assert_allclose(pooled[0], encoder.embed(wave, sr, layer="encoder").mean(axis=0), rtol=1e-4,
                               atol=1e-5)


def test_long_input_is_chunked_and_stitched_exactly(pretrain_run: Path, tmp_path: Path) -> None:
    path = write_tone(tmp_path / "long.flac", 23.456, 44_100, 2, freq=220.0)
    encoder = load_encoder(pretrain_run)
    result = embed_file(encoder, path, tmp_path / "long.npy", chunk_seconds=2.0, context_seconds=0.25)
    feats = np.load(result.output, allow_pickle=False)
    wave, sr = load_audio(path)
    assert feats.shape == (len(wave) // 160, encoder.config.context_dim) == result.shape
    # Stateful GRU across chunks + encoder margin: identical to one pass over the whole file.
    np.testing.assert_allclose(feats, encoder.embed(wave, sr), rtol=1e-4, atol=1e-5)
    assert result.speed > 0 and abs(result.duration - 23.456) < 0.01


def test_streamed_audio_equals_load_audio(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "x.ogg", 3.3, 48_000, 2)
    whole, _ = load_audio(path)
    streamed = np.concatenate(list(stream_audio(path, block=7_000)))
    np.testing.assert_array_equal(whole, streamed)


def test_bad_inputs_raise_naming_the_file(pretrain_run: Path, tmp_path: Path) -> None:
    bad = make_bad_files(tmp_path / "bad")
    encoder = load_encoder(pretrain_run)
    for kind, path in bad.items():
        with pytest.raises(DataError) as info:
            embed_file(encoder, path, tmp_path / "out" / f"{kind}.npy")
        assert str(path) in str(info.value), kind
        assert not (tmp_path / "out" / f"{kind}.npy").exists()
    short = write_tone(tmp_path / "short.wav", 0.005, 16_000)
    with pytest.raises(DataError, match="shorter than one"):
        embed_file(encoder, short, tmp_path / "out" / "short.npy")


def test_cli_bad_input_exits_nonzero_and_skip_counts(pretrain_run: Path, tmp_path: Path) -> None:
    bad = make_bad_files(tmp_path / "bad")
    good = write_tone(tmp_path / "good.wav", 1.0, 16_000)
    code, _, err = run_cli(["embed", good, bad["truncated"], "--model", pretrain_run, "-o", tmp_path / "o1"])
    assert code == 1 and str(bad["truncated"]) in err and "truncated" in err
    assert "Traceback" not in err

    code, out, err = run_cli(["embed", good, *bad.values(), "--model", pretrain_run, "-o", tmp_path / "o2",
                              "--on-error", "skip"])
    assert code == 0, err
    assert "skipped 4 bad input(s)" in out
    for path in bad.values():
        assert str(path) in err
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["good.npy"]

    code, _, err = run_cli(["embed", *bad.values(), "--model", pretrain_run, "-o", tmp_path / "o3",
                            "--on-error", "skip"])
    assert code == 1 and "every input was skipped" in err


def test_cli_refuses_a_missing_model_and_colliding_names(tmp_path: Path, pretrain_run: Path) -> None:
    a = write_tone(tmp_path / "a" / "x.wav", 0.5, 16_000)
    b = write_tone(tmp_path / "b" / "x.flac", 0.5, 16_000)
    code, _, err = run_cli(["embed", a, "--model", tmp_path / "nope", "-o", tmp_path / "o"])
    assert code == 1 and "nope" in err
    code, _, err = run_cli(["embed", a, b, "--model", pretrain_run, "-o", tmp_path / "o"])
    assert code == 1 and "x.npy" in err


def test_embed_files_reports_results(pretrain_run: Path, tmp_path: Path) -> None:
    paths = [write_tone(tmp_path / f"t{i}.wav", 0.5 + i, 16_000) for i in range(2)]
    lines: list[str] = []
    outcome = embed_files(pretrain_run, paths, tmp_path / "o", echo=lines.append)
    assert [r.shape[0] for r in outcome.results] == [50, 150]
    assert not outcome.skipped and len(lines) == 2

"""The study's frozen-feature cache (jtm.pipelines.features): exactly the features of an uncached pass, computed
once per (front end, recording), and keyed by the front end's weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.models.logmel import LogMel
from jtm.pipelines.features import FeatureCache, compute_features, frontend_key


def tiny(seed: int = 0) -> CPCEncoder:
    torch.manual_seed(seed)
    return CPCEncoder(CPCConfig(encoder_dim=16, context_dim=12)).eval()


def reference(frontend, audio: np.ndarray, sample_rate: int, layer: str) -> np.ndarray:
    """Features computed without the cache module: embed() per layer, or the raw log-mel spectrogram."""
    if isinstance(frontend, LogMel):
        with torch.no_grad():
            return frontend.spectrogram(torch.from_numpy(audio).unsqueeze(0))[0].numpy()
    if layer == "both":
        return np.concatenate([frontend.embed(audio, sample_rate, layer="encoder"),
                               frontend.embed(audio, sample_rate, layer="context")], axis=1)
    return frontend.embed(audio, sample_rate, layer=layer)


@pytest.mark.parametrize("kind,layer,dim", [("cpc", "context", 12), ("cpc", "encoder", 16), ("cpc", "both", 28),
                                            ("logmel", "encoder", None)])
def test_cache_returns_exactly_the_uncached_features(prepared_store, tmp_path: Path, kind: str, layer: str,
                                                     dim: int | None) -> None:
    store, _ = prepared_store
    frontend = tiny() if kind == "cpc" else LogMel()
    cache = FeatureCache(tmp_path / "cache", store, frontend, layer, name=kind)
    for t in range(len(store)):
        audio = store.audio(t)
        got = cache(t)
        expected = reference(frontend, audio, store.sample_rate, layer)
        assert got.dtype == np.float32 and got.shape == (len(audio) // 160, dim or got.shape[1])
        assert np.array_equal(got, expected)
        assert np.array_equal(got, compute_features(frontend, audio, store.sample_rate, layer))
        assert cache.path(t).is_file()
        assert not got.flags.writeable  # memory-mapped read-only: a probe cannot corrupt the cache
    assert cache.computed == len(store)

    # A second cache over the same root computes nothing and returns the same arrays.
    again = FeatureCache(tmp_path / "cache", store, tiny() if kind == "cpc" else LogMel(), layer, name=kind)
    assert again.dir == cache.dir
    for t in range(len(store)):
        assert np.array_equal(again(t), cache(t))
    assert again.computed == 0


def test_reading_twice_computes_once(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    cache = FeatureCache(tmp_path, store, tiny(), "context")
    first = np.array(cache(0))
    second = cache(0)
    assert cache.computed == 1 and np.array_equal(first, second)


def test_a_changed_encoder_gets_its_own_folder(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    encoder = tiny()
    base = FeatureCache(tmp_path, store, encoder, "context")
    before = np.array(base(0))
    changed = tiny()
    with torch.no_grad():
        next(changed.context.parameters()).add_(1e-3)  # one weight tensor, slightly
    other = FeatureCache(tmp_path, store, changed, "context")
    assert frontend_key(changed, "context") != frontend_key(encoder, "context")
    assert other.dir != base.dir
    after = other(0)
    assert other.computed == 1 and not np.array_equal(after, before)
    # Same weights, another layer: another key too; a copy of the same weights: the same key.
    assert frontend_key(encoder, "encoder") != frontend_key(encoder, "context")
    assert frontend_key(tiny(), "context") == frontend_key(encoder, "context")
    assert frontend_key(tiny(seed=1), "context") != frontend_key(encoder, "context")
    # A different architecture with the same seed: another key.
    torch.manual_seed(0)
    wider = CPCEncoder(CPCConfig(encoder_dim=16, context_dim=16))
    assert frontend_key(wider, "context") != frontend_key(encoder, "context")


def test_unknown_layer_is_refused(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    with pytest.raises(ValueError, match="layer"):
        FeatureCache(tmp_path, store, tiny(), "middle")

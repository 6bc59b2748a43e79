"""The random-equaliser timbre augmentation: smooth curves within their configured range, a new one per crop,
reproducible from a seed, applied exactly in the energy domain, and only to training batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jtm.data.augment import EQConfig, LogSpectrum, RandomEQ, eq_curves
from jtm.data.tasks import task_data
from jtm.errors import JTMError
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.models.logmel import LogMel
from jtm.pipelines.arms import FrozenNoteHead, FrozenProbe, TaskView
from jtm.pipelines.features import FeatureCache

CROPS, FRAMES, CHANNELS = 64, 32, 128


def curves(seed: int = 0, cfg: EQConfig = EQConfig()) -> np.ndarray:
    return eq_curves(np.random.default_rng(seed), CROPS, FRAMES, CHANNELS, cfg)


def test_curves_are_smooth_over_channels_and_within_their_range() -> None:
    for cfg in (EQConfig(), EQConfig.of_strength(12.0), EQConfig(bumps=0, time_db=0.0)):
        c = curves(cfg=cfg)
        assert c.shape == (CROPS, FRAMES, CHANNELS) and c.dtype == np.float32
        steps = np.abs(np.diff(c, axis=2))
        assert steps.max() <= cfg.max_step_db(CHANNELS) + 1e-4
        assert steps.max() < 0.1 * cfg.max_db  # smooth: a neighbouring channel never jumps by much of the range
        assert np.abs(c).max() <= cfg.max_db + 1e-4
        # the range is used: the crops' overall gains spread over most of +-gain_db
        gains = c.mean(axis=(1, 2))
        assert gains.max() > 0.5 * cfg.gain_db and gains.min() < -0.5 * cfg.gain_db


def test_strength_scales_every_component() -> None:
    assert EQConfig.of_strength(6.0) == EQConfig()
    strong = EQConfig.of_strength(12.0)
    assert strong.max_db == pytest.approx(2 * EQConfig().max_db) and strong.bumps == EQConfig().bumps
    assert np.abs(curves(cfg=strong)).std() == pytest.approx(2 * np.abs(curves()).std(), rel=1e-4)


def test_each_crop_gets_its_own_curve_and_a_seed_reproduces_them() -> None:
    c = curves()
    flat = c[:, 0, :]
    distances = np.abs(flat[:, None, :] - flat[None, :, :]).max(axis=2)
    assert (distances[~np.eye(CROPS, dtype=bool)] > 0.1).all()
    np.testing.assert_array_equal(c, curves())
    assert not np.allclose(c, curves(seed=1))


def test_the_time_ramp_is_small_and_linear_and_off_at_zero() -> None:
    c = curves(cfg=EQConfig(time_db=1.0))
    over_time = c[:, :, 0] - c[:, :1, 0]
    assert np.abs(over_time).max() <= 2.0 + 1e-4 and np.abs(over_time).max() > 1.0
    np.testing.assert_allclose(np.diff(over_time, n=2, axis=1), 0.0, atol=1e-4)
    steady = curves(cfg=EQConfig(time_db=0.0))
    np.testing.assert_array_equal(steady, np.broadcast_to(steady[:, :1], steady.shape))


@pytest.mark.parametrize("floor,db_per_unit", [(1e-6, 10.0), (1.0, 20.0)])
def test_the_filter_is_exact_in_the_energy_domain_and_leaves_silence_alone(floor: float, db_per_unit: float) -> None:
    """log(X + floor) filtered by g dB is log(X * 10^(g / db_per_unit) + floor): a louder band stays louder by
    the gain, silence (X = 0) stays at the floor."""
    rng = np.random.default_rng(0)
    energy = rng.exponential(1.0, (3, 5, 7)) * 10.0 ** rng.uniform(-4, 3, (3, 5, 7))
    energy[0, 0] = 0.0
    gain_db = rng.uniform(-12, 12, (3, 5, 7))
    spectrum = LogSpectrum(floor, db_per_unit)
    out = spectrum.apply(np.log(energy + floor).astype(np.float32), gain_db)
    expected = np.log(energy * 10.0 ** (gain_db / db_per_unit) + floor)
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out[0, 0], np.log(floor), atol=1e-6)
    with pytest.raises(JTMError, match="positive floor"):
        LogSpectrum(0.0, 10.0)


def _view(store) -> TaskView:
    data = task_data(store, "transcription", 1.0, 0, 0.25)
    return TaskView(store, "transcription", data, window=2560, batch_size=4)


def test_augmentation_changes_training_batches_only(prepared_store, tmp_path: Path) -> None:
    """With eq, the arm's training batches are the same crops filtered (targets unchanged, new filters for every
    batch, the same for the same seed); its statistics and its predictions of a model are those without it."""
    store, _ = prepared_store
    cache = FeatureCache(tmp_path / "cache", store, LogMel(), "encoder")
    view = _view(store)
    plain = FrozenProbe(view, cache, "linear", 16, 0.0)
    augmented = FrozenProbe(view, cache, "linear", 16, 0.0, eq=EQConfig())
    np.testing.assert_array_equal(plain.mean, augmented.mean)
    np.testing.assert_array_equal(plain.std, augmented.std)
    batches, again, plain_batches = augmented.batches(0), augmented.batches(0), plain.batches(0)
    for _ in range(3):
        (x, y), (x_again, _), (x_plain, y_plain) = next(batches), next(again), next(plain_batches)
        torch.testing.assert_close(y, y_plain)
        torch.testing.assert_close(x, x_again)
        assert x.shape == x_plain.shape and (x - x_plain).abs().mean() > 0.05
    assert not torch.equal(next(augmented.batches(1))[0], next(augmented.batches(0))[0])

    model, _ = augmented.build(0, 1e-2)
    tracks = np.asarray(store.indices("test"))
    before = plain.predict(model, tracks, None)
    for _ in range(2):  # drawing training batches in between changes nothing
        next(batches)
        for p, q in zip(before, augmented.predict(model, tracks, None)):
            np.testing.assert_array_equal(p, q)


def test_the_note_head_is_augmented_and_cpc_features_are_refused(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    view = _view(store)
    cache = FeatureCache(tmp_path / "cache", store, LogMel(), "encoder")
    x_plain = next(FrozenNoteHead(view, cache).batches(0))[0]
    x_eq = next(FrozenNoteHead(view, cache, eq=EQConfig()).batches(0))[0]
    assert x_eq.shape == x_plain.shape and not torch.equal(x_eq, x_plain)
    cpc = FeatureCache(tmp_path / "cache", store, CPCEncoder(CPCConfig(encoder_dim=16, context_dim=16)), "context")
    with pytest.raises(JTMError, match="not one"):
        FrozenProbe(view, cpc, "linear", 16, 0.0, eq=EQConfig())
    assert cpc.computed == 0  # refused before any feature is computed


def test_random_eq_filters_a_batch_in_place_of_shape() -> None:
    crops = np.full((2, 10, 48), np.log1p(3.0), dtype=np.float32)
    out = RandomEQ(EQConfig(), LogSpectrum(1.0, 20.0), seed=0)(crops)
    assert out.shape == crops.shape and out.dtype == np.float32
    assert not np.allclose(out[0], out[1])

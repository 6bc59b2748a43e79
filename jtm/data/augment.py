"""Timbre augmentation of log-spectral features: a random smooth equaliser per training crop.

A training crop of log-magnitude features ``(B, W, D)`` (B crops, W frames, D frequency channels ordered from low
to high on a log-like axis: constant-Q filters, mel bands) is filtered by a random equaliser: a gain curve over the
channels, smooth (an overall gain, a tilt, a few low-order cosines) with an optional slow gain ramp over the crop's
frames. A smooth filter changes the balance of harmonics and formants but not where the harmonics lie, so the pitch
labels stay exact while the crop sounds like another instrument, room or microphone.

The curve is drawn in dB; :class:`LogSpectrum` says how a front end's features relate to the energy they measure
(``y = log(X + floor)``, X a power or a magnitude), so the filter is applied exactly,
``y' = log(X * 10^(dB / db_per_unit) + floor)``: silence stays at the floor instead of being lifted with the
signal, which a plain ``y + curve`` would do.

Numpy only; the caller passes a seeded generator, so a run reproduces.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from jtm.errors import JTMError

AUGMENTATIONS = ("eq",)
"""Kinds of augmentation ``jtm study --augment`` accepts."""


@dataclass(frozen=True)
class EQConfig:
    """The random equaliser's ranges, each drawn uniformly per crop.

    ``gain_db``: overall gain in ``[-gain_db, gain_db]``; ``tilt_db``: a linear tilt from low to high channels,
    reaching ``[-tilt_db, tilt_db]`` at the ends; ``bumps`` cosines ``cos(pi k u + phase)``, k = 1..bumps, over the
    channel position u in [0, 1], each of amplitude in ``[-bump_db, bump_db]``; ``time_db``: a linear gain ramp
    over the crop's frames reaching ``[-time_db, time_db]`` at its ends (0: the same curve at every frame).
    """

    gain_db: float = 6.0
    tilt_db: float = 6.0
    bumps: int = 4
    bump_db: float = 3.0
    time_db: float = 1.5

    @classmethod
    def of_strength(cls, db: float) -> "EQConfig":
        """The default shape scaled so that the overall gain ranges over ``[-db, db]``: one knob for a study."""
        scale = db / cls.gain_db
        base = cls()
        return cls(gain_db=db, tilt_db=base.tilt_db * scale, bumps=base.bumps, bump_db=base.bump_db * scale,
                   time_db=base.time_db * scale)

    @property
    def max_db(self) -> float:
        """The largest |gain| a curve can reach (all components at their extremes together)."""
        return self.gain_db + self.tilt_db + self.bumps * self.bump_db + self.time_db

    def max_step_db(self, channels: int) -> float:
        """The largest change of a curve between neighbouring channels (its smoothness bound)."""
        slope = 2 * self.tilt_db + np.pi * self.bump_db * self.bumps * (self.bumps + 1) / 2
        return float(slope / max(channels - 1, 1))

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def eq_curves(rng: np.random.Generator, crops: int, frames: int, channels: int, cfg: EQConfig) -> np.ndarray:
    """Random equaliser gains in dB: float32 (crops, frames, channels), one smooth curve over channels per crop
    (plus its slow ramp over frames); channel position u = c / (channels - 1), from low to high frequency."""
    u = np.linspace(0.0, 1.0, channels) if channels > 1 else np.zeros(1)
    gain = rng.uniform(-cfg.gain_db, cfg.gain_db, (crops, 1))
    tilt = rng.uniform(-cfg.tilt_db, cfg.tilt_db, (crops, 1))
    curve = gain + tilt * (2.0 * u - 1.0)  # (crops, channels)
    if cfg.bumps:
        k = np.arange(1, cfg.bumps + 1)
        amplitude = rng.uniform(-cfg.bump_db, cfg.bump_db, (crops, cfg.bumps, 1))
        phase = rng.uniform(0.0, 2 * np.pi, (crops, cfg.bumps, 1))
        curve = curve + (amplitude * np.cos(np.pi * k[:, None] * u + phase)).sum(axis=1)
    t = np.linspace(-1.0, 1.0, frames) if frames > 1 else np.zeros(1)
    ramp = rng.uniform(-cfg.time_db, cfg.time_db, (crops, 1)) * t  # (crops, frames)
    return (curve[:, None, :] + ramp[:, :, None]).astype(np.float32)


@dataclass(frozen=True)
class LogSpectrum:
    """How features relate to energy: ``y = log(X + floor)``, X a power (``db_per_unit`` 10) or a magnitude (20)."""

    floor: float
    db_per_unit: float

    def __post_init__(self) -> None:
        if self.floor <= 0 or self.db_per_unit <= 0:
            raise JTMError(f"a log spectrum needs a positive floor and dB scale, not {self.floor}, {self.db_per_unit}")

    def apply(self, features: np.ndarray, gain_db: np.ndarray) -> np.ndarray:
        """``features`` (..., D) filtered by ``gain_db`` (broadcastable to it): float32, same shape."""
        log_floor = np.log(self.floor)
        # X / floor = expm1(y - log floor), exact for y near the floor where exp(y) - floor would cancel.
        energy = np.maximum(np.expm1(np.asarray(features, dtype=np.float64) - log_floor), 0.0)
        factor = np.power(10.0, np.asarray(gain_db, dtype=np.float64) / self.db_per_unit)
        return (log_floor + np.log1p(energy * factor)).astype(np.float32)


class RandomEQ:
    """Filters training crops (B, W, D) of one front end's log spectrum with random equalisers from its own
    generator (seeded per run, apart from the generator that picks the crops, so the crops stay the same)."""

    def __init__(self, cfg: EQConfig, spectrum: LogSpectrum, seed: int) -> None:
        self.cfg, self.spectrum = cfg, spectrum
        self.rng = np.random.default_rng([seed, 0xE0])

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        b, w, d = crops.shape
        return self.spectrum.apply(crops, eq_curves(self.rng, b, w, d, self.cfg))

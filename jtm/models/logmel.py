"""The classical MIR front end: a log-mel spectrogram at 100 frames per second.

Frames line up with the label frames of ``jtm.data.labels`` and with the CPC encoder: a waveform of T samples
at 16 kHz gives F = T // 160 frames, and frame f is the STFT frame *centred* on the middle of label frame f
(sample ``160 f + 80``), so the spectrogram and the labels describe the same 10 ms.

No trainable parameters: the mel filterbank and the window are fixed buffers. The optional per-channel
normalisation (:class:`RunningStandardize`) subtracts a running mean and divides by a running standard
deviation per mel band, accumulated over every training batch; it only rescales the features (log-mel
levels differ a lot across bands, which would otherwise slow down a probe's optimiser).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jtm.audio import HOP, SAMPLE_RATE
from jtm.configs import bounded, check_bounds, load_config


@dataclass
class LogMelConfig:
    """Settings of :class:`LogMel`; saved inside a downstream model's ``config.json``."""

    sample_rate: int = bounded(SAMPLE_RATE, 1000, 192000)
    n_fft: int = bounded(1024, 16, 16384)
    hop: int = bounded(HOP, 1, SAMPLE_RATE)
    n_mels: int = bounded(128, 1, 512)
    f_min: float = 30.0
    f_max: float | None = None
    """Upper edge of the top mel band (None: Nyquist)."""
    normalize: bool = True
    """Per-mel-band normalisation with running statistics (no trainable parameters)."""
    eps: float = 1e-6
    """Added before the log, so silence maps to log(eps) instead of -inf."""

    def __post_init__(self) -> None:
        check_bounds(self)  # before the filterbank (n_fft // 2 + 1, n_mels) is allocated

    @property
    def dim(self) -> int:
        return self.n_mels

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path = "config") -> "LogMelConfig":
        """Strictly, as :func:`jtm.configs.load_config`."""
        return load_config(cls, d, str(source))


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    # The HTK mel scale: simple, and the choice of scale hardly matters for a 128-band baseline.
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular mel filters as a float32 (n_fft // 2 + 1, n_mels) matrix (power spectrum -> mel energies).

    Each filter is normalised to unit area (Slaney style) so that wide high-frequency bands do not dominate.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower[None]) / (centre - lower)[None]
    falling = (upper[None] - freqs[:, None]) / (upper - centre)[None]
    fb = np.clip(np.minimum(rising, falling), 0.0, None)
    fb *= (2.0 / (upper - lower))[None]
    # With 1024-point FFTs the lowest bands can be narrower than one bin and catch none; give each such band
    # the bin nearest its centre so that no feature is constantly log(eps).
    empty = fb.sum(axis=0) == 0
    if empty.any():
        nearest = np.abs(freqs[:, None] - centre[None, empty]).argmin(axis=0)
        fb[nearest, np.flatnonzero(empty)] = 1.0
    return fb.astype(np.float32)


class RunningStandardize(nn.Module):
    """Per-channel standardisation with statistics accumulated over all training inputs (no parameters).

    Unlike batch normalisation, training and evaluation normalise alike (always with the accumulated
    statistics, updated first in training mode), so a probe trained for a few batches sees the same features
    at test time, and a batch of one frame works. Buffers: ``count`` (), ``mean`` (C,), ``m2`` (C,) (sum of
    squared deviations), combined across batches with Chan et al.'s parallel update, in float64.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(channels, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold ``x`` (..., C) into the statistics."""
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        n = flat.shape[0]
        if n == 0:
            return
        batch_mean = flat.mean(0)
        batch_m2 = ((flat - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta**2 * (self.count * n / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C) standardised; identity until statistics exist."""
        if self.training:
            self.update(x)
        if self.count <= 1:
            return x
        var = self.m2 / (self.count - 1)
        return (x - self.mean.to(x.dtype)) * torch.rsqrt(var + self.eps).to(x.dtype)


class LogMel(nn.Module):
    """Waveform (B, T) at 16 kHz -> log-mel features (B, F, n_mels) with F = T // hop."""

    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__()
        self.config = config or LogMelConfig()
        c = self.config
        f_max = c.f_max if c.f_max is not None else c.sample_rate / 2
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        self.register_buffer(
            "filterbank", torch.from_numpy(mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, f_max)),
            persistent=False,
        )
        # Running statistics only (affine=False): the front end stays parameter-free, as the baseline requires.
        self.norm = RunningStandardize(c.n_mels) if c.normalize else None

    @property
    def dim(self) -> int:
        return self.config.n_mels

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel (B, F, n_mels) of ``wave`` (B, T)."""
        c = self.config
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform batch (B, T), got shape {tuple(wave.shape)}")
        n_frames = wave.shape[-1] // c.hop
        if n_frames == 0:
            return wave.new_zeros(wave.shape[0], 0, c.n_mels)
        # Zero padding puts the centre of STFT frame f on sample hop * f + hop / 2 (the label frame's middle);
        # zeros rather than reflection so that any length, even shorter than n_fft, works.
        left = c.n_fft // 2 - c.hop // 2
        right = max(0, (n_frames - 1) * c.hop + c.n_fft - left - wave.shape[-1])
        padded = nn.functional.pad(wave.float(), (left, right))
        spec = torch.stft(padded, c.n_fft, hop_length=c.hop, window=self.window, center=False,
                          return_complex=True)[..., :n_frames]  # (B, n_fft // 2 + 1, F)
        power = spec.real.square() + spec.imag.square()
        mel = torch.einsum("bkf,km->bfm", power, self.filterbank)
        return torch.log(mel + c.eps)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T // hop, n_mels)."""
        feats = self.spectrogram(wave)
        return feats if self.norm is None else self.norm(feats)

    def extra_repr(self) -> str:
        c = self.config
        return f"n_fft={c.n_fft}, hop={c.hop}, n_mels={c.n_mels}, normalize={c.normalize}"


"""Per-recording audio effects of the synth corpus: shelving EQ and a short synthetic reverb.

Both keep the signal's length, so a recording stays sample-aligned with its labels: the reverb's tail past the
last sample is cut, and nothing is delayed (the dry path is untouched; the wet path starts after a short pre-delay).
Arrays are 1-D float64 mono at 44.1 kHz, shape ``(n_samples,)``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import signal  # a dependency of scikit-learn, so always installed with jtm

LOW_SHELF_HZ = 250.0
HIGH_SHELF_HZ = 3000.0
_PREDELAY_S = 0.012
_DAMPING = 0.6  # one-pole low-pass on the reverb's noise: real rooms absorb high frequencies faster


def shelf_sos(kind: str, freq: float, gain_db: float, rate: int) -> np.ndarray:
    """One second-order section ``(1, 6)`` of a low or high shelf with slope 1 (the audio-EQ-cookbook filters)."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * freq / rate
    cos_w, alpha = math.cos(w0), math.sin(w0) / math.sqrt(2)  # slope S = 1 gives Q = 1/sqrt(2)
    root = 2 * math.sqrt(a) * alpha
    sign = 1 if kind == "low" else -1
    b0 = a * ((a + 1) - sign * (a - 1) * cos_w + root)
    b1 = sign * 2 * a * ((a - 1) - sign * (a + 1) * cos_w)
    b2 = a * ((a + 1) - sign * (a - 1) * cos_w - root)
    a0 = (a + 1) + sign * (a - 1) * cos_w + root
    a1 = -sign * 2 * ((a - 1) + sign * (a + 1) * cos_w)
    a2 = (a + 1) + sign * (a - 1) * cos_w - root
    return np.array([[b0, b1, b2, a0, a1, a2]]) / a0


def equalise(audio: np.ndarray, low_db: float, high_db: float, rate: int) -> np.ndarray:
    """Low shelf at 250 Hz and high shelf at 3 kHz (a tilt when the gains have opposite signs); causal IIR."""
    sections = [shelf_sos(kind, freq, db, rate)
                for kind, freq, db in (("low", LOW_SHELF_HZ, low_db), ("high", HIGH_SHELF_HZ, high_db)) if db != 0]
    if not sections:
        return audio
    return signal.sosfilt(np.concatenate(sections), audio)


def reverb_ir(seconds: float, seed: int, rate: int) -> np.ndarray:
    """An impulse response ``(n,)`` of unit energy: exponentially decaying, slightly low-passed noise after a
    12 ms pre-delay, decaying by 60 dB over ``seconds`` (RT60) and cut there."""
    n = max(int(round(seconds * rate)), 1)
    rng = np.random.default_rng([seed, 0x2E7])
    noise = signal.lfilter([1 - _DAMPING], [1, -_DAMPING], rng.standard_normal(n))
    decay = 10 ** (-3 * np.arange(n) / n)  # -60 dB at the end
    ir = np.concatenate([np.zeros(int(round(_PREDELAY_S * rate))), noise * decay])
    return ir / np.sqrt(np.sum(ir ** 2))


def add_reverb(audio: np.ndarray, seconds: float, wet_db: float, seed: int, rate: int) -> np.ndarray:
    """The dry signal plus its convolution (by FFT) with :func:`reverb_ir`, ``wet_db`` below it; same length."""
    if seconds <= 0:
        return audio
    wet = signal.oaconvolve(audio, reverb_ir(seconds, seed, rate))[: len(audio)]
    return audio + 10 ** (wet_db / 20) * wet

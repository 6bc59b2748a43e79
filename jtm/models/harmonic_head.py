"""A pitch-equivariant note head on the constant-Q log spectrum, in the manner of basic-pitch (Bittner et al. 2022).

``HarmonicNoteHead.forward(x (B, T, 192)) -> NoteLogits(onset (B, T, P), frame (B, T, P))``, P = 128 pitches.

It reads the gabor encoder's log spectrum (``jtm.models.encoders.GaborFilterbank`` at its 192-filter start: 24
bins an octave, bin i at 440 * 2 ** ((i - 93) / 24) Hz), so a semitone is a shift of two bins. Why it transfers to
timbres the labels never covered where :class:`~jtm.models.note_head.NoteHead` does not: NoteHead's first layer
is a dense map from all 192 bins, so it learns what each pitch sounds like in the training timbres, pitch by pitch.
Here every pitch shares the same weights:

1. **Harmonic stacking.** Channel h holds the spectrum shifted down by 24 log2(h) bins (h in :data:`HARMONICS`),
   so at bin i the channels read the energy at i's sub-octave and its first harmonics, side by side. Partials of
   one note line up in one column, whatever the instrument's balance between them.
2. **2-D convolutions over (time, log frequency)**, shared by all pitches: the first steps 2 bins from bin 1, so
   column j is MIDI pitch j + 23 (bins 1, 3, ..., 191 are pitches 23 to 118); then 3 x 3, then an octave wide
   (13 semitones) over frequency alone.
3. **Onset and frame branches** of 1-D convolutions over time, per column; the frame branch also reads the onset
   probabilities (detached, as in Onsets and Frames and :class:`NoteHead`). Each pitch gets a learned bias;
   pitches outside 23-118, which the spectrum does not cover, get their bias alone.

A shift of the input by 2 bins shifts the logits by one pitch (exactly, up to the edges and the per-pitch bias):
what the head learns for one pitch, it knows for every pitch (``tests/test_harmonic_head.py``).

Standardisation of the inputs (the study's per-bin statistics) is kept as two buffers applied first
(:meth:`fold_standardisation`): a per-bin scale does not fold into weights that every bin shares.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from jtm.configs import MAX_OUTPUTS
from jtm.models.encoders import GABOR_MIN_HZ
from jtm.models.note_head import NoteLogits, note_probabilities

HARMONICS = (0.5, 1, 2, 3, 4, 5, 6)
"""Harmonics stacked as channels (basic-pitch's set minus the 7th)."""
BINS_PER_OCTAVE = 24
SPECTRUM_BINS = 192
"""The spectrum the head reads: the gabor bank at its default 192-filter start (24 bins an octave)."""
A4_BIN = round(BINS_PER_OCTAVE * math.log2(440.0 / GABOR_MIN_HZ))  # 93
OUT_OF_RANGE_LOGIT = -8.0
"""Logit of a pitch the spectrum does not cover, before its bias (sigmoid 3e-4)."""
MAX_CHANNELS = 256


class HarmonicNoteHead(nn.Module):
    """Onset and frame logits from the constant-Q log spectrum, with weights shared across pitch (module docstring)."""

    def __init__(self, in_dim: int = SPECTRUM_BINS, n_pitches: int = 128, channels: int = 16,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if in_dim != SPECTRUM_BINS:
            raise ValueError(f"the harmonic note head reads the {SPECTRUM_BINS}-bin constant-Q spectrum (the gabor "
                             f"encoder's start, {BINS_PER_OCTAVE} bins an octave), got {in_dim} features")
        if not 1 <= n_pitches <= MAX_OUTPUTS or not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"n_pitches must be in [1, {MAX_OUTPUTS}] and channels in [1, {MAX_CHANNELS}], "
                             f"got {n_pitches}, {channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config = {"kind": "harmonic", "in_dim": int(in_dim), "n_pitches": int(n_pitches),
                       "channels": int(channels), "dropout": float(dropout)}
        self.shifts = [round(BINS_PER_OCTAVE * math.log2(h)) for h in HARMONICS]
        c, mid = channels, max(1, channels // 2)
        self.trunk = nn.Sequential(
            nn.Conv2d(len(HARMONICS), c, (3, 3), stride=(1, 2), padding=(1, 0)), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, (3, 3), padding=(1, 1)), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, mid, (1, 13), padding=(0, 6)), nn.BatchNorm2d(mid), nn.ReLU(), nn.Dropout(dropout),
        )
        self.onset = nn.Sequential(nn.Conv2d(mid, mid, (5, 1), padding=(2, 0)), nn.ReLU(),
                                   nn.Conv2d(mid, 1, (5, 1), padding=(2, 0)))
        self.frame = nn.Sequential(nn.Conv2d(mid + 1, mid, (5, 1), padding=(2, 0)), nn.ReLU(),
                                   nn.Conv2d(mid, 1, (5, 1), padding=(2, 0)))
        self.onset_bias = nn.Parameter(torch.zeros(n_pitches))
        self.frame_bias = nn.Parameter(torch.zeros(n_pitches))
        # Column j of the trunk is centred on bin 2 j + 1: pitch m (bin 2 m - 45) is column m - 23.
        self.n_columns = (in_dim + 1 - 3) // 2 + 1  # one zero bin above the top makes bin 191 a centre
        column = torch.arange(n_pitches) - (69 - (A4_BIN - 1) // 2)
        self.register_buffer("covered", (column >= 0) & (column < self.n_columns), persistent=False)
        self.register_buffer("column", column.clamp(0, self.n_columns - 1), persistent=False)
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))

    @property
    def receptive_field(self) -> int:
        """Frames each output sees on each side: 2 in the trunk, 4 in the onset branch, 4 more in the frame
        branch (which reads the onset probabilities)."""
        return 10

    def stack(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> (B, len(HARMONICS), T, D): channel h at bin i holds x at bin i + 24 log2 h (zero
        beyond the spectrum)."""
        b, t, d = x.shape
        out = x.new_zeros(b, len(self.shifts), t, d)
        for h, s in enumerate(self.shifts):
            if s >= 0:
                out[:, h, :, :d - s] = x[:, :, s:]
            else:
                out[:, h, :, -s:] = x[:, :, :d + s]
        return out

    def _per_pitch(self, maps: Tensor, bias: Tensor) -> Tensor:
        """(B, 1, T, columns) -> (B, T, n_pitches)."""
        logits = maps[:, 0][..., self.column]
        return torch.where(self.covered, logits, torch.full_like(logits, OUT_OF_RANGE_LOGIT)) + bias

    def forward(self, x: Tensor) -> NoteLogits:
        """x (B, T, 192) raw or standardised log spectrum -> NoteLogits(onset, frame), each (B, T, n_pitches)."""
        if x.dim() != 3 or x.shape[-1] != self.config["in_dim"]:
            raise ValueError(f"expected features (B, T, {self.config['in_dim']}), got shape {tuple(x.shape)}")
        x = (x - self.input_mean) / self.input_std
        # Time is zero-padded by the convolutions; frequency by one bin on top for the last centre (bin 191).
        h = self.trunk(F.pad(self.stack(x), (0, 1)))                      # (B, mid, T, columns)
        onset = self.onset(h)
        frame = self.frame(torch.cat([h, torch.sigmoid(onset).detach()], dim=1))
        return NoteLogits(self._per_pitch(onset, self.onset_bias), self._per_pitch(frame, self.frame_bias))

    probabilities = note_probabilities

    @torch.no_grad()
    def fold_standardisation(self, mean: Tensor, std: Tensor) -> "HarmonicNoteHead":
        """A copy that takes raw features: it standardises them as ``(x - mean) / std`` (each (in_dim,)) itself."""
        folded = HarmonicNoteHead(**self.options)
        folded.load_state_dict(self.state_dict())
        folded.input_mean.copy_(self.input_mean * std.to(self.input_std) + mean.to(self.input_mean))
        folded.input_std.copy_(self.input_std * std.to(self.input_std))
        return folded.eval()

    @property
    def options(self) -> dict[str, Any]:
        """The constructor's arguments (``config`` without ``kind``)."""
        return {k: v for k, v in self.config.items() if k != "kind"}

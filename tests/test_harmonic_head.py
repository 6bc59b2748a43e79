"""The pitch-equivariant note head: a semitone shift of the spectrum is a one-pitch shift of the notes, and it
works inside a note transcriber (folded standardisation, streaming, files)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jtm.models.harmonic_head import SPECTRUM_BINS, HarmonicNoteHead


def _trained_looking_head() -> HarmonicNoteHead:
    """A head in eval mode whose batch-norm statistics and biases are not the identity, as after training."""
    torch.manual_seed(0)
    head = HarmonicNoteHead()
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return head.eval()


def test_a_semitone_shift_of_the_spectrum_shifts_the_notes_by_one_pitch() -> None:
    # What lets the head transcribe a pitch (or a timbre's harmonic balance) it rarely saw: its weights are shared
    # across pitch. Two bins are a semitone; columns within 7 of the spectrum's edges see the zero padding.
    head = _trained_looking_head()
    x = torch.zeros(2, 30, SPECTRUM_BINS)
    x[..., 60:110] = torch.randn(2, 30, 50)
    shifted = torch.zeros_like(x)
    shifted[..., 2:] = x[..., :-2]
    with torch.no_grad():
        out, out_shifted = head(x), head(shifted)
    for name in ("onset", "frame"):
        a, b = getattr(out, name), getattr(out_shifted, name)
        torch.testing.assert_close(b[..., 32:110], a[..., 31:109], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(a[..., 32:110], a[..., 31:109], atol=1e-2)  # the notes did move


def test_each_pitch_reads_the_column_centred_on_its_own_frequency() -> None:
    from jtm.models.encoders import gabor_centres

    head = HarmonicNoteHead()
    centres = gabor_centres(SPECTRUM_BINS).double()
    pitches = torch.nonzero(head.covered).flatten()
    assert pitches.tolist() == list(range(23, 119))  # 30 Hz to 7.5 kHz
    centre_bins = 2 * head.column[pitches] + 1  # the first convolution steps 2 bins from bin 1
    midi = 69 + 12 * torch.log2(centres[centre_bins] / 440.0)
    torch.testing.assert_close(midi, pitches.double(), rtol=0, atol=1e-3)


def test_pitches_the_spectrum_does_not_cover_stay_silent_and_shapes_are_kept() -> None:
    head = _trained_looking_head()
    onset, frame = head.probabilities(torch.randn(3, 17, SPECTRUM_BINS))
    assert onset.shape == frame.shape == (3, 17, 128)
    assert float(frame[..., :23].max()) < 1e-3 and float(frame[..., 119:].max()) < 1e-3  # below MIDI 23, above 118
    with pytest.raises(ValueError, match="192-bin constant-Q"):
        HarmonicNoteHead(in_dim=48)


def test_folding_the_standardisation_keeps_the_outputs() -> None:
    head = _trained_looking_head()
    mean, std = torch.randn(SPECTRUM_BINS), torch.rand(SPECTRUM_BINS) + 0.5
    raw = torch.randn(1, 12, SPECTRUM_BINS) * 3 + 1
    folded = head.fold_standardisation(mean, std)
    twice = folded.fold_standardisation(mean, std)  # folding composes with a fold already made
    torch.testing.assert_close(folded(raw).frame, head((raw - mean) / std).frame, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(twice(raw).frame, head(((raw - mean) / std - mean) / std).frame, rtol=1e-4, atol=1e-4)


def _transcriber():
    from jtm.models.config import CPCConfig
    from jtm.models.cpc import CPCEncoder
    from jtm.models.note_transcriber import NoteThresholds, NoteTranscriber

    torch.manual_seed(0)
    front = CPCEncoder(CPCConfig(encoder="gabor", gabor_filters=SPECTRUM_BINS, gabor_kernel=1025, encoder_dim=8,
                                 context_dim=8))
    head = _trained_looking_head().fold_standardisation(torch.full((SPECTRUM_BINS,), 0.5),
                                                        torch.full((SPECTRUM_BINS,), 2.0))
    return NoteTranscriber(front, head, "spectrum", NoteThresholds(onset=0.4, sustain=0.3, frame=0.45)).eval()


def test_a_harmonic_transcriber_streams_as_one_pass_and_round_trips(tmp_path) -> None:
    from jtm.models.inference import Chunking
    from jtm.models.note_transcriber import NoteTranscriber

    model = _transcriber()
    audio = (np.random.default_rng(1).standard_normal(160 * 301 + 7) * 0.3).astype(np.float32)
    onset, frame = model.probabilities(torch.from_numpy(audio)[None])
    margin = model.feature_functions()[2]
    for core in (23, 400):
        parts = list(model.stream(audio, Chunking(core=core, left=margin, right=margin, batch_size=2, pad_end=False)))
        np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), onset[0].numpy(), atol=2e-5)
        np.testing.assert_allclose(np.concatenate([p[2] for p in parts]), frame[0].numpy(), atol=2e-5)

    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert config["head"] == {"kind": "harmonic", "in_dim": 192, "n_pitches": 128, "channels": 16, "dropout": 0.1}
    loaded = NoteTranscriber.from_pretrained(tmp_path / "m")
    assert isinstance(loaded.head, HarmonicNoteHead)
    wave = torch.from_numpy(audio[: 160 * 60])[None]
    for a, b in zip(loaded.probabilities(wave), model.probabilities(wave)):
        torch.testing.assert_close(a, b)

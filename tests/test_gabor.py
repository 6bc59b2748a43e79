"""The Gabor front end: frame grid, pitch resolution at initialisation, learnable filters, files, embed margin."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jtm.models import CPCConfig, CPCEncoder
from jtm.models.cpc import embed_margin_frames
from jtm.models.encoders import (DOWNSAMPLING, GABOR_MAX_HZ, GABOR_MIN_HZ, GaborEncoder, GaborFilterbank,
                                 gabor_centres, receptive_field)

SMALL = dict(encoder="gabor", encoder_dim=16, context_dim=24, heads=4)


def sine(freq: float, seconds: float = 1.0, sample_rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * torch.sin(2 * math.pi * freq * t)).unsqueeze(0)  # (1, T)


@pytest.mark.parametrize("length", [160, 161, 2049, 4800, 20480, 20480 + 159])
def test_output_is_one_frame_per_160_samples(length):
    encoder = GaborEncoder(dim=16, n_filters=48, kernel=1025)
    out = encoder(torch.randn(3, length))
    assert out.shape == (3, length // DOWNSAMPLING, 16) and torch.isfinite(out).all()


def test_default_grid_is_24_per_octave_on_equal_temperament():
    centres = gabor_centres(192).double()
    assert centres[0].item() == pytest.approx(GABOR_MIN_HZ) and 29.9 < GABOR_MIN_HZ < 30.1
    assert centres[-1].item() == pytest.approx(GABOR_MAX_HZ, rel=1e-6) and 7400 < GABOR_MAX_HZ < 7600
    torch.testing.assert_close(torch.log2(centres[1:] / centres[:-1]), torch.full((191,), 1 / 24, dtype=torch.float64))
    semitones = 12 * torch.log2(centres / 440.0)
    torch.testing.assert_close(semitones * 2, (semitones * 2).round(), atol=1e-4, rtol=0)  # on the quarter-tone grid


@pytest.mark.parametrize("freq", [110.0, 116.54, 440.0, 1760.0, 1864.66])
def test_a_sine_peaks_in_the_filter_nearest_its_frequency(freq):
    bank = GaborFilterbank()  # default: 192 filters, kernel 2049
    with torch.no_grad():
        magnitude = bank(sine(freq))[0, 20:-20].mean(dim=0)  # (n_filters,), frames clear of the zero padding
    nearest = (bank.centres_hz() - freq).abs().argmin().item()
    assert magnitude.argmax().item() == nearest
    assert magnitude.max().item() == pytest.approx(0.25, rel=1e-3)  # unit gain at the centre: amplitude / 2


@pytest.mark.parametrize("low", [110.0, 1760.0])
def test_a_semitone_apart_peaks_in_different_filters(low):
    bank = GaborFilterbank()
    high = low * 2 ** (1 / 12)
    with torch.no_grad():
        peaks = [bank(sine(f))[0, 20:-20].mean(dim=0).argmax().item() for f in (low, high)]
    assert peaks[1] - peaks[0] == 2  # two filters per semitone


def test_frame_f_is_centred_on_sample_160_f_plus_80():
    bank = GaborFilterbank(n_filters=24, kernel=1025)
    wave = torch.zeros(1, 160 * 30)
    wave[0, 160 * 12 + 80] = 1.0
    with torch.no_grad():
        magnitude = bank(wave)[0]  # (F, n_filters)
    assert (magnitude.argmax(dim=0) == 12).all()
    torch.testing.assert_close(magnitude[11], magnitude[13])  # symmetric about the impulse


def test_constant_q_bandwidth_capped_by_the_kernel():
    bank = GaborFilterbank(kernel=2049)
    sigma = bank.sigmas().detach()
    assert sigma.max().item() == pytest.approx(2048 / 6)       # low filters: the window fills the kernel
    assert (sigma[1:] <= sigma[:-1] + 1e-4).all()             # narrower windows as frequency rises
    high = bank.centres_hz().detach() > 1000
    torch.testing.assert_close(sigma[high] * bank.centres_hz().detach()[high],
                               torch.full((int(high.sum()),), 16000 / (2 * math.pi * 0.012443)), rtol=1e-3, atol=0)


def test_gradients_reach_centres_bandwidths_and_gains():
    config = CPCConfig(**SMALL)
    model = CPCEncoder(config)
    z, c = model(torch.randn(2, 160 * 40))
    (z.square().mean() + c.square().mean()).backward()
    encoder = model.encoder
    for param in (encoder.filterbank.log_centre_hz, encoder.filterbank.log_sigma, encoder.log_gain):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_filters_stay_valid_when_parameters_leave_their_range():
    bank = GaborFilterbank(n_filters=8, kernel=1025)
    with torch.no_grad():
        bank.log_centre_hz[0] = math.log(1.0)       # below 10 Hz
        bank.log_centre_hz[1] = math.log(50_000.0)  # above Nyquist
        bank.log_sigma[2] = math.log(1e5)           # wider than the kernel
        bank.log_sigma[3] = math.log(1e-3)          # narrower than a sample
    centres, sigmas = bank.centres_hz(), bank.sigmas()
    assert centres[0].item() == pytest.approx(10.0) and centres[1].item() == pytest.approx(8000.0)
    assert sigmas[2].item() == pytest.approx(1024 / 6) and sigmas[3].item() == pytest.approx(1.0)
    out = bank(torch.randn(1, 160 * 20))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert (bank.log_centre_hz.grad[:2] != 0).all() and (bank.log_sigma.grad[2:4] != 0).all()  # not frozen


def test_filterbank_is_float32_under_bf16_autocast():
    bank = GaborFilterbank(n_filters=24, kernel=1025)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bank(sine(440.0, 0.2))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, bank(sine(440.0, 0.2)))


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="odd"):
        GaborFilterbank(kernel=2048)
    with pytest.raises(ValueError, match="sample rate"):
        GaborFilterbank(sample_rate=8000)
    with pytest.raises(ValueError, match="multiple of 160"):
        GaborFilterbank()(torch.randn(1, 1000))
    with pytest.raises(ValueError, match="shorter than one frame"):
        GaborEncoder(dim=8, n_filters=8, kernel=1025)(torch.randn(1, 100))


def test_receptive_field_and_embed_margin():
    config = CPCConfig(**SMALL, gabor_kernel=2049)
    assert receptive_field(config) == 2049 + 320
    assert embed_margin_frames(config) == 16
    assert embed_margin_frames(CPCConfig(encoder="conv")) == 8  # unchanged for the short encoders
    # a frame depends on no sample further than the receptive field: change everything beyond it
    encoder = GaborEncoder(dim=8, n_filters=24, kernel=2049).eval()
    wave = torch.randn(1, 160 * 60)
    edited = wave.clone()
    centre = 160 * 30 + 80
    edited[0, : centre - 1184 - 1] = 0.0
    edited[0, centre + 1184 + 1 :] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(encoder(wave)[0, 30], encoder(edited)[0, 30])


def test_save_and_load_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(**SMALL, gabor_filters=64, gabor_kernel=1025)).eval()
    with torch.no_grad():
        model.encoder.filterbank.log_centre_hz.add_(0.01)  # trained-looking, not the initial bank
    model.save_pretrained(tmp_path / "enc")
    loaded = CPCEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config == model.config
    wave = torch.randn(2, 160 * 50)
    with torch.no_grad():
        for a, b in zip(model(wave), loaded(wave)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    audio = wave[0].numpy()
    np.testing.assert_array_equal(model.embed(audio, 16000), loaded.embed(audio, 16000))


def test_embed_in_chunks_equals_one_pass_with_a_long_kernel():
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(**SMALL, gabor_filters=48, gabor_kernel=4097))  # reaches 14 frames each way
    audio = torch.randn(16000 * 2 + 33).numpy()
    whole = model.embed(audio, 16000, layer="encoder")
    chunked = model.embed(audio, 16000, layer="encoder", chunk_seconds=0.2)
    assert whole.shape == (200, 16)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_fixed_filters_keep_their_constant_q_start_while_the_rest_trains(tmp_path: Path):
    """gabor_learnable=False: a CPC-style optimiser step moves the frame-rate layers but not the filters, and the
    setting survives save/load."""
    torch.manual_seed(0)
    encoder = CPCEncoder(CPCConfig(encoder="gabor", encoder_dim=16, context_dim=16, gabor_learnable=False))
    centres = encoder.encoder.filterbank.log_centre_hz.detach().clone()
    block = next(encoder.encoder.blocks.parameters()).detach().clone()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    z, c = encoder(torch.randn(2, 3200))
    (z.square().mean() + c.square().mean()).backward()
    optimizer.step()
    assert torch.equal(encoder.encoder.filterbank.log_centre_hz, centres)
    assert not torch.equal(next(encoder.encoder.blocks.parameters()).detach(), block)
    encoder.save_pretrained(tmp_path / "enc")
    loaded = CPCEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config.gabor_learnable is False
    assert not loaded.encoder.filterbank.log_centre_hz.requires_grad


def test_frontend_targets_are_the_standardised_filterbank_and_carry_no_gradient():
    """target='frontend': c is asked to predict the log filterbank frames, standardised per filter over the
    batch; the loss trains the model only through c (the targets are fixed), and the loss has the filters' width."""
    from jtm.models.cpc import CPCLoss

    torch.manual_seed(0)
    config = CPCConfig(encoder="gabor", encoder_dim=16, context_dim=16, gabor_filters=48, gabor_kernel=1025,
                       predict_steps=3, negatives=8, score="cosine", target="frontend")
    encoder, loss = CPCEncoder(config), CPCLoss(config)
    wave = torch.randn(2, 4800)
    targets, c = encoder.cpc_inputs(wave)
    assert targets.shape == (2, 30, 48) and c.shape == (2, 30, 16) and not targets.requires_grad
    torch.testing.assert_close(targets.mean(dim=(0, 1)), torch.zeros(48), atol=1e-5, rtol=0)
    spectrum = encoder.encoder.spectrum(wave).detach()
    torch.testing.assert_close(targets, (spectrum - spectrum.mean((0, 1))) / (spectrum.std((0, 1)) + 1e-5))
    assert loss.weight.shape == (3, 48, 16)
    loss(c, targets).loss.backward()
    assert encoder.context.parameters().__next__().grad is not None  # trained through c ...
    gains = encoder.encoder.log_gain.grad
    # ... and the filterbank gets gradient only through c's input path, never from the target side
    encoder.zero_grad()
    loss(c.detach(), targets).loss.backward()
    assert encoder.encoder.log_gain.grad is None and gains is not None
    # CPC's own target is z
    z_config = CPCConfig(encoder="gabor", encoder_dim=16, context_dim=16, gabor_filters=48, gabor_kernel=1025)
    z_model = CPCEncoder(z_config)
    torch.testing.assert_close(z_model.cpc_inputs(wave)[0], z_model(wave)[0])


def test_cqt_targets_are_the_untrained_gabor_spectrum_for_any_encoder(tmp_path):
    """target='cqt': a raw-waveform conv encoder is asked to predict the frames of a fixed constant-Q bank, the
    very spectrum an untrained gabor encoder computes; the bank gets no gradient and adds nothing to the file."""
    from jtm.models.cpc import CPCLoss

    torch.manual_seed(0)
    shared = dict(encoder_dim=16, context_dim=16, gabor_filters=48, gabor_kernel=1025, predict_steps=3,
                  negatives=8, score="cosine")
    model = CPCEncoder(CPCConfig(encoder="conv", target="cqt", **shared))
    gabor = CPCEncoder(CPCConfig(encoder="gabor", target="frontend", **shared))
    wave = torch.randn(2, 4800)
    targets, c = model.cpc_inputs(wave)
    assert targets.shape == (2, 30, 48) and c.shape == (2, 30, 16) and not targets.requires_grad
    torch.testing.assert_close(targets, gabor.cpc_inputs(wave)[0])
    torch.testing.assert_close(c, model(wave)[1])
    CPCLoss(model.config)(c, targets).loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())  # the conv stack learns through c
    assert not any(name.startswith("target_spectrum") for name in model.state_dict())
    model.save_pretrained(tmp_path / "enc")
    loaded = CPCEncoder.from_pretrained(tmp_path / "enc")
    torch.testing.assert_close(loaded.cpc_inputs(wave)[0], targets)


def test_frontend_target_needs_the_gabor_encoder():
    from jtm.configs import ConfigError

    with pytest.raises(ConfigError, match="target 'frontend' needs the gabor encoder"):
        CPCConfig(encoder="conv", target="frontend")

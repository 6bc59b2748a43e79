"""Model shapes, causality, reverse mode, encoder maths, embed, probes, config validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jtm.models import CPCConfig, CPCEncoder, build_probe
from jtm.models.encoders import DOWNSAMPLING, SincConv, strided_conv

SMALL = dict(encoder_dim=16, context_dim=24, heads=4)


@pytest.mark.parametrize("encoder", ["conv", "sinc", "gabor"])
@pytest.mark.parametrize("norm", ["layer", "instance", "batch", "none"])
@pytest.mark.parametrize("context", ["gru", "lstm", "rnn", "transformer"])
def test_shapes_every_combination(encoder, norm, context):
    model = CPCEncoder(CPCConfig(encoder=encoder, norm=norm, context=context, **SMALL))
    z, c = model(torch.randn(2, 20480))
    assert z.shape == (2, 128, 16) and c.shape == (2, 128, 24)
    assert torch.isfinite(z).all() and torch.isfinite(c).all()


@pytest.mark.parametrize("encoder", ["conv", "sinc", "gabor"])
@pytest.mark.parametrize("length", [160, 319, 1000, 4800, 20480 + 159])
def test_frames_are_length_div_160(encoder, length):
    model = CPCEncoder(CPCConfig(encoder=encoder, **SMALL))
    z, c = model(torch.randn(1, length))
    assert z.shape[1] == c.shape[1] == length // DOWNSAMPLING


def test_too_short_input_is_a_value_error():
    with pytest.raises(ValueError, match="shorter than one frame"):
        CPCEncoder(CPCConfig(**SMALL))(torch.randn(1, 100))


@pytest.mark.parametrize("kernel,stride,padding,channels", [(10, 5, 3, 1), (8, 4, 2, 6), (4, 2, 1, 6), (251, 5, 123, 1)])
def test_strided_conv_equals_conv1d(kernel, stride, padding, channels):
    x, w, b = torch.randn(2, 400, channels), torch.randn(7, channels, kernel), torch.randn(7)
    expected = F.conv1d(x.transpose(1, 2), w, b, stride, padding).transpose(1, 2)
    torch.testing.assert_close(strided_conv(x, w, b, stride, padding), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel,stride,padding,channels", [(4, 2, 1, 6), (8, 4, 2, 3), (10, 5, 3, 2), (3, 1, 1, 4)])
def test_strided_conv_gradients_equal_conv1d(kernel, stride, padding, channels):
    """The block formulation has its own backward (it writes the gradient of each kernel slot into one buffer):
    its gradients must be conv1d's, in float64 to tell a wrong row from rounding."""
    x = torch.randn(2, 97, channels, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, channels, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = strided_conv(x, w, b, stride, padding)
    ref = F.conv1d(x.transpose(1, 2), w, b, stride, padding).transpose(1, 2)
    grad = torch.randn_like(ref)
    for ours, theirs in zip(torch.autograd.grad(out, (x, w, b), grad), torch.autograd.grad(ref, (x, w, b), grad)):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


def test_sinc_filters_are_band_pass_and_learnable():
    sinc = SincConv(8, kernel=101, stride=5, sample_rate=16000)
    filters = sinc.filters()
    assert filters.shape == (8, 1, 101)
    response = torch.fft.rfft(filters[:, 0], n=1024).abs()
    assert (response[:, 0] < response.max(dim=1).values).all()  # DC is not the peak: band-pass
    filters.sum().backward()
    assert sinc.low_hz.grad is not None and sinc.band_hz.grad is not None


@pytest.mark.parametrize("context", ["gru", "transformer"])
def test_context_is_causal(context):
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(context=context, **SMALL)).eval()
    wave = torch.randn(1, 160 * 40)
    _, c1 = model(wave)
    wave2 = wave.clone()
    wave2[:, 160 * 30 :] = torch.randn(1, 160 * 10)
    _, c2 = model(wave2)
    # the encoder's receptive field reaches a few frames back, so compare well before the change
    torch.testing.assert_close(c1[:, :25], c2[:, :25])
    assert not torch.allclose(c1[:, 32:], c2[:, 32:])


@pytest.mark.parametrize("context", ["gru", "transformer"])
def test_reverse_mode_context_reads_the_future(context):
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(context=context, reverse=True, **SMALL)).eval()
    wave = torch.randn(1, 160 * 40)
    _, c1 = model(wave)
    wave2 = wave.clone()
    wave2[:, : 160 * 10] = torch.randn(1, 160 * 10)  # change the past
    _, c2 = model(wave2)
    torch.testing.assert_close(c1[:, 15:], c2[:, 15:])  # later contexts only see later frames
    assert not torch.allclose(c1[:, :8], c2[:, :8])


def test_embed_resamples_and_has_the_right_shape():
    model = CPCEncoder(CPCConfig(**SMALL))
    sr = 44100
    audio = np.random.default_rng(0).standard_normal(sr * 2).astype(np.float32)
    out = model.embed(audio, sr)
    assert out.dtype == np.float32 and out.shape == (len(audio) * 16000 // sr // 160, 24)
    stereo = np.stack([audio, audio])  # (C, T) is mixed down
    np.testing.assert_allclose(model.embed(stereo, sr, layer="encoder"), model.embed(audio, sr, layer="encoder"),
                               atol=1e-5)
    assert model.training  # embed restores the mode it found


@pytest.mark.parametrize("encoder", ["conv", "sinc", "gabor"])
def test_embed_chunked_equals_one_pass(encoder):
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(encoder=encoder, context="gru", **SMALL))
    audio = torch.randn(16000 * 3 + 77).numpy()
    for layer in ("encoder", "context"):
        whole = model.embed(audio, 16000, layer=layer, chunk_seconds=60)
        chunked = model.embed(audio, 16000, layer=layer, chunk_seconds=0.37)
        assert whole.shape == (300, 16 if layer == "encoder" else 24)
        np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_embed_chunked_reverse_gru_is_exact():
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(context="lstm", reverse=True, **SMALL))
    audio = torch.randn(16000 * 2).numpy()
    np.testing.assert_allclose(model.embed(audio, 16000, chunk_seconds=0.5), model.embed(audio, 16000), atol=1e-5)


def test_probes():
    x = torch.randn(3, 50, 16)
    assert build_probe("linear", 16, 5)(x).shape == (3, 50, 5)
    assert build_probe("mlp", 16, 5)(x).shape == (3, 50, 5)
    assert build_probe("linear", 16, 5, pool=True)(x).shape == (3, 5)
    assert build_probe("mlp", 16, 5, pool=True, hidden=8)(x).shape == (3, 5)
    with pytest.raises(ValueError):
        build_probe("svm", 16, 5)


def test_config_round_trip_and_validation():
    config = CPCConfig(encoder="sinc", context="transformer", reverse=True)
    assert CPCConfig.from_dict(config.to_dict()) == config
    config = CPCConfig(encoder="gabor", gabor_filters=96, gabor_kernel=1025, negatives_from="window")
    assert CPCConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown key .hidden. in CPCConfig"):
        CPCConfig.from_dict({**config.to_dict(), "hidden": 3})
    for bad in (dict(encoder="wav2vec"), dict(norm="group"), dict(context="mamba"), dict(encoder_dim=0),
                dict(dropout=1.5), dict(negatives=2.5), dict(reverse="yes"), dict(context="transformer", heads=7),
                dict(sinc_kernel=250), dict(negatives_from="track"), dict(gabor_kernel=2048),
                dict(gabor_kernel=513), dict(gabor_filters=1)):
        with pytest.raises(ValueError):
            CPCConfig(**bad)


@pytest.mark.parametrize("kind", [dict(context="gru"), dict(context="lstm", reverse=True),
                                  dict(context="transformer")])
def test_embed_both_is_z_and_c_from_one_pass(kind):
    """layer='both' (what the study's feature cache and note transcribers read) equals [z, c] of the two layers
    embedded apart, chunked or not; an unknown layer is refused by name."""
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(**{**SMALL, **kind}))
    audio = torch.randn(16000 * 2 + 55).numpy()
    for chunk in (60, 0.37):
        both = model.embed(audio, 16000, layer="both", chunk_seconds=chunk)
        apart = np.concatenate([model.embed(audio, 16000, layer=layer, chunk_seconds=chunk)
                                for layer in ("encoder", "context")], axis=1)
        np.testing.assert_array_equal(both, apart)
    with pytest.raises(ValueError, match="middle"):
        model.embed(audio, 16000, layer="middle")

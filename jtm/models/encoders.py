"""Waveform encoders: (B, T) samples -> (B, F, D) frames, F = T // 160 (100 frames/s at 16 kHz).

Layout. Everything here is channels-last, (batch, time, channels), and every strided convolution is
computed as one matrix product (:func:`strided_conv`). On CPU this beats ``nn.Conv1d``: oneDNN's
convolution *backward* was 2-3x slower than its forward for these shapes, while a (rows, C*k) @ (C*k, D)
GEMM runs near the machine's matmul peak in both directions. Channels-last also makes CPC_audio's
ChannelNorm (normalise each frame over its channels) a plain ``layer_norm`` over the contiguous last axis,
and the encoder output is already the (B, F, D) the context network wants, with no transposes.
The weights keep ``nn.Conv1d``'s (out, in, kernel) shape and meaning, so the maths is an ordinary conv.

Receptive fields at 16 kHz: 465 samples (29 ms) for 'conv', 706 for 'sinc'; too short to tell a semitone apart
below ~580 Hz. 'gabor' (:class:`GaborEncoder`) reads ``gabor_kernel`` samples (128 ms by default) per frame.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jtm.audio import HOP

DOWNSAMPLING = HOP
"""Samples per output frame, jtm's frame hop: the product of the conv stack's strides 5 * 4 * 2 * 2 * 2."""

# CPC_audio's encoder: (kernel, stride, padding) per layer; the paddings make T = 160 F give exactly F frames.
CONV_LAYERS = ((10, 5, 3), (8, 4, 2), (4, 2, 1), (4, 2, 1), (4, 2, 1))


def conv_output_length(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


def strided_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
    """``conv1d`` on channels-last input, as a matrix product.

    Args:
        x: (B, T, C) input.
        weight: (D, C, k), laid out as ``nn.Conv1d.weight``.
        bias: (D,) or None.
    Returns:
        (B, F, D) with F = (T + 2 padding - k) // stride + 1, equal to
        ``conv1d(x.transpose(1, 2), weight, bias, stride, padding).transpose(1, 2)``.
    """
    if x.dim() != 3:
        raise ValueError(f"strided_conv expects (B, T, C) input, got shape {tuple(x.shape)}")
    batch, length, channels = x.shape
    out_channels, in_channels, kernel = weight.shape
    if channels != in_channels:
        raise ValueError(f"input has {channels} channels, the weight expects {in_channels}")
    frames = conv_output_length(length, kernel, stride, padding)
    if frames < 1:
        raise ValueError(f"input of {length} samples is shorter than the kernel ({kernel}) allows")
    x = F.pad(x, (0, 0, padding, padding))
    if kernel % stride == 0 and channels > 1:
        # kernel = m * stride: output t reads the m consecutive blocks t .. t+m-1 of `stride` frames each.
        # One GEMM of the non-overlapping blocks against all m weight slices, then a shifted sum: no im2col
        # copy (which would be m times the input) and no overlapping-window scatter in backward.
        m = kernel // stride
        n_blocks = frames + m - 1
        blocks = x[:, : n_blocks * stride].reshape(batch, n_blocks, stride * channels)
        # weight[d, c, j * stride + i] -> w[j, d, i * C + c], matching the (time, channel) order of a block
        w = weight.view(out_channels, channels, m, stride).permute(2, 0, 3, 1).reshape(m * out_channels, -1)
        y = F.linear(blocks, w).view(batch, n_blocks, m, out_channels)
        out = _ShiftedSum.apply(y, frames)
        return out if bias is None else out + bias
    # General case (here: one input channel, where im2col is small): overlapping windows, then one GEMM.
    windows = x.unfold(1, kernel, stride)  # (B, F, C, k), a view
    return F.linear(windows.reshape(batch, frames, channels * kernel), weight.reshape(out_channels, -1), bias)


class _ShiftedSum(torch.autograd.Function):
    """``sum_j y[:, j : j + frames, j]`` of y (B, n_blocks, m, D) -> (B, frames, D), with a backward that writes
    each slot's gradient once into an uninitialised buffer and zeroes only the rows no output read. Autograd's
    own backward of the m slices zero-fills m buffers the size of y and adds them up: at the reference default
    config those fills were 4.5 % of the training step (torch.profiler)."""

    @staticmethod
    def forward(ctx, y: Tensor, frames: int) -> Tensor:
        ctx.shape = y.shape
        out = y[:, :frames, 0].clone()
        for j in range(1, y.shape[2]):
            out += y[:, j : j + frames, j]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        frames = grad.shape[1]
        grad_y = grad.new_empty(ctx.shape)
        for j in range(ctx.shape[2]):
            grad_y[:, j : j + frames, j] = grad
            grad_y[:, :j, j] = 0
            grad_y[:, j + frames :, j] = 0
        return grad_y, None


class StridedConv(nn.Module):
    """A ``Conv1d(in_channels, out_channels, kernel, stride, padding)`` for (B, T, C) input."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.stride, self.padding, self.kernel = stride, padding, kernel
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # nn.Conv1d's default initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(in_channels * kernel)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, F, out_channels)."""
        return strided_conv(x, self.weight, self.bias, self.stride, self.padding)


def _mel(hz: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class SincConv(nn.Module):
    """SincNet's first layer (Ravanelli & Bengio 2018): learnable band-pass filters.

    Each filter is the difference of two windowed low-pass sinc filters, parameterised only by its low
    cutoff and bandwidth (2 numbers instead of ``kernel`` taps). Cutoffs start mel-spaced; the filters are
    rebuilt from the parameters on every forward so gradients reach the cutoffs.
    Input (B, T, 1) -> output (B, T // stride, out_channels) (with T a multiple of ``stride``).
    """

    def __init__(self, out_channels: int, kernel: int = 251, stride: int = 5, sample_rate: int = 16000,
                 min_low_hz: float = 50.0, min_band_hz: float = 50.0) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"SincConv kernel must be odd, got {kernel}")
        self.kernel, self.stride = kernel, stride
        # 'same'-style padding: output t is centred on input sample stride * t + stride / 2
        self.padding = (kernel - stride) // 2
        self.sample_rate, self.min_low_hz, self.min_band_hz = float(sample_rate), min_low_hz, min_band_hz
        nyquist = sample_rate / 2
        edges = _hz(torch.linspace(_mel(torch.tensor(30.0)).item(),
                                   _mel(torch.tensor(nyquist - (min_low_hz + min_band_hz))).item(),
                                   out_channels + 1))
        self.low_hz = nn.Parameter(edges[:-1].clone().unsqueeze(1))        # (D, 1)
        self.band_hz = nn.Parameter(torch.diff(edges).unsqueeze(1))        # (D, 1)
        # tap times in seconds, centred on 0, and the Hamming window: fixed, so buffers
        self.register_buffer("t", ((torch.arange(kernel) - (kernel - 1) / 2) / sample_rate).unsqueeze(0),
                             persistent=False)
        self.register_buffer("window", torch.hamming_window(kernel, periodic=False).unsqueeze(0), persistent=False)

    def filters(self) -> Tensor:
        """The current filter bank, (out_channels, 1, kernel), each with unit gain at its centre tap."""
        low = self.min_low_hz + self.low_hz.abs()
        high = torch.clamp(low + self.min_band_hz + self.band_hz.abs(), max=self.sample_rate / 2)
        band = high - low
        # ideal band-pass = low-pass(high) - low-pass(low); 2 f sinc(2 f t) is the low-pass impulse response
        h = 2 * high * torch.sinc(2 * high * self.t) - 2 * low * torch.sinc(2 * low * self.t)
        return (h * self.window / (2 * band)).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, 1) -> (B, F, out_channels)."""
        return strided_conv(x, self.filters(), None, self.stride, self.padding)


class ChannelNorm(nn.LayerNorm):
    """CPC_audio's ChannelNorm: each frame normalised over its channels, with a per-channel affine.

    On (B, F, D) channels-last frames this is exactly LayerNorm over D (biased variance, eps 1e-5).
    """


class TimeNorm(nn.Module):
    """Instance or batch norm of (B, F, D) frames: statistics per channel over time (and batch)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def build_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer":
        return ChannelNorm(dim)
    if kind == "instance":
        return TimeNorm(nn.InstanceNorm1d(dim, affine=True))
    if kind == "batch":
        return TimeNorm(nn.BatchNorm1d(dim))
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: expected 'layer', 'instance', 'batch' or 'none'")


class ConvBlock(nn.Module):
    """conv -> norm -> ReLU on (B, T, C) frames."""

    def __init__(self, conv: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm = conv, norm

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class ConvEncoder(nn.Module):
    """A stack of strided :class:`ConvBlock` s with a total stride of :data:`DOWNSAMPLING`.

    Input (B, T) float waveform -> output (B, F, D), F = T // 160. Samples past the last whole frame are
    dropped first, so frame f always covers samples [160 f, 160 (f + 1)) as the frame labels assume.
    """

    def __init__(self, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.blocks = blocks
        self.dim = _out_channels(blocks[-1].conv)

    def forward(self, wave: Tensor) -> Tensor:
        """(B, T) -> (B, T // 160, D)."""
        x = _whole_frames(wave)[..., None]
        for block in self.blocks:
            x = block(x)
        return x


def _whole_frames(wave: Tensor) -> Tensor:
    """(B, T) -> (B, 160 F), F = T // 160: samples past the last whole frame dropped; checks the shape."""
    if wave.dim() != 2:
        raise ValueError(f"encoder expects a (batch, samples) waveform, got shape {tuple(wave.shape)}")
    frames = wave.shape[1] // DOWNSAMPLING
    if frames < 1:
        raise ValueError(f"waveform of {wave.shape[1]} samples is shorter than one frame ({DOWNSAMPLING})")
    return wave[:, : frames * DOWNSAMPLING]


class SincEncoder(ConvEncoder):
    """:class:`ConvEncoder` whose first block is a :class:`SincConv` (stride 5) instead of a free conv."""


def _out_channels(conv: nn.Module) -> int:
    return conv.weight.shape[0] if hasattr(conv, "weight") else conv.low_hz.shape[0]


def _conv_blocks(dim: int, norm: str, first: nn.Module) -> nn.ModuleList:
    blocks = [ConvBlock(first, build_norm(norm, dim))]
    for kernel, stride, padding in CONV_LAYERS[1:]:
        blocks.append(ConvBlock(StridedConv(dim, dim, kernel, stride, padding), build_norm(norm, dim)))
    return nn.ModuleList(blocks)


def conv_encoder(dim: int = 256, norm: str = "layer") -> ConvEncoder:
    kernel, stride, padding = CONV_LAYERS[0]
    return ConvEncoder(_conv_blocks(dim, norm, StridedConv(1, dim, kernel, stride, padding)))


def sinc_encoder(dim: int = 256, norm: str = "layer", kernel: int = 251, sample_rate: int = 16000) -> SincEncoder:
    return SincEncoder(_conv_blocks(dim, norm, SincConv(dim, kernel, CONV_LAYERS[0][1], sample_rate)))


# ------------------------------------------------------------------ Gabor front end
# Centre frequencies 440 * 2 ** (m / 24) for m = -93 .. 98: at the default 192 filters exactly 24 per octave,
# so every equal-tempered semitone (A4 = 440 Hz) is a filter centre, with a quarter-tone filter between two.
GABOR_MIN_HZ = 440.0 * 2.0 ** (-93 / 24)  # 30.0 Hz, just above A0 (27.5 Hz)
GABOR_MAX_HZ = 440.0 * 2.0 ** (98 / 24)   # 7459 Hz, below the 8 kHz Nyquist frequency
GABOR_GAIN = 1000.0
"""Initial gain before ``log1p``: magnitudes above ~1e-3 (-60 dB full scale) are compressed logarithmically."""


def gabor_centres(n_filters: int) -> Tensor:
    """(n_filters,) float32 centre frequencies in Hz, log-spaced from GABOR_MIN_HZ to GABOR_MAX_HZ."""
    if n_filters < 2:
        raise ValueError(f"need at least 2 Gabor filters, got {n_filters}")
    ratio = GABOR_MAX_HZ / GABOR_MIN_HZ
    return (GABOR_MIN_HZ * ratio ** torch.linspace(0.0, 1.0, n_filters, dtype=torch.float64)).float()


def _clamp_straight_through(x: Tensor, low: float, high: float) -> Tensor:
    # The value is always in range; the gradient passes the clamp unchanged, so a parameter that wandered
    # past a bound is not frozen there (a plain clamp has zero gradient outside its range).
    return x.clamp(low, high).detach() + (x - x.detach())  # x - x.detach() is exactly 0: no rounding


class GaborFilterbank(nn.Module):
    """Learnable complex Gabor filterbank (in the spirit of LEAF, Zeghidour et al. 2021), applied at hop ``stride``.

    Filter i is a Gaussian window of width sigma_i samples times exp(2 pi j f_i t / sample_rate), over
    ``kernel`` taps centred on t = 0, normalised so a complex exponential at f_i has magnitude 1 (a real sine
    of amplitude A: A / 2). Initialisation is a fixed constant-Q bank (see :func:`gabor_centres`): each
    filter's half-power bandwidth equals the spacing to its neighbour (f_i * (2 ** (1 / per_octave) - 1)),
    except that sigma is capped at (kernel - 1) / 6 so the window fits in the kernel. At kernel 2049 the cap
    applies below ~600 Hz, where the bandwidth is then 17.6 Hz: a semitone is resolved from ~300 Hz up, and
    lower notes still peak in their own filter. Learnable: log centre frequency and log sigma, clamped into
    [10 Hz, Nyquist] and [1, (kernel - 1) / 6] samples so the filters stay valid.

    Input (B, 160 F) -> magnitudes (B, F, n_filters); frame f is centred on sample ``stride * f + stride // 2``.
    """

    def __init__(self, n_filters: int = 192, kernel: int = 2049, stride: int = DOWNSAMPLING,
                 sample_rate: int = 16000, eps: float = 1e-8) -> None:
        super().__init__()
        if kernel % 2 == 0 or kernel < stride:
            raise ValueError(f"Gabor kernel must be odd and at least the stride ({stride}), got {kernel}")
        if GABOR_MAX_HZ >= sample_rate / 2:
            raise ValueError(f"the Gabor filterbank reaches {GABOR_MAX_HZ:.0f} Hz: needs a sample rate above "
                             f"{2 * GABOR_MAX_HZ:.0f} Hz, got {sample_rate}")
        self.n_filters, self.kernel, self.stride, self.eps = n_filters, kernel, stride, eps
        self.sample_rate = float(sample_rate)
        self.min_hz, self.max_hz = 10.0, sample_rate / 2
        self.min_sigma, self.max_sigma = 1.0, (kernel - 1) / 6
        centres = gabor_centres(n_filters).double()
        per_octave = (n_filters - 1) / math.log2(GABOR_MAX_HZ / GABOR_MIN_HZ)
        half_power_hz = centres * (2.0 ** (1.0 / per_octave) - 1.0)
        sigma_hz = half_power_hz / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # Gaussian: FWHM = 2.355 sigma
        sigma = (sample_rate / (2.0 * math.pi * sigma_hz)).clamp(self.min_sigma, self.max_sigma)  # in samples
        self.log_centre_hz = nn.Parameter(centres.log().float())  # (n,)
        self.log_sigma = nn.Parameter(sigma.log().float())        # (n,)
        self.register_buffer("t", torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2, persistent=False)

    def centres_hz(self) -> Tensor:
        """(n_filters,) current centre frequencies in Hz."""
        return _clamp_straight_through(self.log_centre_hz.exp(), self.min_hz, self.max_hz)

    def sigmas(self) -> Tensor:
        """(n_filters,) current Gaussian widths in samples."""
        return _clamp_straight_through(self.log_sigma.exp(), self.min_sigma, self.max_sigma)

    def filters(self) -> Tensor:
        """(2 n_filters, 1, kernel): real parts of all filters, then imaginary parts (``nn.Conv1d`` layout)."""
        window = torch.exp(-0.5 * (self.t / self.sigmas()[:, None]) ** 2)  # (n, k)
        window = window / window.sum(dim=1, keepdim=True)
        phase = (2.0 * math.pi / self.sample_rate) * self.centres_hz()[:, None] * self.t
        return torch.cat([window * torch.cos(phase), window * torch.sin(phase)], dim=0).unsqueeze(1)

    def forward(self, wave: Tensor) -> Tensor:
        """(B, T) with T a multiple of ``stride`` -> |filter output| (B, T // stride, n_filters), float32."""
        if wave.dim() != 2 or wave.shape[1] % self.stride != 0 or wave.shape[1] == 0:
            raise ValueError(f"GaborFilterbank expects (B, T) with T a positive multiple of {self.stride}, "
                             f"got shape {tuple(wave.shape)}")
        return filter_magnitudes(wave, self.filters(), self.stride, self.eps)


def filter_magnitudes(wave: Tensor, filters: Tensor, stride: int, eps: float = 1e-8) -> Tensor:
    """|complex filter output| of ``wave`` (B, T), T a multiple of ``stride``, at hop ``stride``: (B, T // stride, n).

    ``filters`` (2 n, 1, kernel), kernel odd: real parts, then imaginary parts (:meth:`GaborFilterbank.filters`).
    Frame f is centred on sample ``stride * f + stride // 2``."""
    kernel, n = filters.shape[-1], filters.shape[0] // 2
    # Asymmetric zero padding centres window f on sample stride * f + stride // 2 and gives exactly
    # T // stride frames (kernel - stride is odd, so symmetric padding would lose one).
    left = (kernel - 1) // 2 - stride // 2
    right = kernel - stride - left
    # float32 even under bf16 autocast: bf16's 8-bit mantissa would put a -48 dB floor under quiet bands
    # next to loud ones, and this GEMM is a small part of the step.
    with torch.autocast(device_type=wave.device.type, enabled=False):
        x = F.pad(wave.float(), (left, right)).unsqueeze(-1)                   # (B, T + kernel - stride, 1)
        y = strided_conv(x, filters.float(), None, stride, 0)                  # (B, F, 2 n)
        re, im = y[..., :n], y[..., n:]
        return torch.sqrt(re * re + im * im + eps)


class GaborEncoder(nn.Module):
    """:class:`GaborFilterbank` -> log1p(gain * magnitude) -> 3-tap conv -> pointwise conv, each + norm + ReLU.

    Input (B, T) float waveform -> output (B, F, D), F = T // 160 (as :class:`ConvEncoder`). The filterbank
    starts as a fixed log-spaced constant-Q bank and the gain at :data:`GABOR_GAIN` for every filter, so an
    untrained encoder is already a CQT-like spectrogram seen through a random projection: a meaningful
    baseline for pitch probes, unlike a random conv stack. The frame-rate layers see one frame on each side.
    """

    def __init__(self, dim: int = 256, norm: str = "layer", n_filters: int = 192, kernel: int = 2049,
                 sample_rate: int = 16000, learnable_filters: bool = True) -> None:
        super().__init__()
        self.filterbank = GaborFilterbank(n_filters, kernel, DOWNSAMPLING, sample_rate)
        # Fixed filters keep the semitone grid: learned ones drifted by up to a fifth in 510 CPC steps.
        self.filterbank.requires_grad_(learnable_filters)
        self.log_gain = nn.Parameter(torch.full((n_filters,), math.log(GABOR_GAIN)))
        self.blocks = nn.ModuleList([
            ConvBlock(StridedConv(n_filters, dim, 3, 1, 1), build_norm(norm, dim)),
            ConvBlock(StridedConv(dim, dim, 1, 1, 0), build_norm(norm, dim)),
        ])
        self.dim = dim

    def spectrum(self, wave: Tensor) -> Tensor:
        """(B, T) -> the log filterbank magnitudes (B, T // 160, n_filters) the frame-rate layers read."""
        return torch.log1p(self.log_gain.exp() * self.filterbank(_whole_frames(wave)))

    def layers(self, spectrum: Tensor) -> Tensor:
        """(B, F, n_filters) log filterbank magnitudes -> (B, F, D)."""
        x = spectrum
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, wave: Tensor) -> Tensor:
        """(B, T) -> (B, T // 160, D)."""
        return self.layers(self.spectrum(wave))


class ConstantQSpectrum(nn.Module):
    """The log magnitudes of a *fixed* constant-Q Gabor bank: what :class:`GaborEncoder` computes at its start
    (:class:`GaborFilterbank`'s initial filters, gain :data:`GABOR_GAIN`), for use as a target of any encoder.

    No parameters and no saved state: the filters are rebuilt from (n_filters, kernel, sample_rate), so a model
    file does not change by carrying one. Input (B, T) -> (B, T // 160, n_filters)."""

    def __init__(self, n_filters: int = 192, kernel: int = 2049, sample_rate: int = 16000) -> None:
        super().__init__()
        with torch.no_grad():
            filters = GaborFilterbank(n_filters, kernel, DOWNSAMPLING, sample_rate).filters()
        self.register_buffer("filters", filters, persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        """(B, T) -> (B, T // 160, n_filters) log1p(gain * magnitude)."""
        return torch.log1p(GABOR_GAIN * filter_magnitudes(_whole_frames(wave), self.filters, DOWNSAMPLING))


def build_encoder(config) -> nn.Module:
    """The encoder a :class:`~jtm.models.config.CPCConfig` describes: (B, T) -> (B, T // 160, encoder_dim)."""
    if config.encoder == "conv":
        return conv_encoder(config.encoder_dim, config.norm)
    if config.encoder == "sinc":
        return sinc_encoder(config.encoder_dim, config.norm, config.sinc_kernel, config.sample_rate)
    if config.encoder == "gabor":
        return GaborEncoder(config.encoder_dim, config.norm, config.gabor_filters, config.gabor_kernel,
                            config.sample_rate, config.gabor_learnable)
    raise ValueError(f"unknown encoder {config.encoder!r}: expected 'conv', 'sinc' or 'gabor'")


def receptive_field(config) -> int:
    """Samples of waveform one output frame of ``build_encoder(config)`` depends on, at most."""
    if config.encoder == "gabor":
        return config.gabor_kernel + 2 * DOWNSAMPLING  # the window, widened by the 3-tap frame-rate conv
    if config.encoder not in ("conv", "sinc"):
        raise ValueError(f"unknown encoder {config.encoder!r}: expected 'conv', 'sinc' or 'gabor'")
    field = config.sinc_kernel if config.encoder == "sinc" else CONV_LAYERS[0][0]
    jump = CONV_LAYERS[0][1]
    for kernel, stride, _ in CONV_LAYERS[1:]:
        field += (kernel - 1) * jump
        jump *= stride
    return field

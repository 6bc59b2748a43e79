"""The CPC model configuration: one flat dataclass, serialised as plain JSON next to the weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jtm.audio import SAMPLE_RATE
from jtm.configs import MAX_WIDTH, ConfigError, bounded, check_bounds, load_config

ENCODERS = ("conv", "sinc", "gabor")
NORMS = ("layer", "instance", "batch", "none")
CONTEXTS = ("gru", "lstm", "rnn", "transformer")
NEGATIVE_SOURCES = ("batch", "window")
SCORES = ("dot", "cosine")
TARGETS = ("z", "frontend", "cqt")
FEATURE_LAYERS = ("context", "encoder", "both", "spectrum")
"""What a probe or an embedding reads of a CPC model: c, z, [z, c] (encoder_dim + context_dim wide), or the gabor
encoder's log filterbank magnitudes, the spectrum its frame-rate layers read (gabor_filters wide)."""
GABOR_MIN_KERNEL = 1025  # shortest Gabor window accepted (64 ms); the default 2049 resolves semitones from ~300 Hz


@dataclass
class CPCConfig:
    """Everything needed to rebuild a :class:`~jtm.models.cpc.CPCEncoder` and its :class:`CPCLoss`.

    Defaults follow CPC_audio (van den Oord et al. 2018 as re-implemented by Rivière et al. 2020),
    except the hidden size (256 instead of 512) so that the default runs comfortably on a laptop CPU.
    """

    encoder: str = "conv"                            # 'conv': 5 strided convs; 'sinc': SincNet band-pass first
                                                     # layer + 4 convs; 'gabor': learnable constant-Q complex
                                                     # Gabor filterbank at hop 160 + 2 layers
    encoder_dim: int = bounded(256, 1, MAX_WIDTH)    # channels of every encoder layer = dimension of z
    norm: str = "layer"                              # per-frame channel norm (CPC_audio's ChannelNorm), 'instance',
                                                     # 'batch', 'none'
    context: str = "gru"                             # autoregressive network: 'gru', 'lstm', 'rnn' or 'transformer'
    context_dim: int = bounded(256, 1, MAX_WIDTH)    # dimension of c
    context_layers: int = bounded(1, 1, 64)
    heads: int = bounded(8, 1, 256)                  # attention heads (transformer only)
    dropout: float = 0.0
    predict_steps: int = bounded(12, 1, 256)         # K: predict z[t+1] ... z[t+K] from c[t]
    negatives: int = bounded(128, 1, 16384)          # N negatives per position, shared by all K steps
    negatives_from: str = "batch"                    # 'batch': any of the B*F frames of the batch; 'window': the
                                                     # same window's F frames
    score: str = "dot"                               # 'dot': pred . z / D (CPC_audio); 'cosine': cos(pred, z) /
                                                     # temperature (wav2vec 2.0)
    temperature: float = 0.1                         # of the cosine score
    target: str = "z"                                # what InfoNCE asks c to predict: 'z' (CPC: the learned
                                                     # encoder output) or 'frontend' (the gabor encoder's log
                                                     # filterbank frames, standardised over the batch, fixed:
                                                     # no gradient flows into them) or 'cqt' (the same frames
                                                     # from a fixed constant-Q bank: any encoder, even 'conv')
    reverse: bool = False                            # CPC_audio's reverse mode: the context reads time backwards,
                                                     # predicts the past
    sample_rate: int = bounded(SAMPLE_RATE, 1000, 192000)  # the rate the encoder expects (hop 160: 100 frames/s)
    sinc_kernel: int = bounded(251, 1, 16001)        # SincNet filter length in samples (odd)
    gabor_filters: int = bounded(192, 2, 1024)       # Gabor filters, log-spaced over ~30 Hz - 7.5 kHz (192: 24 per
                                                     # octave)
    gabor_kernel: int = bounded(2049, GABOR_MIN_KERNEL, 16001)  # Gabor window in samples (odd; 2049 = 128 ms)
    gabor_learnable: bool = True                     # False: the filterbank's centres and widths stay at their
                                                     # constant-Q start

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"CPCConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CPCConfig.{name} must be a positive integer, got {value!r}")

        choice("encoder", ENCODERS)
        choice("norm", NORMS)
        choice("context", CONTEXTS)
        choice("negatives_from", NEGATIVE_SOURCES)
        choice("score", SCORES)
        choice("target", TARGETS)
        if self.target == "frontend" and self.encoder != "gabor":
            raise ConfigError(f"CPCConfig.target 'frontend' needs the gabor encoder (its filterbank frames are the "
                              f"targets), got encoder {self.encoder!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ConfigError(f"CPCConfig.temperature must be a positive number, got {self.temperature!r}")
        self.temperature = float(self.temperature)
        for name in ("encoder_dim", "context_dim", "context_layers", "heads", "predict_steps", "negatives",
                     "sample_rate", "sinc_kernel", "gabor_filters", "gabor_kernel"):
            positive_int(name)
        check_bounds(self)  # before any layer is built: a config.json claiming a width of 10^9 stops here
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"CPCConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if not isinstance(self.gabor_learnable, bool):
            raise ConfigError(f"CPCConfig.gabor_learnable must be a bool, got {self.gabor_learnable!r}")
        if not isinstance(self.reverse, bool):
            raise ConfigError(f"CPCConfig.reverse must be a bool, got {self.reverse!r}")
        if self.context == "transformer" and self.context_dim % self.heads != 0:
            raise ConfigError(f"CPCConfig.context_dim ({self.context_dim}) must be divisible by heads ({self.heads})")
        if self.sinc_kernel % 2 == 0:
            raise ConfigError(f"CPCConfig.sinc_kernel must be odd (a symmetric filter), got {self.sinc_kernel}")
        if self.gabor_kernel % 2 == 0 or self.gabor_kernel < GABOR_MIN_KERNEL:
            raise ConfigError(f"CPCConfig.gabor_kernel must be odd and at least {GABOR_MIN_KERNEL} samples, "
                             f"got {self.gabor_kernel}")

    def layer_dim(self, layer: str) -> int:
        """Width of the features ``layer`` (one of :data:`FEATURE_LAYERS`) of this model."""
        if layer not in FEATURE_LAYERS:
            raise ConfigError(f"a CPC layer is one of {', '.join(FEATURE_LAYERS)}, not {layer!r}")
        if layer == "spectrum" and self.encoder != "gabor":
            raise ConfigError(f"layer 'spectrum' needs the gabor encoder, this model's is {self.encoder!r}")
        return {"context": self.context_dim, "encoder": self.encoder_dim, "spectrum": self.gabor_filters,
                "both": self.encoder_dim + self.context_dim}[layer]

    @property
    def target_dim(self) -> int:
        """Width of the frames InfoNCE scores predictions against (see ``target``)."""
        return self.gabor_filters if self.target in ("frontend", "cqt") else self.encoder_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "config") -> "CPCConfig":
        """Build from a dict such as ``to_dict()`` wrote (strictly: see :func:`jtm.configs.load_config`); a key
        left out takes its default, so configs saved before a field existed still load."""
        return load_config(cls, data, str(source))

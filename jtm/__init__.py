"""Jaka to Melodia: contrastive predictive coding on raw music audio.

The public Python API::

    from jtm import CPCEncoder, load_audio

    enc = CPCEncoder.from_pretrained("runs/cpc")           # a pretraining RUN folder or its encoder/ folder
    wave, sr = load_audio("song.flac")                     # float32 mono (T,), resampled to 16 kHz
    feats = enc.embed(wave, sr)                            # (T // 160, context_dim): 100 frames per second
    enc.save_pretrained("my-encoder")                      # model.safetensors + config.json

``import jtm`` stays cheap: the names are resolved on first use (PEP 562), so torch is only imported when
``CPCEncoder`` (or another model name) is actually touched.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "CPCEncoder": "jtm.models.cpc",
    "CPCConfig": "jtm.models.config",
    "DownstreamModel": "jtm.models.downstream",
    "load_audio": "jtm.audio",
    "SAMPLE_RATE": "jtm.audio",
    "JTMError": "jtm.errors",
    "DataError": "jtm.errors",
    "ModelFileError": "jtm.errors",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed at run time
    from jtm.audio import SAMPLE_RATE, load_audio
    from jtm.errors import DataError, JTMError, ModelFileError
    from jtm.models.config import CPCConfig
    from jtm.models.cpc import CPCEncoder
    from jtm.models.downstream import DownstreamModel


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jtm' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""Pure torch models: encoders, context networks, the CPC loss, probes; safetensors save/load.

The names below resolve on first use (PEP 562), so importing ``jtm.models.config`` (``CPCConfig``, which the
command line reads its defaults from) does not import torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> module that defines it
_LAZY = {
    "CPCConfig": "jtm.models.config",
    "build_context": "jtm.models.context",
    "CPCEncoder": "jtm.models.cpc", "CPCLoss": "jtm.models.cpc", "CPCOutput": "jtm.models.cpc",
    "sample_negatives": "jtm.models.cpc",
    "DOWNSAMPLING": "jtm.models.encoders", "ConvEncoder": "jtm.models.encoders", "SincEncoder": "jtm.models.encoders",
    "build_encoder": "jtm.models.encoders",
    "LinearProbe": "jtm.models.probes", "MLPProbe": "jtm.models.probes", "build_probe": "jtm.models.probes",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jtm.models' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

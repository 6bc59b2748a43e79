"""What machine and software a result came from: versions, threads and CPU, for the report and the demo.

Package versions are read from installed metadata (``importlib.metadata``) rather than by importing the
packages, so describing the environment stays cheap; only the thread counts need torch itself.
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from jtm.hardware import cpu_has_bf16, cpu_model, usable_cpus

PACKAGES = ("jtm", "torch", "lightning", "numpy", "pandas", "soundfile", "soxr", "safetensors", "scikit-learn",
            "mir_eval", "pretty_midi", "matplotlib", "music21")
"""Distributions whose versions the report lists (the ones a result's numbers can depend on)."""


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_info(with_torch: bool = True) -> dict[str, object]:
    """Describe the running environment as a flat, JSON-serialisable dict.

    Keys: ``python``, ``platform``, ``cpu``, ``cpu_count`` (logical cores on the machine), ``usable_cpus``
    (cores this process may use), ``cpu_bf16`` (native bf16 dot products), one ``<package>`` key per entry of :data:`PACKAGES` (None when missing) and,
    with ``with_torch``, ``torch_threads`` / ``torch_interop_threads`` (what torch actually computes with) and
    the thread-limiting environment variables that were set (``OMP_NUM_THREADS``, ...) and ``MKL_CBWR``.
    """
    info: dict[str, object] = {
        "python": f"{sys.version.split()[0]} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_bf16": cpu_has_bf16(),
    }
    for name in PACKAGES:
        info[name] = package_version(name)
    if with_torch:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_CBWR"):
        if var in os.environ:
            info[var] = os.environ[var]
    return info

"""What this CPU is and can do: its name, the cores this process may use, and whether it computes in bf16.

The base layer: training, inference, the report and the benchmarks all ask here, so each question is answered
once. Nothing here imports torch.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of x86 CPUs with native bf16 dot products (AVX-512 BF16, or AMX tiles)."""


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """A human-readable CPU name: /proc/cpuinfo's ``model name`` on Linux, else platform's best guess."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> frozenset[str]:
    """The first core's feature flags from /proc/cpuinfo (empty off Linux)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether bf16 matmuls run natively here; elsewhere torch emulates them, slower than fp32."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def usable_cpus() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset restrict), >= 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


REPRODUCIBLE_MKL = "AUTO,STRICT"


def pin_mkl_rounding() -> str:
    """Make MKL's float results independent of memory alignment (``MKL_CBWR=AUTO,STRICT``) unless the user set
    ``MKL_CBWR``; returns the value in force.

    Why: without it, a matrix product's last bits depend on its inputs' alignment, which depends on what ran
    earlier in the process, so one study cell could choose another learning rate depending on the cells before
    it (seen in the demo: one ensemble cell moved by 0.09). It must run before torch's first MKL call; MKL reads
    the variable then, and torch does not call MKL on import. The study took 6 % longer with it.
    """
    return os.environ.setdefault("MKL_CBWR", REPRODUCIBLE_MKL)



CLI_OMP_WAIT_POLICY = "PASSIVE"


def passive_openmp_waits() -> str:
    """Make OpenMP threads sleep rather than spin between parallel regions (``OMP_WAIT_POLICY=PASSIVE``) unless the
    user set ``OMP_WAIT_POLICY``; returns the value in force. The CLI calls it before torch is first imported.

    Why: spinning threads burn their time slices when another process shares the cores, making small CPU ops many
    times slower. The price on a quiet machine: the demo model's GRU step takes 175 ms instead of 122-126 ms (README,
    performance); with one busy process on the other core, 225 ms instead of 332-379 ms.
    """
    return os.environ.setdefault("OMP_WAIT_POLICY", CLI_OMP_WAIT_POLICY)

"""What this CPU is and can do: its name, the cores this process may use, and whether it computes in bf16.

The base layer: training, inference, the report and the benchmarks all ask here, so each question is answered
once. Nothing here imports torch.
"""
from __future__ import annotations

import os
import platform
import time
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


QUIET_BUSY_CORES = 0.5
"""Below this many cores' worth of other work, :func:`choose_openmp_wait_policy` lets OpenMP threads spin."""


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(total, idle) jiffies summed over ``cpus`` from /proc/stat, or None where there is no /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    total = idle = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            idle += values[3] + values[4]
    return (total, idle) if total else None


def busy_cores(interval: float = 0.1) -> float | None:
    """How many of this process's cores other processes kept busy over the next ``interval`` seconds (this
    process sleeps meanwhile), from /proc/stat; None where that cannot be read."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    before = _cpu_times(cpus)
    time.sleep(interval)
    after = _cpu_times(cpus)
    if before is None or after is None or after[0] <= before[0]:
        return None
    total, idle = after[0] - before[0], after[1] - before[1]
    return len(cpus) * (total - idle) / total


def choose_openmp_wait_policy() -> str:
    """Set ``OMP_WAIT_POLICY`` for this process from the load on its cores, unless the user set it; returns the
    value in force. The CLI calls it before torch is first imported (libgomp reads the variable when it loads).

    Why: between parallel regions OpenMP threads either spin (ACTIVE) or sleep (PASSIVE). The demo's GRU step is
    many small operations: on a quiet machine spinning is a third faster (median step 122-126 ms against 175 ms),
    but when another process shares the cores spinning threads burn its time slices and the step is a third
    slower (332-379 ms against 225 ms; README, performance). So: ACTIVE when less than :data:`QUIET_BUSY_CORES`
    of this process's cores are busy with other work at start, PASSIVE otherwise, or where load cannot be read.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        busy = busy_cores()
        os.environ["OMP_WAIT_POLICY"] = "ACTIVE" if busy is not None and busy < QUIET_BUSY_CORES else "PASSIVE"
    return os.environ["OMP_WAIT_POLICY"]

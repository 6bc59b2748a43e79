"""Keep freed memory inside the process, so a training step does not page-fault its activations back in.

glibc's malloc serves requests above its mmap threshold (128 kB, rising to at most 32 MB) with fresh ``mmap``
pages and unmaps them on ``free``. A CPC step allocates and frees hundreds of MB of activations, so every step
paid the kernel to zero those pages again: jemalloc, which keeps freed pages, made the reference step 1.2-1.7x
faster (benchmarks/allocator.py). ``retain_freed_memory`` gets the same from glibc itself, with no extra package:
large blocks come from the heap, and the heap is not trimmed, so a step reuses the pages of the step before.
After a few steps the heap has the shape the step needs and a step page-faults no more. The price is memory:
the process keeps its heap until it exits, and fragmentation lets the heap settle at up to about twice the
step's peak (tests/test_speed_settings.py; the RSS of real runs is in benchmarks/results). ``JTM_MALLOC=default``
in the environment turns it off.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_TOP_PAD_BYTES = 64 << 20
"""Grow the heap in steps of at least 64 MB: fewer brk calls while the first steps find their peak."""
_NEVER_TRIM = 2**31 - 1
"""mallopt takes an int; 2 GB of free heap top is never handed back in practice."""


def retain_freed_memory() -> bool:
    """Tell glibc to serve every size from its heap and never trim it; True if the setting was applied.

    A no-op (False) off glibc (macOS, musl), when another allocator such as jemalloc is preloaded (it serves
    malloc; glibc's setting would be harmless but unused), or when ``JTM_MALLOC=default``.
    """
    if os.environ.get("JTM_MALLOC", "").lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "jemalloc" in os.environ.get("LD_PRELOAD", "") or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; M_MMAP_MAX = 0 routes large blocks to the (reusable) heap instead of mmap.
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_TOP_PAD, _TOP_PAD_BYTES)))

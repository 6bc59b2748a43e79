"""Worker processes that never outlive the command that started them.

A process pool's workers are told to quit by their parent; a parent killed with SIGKILL can no longer
tell them, and they would sit idle, holding memory, until killed by hand. Pass :func:`die_with_parent`
as the pool's ``initializer`` (``ProcessPoolExecutor(..., initializer=die_with_parent, initargs=(os.getpid(),))``):

- on Linux the kernel sends the worker SIGKILL the moment its parent dies (``prctl(PR_SET_PDEATHSIG)``);
- everywhere, a daemon thread checks twice a second that the parent and the owning command are alive,
  and ends the worker when either is gone (this also covers a ``forkserver`` parent, and systems without prctl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""
POLL_SECONDS = 0.5


def _set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists but belongs to someone else
    return True


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
"""Environment variables by which launchers (Lightning, torchrun, SLURM) number the processes of one job."""


def is_first_process() -> bool:
    """Whether this process is the job's first (or only) one: no launcher gave it a rank other than 0.

    Lightning's DDP launcher re-runs the command in each extra rank; only the first takes folder locks.
    """
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def _watch(parent: int, owner: int | None) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        # A dead parent re-parents this process (to init or a subreaper), changing getppid().
        if os.getppid() != parent or (owner is not None and not process_alive(owner)):
            os._exit(1)


def die_with_parent(owner_pid: int | None = None) -> None:
    """Make the calling (worker) process end when its parent, or the process ``owner_pid``, dies.

    Meant as a process-pool initializer; ``owner_pid`` is the command's own pid (``os.getpid()`` in
    the parent), which differs from the direct parent under the ``forkserver`` start method.
    """
    parent = os.getppid()
    _set_parent_death_signal(signal.SIGKILL)
    # The parent may have died before prctl took effect: then no signal will ever come.
    if (owner_pid is not None and not process_alive(owner_pid)) or parent == 1:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, owner_pid), name="jtm-die-with-parent", daemon=True).start()


__all__ = ["die_with_parent", "is_first_process", "process_alive"]

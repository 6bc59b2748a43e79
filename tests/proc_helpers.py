"""Process inspection for fault tests, from /proc (psutil is not a dependency): children, liveness, kill-and-check."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting to be reaped) counts as dead."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    """Every live process whose chain of parents reaches ``root``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and fields[0] not in ("Z", "X"):
                parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def wait_until_dead(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait for the processes to end; return those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return set()
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux), so a killed command's leftovers stay findable."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False




def sigkill_tree_check(proc: subprocess.Popen, timeout: float = 10.0) -> set[int]:
    """SIGKILL ``proc`` alone (not its children) and return the descendants that outlive it by ``timeout`` s.

    Descendants are listed before the kill and, as this process is a subreaper, again after it: a worker
    started in between is adopted by this process instead of init, so it is found too. The survivors are
    then killed so that a failing test does not leak processes.
    """
    subreaper = become_subreaper()  # from the first kill on: orphans of later tests stay this process's zombies
    before = descendants(os.getpid())
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if subreaper:
        time.sleep(0.05)
        children |= descendants(os.getpid()) - before
    survivors = wait_until_dead(children, timeout)
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return survivors

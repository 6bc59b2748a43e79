"""Safe writing: atomic files, a full disk reported clearly, one writer per folder.

- Atomic writes go to a temporary name beside the target, then rename: an interrupted write never leaves
  a half-written file under the final name.
- A write that fails because the disk (or quota) is full raises :class:`DiskFullError` naming the path.
- :func:`folder_lock` lets one command at a time write into a store, run or study folder.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jtm.errors import DataError, JTMError

LOCK_NAME = ".jtm.lock"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(JTMError):
    """A write failed because the file system holding ``path`` is full (or the user's quota is used up)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: the disk is full (no space left on device); free some space and run the "
                         "command again (files already completed are kept)")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles across process pools with its path
        return (DiskFullError, (self.path,))


class FolderLockedError(JTMError):
    """Another live process is writing into the folder (it holds the folder's lock)."""


class FolderNotWritableError(JTMError):
    """The output folder cannot be written: read-only file system or missing permission."""


def _nearly_full(path: str | Path | None) -> bool:
    """Whether the file system holding ``path`` has less than 1 MiB left for this user."""
    if path is None:
        return False
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 2**20


def is_disk_full(error: BaseException, path: str | Path | None = None) -> bool:
    """Whether an exception means "no space left": an ENOSPC/EDQUOT OSError, torch's wrapped form of it,
    or a short write reported without an errno (numpy's "N requested and M written") on a full ``path``."""
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(error, OSError) and error.errno is None and _nearly_full(path):
        return True
    # torch.save reports a failed write as RuntimeError("... file write failed") and chains the OSError, if any.
    cause = error.__cause__ or error.__context__
    return "No space left on device" in str(error) or (cause is not None and cause is not error
                                                        and is_disk_full(cause, path))


@contextmanager
def disk_full_errors(path: str | Path, exact: bool = False) -> Iterator[None]:
    """Turn a "no space left" failure inside the block into a :class:`DiskFullError`.

    The error names the file the failing call reported, else ``path``; with ``exact``, always ``path``.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e, path):
            where = None if exact else getattr(e, "filename", None)
            raise DiskFullError(where or path) from e
        raise


def regular_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file (missing, a folder, a FIFO, a device), or None for a regular file.

    Checked before opening: reading a FIFO would block until some other process writes into it.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link that loops back on itself"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
    return f"not a regular file ({kind})"


def check_regular_file(path: str | Path, max_bytes: int | None = None, kind: str = "file") -> int:
    """The size of ``path`` after checking it is a regular file of at most ``max_bytes``; else a DataError."""
    problem = regular_file_problem(path)
    if problem is not None:
        raise DataError(path, problem)
    size = os.stat(path).st_size
    if max_bytes is not None and size > max_bytes:
        raise DataError(path, f"{kind} is too large: {size / 2**20:.0f} MB, more than the {max_bytes / 2**20:.0f} MB "
                              "limit (far above any real one); refusing to read it")
    return size


def _unwritable(error: OSError) -> bool:
    return isinstance(error, PermissionError) or error.errno == errno.EROFS


def _not_writable(folder: Path, error: OSError) -> FolderNotWritableError:
    return FolderNotWritableError(f"{folder}: cannot write into this folder ({error.strerror or error}); "
                    "check its permissions or choose another output folder")


def make_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) if needed; a read-only parent or a file in the way is a clear error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise JTMError(f"{folder}: exists but is not a folder") from None
    except OSError as e:
        if _unwritable(e):
            raise _not_writable(folder, e) from None
        if is_disk_full(e):
            raise DiskFullError(folder) from None
        raise
    return folder


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    make_folder(target.parent)
    try:
        with disk_full_errors(target, exact=True):
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        if _unwritable(e):
            raise _not_writable(target.parent, e) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file owner-only; give the result the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        with disk_full_errors(target, exact=True):
            yield tmp_path
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_TEMPORARY_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
"""What :func:`atomic_path` names its temporaries: ``.<target name>.<8 random characters>.tmp``."""


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporaries that killed writers left anywhere under ``folder``; return how many.

    Only safe while holding the folder's lock: then no live jtm process is writing one of them.
    """
    removed = 0
    for root, _, files in os.walk(folder):
        for name in files:
            if _TEMPORARY_NAME.fullmatch(name):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except OSError:
                    pass
    return removed


_HELD_LOCKS: dict[str, int] = {}
"""Folders whose lock this process holds, with how many nested :func:`folder_lock` blocks hold each."""


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "a process that is just starting"


def _acquire(lock_path: Path) -> int:
    """Open and lock ``lock_path`` without waiting; return its descriptor or raise FolderLockedError."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            folder = lock_path.parent
            raise FolderLockedError(
                f"{folder}: another jtm command ({_lock_holder(lock_path)}) is writing into this folder; "
                f"wait for it to finish (or stop it), or use another folder"
            ) from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        # The previous holder removed the file between our open and lock: lock the new file instead.
        os.close(fd)


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``FOLDER/.jtm.lock`` for the block, so that one command at a time writes into ``folder``.

    A second command (another process) is refused at once with :class:`FolderLockedError` naming the
    folder and the holder's pid. Once locked, the temporaries of a killed earlier writer are removed. The lock is an ``flock``: the kernel releases it when the holder exits,
    even on SIGKILL, so a dead process never blocks the folder (a stale file is reused). Nested blocks
    of the same process on the same folder are allowed. Yields the folder.
    """
    folder = make_folder(folder)
    key = str(folder.resolve())
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield folder
        finally:
            _HELD_LOCKS[key] -= 1
        return
    lock_path = folder / LOCK_NAME
    try:
        fd = _acquire(lock_path)
    except OSError as e:
        if _unwritable(e):
            raise _not_writable(folder, e) from None
        raise
    _HELD_LOCKS[key] = 1
    try:
        remove_stale_temporaries(folder)
        try:  # who holds the lock, for the refusal message of a second command
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{' '.join(sys.argv)}\n".encode("utf-8", "replace"))
        except OSError:
            pass  # a full disk: the lock itself still holds
        yield folder
    finally:
        del _HELD_LOCKS[key]
        # Remove the file while still holding the lock (see _acquire), so a finished run leaves nothing behind.
        try:
            lock_path.unlink()
        except OSError:
            pass
        os.close(fd)


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | Path, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_npy_atomic(target: str | Path, array: np.ndarray) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file without ever unpickling (object arrays are refused)."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def load_json(path: str | Path) -> Any:
    """Read a JSON file; a missing, non-regular (FIFO, folder) or malformed one is a DataError naming the file."""
    check_regular_file(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e})") from None

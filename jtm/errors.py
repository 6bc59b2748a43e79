"""Errors that a user sees: each names the file (and row) and the problem."""
from __future__ import annotations

from pathlib import Path


class JTMError(Exception):
    """Base class for every error jtm raises on purpose (the CLI prints these without a traceback)."""


class DataError(JTMError):
    """Bad input data: an unreadable audio file, a malformed label CSV row, a missing file.

    The message reads ``<path>[, row N]: <problem>`` so the user can find and fix the input.
    """

    def __init__(self, path: str | Path, problem: str, row: int | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.row = row
        where = f"{self.path}" if row is None else f"{self.path}, row {row}"
        super().__init__(f"{where}: {problem}")


class ModelFileError(JTMError):
    """A model or checkpoint file that jtm refuses to load (wrong format, corrupt, or pickle-bearing)."""

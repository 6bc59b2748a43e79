"""Run folders remember their configuration (``run.json``); a re-run must not silently train something else."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jtm.errors import JTMError
from jtm.fileio import load_json


def changed_keys(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Sorted keys whose values differ between two configurations, leaving out ``ignore``."""
    skip = set(ignore)
    return sorted(k for k in set(old) | set(new) if k not in skip and old.get(k) != new.get(k))


def refuse_changed_config(path: str | Path, new: dict[str, Any], ignore: Iterable[str] = (),
                          kind: str = "run folder") -> dict[str, Any] | None:
    """The configuration saved at ``path`` (None if there is none), after refusing one that differs from ``new``
    in anything but ``ignore`` (settings that may change when a run resumes)."""
    path = Path(path)
    if not path.exists():
        return None
    old = load_json(path)
    changed = changed_keys(old, new, ignore)
    if changed:
        raise JTMError(
            f"{path}: this {kind} was made with a different configuration ({', '.join(changed)} differ); "
            "use a new --out, or delete the folder to start over"
        )
    return old

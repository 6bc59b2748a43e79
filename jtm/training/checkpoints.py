"""Resume checkpoints: written atomically, loaded without unpickling arbitrary objects.

Lightning ``.ckpt`` files are for resuming a run only; weights are shared as safetensors (see
``jtm.models.pretrained``). A truncated or corrupt checkpoint is reported by name and skipped in favour of
the newest one that loads.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from jtm.errors import ModelFileError
from jtm.fileio import atomic_path

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, fsync it, then rename it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a resume checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only.

    A file that needs arbitrary unpickling (for instance one crafted to run code) is refused with
    :class:`ModelFileError`; nothing in it is executed.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: checkpoint not found") from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ModelFileError(
                f"{path}: refused to load: the checkpoint holds pickled Python objects beyond tensors and plain "
                "containers (loading it could execute code). Only jtm's own checkpoints can be resumed."
            ) from None
        raise ModelFileError(f"{path}: checkpoint is truncated or corrupt ({type(e).__name__}: {e})") from None


def find_resume_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``checkpoint_dir`` that loads, or None when there is none.

    Newest by modification time (``last.ckpt`` after an epoch, ``step.ckpt`` mid-epoch); a damaged one is
    reported and the next newest is tried.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in candidates:
        try:
            load_checkpoint(path)
        except ModelFileError as e:
            log.warning("skipping unusable checkpoint: %s", e)
            print(f"warning: skipping unusable checkpoint: {e}")
            continue
        return path
    return None

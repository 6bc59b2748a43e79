"""Save and load model folders: ``model.safetensors`` (weights) + ``config.json`` (format, version, config).

Nothing here ever unpickles: weights are read with safetensors, whose format is a JSON header plus raw
tensor bytes, so a pickle (e.g. a ``torch.save`` file renamed to ``model.safetensors``) fails to parse and is
refused with :class:`~jtm.errors.ModelFileError` naming the file. The file names are fixed; nothing in
``config.json`` can point the loader at another file. Reusable by any module (encoders, probes, heads).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from jtm.errors import ModelFileError
from jtm.fileio import atomic_path, regular_file_problem, write_json_atomic

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_CONFIG_KEYS = {"format", "version", "config"}


def save_pretrained_files(directory: str | Path, module: nn.Module, config: dict[str, Any], *,
                          format: str, version: int) -> Path:
    """Write ``directory/model.safetensors`` then ``directory/config.json``, each atomically.

    ``config.json`` is ``{"format": format, "version": version, "config": config}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous CPU tensors that share no storage
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": format, "version": str(version)})
    write_json_atomic(directory / CONFIG_NAME, {"format": format, "version": version, "config": config})
    return directory


MAX_SAFETENSORS_HEADER = 100 * 2**20
"""The safetensors format's own limit on its JSON header (100 MB)."""


def _check_model_file(path: Path, expected: str) -> None:
    """A missing file, a folder or a FIFO (which would block the reader) is a ModelFileError naming it."""
    problem = regular_file_problem(path)
    if problem == "file not found":
        raise ModelFileError(f"{path}: missing (expected {expected})")
    if problem is not None:
        raise ModelFileError(f"{path}: {problem}")


def _check_safetensors_header(path: Path) -> None:
    """Refuse a safetensors file whose declared header length cannot be right, before any parser sizes a buffer
    from it (the file starts with that length as a little-endian u64, then the JSON header)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ModelFileError(f"{path}: not a valid safetensors file, refusing to load it ({size} bytes, "
                             "shorter than the 8-byte header length)")
    declared = int.from_bytes(head, "little")
    if declared > size - 8 or declared > MAX_SAFETENSORS_HEADER:
        raise ModelFileError(f"{path}: not a valid safetensors file, refusing to load it (its header length is "
                             f"{declared} bytes, but the file holds {size} bytes)")


def read_config_json(path: str | Path, expected: str = "a model folder written by save_pretrained") -> Any:
    """Parse a model's ``config.json``; a missing or malformed file is a ModelFileError naming it."""
    path = Path(path)
    _check_model_file(path, expected)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: not valid JSON ({e})") from None


def read_pretrained_config(directory: str | Path, *, format: str, version: int) -> dict[str, Any]:
    """The ``config`` object of ``directory/config.json``, after checking its format name and version."""
    path = Path(directory) / CONFIG_NAME
    data = read_config_json(path)
    if not isinstance(data, dict) or set(data) != _CONFIG_KEYS:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ModelFileError(f"{path}: expected exactly the keys {sorted(_CONFIG_KEYS)}, found {keys}")
    if data["format"] != format:
        raise ModelFileError(f"{path}: format is {data['format']!r}, expected {format!r}")
    if data["version"] != version:
        raise ModelFileError(f"{path}: format version {data['version']!r} is not supported (expected {version})")
    if not isinstance(data["config"], dict):
        raise ModelFileError(f"{path}: 'config' must be an object")
    return data["config"]


def read_pretrained_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors`` on CPU; anything else (pickle, truncated) is refused."""
    path = Path(directory) / WEIGHTS_NAME
    _check_model_file(path, "safetensors weights")
    _check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: not a valid safetensors file, refusing to load it ({e})") from None


def load_weights_into(module: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """``module.load_state_dict(tensors, strict=True)``, reporting a mismatch as ModelFileError naming ``path``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not match the configured model "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ModelFileError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(expected[name].shape)}")
    module.load_state_dict(tensors, strict=True)

"""Configuration dataclasses: one strict loader, declared bounds, and the defaults several configs share.

Every jtm configuration is a dataclass (``CPCConfig``, ``LogMelConfig``, ``PretrainConfig``,
``DownstreamConfig``, ``StudyConfig``, ``DemoConfig``). This module is what they have in common:

- :func:`load_config` builds one from a parsed JSON object (``run.json``, ``config.json``, ``study.json``, ...).
  A key the dataclass does not have, a value of the wrong type, or a value outside its field's bounds raises
  :class:`ConfigError` naming the file, the key and what was expected. A key left out takes the field's default,
  so files written before a field existed still load. Keys a class no longer has may be listed in the class's
  ``RETIRED_KEYS``; they are skipped, on purpose, so old files keep loading.
- :func:`bounded` declares a field's default with its sane range in the field's metadata, and
  :func:`check_bounds` (called by each config's ``__post_init__``) enforces it, so a ``config.json`` claiming a
  width of 10^9 is refused before any tensor is allocated, whether it is loaded or constructed.
- :func:`field_default` reads a field's default, so the command line takes its option defaults from the
  dataclasses instead of typing them again.

Base layer (no torch): every layer may import it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, TypeVar

from jtm.audio import HOP, SAMPLE_RATE
from jtm.errors import JTMError

DEFAULT_WINDOW = 20480
"""Training window in samples at 16 kHz (1.28 s, 128 frames of 10 ms): the default of every config that windows."""
DEFAULT_BATCH_SIZE = 8
"""Windows per batch: the default of every command that trains."""
MAX_BATCH_SIZE = 4096
"""The most windows (or chunks) one batch may hold."""
MAX_WIDTH = 4096
"""The widest layer a configuration may declare (CPC_audio uses 256-512, wav2vec 2.0 large 1024)."""
MAX_OUTPUTS = 16384
"""The most outputs a probe may declare (pitch-instrument has 11 x 128 = 1408)."""
MAX_WINDOW = 60 * SAMPLE_RATE
"""The longest training window (60 s at 16 kHz)."""
MAX_STEPS = 10**8
"""More optimiser steps, epochs or batches than any run on this toolkit's scale could take."""

C = TypeVar("C")


class ConfigError(JTMError, ValueError):
    """A configuration that cannot be used: unknown key, wrong type, or a value out of range.

    A :class:`JTMError` (the command line prints it as one line) and a ``ValueError`` (what a bad argument is).
    """


def bounded(default: Any, low: float, high: float, **kwargs: Any) -> Any:
    """A dataclass field with a default (``dataclasses.MISSING``: none) and the inclusive range ``[low, high]``
    its value must lie in (``None`` is always allowed for an optional field)."""
    return dataclasses.field(default=default, metadata={"bounds": (low, high)}, **kwargs)


def window_field() -> Any:
    """The training window of a config: samples at 16 kHz, from two 10 ms frames to :data:`MAX_WINDOW`."""
    return bounded(DEFAULT_WINDOW, 2 * HOP, MAX_WINDOW)


def batch_size_field() -> Any:
    """Windows per batch, :data:`DEFAULT_BATCH_SIZE` by default."""
    return bounded(DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE)


def count_field(default: int | None, low: int = 1) -> Any:
    """A count of epochs, steps, seeds or batches, at least ``low``."""
    return bounded(default, low, MAX_STEPS)


def check_bounds(config: Any) -> None:
    """Refuse a field of ``config`` whose value lies outside the bounds declared with :func:`bounded`."""
    for f in dataclasses.fields(config):
        if "bounds" not in f.metadata:
            continue
        value = getattr(config, f.name)
        if value is None:
            continue
        low, high = f.metadata["bounds"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{type(config).__name__}.{f.name} must be a number, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{type(config).__name__}.{f.name} must lie in [{_number(low)}, {_number(high)}], "
                              f"got {value!r}")


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (from its default factory when it has one)."""
    f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if f is None:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def load_config(cls: type[C], data: Any, source: str = "config", *, prefix: str = "") -> C:
    """A ``cls`` built from ``data`` (a parsed JSON object), strictly.

    ``source`` names where ``data`` came from (a file path) in every error; ``prefix`` is the key path of a
    nested configuration (``"model."``). JSON lists become tuples for ``tuple[...]`` fields and integers become
    floats for ``float`` fields; nothing else is converted.
    """
    where = prefix.rstrip(".") or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where} must be a JSON object, got {_json_type(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    retired = set(getattr(cls, "RETIRED_KEYS", ()))
    for key in data:
        if key not in fields and key not in retired:
            raise ConfigError(f"{source}: unknown key {prefix + str(key)!r} in {cls.__name__}{_suggest(key, fields)}; "
                              f"valid keys: {', '.join(sorted(fields))}")
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{source}: {cls.__name__} needs the key(s) {', '.join(prefix + m for m in missing)}")
    hints = typing.get_type_hints(cls)
    values = {name: _convert(data[name], hints[name], source, prefix + name)
              for name in fields if name in data}
    try:
        return cls(**values)
    except ConfigError as e:  # out of its declared bounds
        raise ConfigError(f"{source}: {e}" + (f" (at {where})" if prefix else "")) from None
    except (TypeError, ValueError) as e:  # a config's own cross-field checks (e.g. heads must divide the width)
        raise ConfigError(f"{source}: {where}: {e}") from None


def _suggest(key: str, fields: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _WrongType(Exception):
    pass


def _convert(value: Any, hint: Any, source: str, key: str) -> Any:
    """``value`` as type ``hint``, or a ConfigError naming ``key``, the expected and the actual type."""
    try:
        return _as_type(value, hint, source, key)
    except _WrongType:
        raise ConfigError(f"{source}: {key} must be {_type_name(hint)}, got {_json_type(value)} {value!r:.60}") \
            from None


def _as_type(value: Any, hint: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _as_type(value, arm, source, key)
            except _WrongType:
                continue
        raise _WrongType
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _WrongType
        return load_config(hint, value, source, prefix=f"{key}.")
    if origin is dict:  # a free-form object, checked by whoever reads it
        if not isinstance(value, dict):
            raise _WrongType
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        items = [_as_type(v, args[0], source, key) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _WrongType
        return float(value)
    if hint in (bool, int, str):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise _WrongType
        return value
    raise TypeError(f"{key}: no JSON conversion for type {hint!r}")  # a programming error, not a user's


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_ITEMS.get(args[0], _type_name(args[0]))}" if args else "a list"
    if origin is dict:
        return "an object"
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"an object ({hint.__name__})"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


_ITEMS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as a user who wrote the file would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "integer" if isinstance(value, int) else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    return "object" if isinstance(value, dict) else type(value).__name__

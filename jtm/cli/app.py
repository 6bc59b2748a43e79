"""The typer application object, shared by the command modules, and how their options meet the configs.

Options that set a configuration field carry that field's name and take their default from the dataclass
(:func:`default_of`); :func:`config_from_options` builds the configuration from them. ``tests/test_configs.py``
walks every command and fails when an option's default differs from its field's.
"""
from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import typer

from jtm.configs import field_default

C = TypeVar("C")

app = typer.Typer(
    name="jtm",
    help="Jaka to Melodia: self-supervised CPC on raw music audio, and the downstream tasks that test it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build and prepare data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class OnError(str, Enum):
    """What a command does with a bad input file."""

    raise_ = "raise"
    skip = "skip"


class Layer(str, Enum):
    """Which CPC layer to read: the context vectors c, the encoder frames z, or a gabor encoder's log spectrum."""

    context = "context"
    encoder = "encoder"
    spectrum = "spectrum"


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice type whose members are ``values``, the tuple the configuration itself checks against."""
    return Enum(name, {v: v for v in values}, type=str)


def default_of(cls: type, name: str, enum: type[Enum] | None = None) -> Any:
    """The command-line default of the option for field ``name`` of config dataclass ``cls``: the field's own
    default (so it is written once, in the dataclass), as the option shows it: an ``enum`` member, a tuple as
    comma-separated text, a number-or-word (``devices``) as text."""
    value = field_default(cls, name)
    if enum is not None:
        return enum(value)
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    hints = typing.get_type_hints(cls)
    if hints[name] == (int | str):
        return str(value)
    return value


def config_from_options(cls: type[C], options: dict[str, Any], **overrides: Any) -> C:
    """``cls`` built from the command's options that share a field's name (enum members and paths as plain
    values), then ``overrides``; a value out of the field's bounds is a usage error naming the option."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: _plain(v) for k, v in options.items() if k in names}
    values.update(overrides)
    try:
        return cls(**values)
    except ValueError as e:  # ConfigError (bounds) or a config's own check, e.g. an even --gabor-kernel
        raise typer.BadParameter(str(e)) from None


def parse_devices(value: str) -> int | str:
    """``--devices``: a number of devices, or a word Lightning understands ('auto')."""
    return int(value) if value.isdigit() else value


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value

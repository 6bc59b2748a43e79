"""The typer application object, shared by the command modules."""
from __future__ import annotations

from enum import Enum

import typer

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
    """Which CPC layer to read: the context vectors c, or the encoder frames z."""

    context = "context"
    encoder = "encoder"

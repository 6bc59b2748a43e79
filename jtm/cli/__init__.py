"""The ``jtm`` command line: thin typer commands over the library.

Each command group lives in its own module and registers itself on :data:`app` here.
"""
from __future__ import annotations

import sys

from jtm.hardware import choose_openmp_wait_policy

choose_openmp_wait_policy()  # before torch is first imported (jtm.hardware imports no torch); a user's setting wins

from jtm.cli.app import app
from jtm.errors import JTMError

# Importing a command module registers its commands on ``app``.
from jtm.cli import data as _data  # noqa: E402,F401
from jtm.cli import pretrain as _pretrain  # noqa: E402,F401
from jtm.cli import apply as _apply  # noqa: E402,F401
from jtm.cli import downstream as _downstream  # noqa: E402,F401


def main() -> None:
    """Entry point: jtm's own errors (bad input, refused files) print as one clear line, not a traceback."""
    try:
        app()
    except JTMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)

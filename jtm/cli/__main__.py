"""``python -m jtm.cli``: the same as the ``jtm`` command."""
from jtm.cli import main

main()

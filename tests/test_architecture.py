"""The package's imports run one way: base -> data -> models -> training -> evaluation -> pipelines -> cli.

A module may import from its own layer and the layers before it, never from a later one, so that model code knows
nothing of training, data code nothing of models, and the command line stays a thin shell (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jtm"
LAYERS = ("base", "data", "models", "training", "evaluation", "pipelines", "cli")

KNOWN_EXCEPTIONS = {
    # The package's front door re-exports the main classes (`from jtm import CPCEncoder`), lazily.
    ("jtm/__init__.py", "jtm.models.config"), ("jtm/__init__.py", "jtm.models.cpc"),
    ("jtm/__init__.py", "jtm.models.downstream"),
}


def layer_of(module: str) -> str:
    """``jtm.models.cpc`` -> ``models``; modules directly under ``jtm`` (audio, fileio, configs, ...) are ``base``."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else "base"


def imports_against_the_flow() -> set[tuple[str, str]]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent)
        module = ".".join(relative.with_suffix("").parts)
        if relative.name == "__init__.py":
            module += ".__init__"
        here = LAYERS.index(layer_of(module))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("jtm.") and LAYERS.index(layer_of(name)) > here:
                    found.add((str(relative), name))
    return found


def test_imports_run_one_way() -> None:
    assert imports_against_the_flow() - KNOWN_EXCEPTIONS == set()


def test_the_known_exceptions_still_exist() -> None:
    """An exception that was fixed leaves the list, so the list stays the true map of what is left."""
    assert KNOWN_EXCEPTIONS <= imports_against_the_flow()


def test_the_checker_catches_a_backward_import(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "jtm"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("from jtm.training.pretrain import run_pretrain\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert imports_against_the_flow() == {("jtm/models/bad.py", "jtm.training.pretrain")}

"""Shared fixtures. Builders live in tests/helpers.py (importable as ``tests.helpers`` or ``helpers``)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make ``tests.helpers`` importable however pytest was started (rootdir insertion adds only tests/).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.helpers import FakeTrack, make_audio_folder, make_musicnet_folder  # noqa: E402


@pytest.fixture
def musicnet_folder(tmp_path: Path) -> tuple[Path, list[FakeTrack]]:
    """A tiny MusicNet-layout folder: 3 train + 1 test tracks of 3 s at 44.1 kHz, with metadata."""
    root = tmp_path / "musicnet"
    return root, make_musicnet_folder(root)


@pytest.fixture(scope="session")
def prepared_store(tmp_path_factory: pytest.TempPathFactory):
    """A prepared store from 4 train (3-5 s, two ensembles) + 1 test track; shared read-only by a session."""
    from jtm.data.prepare import prepare_store
    from jtm.data.store import Store

    base = tmp_path_factory.mktemp("shared_store")
    tracks = make_musicnet_folder(base / "src", n_train=4, n_test=1, seconds=[4.1, 3.3, 5.2, 4.15, 3.05])
    prepare_store(base / "src", base / "store", workers=1, progress=False)
    return Store.open(base / "store"), tracks


@pytest.fixture
def audio_folder(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A plain folder of unlabelled audio: a.wav (44.1 kHz mono) and sub/Dvořák – Largo.flac (48 kHz stereo)."""
    root = tmp_path / "audio"
    return root, make_audio_folder(root)

"""Multi-view pretraining (``jtm pretrain --views renderings``): the second view of a window is the same moment of
another rendering of the piece, and CPC's targets come from it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jtm.data.labels import batch_piano_roll
from jtm.data.prepare import prepare_store
from jtm.data.store import Store
from jtm.data.synth import build_corpus
from jtm.data.views import RenderingViews
from jtm.data.windows import WindowBatches
from jtm.errors import DataError, JTMError
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.training.config import PretrainConfig
from jtm.training.pretrain import run_pretrain

GABOR = dict(encoder="gabor", gabor_filters=48, gabor_kernel=1025, encoder_dim=32, context_dim=32, predict_steps=3,
             negatives=8, norm="batch", score="cosine", target="frontend")


@pytest.fixture(scope="module")
def rendered_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Every piece rendered three times (rendering r of piece p has id p + 10000 r), prepared at 16 kHz."""
    base = tmp_path_factory.mktemp("views")
    build_corpus(base / "corpus", minutes=0.6, max_seconds=8, test_fraction=0.2, seed=3, renderings=3,
                 progress=False)
    prepare_store(base / "corpus", base / "store", workers=1, progress=False)
    return Store.open(base / "store")


def _piece(store: Store, tracks: np.ndarray) -> np.ndarray:
    return store.tracks["id"].astype(int).to_numpy()[tracks] % 10_000


def test_a_view_is_the_same_moment_of_another_rendering(rendered_store: Store) -> None:
    store = rendered_store
    train = store.indices("train")
    views = RenderingViews(store, train)
    for track, partners in views.partners.items():
        assert len(partners) == 2 and track not in partners  # each piece was rendered 3 times, all in train
        assert set(_piece(store, partners)) == {_piece(store, np.asarray([track]))[0]}
    windows = WindowBatches(store, train, window=4800, batch_size=4, sampling="uniform", seed=0, views=views,
                            rank=0, world_size=1)
    for epoch in (0, 1):
        windows.set_epoch(epoch)
        for batch in windows:
            for b, (t, s) in enumerate(zip(batch["track"], batch["start"])):
                partner = views.partner(t, s, epoch)
                assert partner != t and _piece(store, np.asarray([partner]))[0] == _piece(store, np.asarray([t]))[0]
                expected = store.audio(partner)[s:s + 4800]
                np.testing.assert_array_equal(batch["view"][b, :len(expected)], expected)
                if np.abs(batch["audio"][b]).max() > 1e-3:  # sounding (not the silence after a piece's end)
                    assert not np.allclose(batch["view"][b], batch["audio"][b])  # another timbre
            # the same notes sound in both views of every window
            partners = np.asarray([views.partner(t, s, epoch) for t, s in zip(batch["track"], batch["start"])])
            np.testing.assert_array_equal(batch_piano_roll(store, batch["track"], batch["start"], 30),
                                          batch_piano_roll(store, partners, batch["start"], 30))


def test_partners_are_drawn_per_window_not_per_track(rendered_store: Store) -> None:
    # An epoch lays a track's windows on a grid; a batch should still mix both partner renderings of a track,
    # within one epoch, rather than pair each track with one partner until the next epoch.
    store = rendered_store
    train = store.indices("train")
    views = RenderingViews(store, train)
    windows = WindowBatches(store, train, window=1600, batch_size=4, sampling="uniform", seed=0, views=views,
                            rank=0, world_size=1)
    for epoch in (0, 1):
        windows.set_epoch(epoch)
        seen: dict[int, set[int]] = {}
        for batch in windows:
            for t, s in zip(batch["track"].tolist(), batch["start"].tolist()):
                seen.setdefault(t, set()).add(views.partner(t, s, epoch))
        assert all(partners == set(views.partners[t].tolist()) for t, partners in seen.items())
        assert views.partner(int(train[0]), 0, epoch) == views.partner(int(train[0]), 0, epoch)  # deterministic


def test_targets_come_from_the_view_and_contexts_from_the_window() -> None:
    torch.manual_seed(0)
    model = CPCEncoder(CPCConfig(**GABOR)).train()
    wave, view = torch.randn(3, 3200), torch.randn(3, 3200)
    target, c = model.cpc_inputs(wave, view)
    alone_target, alone_c = model.cpc_inputs(wave)
    view_target, _ = model.cpc_inputs(view)
    torch.testing.assert_close(c, alone_c)
    torch.testing.assert_close(target, view_target)
    assert not torch.allclose(target, alone_target) and not target.requires_grad
    with pytest.raises(ValueError, match="spectral target, 'frontend' or 'cqt'"):
        CPCEncoder(CPCConfig(**{**GABOR, "target": "z"})).cpc_inputs(wave, view)


def test_pretraining_with_rendering_views(rendered_store: Store, tmp_path: Path) -> None:
    cfg = PretrainConfig(data=str(rendered_store.path), out=str(tmp_path / "run"), model=CPCConfig(**GABOR),
                         window=4800, batch_size=4, epochs=1, lr=2e-3, val_fraction=0.25, threads=1,
                         progress=False, views="renderings", precision="32-true")
    metrics = run_pretrain(cfg)
    assert metrics["time/steps"] > 0 and np.isfinite(metrics["train/loss_epoch"])
    saved = PretrainConfig.from_dict(json.loads((tmp_path / "run" / "run.json").read_text()))
    assert saved.views == "renderings"
    with pytest.raises(JTMError, match="--target frontend"):
        run_pretrain(PretrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "z"),
                                       "model": CPCConfig(**{**GABOR, "target": "z"})}))


def test_a_corpus_rendered_once_is_refused_by_name(prepared_store) -> None:
    store, _ = prepared_store
    with pytest.raises(DataError, match="--renderings 2") as err:
        RenderingViews(store, store.indices("train"))
    assert str(store.path) in str(err.value)

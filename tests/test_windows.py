"""WindowBatches: samplers, offsets, memory budget, distributed slicing, labels, DataLoader use."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from jtm.data.labels import HOP, piano_roll, pitch_instrument_roll
from jtm.data.samplers import window_starts
from jtm.errors import DataError
from jtm.data.windows import WindowBatches, split_tracks

W = 4000  # small windows: many per 3-5 s track at 16 kHz


def all_windows(store, tracks, offsets=None) -> set[tuple[int, int]]:
    out = set()
    for k, t in enumerate(tracks):
        off = 0 if offsets is None else int(offsets[k])
        out |= {(int(t), int(s)) for s in window_starts(int(store.lengths[t]), off, W)}
    return out


def served(ds) -> list[tuple[int, int]]:
    return [(int(t), int(s)) for b in ds for t, s in zip(b["track"], b["start"])]


def test_uniform_covers_every_window_once(prepared_store) -> None:
    store, _ = prepared_store
    train = store.indices("train")
    ds = WindowBatches(store, train, window=W, batch_size=5, random_offset=False, drop_last=False)
    got = served(ds)
    assert len(got) == len(set(got)) and set(got) == all_windows(store, train)
    assert len(ds) == int(np.ceil(len(got) / 5))


def test_batch_contents(prepared_store) -> None:
    store, _ = prepared_store
    ds = WindowBatches(store, store.indices(), window=W, batch_size=4)
    b = next(iter(ds))
    assert b["audio"].dtype == np.float32 and b["audio"].shape == (4, W)
    assert b["track"].dtype == np.int64 and b["start"].dtype == np.int64
    for x, t, s in zip(b["audio"], b["track"], b["start"]):
        np.testing.assert_array_equal(x, store.audio(t)[s : s + W])
    assert set(b) == {"audio", "track", "start"}


def test_random_offsets_follow_the_epoch(prepared_store) -> None:
    store, _ = prepared_store
    train = store.indices("train")
    ds = WindowBatches(store, train, window=W, batch_size=4, seed=3, drop_last=False)
    plan0 = ds.plan()
    assert set(served(ds)) == all_windows(store, train, plan0.offsets)
    assert served(ds) == served(ds)  # same epoch, same batches
    first = served(ds)
    ds.set_epoch(1)
    assert not np.array_equal(ds.plan().offsets, plan0.offsets)
    assert set(served(ds)) == all_windows(store, train, ds.plan().offsets)
    assert served(ds) != first
    ds.set_epoch(0)
    assert served(ds) == first
    assert all(0 <= o < W for o in plan0.offsets)
    # The offset only uses the audio the grid leaves over, so no epoch loses a window.
    np.testing.assert_array_equal(ds.plan().n_windows, plan0.n_windows)
    assert len(ds) == sum(1 for _ in ds)


def test_samesequence_batches_come_from_one_track(prepared_store) -> None:
    store, _ = prepared_store
    for budget in (None, 200_000):
        ds = WindowBatches(store, store.indices(), window=W, batch_size=3, sampling="samesequence",
                           max_memory_bytes=budget)
        batches = list(ds)
        assert batches and all(len(set(b["track"].tolist())) == 1 for b in batches)
        assert all(len(b["track"]) == 3 for b in batches)  # drop_last: per-track remainders dropped
        assert len({int(b["track"][0]) for b in batches}) == len(store)


def test_samecategory_batches_come_from_one_category(prepared_store) -> None:
    store, _ = prepared_store
    codes, names = store.categories("ensemble")
    for budget in (None, 200_000):
        ds = WindowBatches(store, store.indices(), window=W, batch_size=4, sampling="samecategory",
                           labels_by="ensemble", labels="category:ensemble", max_memory_bytes=budget)
        batches = list(ds)
        assert len(batches) == len(ds) > 0
        for b in batches:
            assert len(set(codes[b["track"]].tolist())) == 1
            np.testing.assert_array_equal(b["category"], codes[b["track"]])
        assert {int(b["category"][0]) for b in batches} == {0, 1}
    assert ds.category_names == names
    with pytest.raises(ValueError, match="labels_by"):
        WindowBatches(store, store.indices(), sampling="samecategory")


def test_sequential_is_in_order(prepared_store) -> None:
    store, _ = prepared_store
    tracks = np.array([2, 0, 1])
    ds = WindowBatches(store, tracks, window=W, batch_size=4, sampling="sequential", random_offset=False,
                       drop_last=False)
    expected = [(int(t), int(s)) for t in tracks for s in window_starts(int(store.lengths[t]), 0, W)]
    assert served(ds) == expected
    ds.set_epoch(5)
    assert served(ds) == expected  # no shuffle


@pytest.mark.parametrize("sampling", ["uniform", "samesequence", "samecategory", "sequential"])
@pytest.mark.parametrize("budget", [None, 300_000])
@pytest.mark.parametrize("drop_last", [True, False])
def test_len_matches_iteration(prepared_store, sampling: str, budget, drop_last: bool) -> None:
    store, _ = prepared_store
    ds = WindowBatches(store, store.indices(), window=W, batch_size=3, sampling=sampling, labels_by="ensemble",
                       max_memory_bytes=budget, drop_last=drop_last)
    for epoch in range(3):
        ds.set_epoch(epoch)
        batches = list(ds)
        assert len(ds) == len(batches)
        if drop_last:
            assert all(len(b["track"]) == 3 for b in batches)


def test_memory_budget_is_never_exceeded(prepared_store, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = prepared_store
    total = int(store.lengths.sum()) * 2
    budget = 350_000  # the largest track is 160 kB; the store is ~600 kB
    assert budget < total
    live = {"bytes": 0, "peak": 0}
    real = type(store).audio_int16

    def tracked(self, i, *args, **kwargs):
        a = real(self, i, *args, **kwargs)
        live["bytes"] += a.nbytes
        live["peak"] = max(live["peak"], live["bytes"])
        weakref.finalize(a, lambda n=a.nbytes: live.__setitem__("bytes", live["bytes"] - n))
        return a

    monkeypatch.setattr(type(store), "audio_int16", tracked)
    ds = WindowBatches(store, store.indices(), window=W, batch_size=4, max_memory_bytes=budget)
    assert len(ds.groups) > 1
    assert sorted(np.concatenate(ds.groups).tolist()) == list(range(len(store)))
    for g in ds.groups:
        assert int(store.lengths[g].sum()) * 2 <= budget
    n = 0
    for _ in ds:
        n += 1
        assert 0 < ds.resident_bytes <= budget
        assert live["bytes"] <= budget  # independent of the loader's own accounting
    assert n == len(ds)
    assert 0 < ds.peak_resident_bytes <= budget and live["peak"] <= budget
    assert ds.resident_bytes == 0  # dropped after the epoch


def test_track_larger_than_budget_is_an_error(prepared_store) -> None:
    store, _ = prepared_store
    longest = int(np.argmax(store.lengths))
    need = 2 * int(store.lengths[longest])  # int16 audio
    track_id = store.tracks.id[longest]
    # a DataError (a JTMError): the CLI prints this one line naming the store, not a traceback
    with pytest.raises(DataError, match=rf"track '{track_id}' .* needs {need} bytes .* budget of {need - 1} bytes"):
        WindowBatches(store, store.indices(), max_memory_bytes=need - 1)


@pytest.mark.parametrize("sampling", ["uniform", "samesequence", "sequential"])
def test_distributed_ranks_disjoint_and_equal(prepared_store, sampling: str) -> None:
    store, _ = prepared_store
    kw = dict(window=W, batch_size=3, sampling=sampling, max_memory_bytes=300_000, seed=7)
    single = WindowBatches(store, store.indices(), **kw)
    ranks = [WindowBatches(store, store.indices(), rank=r, world_size=3, **kw) for r in range(3)]
    per_rank = [served(ds) for ds in ranks]
    assert len({len(ds) for ds in ranks}) == 1
    assert all(len(ds) == len(list(ds)) for ds in ranks)
    assert len(ranks[0]) == len(single) // 3
    seen = [set(p) for p in per_rank]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert set().union(*seen) <= set(served(single))
    with pytest.raises(ValueError, match="rank"):
        WindowBatches(store, store.indices(), rank=3, world_size=3)


def test_transcription_and_pitch_instrument_labels(prepared_store) -> None:
    store, _ = prepared_store
    n_frames = 20480 // HOP
    ds = WindowBatches(store, store.indices(), window=20480, batch_size=4, labels="transcription", random_offset=False)
    b = next(iter(ds))
    assert b["frames"].shape == (4, n_frames, 128) and b["frames"].dtype == np.float32
    for f, t, s in zip(b["frames"], b["track"], b["start"]):
        np.testing.assert_array_equal(f, piano_roll(store.notes(t), s, n_frames))
    assert any(f.any() for f in b["frames"])
    ds = WindowBatches(store, store.indices(), window=20480, batch_size=2, labels="pitch-instrument")
    b = next(iter(ds))
    assert b["frames"].shape == (2, n_frames, 11 * 128)
    for f, t, s in zip(b["frames"], b["track"], b["start"]):
        np.testing.assert_array_equal(f.reshape(n_frames, 11, 128), pitch_instrument_roll(store.notes(t), s, n_frames))
    with pytest.raises(ValueError, match="labels must be"):
        WindowBatches(store, store.indices(), labels="bogus")


def test_dataloader_workers_split_batches(prepared_store) -> None:
    store, _ = prepared_store
    ds = WindowBatches(store, store.indices(), window=W, batch_size=4, max_memory_bytes=300_000)
    expected = sorted(served(ds))
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        got = [(int(t), int(s)) for b in loader for t, s in zip(b["track"], b["start"])]
        assert sorted(got) == expected
        b = next(iter(loader))
        assert isinstance(b["audio"], torch.Tensor) and b["audio"].shape == (4, W)


def test_split_tracks(prepared_store) -> None:
    store, _ = prepared_store
    tr, va = split_tracks(store, "train", val_fraction=0.1, seed=0)
    assert len(va) == 1 and len(tr) == 3
    assert sorted(np.concatenate([tr, va]).tolist()) == store.indices("train").tolist()
    assert (split_tracks(store, "train", 0.1, seed=0)[1] == va).all()
    assert split_tracks(store, "test")[1].size == 0  # a single track: no hold-out
    tr2, va2 = split_tracks(store, "train", val_fraction=0.5, seed=1)
    assert len(va2) == 2 and not set(tr2) & set(va2)


# Fingerprints of the plans below, taken before plan_epoch became named steps (2026-12-01). Seeded results (the
# demo's numbers among them) depend on the exact plan: the order in which the epoch's generator is drawn from is
# part of it. A deliberate change of the plan updates these and says so.
PLAN_FINGERPRINTS = {"uniform": "20dd06819fc525ae", "samesequence": "8c907b40c67dd97e",
                     "samecategory": "ede07bd049f01752", "sequential": "0bdc6fccf6fb84b6"}


@pytest.mark.parametrize("sampling", sorted(PLAN_FINGERPRINTS))
def test_seeded_plans_do_not_change(sampling: str) -> None:
    import hashlib

    from jtm.data.samplers import plan_epoch

    lengths = np.array([50_000, 7_000, 123_456, 0, 81_920, 33_333, 99_999, 20_480])
    categories = np.array([0, 1, 0, 2, 1, 2, 0, 1])
    digest = hashlib.sha256()
    for epoch in (0, 1):
        plan = plan_epoch(lengths, window=5120, batch_size=3, sampling=sampling, seed=7, epoch=epoch,
                          categories=categories, max_memory_bytes=300_000)
        digest.update(plan.offsets.tobytes())
        for b in plan.batches:
            digest.update(np.int64(b.group).tobytes() + b.pos.tobytes() + b.start.tobytes())
    assert digest.hexdigest()[:16] == PLAN_FINGERPRINTS[sampling]

"""Label-fraction subsets: seeded, nested, and never touching validation or test recordings."""
from __future__ import annotations

import numpy as np
import pytest

from jtm.data.subsets import holdout_split, label_subset, labelled_splits, subset_size

TRAIN = np.arange(100, 300)  # 200 training recordings
TEST = np.arange(300, 320)


def test_same_seed_same_subset_and_order_does_not_matter() -> None:
    a = label_subset(TRAIN, 0.1, seed=3)
    b = label_subset(TRAIN[::-1].copy(), 0.1, seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 20 and np.all(np.isin(a, TRAIN)) and np.all(np.diff(a) > 0)


def test_different_seed_different_subset() -> None:
    assert not np.array_equal(label_subset(TRAIN, 0.1, seed=0), label_subset(TRAIN, 0.1, seed=1))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsets_are_nested(seed: int) -> None:
    fractions = [0.01, 0.05, 0.1, 0.5, 1.0]
    subsets = [set(label_subset(TRAIN, f, seed).tolist()) for f in fractions]
    for small, large in zip(subsets, subsets[1:]):
        assert small <= large
    assert subsets[-1] == set(TRAIN.tolist())


def test_sizes_round_up_and_keep_at_least_one() -> None:
    assert subset_size(200, 0.01) == 2
    assert subset_size(30, 0.1) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point
    assert subset_size(5, 0.01) == 1
    assert subset_size(0, 0.5) == 0
    with pytest.raises(ValueError):
        label_subset(TRAIN, 0.0, 0)
    with pytest.raises(ValueError):
        label_subset(TRAIN, 1.5, 0)


def test_validation_and_test_are_never_subsampled() -> None:
    full = labelled_splits(TRAIN, TEST, 1.0, seed=2, val_fraction=0.1)
    assert len(full.val) == 20 and not set(full.val) & set(full.train)
    assert set(full.train) | set(full.val) == set(TRAIN.tolist())
    for fraction in (0.01, 0.1, 0.5):
        part = labelled_splits(TRAIN, TEST, fraction, seed=2, val_fraction=0.1)
        np.testing.assert_array_equal(part.val, full.val)
        np.testing.assert_array_equal(part.test, TEST)
        np.testing.assert_array_equal(part.train_pool, full.train)
        assert set(part.train) <= set(full.train)
        assert not set(part.train) & set(part.val)


def test_holdout_leaves_training_recordings() -> None:
    train, val = holdout_split([4, 9], 0.5, seed=0)
    assert len(train) == 1 and len(val) == 1
    train, val = holdout_split([4], 0.5, seed=0)
    np.testing.assert_array_equal(train, [4])
    assert len(val) == 0


def test_subset_seed_draws_the_subset_alone() -> None:
    """A study's repeats: each its own label subset, all validated and tested on the same recordings."""
    base = labelled_splits(TRAIN, TEST, 0.1, seed=4, val_fraction=0.1)
    by_seed = {k: labelled_splits(TRAIN, TEST, 0.1, seed=4, val_fraction=0.1, subset_seed=k) for k in range(4, 9)}
    for split in by_seed.values():
        np.testing.assert_array_equal(split.val, base.val)
        np.testing.assert_array_equal(split.test, base.test)
        np.testing.assert_array_equal(split.train_pool, base.train_pool)
        assert set(split.train) <= set(base.train_pool.tolist()) and len(split.train) == len(base.train)
    # subset_seed == seed (or None) is the old single-seed subset.
    np.testing.assert_array_equal(by_seed[4].train, base.train)
    # Different subset seeds give different subsets (pairwise).
    trains = [tuple(s.train.tolist()) for s in by_seed.values()]
    assert len(set(trains)) == len(trains)


@pytest.mark.parametrize("subset_seed", [1, 5, 11])
def test_subsets_stay_nested_for_one_subset_seed(subset_seed: int) -> None:
    fractions = [0.01, 0.05, 0.1, 0.5, 1.0]
    splits = [labelled_splits(TRAIN, TEST, f, seed=0, val_fraction=0.1, subset_seed=subset_seed) for f in fractions]
    for small, large in zip(splits, splits[1:]):
        assert set(small.train) <= set(large.train) and len(small.train) < len(large.train)
        np.testing.assert_array_equal(small.val, large.val)
    np.testing.assert_array_equal(splits[-1].train, splits[-1].train_pool)


def test_groups_keep_a_works_recordings_on_one_side() -> None:
    """Two performances of one work are never split between training and validation, or across the subset."""
    ids = np.arange(40)
    groups = ids // 2  # works of two recordings each
    for seed in range(5):
        s = labelled_splits(ids, [100], fraction=0.3, seed=seed, val_fraction=0.25, groups=groups)
        assert not set(groups[s.val]) & set(groups[s.train_pool])
        assert set(np.flatnonzero(np.isin(groups, groups[s.train]))) == set(s.train)  # whole works only
        assert len(s.val) == 2 * 5 and len(s.train) == 2 * subset_size(15, 0.3)  # fractions count works


def test_singleton_groups_draw_exactly_the_ungrouped_splits() -> None:
    ids = np.array([3, 7, 11, 19, 23, 42, 57, 60, 71, 88])
    for seed in range(4):
        assert all(np.array_equal(a, b) for a, b in zip(labelled_splits(ids, [1], 0.5, seed, 0.2),
                                                        labelled_splits(ids, [1], 0.5, seed, 0.2, groups=ids)))


def test_store_work_keys_and_renderings(tmp_path) -> None:
    """A synth corpus with two timbre renderings per piece: the downstream splits keep each piece together."""
    from jtm.data.prepare import prepare_store
    from jtm.data.store import Store
    from jtm.data.synth import build_corpus
    from jtm.data.tasks import task_data

    build_corpus(tmp_path / "corpus", minutes=0.6, max_seconds=8, test_fraction=0.2, seed=3, renderings=2,
                 progress=False)
    prepare_store(tmp_path / "corpus", tmp_path / "store", workers=1, progress=False)
    store = Store.open(tmp_path / "store")
    train = store.indices("train")
    keys = store.work_keys(train)
    assert len(np.unique(keys)) * 2 == len(train)  # every piece twice
    piece = store.tracks["id"].astype(int).to_numpy() % 10_000  # rendering r of piece p has id p + 10000 r
    for seed in range(3):
        s = task_data(store, "transcription", 0.5, seed, 0.3).splits
        assert len(s.val) and not set(piece[s.val]) & set(piece[s.train_pool])
    # The held-out-timbre recordings reach the store through the metadata: test pieces only, one each.
    test = store.indices("test")
    heldout = store.heldout_timbre(store.indices())
    assert heldout.any() and not heldout[train].any()
    assert sorted(piece[store.indices()[heldout]]) == sorted(set(piece[test]))

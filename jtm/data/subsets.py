"""Seeded, nested subsets of labelled recordings for label-efficiency experiments.

The unit of subsampling is the **recording**, never the window: windows of one recording are strongly
correlated, so "1% of the labels" means 1% of the labelled training recordings.

Protocol (what ``jtm downstream --label-fraction F`` does):

1. the store's training recordings are split once into a validation hold-out and the rest
   (:func:`holdout_split`, seeded, independent of ``F``), so every fraction is validated on the same tracks;
2. the rest is subsampled with :func:`label_subset`: a seeded permutation of the recordings, of which the
   first ``ceil(F * n)`` (at least one) are kept. Because every fraction takes a prefix of the *same*
   permutation, subsets are nested by construction: the 1% set lies inside the 10% set inside 100%;
3. the test recordings are never subsampled.

The permutation depends only on the *set* of ids and the seed (ids are sorted first), so the order in which
a caller lists the tracks does not change the subset.

Recordings of one work (several performances of a MusicNet movement, or several timbre renderings of a synth
piece) share a **group** (``groups``: one int key per id, e.g. :meth:`jtm.data.store.Store.work_keys`). The
hold-out and the subsets then draw whole groups, so a work is never heard in training and validated on in
another performance. Without groups, or when every group holds one recording, the draws are exactly the
ungrouped ones.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

# Salts keep the hold-out draw and the subset draw independent even when both use the same user seed.
_SUBSET_SALT = 0x5EED_0001
_HOLDOUT_SALT = 0x5EED_0002


def _check_fraction(fraction: float, name: str = "fraction") -> float:
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise ValueError(f"{name} must lie in (0, 1], got {fraction}")
    return fraction


def _permutation(ids: np.ndarray, seed: int, salt: int | None) -> np.ndarray:
    """A seeded permutation of ``np.unique(ids)``; shape (n_unique,)."""
    unique = np.unique(np.asarray(ids))
    rng = np.random.default_rng(int(seed) if salt is None else [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, salt])
    return unique[rng.permutation(len(unique))]


def _group_keys(ids: np.ndarray, groups: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """One int64 key per id (the id itself when ungrouped); shape (n,)."""
    if groups is None:
        return ids
    keys = np.asarray(groups, dtype=np.int64)
    if keys.shape != ids.shape:
        raise ValueError(f"groups must give one key per track id: {keys.shape} keys for {ids.shape} ids")
    return keys


def _members(ids: np.ndarray, keys: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The sorted unique ids whose group key is among ``chosen``."""
    return np.unique(ids[np.isin(keys, chosen)])


def subset_size(n: int, fraction: float) -> int:
    """How many of ``n`` recordings a label fraction keeps: ``ceil(fraction * n)``, at least 1 (0 if n == 0)."""
    fraction = _check_fraction(fraction)
    if n <= 0:
        return 0
    # The small epsilon keeps e.g. 0.1 * 30 = 3.0000000000000004 from rounding up to 4.
    return int(min(n, max(1, math.ceil(fraction * n - 1e-9))))


def label_subset(track_ids: Sequence[int] | np.ndarray, fraction: float, seed: int = 0,
                 groups: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The labelled recordings kept at ``fraction``: a sorted int64 array, a subset of ``track_ids``.

    Same ids + same seed give the same subset; for one seed, a smaller fraction's subset is contained in a
    larger one's (both are prefixes of one seeded permutation). With ``groups``, ``fraction`` counts groups
    and whole groups are kept.
    """
    ids = np.asarray(track_ids, dtype=np.int64)
    keys = _group_keys(ids, groups)
    perm = _permutation(keys, seed, _SUBSET_SALT)
    return _members(ids, keys, perm[: subset_size(len(perm), fraction)])


def holdout_split(
    track_ids: Sequence[int] | np.ndarray, val_fraction: float, seed: int = 0,
    groups: Sequence[int] | np.ndarray | None = None, *, salted: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Split recordings into (train, validation), both sorted int64 arrays.

    The validation set holds ``round(val_fraction * n)`` recordings (groups, with ``groups``), at least one
    when there are two or more and ``val_fraction > 0``, and never all of them (training needs at least one).
    ``salted=False`` draws from ``default_rng(seed)`` alone instead of the downstream hold-out's salted stream:
    pretraining's hold-out (:func:`jtm.data.windows.split_tracks`), so that runs keep their validation recordings.
    """
    ids = np.asarray(track_ids, dtype=np.int64)
    keys = _group_keys(ids, groups)
    perm = _permutation(keys, seed, _HOLDOUT_SALT if salted else None)
    n = len(perm)
    if val_fraction <= 0 or n < 2:
        return np.unique(ids), np.zeros(0, dtype=np.int64)
    n_val = int(min(n - 1, max(1, round(float(val_fraction) * n))))
    return _members(ids, keys, perm[n_val:]), _members(ids, keys, perm[:n_val])


class LabelledSplits(NamedTuple):
    """Track indices (sorted int64 arrays) of one downstream run.

    ``train``: the labelled recordings trained on (the subset); ``train_pool``: all training recordings left
    after the validation hold-out (``train`` is a subset of it); ``val`` and ``test``: never subsampled.
    """

    train: np.ndarray
    train_pool: np.ndarray
    val: np.ndarray
    test: np.ndarray


def labelled_splits(
    train_ids: Sequence[int] | np.ndarray,
    test_ids: Sequence[int] | np.ndarray,
    fraction: float = 1.0,
    seed: int = 0,
    val_fraction: float = 0.1,
    subset_seed: int | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
) -> LabelledSplits:
    """Carve validation out of ``train_ids`` first, then keep ``fraction`` of the remaining recordings.

    The hold-out depends on ``seed`` and ``val_fraction`` only, never on ``fraction``, so all fractions of a
    label-efficiency study share their validation and test recordings. ``subset_seed`` (default ``seed``)
    draws the label subset alone: a study's repeats each get their own subset of the same pool, validated
    and tested on the same recordings. ``groups`` (one key per training id) keeps each work's recordings together.
    """
    ids = np.asarray(train_ids, dtype=np.int64)
    keys = _group_keys(ids, groups)
    pool, val = holdout_split(ids, val_fraction, seed, keys)
    pool_keys = None
    if groups is not None:
        order = np.argsort(ids)
        pool_keys = keys[order][np.searchsorted(ids[order], pool)]
    train = label_subset(pool, fraction, seed if subset_seed is None else subset_seed, pool_keys)
    return LabelledSplits(train, pool, val, np.sort(np.unique(np.asarray(test_ids, dtype=np.int64))))

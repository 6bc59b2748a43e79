"""Epoch plans: which windows go into which batch, and which tracks are resident together.

Pure numpy over track lengths (no audio is touched), so the number of batches is known before
iterating and every distributed rank computes the identical plan from ``seed + epoch``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Sampling = Literal["uniform", "samesequence", "samecategory", "sequential"]
SAMPLINGS: tuple[str, ...] = ("uniform", "samesequence", "samecategory", "sequential")


@dataclass(frozen=True)
class Batch:
    """One batch: ``pos`` (B,) positions into the dataset's track list and ``start`` (B,) sample starts."""

    group: int
    pos: np.ndarray
    start: np.ndarray


@dataclass(frozen=True)
class EpochPlan:
    """``groups[g]``: track positions resident together; ``batches``: in serving order, group by group.

    ``offsets`` (n_tracks,) is each track's window offset this epoch, ``n_windows`` (n_tracks,) its window count.
    """

    offsets: np.ndarray
    n_windows: np.ndarray
    groups: list[np.ndarray]
    batches: list[Batch]


def window_starts(length: int, offset: int, window: int) -> np.ndarray:
    """Starts ``offset + i * window`` for ``i in range((length - offset) // window)``: (n,) int64."""
    n = max(0, (int(length) - int(offset)) // int(window))
    return int(offset) + np.arange(n, dtype=np.int64) * int(window)


def group_tracks(order: np.ndarray, nbytes: np.ndarray, budget: int | None) -> list[np.ndarray]:
    """Split ``order`` (track positions) into consecutive groups whose summed ``nbytes`` stay within ``budget``.

    Greedy and order-preserving; ``budget=None`` puts everything in one group. Every single track must
    fit (checked by the caller, which can name it).
    """
    if budget is None or len(order) == 0:
        return [order] if len(order) else []
    groups: list[np.ndarray] = []
    current: list[int] = []
    used = 0
    for p in order:
        b = int(nbytes[p])
        if current and used + b > budget:
            groups.append(np.asarray(current, dtype=np.int64))
            current, used = [], 0
        current.append(int(p))
        used += b
    if current:
        groups.append(np.asarray(current, dtype=np.int64))
    return groups


def _chunks(pos: np.ndarray, start: np.ndarray, batch_size: int, drop_last: bool, group: int) -> list[Batch]:
    n = len(pos)
    stop = n - n % batch_size if drop_last else n
    return [Batch(group, pos[i : i + batch_size], start[i : i + batch_size]) for i in range(0, stop, batch_size)]


def plan_epoch(
    lengths: np.ndarray,
    *,
    window: int,
    batch_size: int,
    sampling: str,
    seed: int,
    epoch: int,
    random_offset: bool = True,
    drop_last: bool = True,
    categories: np.ndarray | None = None,
    max_memory_bytes: int | None = None,
    bytes_per_sample: int = 2,
) -> EpochPlan:
    """Plan one epoch over tracks of ``lengths`` (n,) samples.

    - Offsets: random in ``[0, min(window, slack)]`` per track when ``random_offset``, else 0 (rng seeded by
      seed + epoch), where ``slack = length - (length // window) * window`` is the audio the grid leaves over.
      The offset therefore never costs a track a window, and the batch count stays the same every epoch.
    - Groups: tracks in a seeded random order (``sequential``: given order; ``samecategory``: categories in
      random order, tracks of one category together so that few batches straddle groups), cut so one
      group's int16 audio stays within ``max_memory_bytes``.
    - Batches, per group: ``uniform`` shuffles all windows; ``samesequence`` chunks each track's shuffled
      windows; ``samecategory`` chunks each category's shuffled windows; batches of a group are then
      shuffled. ``sequential`` takes windows in track then time order, unshuffled. ``drop_last`` drops the
      incomplete remainder of each chunking unit (group, track or category within a group).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
    if sampling == "samecategory" and categories is None:
        raise ValueError("sampling='samecategory' needs per-track categories (labels_by=<tracks.csv column>)")
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    # One generator for the whole epoch, drawn from in a fixed order: offsets, track order, then per group the
    # window shuffle and the batch shuffle. The order is part of the plan: changing it changes every run.
    rng = np.random.default_rng(seed + epoch)
    n_windows = np.maximum(0, lengths // window)
    slack = np.minimum(lengths - n_windows * window, window - 1)
    offsets = rng.integers(0, slack + 1, dtype=np.int64) if random_offset else np.zeros(n, np.int64)
    order = _track_order(rng, n, sampling, categories)
    order = order[n_windows[order] > 0]  # tracks without a window this epoch are never loaded
    groups = group_tracks(order, lengths * bytes_per_sample, max_memory_bytes)
    batches: list[Batch] = []
    for g, members in enumerate(groups):
        pos, start = _group_windows(members, n_windows, offsets, window)
        batches += _batch_group(rng, g, pos, start, sampling, categories, batch_size, drop_last)
    return EpochPlan(offsets, n_windows, groups, batches)


def _track_order(rng: np.random.Generator, n: int, sampling: str, categories: np.ndarray | None) -> np.ndarray:
    """The order (n,) in which tracks are grouped: given (``sequential``), random, or random categories with the
    tracks of one category together (``samecategory``)."""
    if sampling == "sequential":
        return np.arange(n, dtype=np.int64)
    if sampling == "samecategory":
        assert categories is not None
        cats = np.asarray(categories, dtype=np.int64)
        cat_rank = rng.permutation(int(cats.max()) + 1 if n else 0)
        perm = rng.permutation(n)
        return perm[np.argsort(cat_rank[cats[perm]], kind="stable")]
    return rng.permutation(n).astype(np.int64)


def _group_windows(members: np.ndarray, n_windows: np.ndarray, offsets: np.ndarray,
                   window: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of a group's tracks in track then time order: ``(pos, start)``, each (n_group_windows,)."""
    counts = n_windows[members]
    pos = np.repeat(members, counts)
    # Window i of a track starts at offset + i * window; i runs 0..count-1 within each track.
    i = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return pos, offsets[pos] + i * window


def _batch_group(rng: np.random.Generator, group: int, pos: np.ndarray, start: np.ndarray, sampling: str,
                 categories: np.ndarray | None, batch_size: int, drop_last: bool) -> list[Batch]:
    """One group's windows cut into batches as ``sampling`` says, in serving order (see :func:`plan_epoch`)."""
    if sampling == "sequential":
        return _chunks(pos, start, batch_size, drop_last, group)
    perm = rng.permutation(len(pos))
    pos, start = pos[perm], start[perm]
    if sampling == "uniform":
        group_batches = _chunks(pos, start, batch_size, drop_last, group)
    else:
        key = pos if sampling == "samesequence" else np.asarray(categories)[pos]
        # A stable sort by unit keeps the shuffled order inside each track/category.
        srt = np.argsort(key, kind="stable")
        pos, start, key = pos[srt], start[srt], key[srt]
        cuts = np.flatnonzero(np.diff(key)) + 1
        group_batches = []
        for p, s in zip(np.split(pos, cuts), np.split(start, cuts)):
            group_batches += _chunks(p, s, batch_size, drop_last, group)
    return [group_batches[k] for k in rng.permutation(len(group_batches))]


def shard_batches(n_batches: int, rank: int, world_size: int, worker: int = 0, n_workers: int = 1) -> np.ndarray:
    """Indices of the batches a (rank, worker) serves: disjoint, and equal in number on every rank.

    The batch list is truncated to a multiple of ``world_size``; rank r takes every world_size-th batch
    from r, and DataLoader worker w of that rank every n_workers-th of those from w.
    """
    keep = n_batches - n_batches % world_size
    mine = np.arange(rank, keep, world_size, dtype=np.int64)
    return mine[worker::n_workers]

"""Fixed-length training windows from a store, in batches, under a memory budget.

``WindowBatches`` is a ``torch.utils.data.IterableDataset`` (the only torch this package touches)
yielding whole **numpy** batches; wrap it as ``DataLoader(ds, batch_size=None)``.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from jtm.configs import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW
from jtm.data.labels import HOP, N_INSTRUMENTS, batch_piano_roll, batch_pitch_instrument_roll
from jtm.data.instruments import N_PITCHES
from jtm.data.samplers import SAMPLINGS, EpochPlan, plan_epoch, shard_batches
from jtm.data.store import Store
from jtm.data.subsets import holdout_split
from jtm.data.views import RenderingViews
from jtm.errors import DataError

_BYTES_PER_SAMPLE = 2  # int16


def _default_distributed() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when it is initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The given rank and world size, each taken from torch.distributed when None; checked."""
    if rank is None or world_size is None:
        d_rank, d_world = _default_distributed()
        rank = d_rank if rank is None else rank
        world_size = d_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return int(rank), int(world_size)


class WindowBatches(IterableDataset):
    """Batches of ``window``-sample windows of the tracks ``track_indices`` of ``store``.

    Each item is a dict of numpy arrays: ``audio`` float32 (B, window) in [-1, 1), ``track`` int64 (B,)
    store track indices, ``start`` int64 (B,) window starts in samples; with ``labels='transcription'``
    ``frames`` float32 (B, window // 160, 128), with ``'pitch-instrument'`` ``frames`` float32
    (B, window // 160, 11 * 128) (instrument-major), with ``'category:<column>'`` ``category`` int64 (B,)
    (codes into :attr:`category_names`); with ``views`` (:class:`jtm.data.views.RenderingViews`) ``view`` float32
    (B, window), the same samples of another rendering of the piece.

    Windows of a track start at ``offset + i * window`` for ``i in range((length - offset) // window)``;
    ``offset`` is drawn in ``[0, window)`` per track and epoch when ``random_offset`` (else 0).
    See :func:`jtm.data.samplers.plan_epoch` for the samplers and grouping. Call :meth:`set_epoch`
    before each epoch to reshuffle.

    Memory: with ``max_memory_bytes`` the int16 audio of the tracks resident at once (one group) never
    exceeds it; groups are loaded (copied out of the memmap), served, and dropped one at a time.
    ``resident_bytes``/``peak_resident_bytes`` count it in the process that iterates (a DataLoader
    worker has its own copy and its own budget).

    Distributed: every rank builds the same plan; the batch list is truncated to a multiple of
    ``world_size`` and dealt round-robin, so ranks get disjoint batches and the same count.
    DataLoader workers deal this rank's batches further among themselves.
    """

    def __init__(
        self,
        store: Store,
        track_indices: Sequence[int] | np.ndarray,
        *,
        window: int = DEFAULT_WINDOW,
        batch_size: int = DEFAULT_BATCH_SIZE,
        sampling: str = "uniform",
        labels_by: str | None = None,
        max_memory_bytes: int | None = None,
        seed: int = 0,
        random_offset: bool = True,
        drop_last: bool = True,
        labels: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        views: RenderingViews | None = None,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
        if window <= 0 or batch_size <= 0:
            raise ValueError("window and batch_size must be positive")
        self.store = store
        self.track_indices = np.asarray(track_indices, dtype=np.int64).reshape(-1)
        if len(self.track_indices) and (self.track_indices.min() < 0 or self.track_indices.max() >= len(store)):
            raise IndexError(f"track indices must lie in [0, {len(store)})")
        self.window = int(window)
        self.batch_size = int(batch_size)
        self.sampling = sampling
        self.labels_by = labels_by
        self.max_memory_bytes = None if max_memory_bytes is None else int(max_memory_bytes)
        self.seed = int(seed)
        self.random_offset = bool(random_offset)
        self.drop_last = bool(drop_last)
        self.labels = labels
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.views = views
        self._lengths = store.lengths[self.track_indices]
        self._sampling_categories: np.ndarray | None = None
        if sampling == "samecategory":
            if not labels_by:
                raise ValueError("sampling='samecategory' needs labels_by=<tracks.csv column>")
            self._sampling_categories, _ = store.categories(labels_by, self.track_indices)
        self.category_names: list[str] | None = None
        self._label_categories: np.ndarray | None = None
        if labels is not None:
            self._check_labels(labels)
        if self.max_memory_bytes is not None:
            self._check_budget(self.max_memory_bytes)
        self.epoch = 0
        self.resident_bytes = 0
        self.peak_resident_bytes = 0
        self._plan: tuple[int, EpochPlan] | None = None
        self._skip = 0

    def _check_labels(self, labels: str) -> None:
        """Refuse labels the store cannot give at this window; read the category codes of ``category:<column>``."""
        if labels.startswith("category:"):
            self._label_categories, self.category_names = self.store.categories(labels.split(":", 1)[1],
                                                                                self.track_indices)
        elif labels in ("transcription", "pitch-instrument"):
            if not self.store.has_labels:
                raise DataError(self.store.path, f"labels={labels!r} needs note labels, but this store has none")
            if self.window % HOP:
                raise ValueError(f"window ({self.window}) must be a multiple of the label hop ({HOP})")
        else:
            raise ValueError(
                f"labels must be None, 'transcription', 'pitch-instrument' or 'category:<column>', not {labels!r}"
            )

    def _check_budget(self, budget: int) -> None:
        """Refuse a memory budget smaller than one of the tracks (a group holds at least one whole track)."""
        nbytes = self._lengths * _BYTES_PER_SAMPLE
        too_big = np.flatnonzero(nbytes > budget)
        if len(too_big):
            p = int(too_big[0])
            track = int(self.track_indices[p])
            # A user's setting (--max-memory-gb) against a file of theirs: a one-line error naming the file
            raise DataError(self.store.path, f"track {self.store.tracks['id'].iloc[track]!r} (index {track}) "
                            f"needs {int(nbytes[p])} bytes of int16 audio, more than the memory budget of "
                            f"{budget} bytes (--max-memory-gb); raise the budget")

    # ------------------------------------------------------------------ planning
    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle and window offsets of ``epoch`` (seeded by ``seed + epoch``)."""
        self.epoch = int(epoch)

    def skip_batches(self, n: int) -> None:
        """Make the next iteration start after its first ``n`` batches (resuming an epoch mid-way).

        Applies once, to the batches this process serves (exact with ``num_workers=0``); audio of groups
        that are skipped entirely is never loaded.
        """
        self._skip = max(0, int(n))

    def plan(self) -> EpochPlan:
        """This epoch's plan (identical on every rank); computed from track lengths only."""
        if self._plan is None or self._plan[0] != self.epoch:
            plan = plan_epoch(
                self._lengths,
                window=self.window,
                batch_size=self.batch_size,
                sampling=self.sampling,
                seed=self.seed,
                epoch=self.epoch,
                random_offset=self.random_offset,
                drop_last=self.drop_last,
                categories=self._sampling_categories,
                max_memory_bytes=self.max_memory_bytes,
                bytes_per_sample=_BYTES_PER_SAMPLE,
            )
            self._plan = (self.epoch, plan)
        return self._plan[1]

    @property
    def groups(self) -> list[np.ndarray]:
        """Store track indices resident together this epoch, group by group (all ranks)."""
        return [self.track_indices[g] for g in self.plan().groups]

    def __len__(self) -> int:
        """Batches this rank yields this epoch (over all its DataLoader workers)."""
        return len(shard_batches(len(self.plan().batches), self.rank, self.world_size))

    # ------------------------------------------------------------------ iteration
    def _my_batches(self) -> list[Any]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan()
        idx = shard_batches(len(plan.batches), self.rank, self.world_size, worker, n_workers)
        return [plan.batches[i] for i in idx]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        batches = self._my_batches()[self._skip :]
        self._skip = 0
        needed_by_group: dict[int, list[np.ndarray]] = {}
        for b in batches:
            needed_by_group.setdefault(b.group, []).append(b.pos)
        resident: dict[int, np.ndarray] = {}
        current_group = -1
        try:
            for batch in batches:
                if batch.group != current_group:
                    # Drop the previous group before loading the next, so two groups never coexist.
                    resident = {}
                    self.resident_bytes = 0
                    current_group = batch.group
                    # Only the tracks this process serves in this group are loaded.
                    needed = np.unique(np.concatenate(needed_by_group[current_group]))
                    for p in needed:
                        resident[int(p)] = self.store.audio_int16(int(self.track_indices[p]))
                        self.resident_bytes += resident[int(p)].nbytes
                    self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)
                yield self._make_batch(batch.pos, batch.start, resident)
        finally:
            resident = {}
            self.resident_bytes = 0

    def _make_batch(self, pos: np.ndarray, start: np.ndarray, resident: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        w = self.window
        audio = np.empty((len(pos), w), dtype=np.float32)
        for b, (p, s) in enumerate(zip(pos.tolist(), start.tolist())):
            audio[b] = resident[p][s : s + w]
        audio *= np.float32(1.0 / 32768.0)
        tracks = self.track_indices[pos]
        out = {"audio": audio, "track": tracks.astype(np.int64), "start": start.astype(np.int64)}
        if self.views is not None:
            out["view"] = self.views.batch(tracks, start, w, self.epoch)
        n_frames = w // HOP
        if self.labels == "transcription":
            out["frames"] = batch_piano_roll(self.store, tracks, start, n_frames, dtype=np.float32)
        elif self.labels == "pitch-instrument":
            roll = batch_pitch_instrument_roll(self.store, tracks, start, n_frames, dtype=np.float32)
            out["frames"] = roll.reshape(len(pos), n_frames, N_INSTRUMENTS * N_PITCHES)
        elif self._label_categories is not None:
            out["category"] = self._label_categories[pos].astype(np.int64)
        return out


def split_tracks(
    store: Store, split: str = "train", val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out of whole recordings: ``(train_idx, val_idx)``, sorted store indices (int64).

    At least one validation work when the split has two or more; none when it has one. Recordings of one work
    (:meth:`Store.work_keys`) stay on one side; with one recording per work this is a plain per-track draw.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    idx = np.sort(store.indices(split))
    return holdout_split(idx, val_fraction, seed, groups=store.work_keys(idx), salted=False)


__all__ = ["WindowBatches", "split_tracks"]

"""What a downstream task learns from a store: which recordings carry its labels, the splits (validation carved
before the label subset is drawn), the frame label rolls and the loss weights. Data only: nothing here knows of
models or training.

Tasks: ``transcription`` (128 pitches per frame), ``pitch-instrument`` (11 x 128 per frame), or any categorical
column of ``tracks.csv`` (``ensemble``, ``composer``, ...), one label per recording.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jtm.data.labels import HOP, track_piano_roll, track_pitch_instrument_roll
from jtm.data.store import Store
from jtm.data.subsets import LabelledSplits, labelled_splits
from jtm.errors import JTMError

FRAME_TASKS = ("transcription", "pitch-instrument")


def is_frame_task(task: str) -> bool:
    """Frame-level multi-label tasks; every other task name is a categorical metadata column."""
    return task in FRAME_TASKS



def pos_weight_from_counts(n_pos: float, n_total: float, max_weight: float = 100.0) -> float:
    """BCE positive weight ``clip(n_neg / n_pos, 1, max_weight)``: positives (active notes) are rare cells."""
    if n_pos <= 0:
        return float(max_weight)
    ratio = (n_total - n_pos) / n_pos
    return float(min(max_weight, max(1.0, ratio))) if math.isfinite(ratio) else float(max_weight)



@dataclass
class TaskData:
    """The labelled recordings of a task and what the loss needs to know about them."""

    splits: LabelledSplits
    classes: list[str] | None = None
    class_of_track: np.ndarray | None = None
    """(n_tracks,) int64 class code per store track, -1 for tracks without a value (classification only)."""
    extra: dict[str, Any] = field(default_factory=dict)


def labelled_tracks(store: Store, task: str, split: str) -> np.ndarray:
    """Store indices of ``split`` that carry labels for ``task`` (sorted int64)."""
    idx = store.indices(split)
    if is_frame_task(task):
        return idx[[len(store.notes(int(i))) > 0 for i in idx]] if len(idx) else idx
    if task not in store.tracks.columns:
        raise JTMError(f"{store.path / 'tracks.csv'}: no column {task!r} to classify; tasks are transcription, "
                       f"pitch-instrument or one of the columns {', '.join(store.tracks.columns)}")
    values = store.tracks[task].astype(str).str.strip().to_numpy()
    return idx[values[idx] != ""]


def task_data(store: Store, task: str, label_fraction: float, seed: int, val_fraction: float,
              subset_seed: int | None = None) -> TaskData:
    """Splits (validation carved before subsetting) and, for classification, the class list over all labelled
    recordings of both splits, so that codes mean the same in every split and every label fraction."""
    if is_frame_task(task) and not store.has_labels:
        raise JTMError(f"{store.path}: task {task!r} needs note labels, but this store has none")
    train, test = labelled_tracks(store, task, "train"), labelled_tracks(store, task, "test")
    if len(train) == 0:
        raise JTMError(f"{store.path}: no labelled training recordings for task {task!r}")
    # A work's recordings (performances, timbre renderings) stay together: never trained on and validated on.
    splits = labelled_splits(train, test, label_fraction, seed, val_fraction, subset_seed,
                             groups=store.work_keys(train))
    if is_frame_task(task):
        return TaskData(splits)
    everything = np.union1d(train, test)
    codes, names = store.categories(task, everything)
    class_of_track = np.full(len(store), -1, dtype=np.int64)
    class_of_track[everything] = codes
    return TaskData(splits, names, class_of_track)


def frame_roll(store: Store, track: int, task: str, n_frames: int | None = None) -> np.ndarray:
    """Whole-track label roll of a frame task from sample 0: bool (F, 128) or (F, 11 * 128)."""
    n = int(store.lengths[track]) // HOP if n_frames is None else n_frames
    notes = store.notes(track)
    if task == "transcription":
        return track_piano_roll(notes, n)
    return track_pitch_instrument_roll(notes, n).reshape(n, -1)


def positive_weight(store: Store, tracks: np.ndarray, task: str, max_weight: float) -> float:
    """``clip(n_neg / n_pos, 1, max_weight)`` over the label cells of ``tracks``."""
    pos = total = 0
    for t in tracks:
        roll = frame_roll(store, int(t), task)
        pos += int(roll.sum())
        total += roll.size
    return pos_weight_from_counts(pos, total, max_weight)


def class_weight_vector(store: Store, tracks: np.ndarray, class_of_track: np.ndarray, n_classes: int,
                        window: int) -> list[float]:
    """Inverse-frequency weights over the training windows: ``n / (n_present * count_c)``; 1 for absent classes."""
    windows = np.maximum(store.lengths[tracks] // window, 1)
    counts = np.bincount(class_of_track[tracks], weights=windows, minlength=n_classes)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return [float(w) for w in weights]

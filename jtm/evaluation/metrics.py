"""Downstream metrics: MusicNet frame AP, mir_eval frame / note P-R-F1, classification scores.

Conventions:
- Rolls are (N frames, P pitches) with column ``p`` = MIDI pitch ``p`` (P = 128 in jtm), at ``frame_rate``
  frames per second (100: the 10 ms frames of ``jtm.data.labels``).
- A frame is predicted active when ``score >= threshold``.
- Reported frame and note P/R/F1 come from mir_eval (the community reference implementation); a fast numpy
  F1 is used only inside ``tune_threshold``, where mir_eval's per-frame Python loop would be run 19 times.
- mir_eval's convention for empty references/estimates is kept (scores of 0.0), and its "empty" warnings are
  silenced because silent frames and silent clips are ordinary in music.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Iterator

import mir_eval
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
)

from jtm.evaluation.notes import NoteList, decode_notes, roll_to_notes

# Rounded so a tuned threshold reads (and serialises) as 0.5, not 0.49999999999999994.
DEFAULT_THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 6)


@contextmanager
def _quiet_empty() -> Iterator[None]:
    # mir_eval warns on every empty reference/estimate; in evaluation loops that is noise, not news.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*empty.*", category=UserWarning)
        yield


def _check_pair(y_true: np.ndarray, y_score: np.ndarray, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ in shape")
    if ndim is not None and y_true.ndim != ndim:
        raise ValueError(f"expected {ndim}-d arrays, got shape {y_true.shape}")
    return y_true.astype(bool, copy=False), y_score.astype(np.float64, copy=False)


# --------------------------------------------------------------------------------------------- frame level


def frame_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """MusicNet's frame-level average precision, **micro-averaged** over pitches.

    All (frame, pitch) cells are pooled into one ranking:
    ``sklearn.metrics.average_precision_score(y_true.ravel(), y_score.ravel())``, as in the MusicNet
    benchmark (Thickstun et al.), so frequent pitches weigh more than rare ones (unlike a macro average).

    Args:
        y_true: (N, P) bool (any shape works; it is flattened).
        y_score: (N, P) float scores, same shape; only their order matters.

    Returns:
        AP in [0, 1], or **nan** when ``y_true`` has no positive cell (precision-recall is undefined then;
        sklearn would warn and return a meaningless value). Callers aggregating should use ``np.nanmean``.
    """
    y_true, y_score = _check_pair(y_true, y_score)
    if not y_true.any():
        return float("nan")
    return float(average_precision_score(y_true.ravel(), y_score.ravel()))


def ranking_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The same number as :func:`frame_average_precision`, from one sort and two cumulative sums.

    Model selection scores the validation recordings every few dozen steps of hundreds of runs; sklearn's
    ``average_precision_score`` (several float64 copies and a ``np.unique``) would cost more than the training.
    Ties are grouped as sklearn groups them (one precision-recall point per distinct score), so the two agree
    to float rounding (``tests/test_metrics.py``). Returns nan when there is no positive cell.
    """
    truth = np.asarray(y_true, dtype=bool).ravel()
    score = np.asarray(y_score, dtype=np.float32).ravel()
    if truth.shape != score.shape:
        raise ValueError(f"y_true {np.shape(y_true)} and y_score {np.shape(y_score)} differ in shape")
    n_pos = int(truth.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score)  # the order inside a run of ties does not matter: only run ends are read
    ranked = score[order]
    tp = np.cumsum(truth[order], dtype=np.int64)
    # the last index of every run of equal scores: one operating point per distinct threshold
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    tp = tp[ends]
    precision = tp / (ends + 1.0)
    recall_gain = np.diff(tp, prepend=0) / n_pos
    return float(np.sum(recall_gain * precision))


def _roll_to_mir_eval(roll: np.ndarray, shift: int) -> list[np.ndarray]:
    # One array of frequencies (Hz) per frame: the ragged time series mir_eval.multipitch consumes.
    if roll.shape[0] == 0:
        return []
    frames, pitches = np.nonzero(roll)
    hz = mir_eval.util.midi_to_hz((pitches + shift).astype(np.float64))
    return np.split(hz, np.searchsorted(frames, np.arange(1, roll.shape[0])))


def _octave_shift(pitches: np.ndarray) -> int | None:
    """Octave transposition that puts every pitch inside mir_eval.multipitch's 20 Hz..5 kHz band, or None.

    mir_eval validates frequencies against that band (it exists to catch MIDI numbers passed as Hz), which
    excludes MIDI < 16 and > 111 while a 128-pitch model may fire anywhere. Transposing reference and
    estimate together by whole octaves changes neither the pitch nor the chroma matching, so the scores are
    unchanged.
    """
    lo_hz, hi_hz = mir_eval.multipitch.MIN_FREQ, mir_eval.multipitch.MAX_FREQ
    lo = int(np.ceil(mir_eval.util.hz_to_midi(lo_hz)))  # 16
    hi = int(np.floor(mir_eval.util.hz_to_midi(hi_hz)))  # 111
    if pitches.size == 0:
        return 0
    pmin, pmax = int(pitches.min()), int(pitches.max())
    for octaves in range(-11, 12):
        shift = 12 * octaves
        if pmin + shift >= lo and pmax + shift <= hi:
            return shift
    return None


def frame_prf(
    y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5, frame_rate: float = 100.0
) -> dict[str, float]:
    """Frame-level multi-pitch precision, recall, F1 and accuracy, computed by ``mir_eval.multipitch.metrics``.

    The rolls become mir_eval's time + frequency lists (``times = arange(N) / frame_rate``, frequencies =
    ``midi_to_hz`` of the active pitches). mir_eval pools true positives over all frames ("micro" level).
    accuracy is mir_eval's ``TP / (TP + FP + FN)`` (Dixon's frame accuracy); f1 = 2PR / (P + R).

    Args:
        y_true: (N, P) bool reference roll.
        y_score: (N, P) probabilities (or bool) of the estimate; active where ``>= threshold``.

    Returns:
        ``{"precision", "recall", "f1", "accuracy"}`` as floats (0.0 when undefined, mir_eval's convention).
    """
    y_true, y_score = _check_pair(y_true, y_score, ndim=2)
    est = y_score >= threshold
    shift = _octave_shift(np.flatnonzero(y_true.any(0) | est.any(0)))
    times = np.arange(y_true.shape[0], dtype=np.float64) / frame_rate
    with _quiet_empty():
        if shift is not None and (times.size == 0 or times[-1] <= mir_eval.multipitch.MAX_TIME):
            ref_f = _roll_to_mir_eval(y_true, shift)
            est_f = _roll_to_mir_eval(est, shift)
            precision, recall, accuracy = mir_eval.multipitch.metrics(times, ref_f, times, est_f)[:3]
        else:
            # Pitches spanning more than mir_eval's band (or > 30000 s of audio): run mir_eval's own matching
            # and scoring functions on MIDI numbers directly, skipping only its Hz/time sanity checks.
            ref_m = [f.astype(np.float64) for f in _roll_to_midi_lists(y_true)]
            est_m = [f.astype(np.float64) for f in _roll_to_midi_lists(est)]
            mp = mir_eval.multipitch
            tp = mp.compute_num_true_positives(ref_m, est_m)
            precision, recall, accuracy = mp.compute_accuracy(tp, mp.compute_num_freqs(ref_m), mp.compute_num_freqs(est_m))
    precision, recall, accuracy = float(precision), float(recall), float(accuracy)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1), "accuracy": accuracy}


def _roll_to_midi_lists(roll: np.ndarray) -> list[np.ndarray]:
    if roll.shape[0] == 0:
        return []
    frames, pitches = np.nonzero(roll)
    return np.split(pitches, np.searchsorted(frames, np.arange(1, roll.shape[0])))


def frame_f1_curve(
    y_true: np.ndarray, y_score: np.ndarray, candidates: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS
) -> np.ndarray:
    """Pooled frame F1 at each candidate threshold, shape (len(candidates),); numpy only, for tuning.

    With integer pitches mir_eval's quarter-tone matching is exact cell equality, so this equals mir_eval's F1.
    One sort of the scores serves every threshold (O(NP log NP) once instead of one pass per candidate).
    """
    y_true, y_score = _check_pair(y_true, y_score)
    cand = np.asarray(candidates, dtype=np.float64)
    pos_scores = np.sort(y_score[y_true])
    all_scores = np.sort(y_score.ravel())
    # Count of cells with score >= t = size - (number strictly below t).
    tp = pos_scores.size - np.searchsorted(pos_scores, cand, side="left")
    n_pred = all_scores.size - np.searchsorted(all_scores, cand, side="left")
    n_true = pos_scores.size
    denom = n_pred + n_true
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)


def tune_threshold(
    y_true: np.ndarray, y_score: np.ndarray, candidates: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS
) -> float:
    """The candidate threshold with the highest pooled frame F1 (ties -> the lowest threshold).

    Tune on validation data, then report with ``frame_prf`` on test data at the returned threshold.
    """
    cand = np.asarray(candidates, dtype=np.float64)
    if cand.size == 0:
        raise ValueError("no candidate thresholds")
    return float(cand[int(np.argmax(frame_f1_curve(y_true, y_score, cand)))])


# ---------------------------------------------------------------------------------------------- note level


def note_prf(ref_notes: NoteList, est_notes: NoteList, onset_tolerance: float = 0.05,
             offset_ratio: float | None = None) -> dict[str, float]:
    """Note-level precision/recall/F1 by mir_eval, onsets only (offsets ignored) unless ``offset_ratio`` is given.

    ``mir_eval.transcription.precision_recall_f1_overlap(..., onset_tolerance=0.05, offset_ratio=None)``:
    an estimated note matches a reference note of the same pitch (within 50 cents) whose onset is within
    +-50 ms; matching is one-to-one. With ``offset_ratio`` (mir_eval's standard 0.2) its offset must also lie
    within max(0.2 x the reference note's duration, 50 ms) of the reference offset. Empty reference or estimate
    gives 0.0 (mir_eval's convention).
    """
    with _quiet_empty():
        p, r, f, _overlap = mir_eval.transcription.precision_recall_f1_overlap(
            ref_notes.intervals,
            mir_eval.util.midi_to_hz(ref_notes.pitch.astype(np.float64)),
            est_notes.intervals,
            mir_eval.util.midi_to_hz(est_notes.pitch.astype(np.float64)),
            onset_tolerance=onset_tolerance,
            offset_ratio=offset_ratio,
        )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


ONSET_THRESHOLDS = np.round(np.r_[0.05, np.linspace(0.1, 0.9, 9), 0.95], 6)
"""Onset thresholds tried by :func:`tune_note_thresholds`."""


def tune_note_thresholds(ref_notes: NoteList, onset: np.ndarray, frame: np.ndarray,
                         onset_candidates: Sequence[float] | np.ndarray = ONSET_THRESHOLDS,
                         frame_candidates: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
                         frame_rate: float = 100.0) -> tuple[float, float]:
    """The two thresholds of :func:`decode_notes`, ``(onset_threshold, frame_threshold)``, chosen in turn.

    Where notes start depends on the onset threshold alone, so it is the candidate with the highest note-onset
    F1 (mir_eval, 50 ms); how long they last depends on the frame threshold, the candidate with the highest note
    F1 with offsets (offset ratio 0.2) at that onset threshold. Ties go to the lowest candidate. ``onset`` and
    ``frame`` (N, P) are probabilities of validation recordings (never test), in the time frame of ``ref_notes``.
    """
    onsets, frames = np.asarray(onset_candidates, np.float64), np.asarray(frame_candidates, np.float64)
    if onsets.size == 0 or frames.size == 0:
        raise ValueError("no candidate thresholds")
    # any frame threshold: note starts, and so onset-only F1, do not depend on it
    f1 = [note_prf(ref_notes, decode_notes(onset, frame, float(c), 0.5, frame_rate))["f1"] for c in onsets]
    best_onset = float(onsets[int(np.argmax(f1))])
    f1 = [note_prf(ref_notes, decode_notes(onset, frame, best_onset, float(c), frame_rate), offset_ratio=0.2)["f1"]
          for c in frames]
    return best_onset, float(frames[int(np.argmax(f1))])


def transcription_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    threshold: float = 0.5,
    frame_rate: float = 100.0,
    min_note_frames: int = 2,
    ref_notes: NoteList | None = None,
    merge_gap: int = 0,
) -> dict[str, float]:
    """All transcription scores of one (or a concatenation of) track(s).

    Args:
        y_true: (N, P) bool reference roll.
        y_score: (N, P) predicted probabilities.
        threshold: frame threshold (tune it with ``tune_threshold`` on validation data).
        min_note_frames, merge_gap: passed to ``roll_to_notes`` for the *estimated* notes.
        ref_notes: the true notes if known (preferred: a roll merges touching repeated notes). Otherwise they are
            derived from ``y_true`` keeping every run (min_frames=1, no gap merging).

    Returns:
        ``frame_ap``, ``frame_precision``, ``frame_recall``, ``frame_f1``, ``frame_accuracy``,
        ``note_precision``, ``note_recall``, ``note_f1``, ``threshold``, ``n_ref_notes``, ``n_est_notes``.
    """
    y_true, y_score = _check_pair(y_true, y_score, ndim=2)
    frame = frame_prf(y_true, y_score, threshold, frame_rate)
    if ref_notes is None:
        ref_notes = roll_to_notes(y_true, 0.5, frame_rate, min_frames=1)
    est_notes = roll_to_notes(y_score, threshold, frame_rate, min_frames=min_note_frames, merge_gap=merge_gap)
    note = note_prf(ref_notes, est_notes)
    return {
        "frame_ap": frame_average_precision(y_true, y_score),
        **{f"frame_{k}": v for k, v in frame.items()},
        **{f"note_{k}": v for k, v in note.items()},
        "threshold": float(threshold),
        "n_ref_notes": float(len(ref_notes)),
        "n_est_notes": float(len(est_notes)),
    }


def note_task_metrics(y_true: np.ndarray, frame: np.ndarray, frame_threshold: float, ref_notes: NoteList,
                      est_notes: NoteList, onset_true: np.ndarray | None = None, onset: np.ndarray | None = None,
                      frame_rate: float = 100.0) -> dict[str, float]:
    """The scores of transcription read as notes: frames, notes without and with offsets.

    Args:
        y_true, frame: (N, P) reference roll and frame probabilities; ``frame_threshold`` makes frames active.
        ref_notes, est_notes: reference and decoded notes in the same time frame as the rolls.
        onset_true, onset: optional (N, P) onset roll and onset probabilities, for ``onset_ap``.

    Returns:
        ``frame_ap``, ``frame_precision/recall/f1/accuracy`` (mir_eval.multipitch), ``note_precision/recall/f1``
        (mir_eval.transcription, onsets within 50 ms, offsets ignored), ``note_offset_precision/recall/f1`` (also
        offsets within max(20 % of the note, 50 ms)), ``onset_ap`` (nan without onsets), ``n_ref_notes``,
        ``n_est_notes``.
    """
    scores: dict[str, float] = {"frame_ap": frame_average_precision(y_true, frame)}
    scores.update({f"frame_{k}": v for k, v in frame_prf(y_true, frame, frame_threshold, frame_rate).items()})
    scores.update({f"note_{k}": v for k, v in note_prf(ref_notes, est_notes).items()})
    scores.update({f"note_offset_{k}": v for k, v in note_prf(ref_notes, est_notes, offset_ratio=0.2).items()})
    scores["onset_ap"] = float("nan") if onset is None else frame_average_precision(onset_true, onset)
    scores["n_ref_notes"], scores["n_est_notes"] = float(len(ref_notes)), float(len(est_notes))
    return scores


# ---------------------------------------------------------------------------------- classification / instruments


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, object]:
    """Scores of a single-label classifier (e.g. composer or ensemble of a clip).

    Args:
        y_true, y_pred: (N,) int class indices in ``0..len(class_names)-1``.
        class_names: the names of all classes, in index order; classes absent from the data still get a row
            and column of the confusion matrix (sklearn ``labels=range(n)``).

    Returns:
        ``accuracy``; ``balanced_accuracy`` (mean recall over classes present in ``y_true``);
        ``macro_f1`` (mean F1 over classes present in ``y_true`` or ``y_pred``: a class that appears in neither
        has no defined F1 and is left out rather than counted as 0 or 1); ``per_class_f1`` (list, nan for such
        classes); ``confusion`` (list of lists, rows = true class, columns = predicted); ``class_names``.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    n = len(class_names)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true ({y_true.size}) and y_pred ({y_pred.size}) differ in length")
    if y_true.size == 0:
        raise ValueError("no samples to score")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= n:
            raise ValueError(f"{name} has class indices outside 0..{n - 1}")
    labels = list(range(n))
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" is expected on small test sets; the docstring defines it.
        warnings.filterwarnings("ignore", message=".*not in y_true.*", category=UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    present = np.zeros(n, dtype=bool)
    present[np.unique(np.concatenate([y_true, y_pred]))] = True
    per_class = np.where(present, per_class, np.nan)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(np.nanmean(per_class)),
        "per_class_f1": [float(v) for v in per_class],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def per_instrument_ap(
    y_true: np.ndarray, y_score: np.ndarray, instrument_names: Sequence[str]
) -> dict[str, float]:
    """Micro-averaged frame AP per instrument of a pitch x instrument roll.

    Args:
        y_true: (N, I, P) bool; y_score: (N, I, P) float; instrument_names: I names (the instrument axis order,
            e.g. ``[MUSICNET_INSTRUMENTS[p] for p in INSTRUMENT_PROGRAMS]``).

    Returns:
        name -> AP, nan for an instrument with no positive frame (e.g. absent from the test tracks).
    """
    y_true, y_score = _check_pair(y_true, y_score, ndim=3)
    if y_true.shape[1] != len(instrument_names):
        raise ValueError(f"{y_true.shape[1]} instruments in the rolls but {len(instrument_names)} names")
    return {
        name: frame_average_precision(y_true[:, i], y_score[:, i]) for i, name in enumerate(instrument_names)
    }

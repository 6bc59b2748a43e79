"""``jtm evaluate RUN``: score a downstream run (or a note model) on whole recordings of a split and write
``RUN/metrics.json``.

Whole recordings, not random windows. Every labelled recording of the split is predicted from start to end:
- frame tasks: ``DownstreamModel.predict_frames`` (the chunked runner :mod:`jtm.models.inference`, cutting as
  ``Chunking.for_window`` of the run) cuts the recording into chunks of the training window, each seeing
  ``context_frames`` frames of real audio on both sides of the frames it keeps (default: one eighth of the
  window per side; ``context_frames=0`` gives plain non-overlapping chunks); cores tile the recording, so every
  10 ms frame is predicted exactly once, and the last, partial chunk is zero-padded. ``jtm transcribe`` of the
  run cuts files the same way, so it gives the same probabilities. The stitched probabilities are compared with
  ``track_piano_roll`` of the whole recording.
- classification: ``DownstreamModel.predict_windows`` classifies every window of each recording
  (non-overlapping from the start, plus one end-aligned window for a remainder); scores are reported per
  window and per recording (majority vote over its windows).

Metrics (pooled over the recordings of the split):
- transcription: ``frame_ap`` (sklearn AP micro-averaged over all frame x pitch cells, MusicNet's protocol),
  ``frame_precision/recall/f1/accuracy`` at the threshold tuned on validation (mir_eval.multipitch),
  ``note_precision/recall/f1`` (mir_eval.transcription, onsets within 50 ms, offsets ignored) and
  ``note_offset_precision/recall/f1`` (offsets also within max(20 % of the note, 50 ms)) after turning
  frame probabilities into notes (``jtm.evaluation.notes.roll_to_notes``; reference notes come from the note
  table), and ``per_track`` frame AP.
- pitch-instrument: the same keys on the pitch projection (max over instruments) so they compare with
  transcription runs, plus ``pitch_instrument_ap`` (micro AP over all 11 x 128 outputs) and
  ``ap_per_instrument`` (nan for instruments absent from the split) and ``mean_instrument_ap``.
- classification: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``per_class_f1``, ``confusion`` (per window)
  and the same prefixed ``track_`` for the majority vote; ``RUN/confusion.csv`` and ``RUN/confusion.png``.

Test recordings of held-out timbres (``Store.heldout_timbre``: timbre configurations no training recording
has) are scored apart, with the same threshold: the keys above for them carry the prefix ``heldout_timbre_``
(scalars only), with ``n_tracks_heldout_timbre`` and ``heldout_timbre_tracks``.

A **note model** (:class:`jtm.models.note_transcriber.NoteTranscriber`: a study's notes cell or its ``model/``)
is scored by :func:`evaluate_note_model` as the study scores the cell (:func:`score_notes`: recordings pooled
with silence between them; frame P/R/F1 and AP, ``onset_ap``, ``note_*`` onset-only and ``note_offset_*`` with
offsets, notes decoded from onsets with the thresholds saved in the model), on the test recordings and the
held-out-timbre ones apart.

Also written: ``RUN/excerpt.npz`` (frame tasks): ``truth`` bool (F, 128), ``prob`` float32 (F, 128) of the first
``excerpt_seconds`` of the first recording, with ``threshold``, ``frame_rate`` and ``track_id``; numpy arrays
only (``np.load(..., allow_pickle=False)``), plus ``RUN/excerpt.png``.

Memory: frame probabilities of the whole split are held at once (float16 for pitch-instrument), and sklearn's
AP makes a float64 copy: about 12 bytes per (frame, output) cell. ``max_seconds`` caps each recording.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from jtm.audio import FRAME_RATE, HOP
from jtm.data.instruments import INSTRUMENT_PROGRAMS, MUSICNET_INSTRUMENTS
from jtm.data.labels import N_INSTRUMENTS, track_onset_roll
from jtm.data.store import Store
from jtm.data.tasks import frame_roll, labelled_tracks, task_data
from jtm.errors import JTMError
from jtm.evaluation.metrics import (classification_metrics, frame_average_precision, frame_prf, note_prf,
                                    note_task_metrics, per_instrument_ap)
from jtm.evaluation.notes import MIN_NOTE_FRAMES, NoteList, decode_notes, make_notes, roll_to_notes
from jtm.evaluation.plots import plot_confusion, plot_piano_roll
from jtm.fileio import atomic_path, load_json, write_json_atomic, write_text_atomic
from jtm.models.downstream import DownstreamModel
from jtm.models.inference import Chunking
from jtm.pipelines.arms import ONSET_WIDTH
from jtm.training.config import DownstreamConfig

_NOTE_GAP_SECONDS = 10.0
"""Silence inserted between recordings when pooling their notes, so no note matches across recordings."""

HEADLINE = {"transcription": "frame_ap", "pitch-instrument": "pitch_instrument_ap"}
"""The metric a study reports per task; classification tasks use ``accuracy``."""


def headline_metric(task: str) -> str:
    return HEADLINE.get(task, "accuracy")


def split_tracks_of_run(store: Store, cfg: DownstreamConfig, split: str) -> np.ndarray:
    """Store indices evaluated for ``split``: 'test' (all labelled test recordings), 'val' (the run's
    hold-out), or 'train' (the run's label subset)."""
    data = task_data(store, cfg.task, cfg.label_fraction, cfg.seed, cfg.val_fraction, cfg.subset_seed)
    if split not in ("test", "val", "train"):
        raise JTMError(f"--split must be test, val or train, not {split!r}")
    tracks = getattr(data.splits, split)
    if len(tracks) == 0:
        raise JTMError(f"{store.path}: no labelled {split} recordings for task {cfg.task!r}")
    return tracks


def reference_notes(store: Store, track: int, n_frames: int) -> NoteList:
    """The track's true notes in seconds, clipped to the evaluated frames, duplicates (same onset and pitch on
    several instruments) merged: pitch-level notes, as the transcription metric counts them."""
    notes = store.notes(track)
    sr = float(store.sample_rate)
    end_limit = n_frames * HOP
    keep = notes.start < end_limit
    start = notes.start[keep].astype(np.int64)
    end = np.minimum(notes.end[keep].astype(np.int64), end_limit)
    pitch = notes.pitch[keep].astype(np.int64)
    ok = end > start
    start, end, pitch = start[ok], end[ok], pitch[ok]
    if len(start):
        _, first = np.unique(np.stack([start, pitch], axis=1), axis=0, return_index=True)
        first = np.sort(first)
        start, end, pitch = start[first], end[first], pitch[first]
    return make_notes(start / sr, end / sr, pitch)


def concat_notes(parts: list[tuple[float, NoteList]]) -> NoteList:
    """Pool note lists shifted by their recording's time offset."""
    if not parts:
        return make_notes([], [], np.zeros(0, dtype=np.int16))
    return make_notes(
        np.concatenate([n.onset + off for off, n in parts]), np.concatenate([n.offset + off for off, n in parts]),
        np.concatenate([n.pitch for _, n in parts]), np.concatenate([n.confidence for _, n in parts]),
    )


def _write_excerpt(run: Path, truth: np.ndarray, prob: np.ndarray, threshold: float, track_id: str) -> None:
    with atomic_path(run / "excerpt.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, truth=truth.astype(bool), prob=prob.astype(np.float32),
                                threshold=np.float32(threshold), frame_rate=np.float32(FRAME_RATE),
                                track_id=np.array(str(track_id)))
    if len(truth):
        plot_piano_roll(truth, prob, run / "excerpt.png", frame_rate=FRAME_RATE, threshold=threshold,
                        title=f"track {track_id}: first {len(truth) / FRAME_RATE:.0f} s")


def evaluate_frames(model: DownstreamModel, store: Store, tracks: np.ndarray, cfg: DownstreamConfig, run: Path | None,
                    *, chunking: Chunking, max_seconds: float | None, excerpt_seconds: float,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Predict whole recordings of a frame task (cut by ``chunking``, see :func:`frame_chunking`) and score
    them (see the module docstring)."""
    threshold = 0.5 if model.threshold is None else float(model.threshold)
    limit = None if max_seconds is None else int(max_seconds * store.sample_rate)
    ids = store.tracks["id"].astype(str).to_numpy()
    probs = []
    for k, t in enumerate(tracks):
        t0 = time.perf_counter()
        prob = model.predict_frames(store.audio(int(t))[:limit], cfg.window, chunking.left, chunking.batch_size)
        # halves the largest array of pitch-instrument runs; AP needs only the order
        probs.append(prob.astype(np.float16) if model.task == "pitch-instrument" else prob)
        log(f"  {k + 1}/{len(tracks)} {ids[t]}: {len(prob) / FRAME_RATE:.1f} s in {time.perf_counter() - t0:.1f} s")
    return score_frames(store, tracks, model.task, probs, threshold, run, excerpt_seconds)


def score_frames(store: Store, tracks: np.ndarray, task: str, probs: list[np.ndarray], threshold: float,
                 run: Path | None = None, excerpt_seconds: float = 10.0) -> dict[str, Any]:
    """Score frame probabilities of whole recordings: ``probs[i]`` (F_i, n_out) belongs to ``tracks[i]`` and
    starts at its sample 0. Writes the excerpt of the first recording into ``run`` when given."""
    by_instrument = task == "pitch-instrument"
    ids = store.tracks["id"].astype(str).to_numpy()
    truths, pitch_probs, full_truths = [], [], []
    ref_parts, est_parts, per_track = [], [], []
    offset = 0.0
    for k, (t, prob) in enumerate(zip(tracks, probs)):
        n = len(prob)
        truth = frame_roll(store, int(t), task, n)
        if by_instrument:
            full_truths.append(truth)
            prob = prob.reshape(n, N_INSTRUMENTS, -1).max(axis=1).astype(np.float32)
            truth = truth.reshape(n, N_INSTRUMENTS, -1).any(axis=1)
        truths.append(truth)
        pitch_probs.append(prob)
        ref_parts.append((offset, reference_notes(store, int(t), n)))
        est_parts.append((offset, roll_to_notes(prob, threshold, FRAME_RATE, min_frames=MIN_NOTE_FRAMES)))
        offset += n / FRAME_RATE + _NOTE_GAP_SECONDS
        per_track.append({"id": ids[t], "seconds": n / FRAME_RATE, "frame_ap": frame_average_precision(truth, prob)})
        if k == 0 and run is not None:
            m = min(n, int(excerpt_seconds * FRAME_RATE))
            _write_excerpt(run, truth[:m], prob[:m], threshold, ids[t])
    truth, prob = np.concatenate(truths), np.concatenate(pitch_probs)
    frame = frame_prf(truth, prob, threshold, FRAME_RATE)
    ref_notes, est_notes = concat_notes(ref_parts), concat_notes(est_parts)
    note = note_prf(ref_notes, est_notes)
    note_offset = note_prf(ref_notes, est_notes, offset_ratio=0.2)
    metrics: dict[str, Any] = {
        "frame_ap": frame_average_precision(truth, prob),
        **{f"frame_{k}": v for k, v in frame.items()},
        **{f"note_{k}": v for k, v in note.items()},
        **{f"note_offset_{k}": v for k, v in note_offset.items()},
        "threshold": threshold,
        "n_ref_notes": int(sum(len(n) for _, n in ref_parts)),
        "n_est_notes": int(sum(len(n) for _, n in est_parts)),
        "n_frames": int(len(truth)),
        "positive_rate": float(truth.mean()) if truth.size else float("nan"),
    }
    if by_instrument:
        full_truth = np.concatenate(full_truths)
        full_prob = np.concatenate(probs)
        names = [MUSICNET_INSTRUMENTS[p] for p in INSTRUMENT_PROGRAMS]
        per_inst = per_instrument_ap(full_truth.reshape(len(full_truth), N_INSTRUMENTS, -1),
                                     full_prob.reshape(len(full_prob), N_INSTRUMENTS, -1), names)
        present = [v for v in per_inst.values() if not math.isnan(v)]
        metrics["pitch_instrument_ap"] = frame_average_precision(full_truth, full_prob)
        metrics["mean_instrument_ap"] = float(np.mean(present)) if present else float("nan")
        metrics["ap_per_instrument"] = per_inst
    metrics["per_track"] = per_track
    return metrics


NOTE_GAP_FRAMES = round(_NOTE_GAP_SECONDS * FRAME_RATE)
"""The same silence in frames, where the notes task pools frame rolls and probabilities as well as notes."""


def pool_recordings(store: Store, tracks: np.ndarray, outputs: list[Any]) -> dict[str, Any]:
    """Recordings laid end to end with ``NOTE_GAP_FRAMES`` of silence between them: ``ref`` (NoteList),
    ``truth`` and ``onset_truth`` bool (N, 128), ``frame`` and ``onset`` (N, 128) probabilities (``onset`` None
    for a frame-wise model), where ``outputs[i]`` is (onset, frame) or frame probabilities of ``tracks[i]``."""
    parts: dict[str, list[Any]] = {"truth": [], "onset_truth": [], "frame": [], "onset": []}
    refs, offset = [], 0
    for t, out in zip(tracks, outputs):
        onset, frame = out if isinstance(out, tuple) else (None, out)
        n = len(frame)
        refs.append((offset / FRAME_RATE, reference_notes(store, int(t), n)))
        gap = np.zeros((NOTE_GAP_FRAMES, frame.shape[1]), dtype=np.float32)
        parts["truth"] += [frame_roll(store, int(t), "transcription", n), gap.astype(bool)]
        parts["onset_truth"] += [track_onset_roll(store.notes(int(t)), n, ONSET_WIDTH), gap.astype(bool)]
        parts["frame"] += [frame, gap]
        parts["onset"] += [onset, gap]
        offset += n + NOTE_GAP_FRAMES
    pooled = {k: np.concatenate(v) if v and v[0] is not None else None for k, v in parts.items()}
    pooled["ref"] = concat_notes(refs)
    return pooled


def score_notes(store: Store, tracks: np.ndarray, outputs: list[Any], frame_threshold: float,
                sustain_threshold: float, onset_threshold: float | None) -> dict[str, Any]:
    """The notes task's scores of whole recordings (pooled by :func:`pool_recordings`): frame P/R/F1 at
    ``frame_threshold``, frame AP, onset AP, note F1 onset-only and with offsets
    (:func:`jtm.evaluation.metrics.note_task_metrics`). ``outputs[i]`` is (onset, frame) of a note model, decoded
    from onsets (:func:`decode_notes`, ``onset_threshold`` and ``sustain_threshold``), or the frame probabilities
    of a frame-wise model, decoded from frames at ``sustain_threshold`` (``onset_threshold`` None)."""
    pooled = pool_recordings(store, tracks, outputs)
    if onset_threshold is None:
        est = roll_to_notes(pooled["frame"], sustain_threshold, FRAME_RATE, min_frames=MIN_NOTE_FRAMES)
    else:
        est = decode_notes(pooled["onset"], pooled["frame"], float(onset_threshold), sustain_threshold, FRAME_RATE)
    metrics: dict[str, Any] = note_task_metrics(pooled["truth"], pooled["frame"], frame_threshold, pooled["ref"],
                                                est, pooled["onset_truth"], pooled["onset"], FRAME_RATE)
    metrics.update(threshold=frame_threshold, onset_threshold=onset_threshold, sustain_threshold=sustain_threshold,
                   decoding="onsets" if onset_threshold is not None else "frames")
    return metrics


def _majority(probs: np.ndarray) -> int:
    """The most voted class of a recording's windows; ties go to the higher mean probability."""
    votes = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]).astype(np.float64)
    return int(np.argmax(votes + 1e-6 * probs.mean(axis=0)))


def track_labels(store: Store, tracks: np.ndarray, task: str, classes: list[str]) -> np.ndarray:
    """Class index of each of ``tracks`` in ``classes``: int64 (n,); an unknown class is a JTMError."""
    lookup = {name: i for i, name in enumerate(classes)}
    column = store.tracks[task].astype(str).str.strip().to_numpy()
    ids = store.tracks["id"].astype(str).to_numpy()
    for t in tracks:
        if column[t] not in lookup:
            raise JTMError(f"{store.path}: track {ids[t]} has class {column[t]!r}, unknown to the model "
                           f"(classes {classes}); was the model trained on another store?")
    return np.asarray([lookup[column[t]] for t in tracks], dtype=np.int64)


def evaluate_classification(model: DownstreamModel, store: Store, tracks: np.ndarray, cfg: DownstreamConfig,
                            run: Path | None, *, batch_size: int, max_seconds: float | None,
                            log: Callable[[str], None]) -> dict[str, Any]:
    """Classify every window of whole recordings; score per window and per recording (majority vote)."""
    classes = list(model.classes or [])
    track_labels(store, tracks, model.task, classes)  # refuse unknown classes before any prediction
    ids = store.tracks["id"].astype(str).to_numpy()
    limit = None if max_seconds is None else int(max_seconds * store.sample_rate)
    window_probs = []
    for k, t in enumerate(tracks):
        t0 = time.perf_counter()
        probs, _ = model.predict_windows(store.audio(int(t))[:limit], cfg.window, batch_size)
        window_probs.append(probs)
        log(f"  {k + 1}/{len(tracks)} {ids[t]}: {len(probs)} windows in {time.perf_counter() - t0:.1f} s")
    return score_classification(store, tracks, model.task, classes, window_probs, run)


def score_classification(store: Store, tracks: np.ndarray, task: str, classes: list[str],
                         window_probs: list[np.ndarray], run: Path | None = None) -> dict[str, Any]:
    """Score class probabilities of every window of whole recordings (``window_probs[i]`` (n_i, C) for
    ``tracks[i]``), per window and per recording (majority vote); confusion files go into ``run`` if given."""
    labels = track_labels(store, tracks, task, classes)
    ids = store.tracks["id"].astype(str).to_numpy()
    y_true, y_pred, t_pred, per_track = [], [], [], []
    for t, label, probs in zip(tracks, labels, window_probs):
        pred = probs.argmax(axis=1)
        y_true.append(np.full(len(pred), label))
        y_pred.append(pred)
        t_pred.append(_majority(probs))
        per_track.append({"id": ids[t], "true": classes[label], "predicted": classes[t_pred[-1]],
                          "n_windows": int(len(pred)), "window_accuracy": float((pred == label).mean())})
    window = classification_metrics(np.concatenate(y_true), np.concatenate(y_pred), classes)
    track = classification_metrics(labels, np.asarray(t_pred), classes)
    confusion = np.asarray(window["confusion"])
    if run is not None:
        table = pd.DataFrame(confusion, index=pd.Index(classes, name="true \\ predicted"), columns=classes)
        write_text_atomic(run / "confusion.csv", table.to_csv())
        plot_confusion(confusion, classes, run / "confusion.png", title=f"{task}: windows of {len(tracks)} recordings")
    metrics: dict[str, Any] = dict(window)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        metrics[f"track_{key}"] = track[key]
    metrics["track_confusion"] = track["confusion"]
    metrics["n_windows"] = int(confusion.sum())
    metrics["per_track"] = per_track
    return metrics


def frame_chunking(cfg: DownstreamConfig, context_frames: int | None = None,
                   batch_size: int | None = None) -> Chunking:
    """How a run's recordings are cut for frame predictions: its training window, ``context_frames`` on each side
    (None: the run's ``eval_context_frames``, else an eighth of the window), ``batch_size`` (None: the run's).
    ``jtm transcribe`` derives the same chunking from the run's run.json."""
    context = cfg.eval_context_frames if context_frames is None else context_frames
    return Chunking.for_window(cfg.window, context, batch_size or cfg.batch_size)


HELDOUT_PREFIX = "heldout_timbre_"
"""Prefix of the scores of the held-out-timbre test recordings (``Store.heldout_timbre``), scored apart."""
N_HELDOUT = "n_tracks_heldout_timbre"


def split_heldout_timbre(store: Store, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recordings of the training timbres, held-out-timbre recordings) of ``tracks``; when every recording has
    a held-out timbre they are all scored as the main set (nothing to hold apart)."""
    heldout = store.heldout_timbre(tracks)
    if heldout.all():
        return tracks, tracks[:0]
    return tracks[~heldout], tracks[heldout]


def heldout_scores(metrics: dict[str, Any], tracks: np.ndarray, store: Store, headline: str) -> dict[str, Any]:
    """The scalar scores of the held-out-timbre recordings under ``heldout_timbre_*`` keys, with their count,
    their ids and their headline."""
    ids = store.tracks["id"].astype(str).to_numpy()
    out: dict[str, Any] = {f"{HELDOUT_PREFIX}{k}": v for k, v in metrics.items()
                           if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
    out[f"{HELDOUT_PREFIX}headline"] = metrics.get(headline)
    out[N_HELDOUT] = int(len(tracks))
    out[f"{HELDOUT_PREFIX}tracks"] = ids[tracks].tolist()
    return out


def evaluate_run(run: str | Path, split: str = "test", *, data: str | Path | None = None,
                 context_frames: int | None = None, batch_size: int | None = None, max_seconds: float | None = None,
                 excerpt_seconds: float = 10.0, progress: bool = True) -> dict[str, Any]:
    """Evaluate a finished downstream run, or a note transcriber (a study's notes cell or its ``model/``, see
    :func:`evaluate_note_model`), on whole recordings of ``split``; write ``RUN/metrics.json`` atomically and
    return the metrics. ``data`` overrides the store recorded in ``run.json``. Held-out-timbre recordings are
    scored apart (``heldout_timbre_*`` keys) when the split has them."""
    from jtm.models.note_transcriber import is_note_transcriber

    run = Path(run)
    if is_note_transcriber(run) or is_note_transcriber(run / "model"):
        return evaluate_note_model(run, split, data=data, batch_size=batch_size, max_seconds=max_seconds,
                                   progress=progress)
    if not (run / "run.json").is_file():
        raise JTMError(f"{run}: not a downstream run folder (no run.json)")
    if not (run / "model" / "config.json").is_file():
        raise JTMError(f"{run}: training has not finished (no model/); re-run `jtm downstream` with the same --out")
    cfg = DownstreamConfig.from_dict(load_json(run / "run.json"))
    store = Store.open(data or cfg.data)
    model = DownstreamModel.from_pretrained(run / "model")
    tracks, heldout = split_heldout_timbre(store, split_tracks_of_run(store, cfg, split))
    log: Callable[[str], None] = print if progress else (lambda _msg: None)
    log(f"evaluating {run} on {len(tracks)} {split} recording(s)"
        + (f" and {len(heldout)} of held-out timbres" if len(heldout) else ""))
    t0 = time.perf_counter()
    chunking = frame_chunking(cfg, context_frames, batch_size)

    def scores(subset: np.ndarray, folder: Path | None) -> dict[str, Any]:
        if model.is_frame_task:
            return evaluate_frames(model, store, subset, cfg, folder, chunking=chunking, max_seconds=max_seconds,
                                   excerpt_seconds=excerpt_seconds, log=log)
        return evaluate_classification(model, store, subset, cfg, folder, batch_size=chunking.batch_size,
                                       max_seconds=max_seconds, log=log)

    metrics = scores(tracks, run)
    if len(heldout):
        metrics.update(heldout_scores(scores(heldout, None), heldout, store, headline_metric(cfg.task)))
    ids = store.tracks["id"].astype(str).to_numpy()
    result = {
        "task": cfg.task, "split": split, "headline_metric": headline_metric(cfg.task),
        "headline": metrics[headline_metric(cfg.task)], "encoder": cfg.encoder, "probe": cfg.probe,
        "finetune": cfg.finetune, "features": cfg.features, "label_fraction": cfg.label_fraction,
        "n_tracks": int(len(tracks)), "tracks": ids[tracks].tolist(), "context_frames": chunking.left,
        "max_seconds": max_seconds, "seconds": round(time.perf_counter() - t0, 3), **metrics,
    }
    write_json_atomic(run / "metrics.json", json_safe(result))
    return result


def evaluate_note_model(run: str | Path, split: str = "test", *, data: str | Path | None = None,
                        batch_size: int | None = None, max_seconds: float | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Score a note transcriber (a study's notes cell, or a model folder) on the labelled test recordings: frame
    P/R/F1 and AP, onset AP, note F1 onset-only and with offsets (:func:`score_notes`, as the study scores the
    cell), with the thresholds saved in the model; the held-out-timbre recordings apart (``heldout_timbre_*``).
    Recordings are predicted by :meth:`NoteTranscriber.predict` (streamed, as ``jtm transcribe`` predicts).

    The store is ``data``, else the one of the study the cell belongs to (``study.json`` above it). Writes
    ``RUN/metrics.json`` into the folder given."""
    from jtm.models.note_transcriber import NOTE_TASK, NoteTranscriber, is_note_transcriber

    run = Path(run)
    model = NoteTranscriber.from_pretrained(run if is_note_transcriber(run) else run / "model")
    if split != "test":
        raise JTMError(f"{run}: a note model is scored on the test recordings (its validation and training "
                       "recordings belong to the study that trained it); use --split test")
    store = Store.open(data if data is not None else _study_store(run))
    tracks, heldout = split_heldout_timbre(store, labelled_tracks(store, "transcription", "test"))
    if len(tracks) == 0:
        raise JTMError(f"{store.path}: no labelled test recordings to score")
    log: Callable[[str], None] = print if progress else (lambda _msg: None)
    log(f"evaluating the note model {run} on {len(tracks)} test recording(s)"
        + (f" and {len(heldout)} of held-out timbres" if len(heldout) else ""))
    t0 = time.perf_counter()
    chunking = model.chunking(batch_size=batch_size)
    limit = None if max_seconds is None else int(max_seconds * store.sample_rate)
    ids = store.tracks["id"].astype(str).to_numpy()
    thresholds = model.thresholds

    def scores(subset: np.ndarray) -> dict[str, Any]:
        outputs = []
        for k, t in enumerate(subset):
            started = time.perf_counter()
            outputs.append(model.predict(store.audio(int(t))[:limit], chunking))
            log(f"  {k + 1}/{len(subset)} {ids[t]}: {len(outputs[-1][0]) / FRAME_RATE:.1f} s in "
                f"{time.perf_counter() - started:.1f} s")
        return score_notes(store, subset, outputs, thresholds.frame, thresholds.sustain, thresholds.onset)

    metrics = scores(tracks)
    if len(heldout):
        metrics.update(heldout_scores(scores(heldout), heldout, store, NOTE_HEADLINE))
    result = {"task": NOTE_TASK, "split": split, "headline_metric": NOTE_HEADLINE, "headline": metrics[NOTE_HEADLINE],
              "model": str(run), "n_tracks": int(len(tracks)), "tracks": ids[tracks].tolist(),
              "max_seconds": max_seconds, "seconds": round(time.perf_counter() - t0, 3), **metrics}
    write_json_atomic(run / "metrics.json", json_safe(result))
    return result


NOTE_HEADLINE = "note_f1"
"""The headline of the notes task: note F1, onsets only."""


def _study_store(cell: Path) -> str:
    """The store of the study a notes cell (``STUDY/notes/<method>/f<fraction>/seed<k>``) belongs to."""
    for folder in (cell, *cell.resolve().parents[:5]):
        if (folder / "study.json").is_file():
            study = load_json(folder / "study.json")
            if isinstance(study, dict) and isinstance(study.get("data"), str):
                return study["data"]
    raise JTMError(f"{cell}: not inside a study folder (no study.json above it); name the store with --data")


def json_safe(obj: Any) -> Any:
    """NaN/inf become null so metrics.json is strict JSON (absent classes and instruments have no score)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


TABLE_KEYS = ("frame_ap", "pitch_instrument_ap", "mean_instrument_ap", "frame_precision", "frame_recall", "frame_f1",
              "onset_ap", "note_precision", "note_recall", "note_f1", "note_offset_precision", "note_offset_recall",
              "note_offset_f1", "threshold", "onset_threshold", "sustain_threshold", "accuracy", "balanced_accuracy",
              "macro_f1", "track_accuracy", "track_balanced_accuracy", "track_macro_f1")


def format_metrics(metrics: dict[str, Any]) -> str:
    """A two-column text table of the scalar metrics worth reading."""
    rows = [(k, metrics[k]) for k in TABLE_KEYS if k in metrics and metrics[k] is not None]
    rows += [(f"{HELDOUT_PREFIX}{k}", metrics[f"{HELDOUT_PREFIX}{k}"]) for k in TABLE_KEYS
             if metrics.get(f"{HELDOUT_PREFIX}{k}") is not None and "threshold" not in k]
    rows += [(f"AP {name}", v) for name, v in (metrics.get("ap_per_instrument") or {}).items()
             if v is not None and not (isinstance(v, float) and math.isnan(v))]
    width = max([len(k) for k, _ in rows] + [6])
    head = f"{metrics.get('task', '')} on {metrics.get('n_tracks', '?')} {metrics.get('split', '')} recording(s)"
    if metrics.get(N_HELDOUT):
        head += f" (+ {metrics[N_HELDOUT]} of held-out timbres: {HELDOUT_PREFIX}*)"
    lines = [head, "-" * max(len(head), width + 10)]
    for key, value in rows:
        shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)

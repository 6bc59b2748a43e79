"""``jtm study``: does pretraining help when labels are scarce? The label-efficiency study, with a protocol that
measures labels and nothing else.

For every task x method (arm) x label fraction x seed, one model is trained and scored on the test recordings:

- **Equal budget.** Every run takes the same number of optimizer steps on batches of the same size
  (``steps``, ``batch_size`` windows of ``window`` samples), whatever its label fraction.
- **Selection on validation.** Validation recordings (a seeded hold-out of the training recordings, carved
  before any subset and shared by every fraction and seed) are scored every ``eval_every`` steps; the best
  weights are kept and a run stops after ``patience`` validations without improvement. The learning rate is
  chosen on validation from a log-spaced grid per (arm, fraction), on the first seed; the other seeds reuse it.
  The frame threshold is tuned on validation too. Test recordings are read once, by the selected model.
- **Seeds.** ``seeds`` repeats per cell, each with its own label subset of the same pool (nested across
  fractions), initialisation and batch order; the summary gives the mean, the Student-t 95 % interval and
  min-max. A chance row scores a constant predictor (frame AP = positive rate; majority-class accuracy).
- **Frozen features are cached** (:mod:`jtm.pipelines.features`) and standardised with statistics of the label
  subset; every probe, learning rate and seed reads them from disk.
- **Timbre augmentation** (``augment="eq"``, the spectral arms only): each training crop of log-mel or cqt
  features is filtered by a random smooth equaliser (:mod:`jtm.data.augment`) before standardisation; it is part
  of those cells' configuration.

Arms (``METHODS``); the random and from-scratch arms copy the pretrained encoder's architecture:
    random-linear   the CPC architecture, randomly initialised and frozen, + linear probe
    logmel-linear   log-mel spectrogram + linear probe (the classical MIR front end)
    logmel-mlp      log-mel spectrogram + MLP
    cqt-linear      the gabor encoder's log spectrum at its constant-Q start (what the CPC layers read) + linear
                    probe: the hand-made front end the gabor architecture starts from (needs a gabor --pretrained)
    cpc-linear      the pretrained CPC encoder, frozen, + linear probe
    cpc-mlp         the pretrained CPC encoder, frozen, + MLP
    cpc-finetune    the pretrained CPC encoder fine-tuned with a linear probe
    supervised      the CPC architecture trained end to end from scratch
    random-note, logmel-note, cqt-note, cpc-note
                    a note head (:class:`jtm.models.note_head.NoteHead`: onset and frame outputs, 1-D convolutions
                    over frames) on the frozen features of that front end
    cqt-harmonic    the pitch-equivariant note head (:class:`jtm.models.harmonic_head.HarmonicNoteHead`: harmonic
                    stacking, 2-D convolutions shared by every pitch) on the constant-Q log spectrum

The **notes** task (``--tasks notes``) is transcription read as notes: trained on the same labels (plus each
note's onset frame for note heads), scored on test by frame F1 (mir_eval.multipitch), note F1 onset-only and
note F1 with offsets (mir_eval.transcription, 50 ms; headline: onset-only note F1). Note heads decode notes from
onsets (:func:`jtm.evaluation.notes.decode_notes`), the frozen linear/MLP probes from frames as ``jtm evaluate``
does; both thresholds come from the validation recordings. The note arms run only on the notes task, and the
notes task takes only arms on frozen features; a note head's checkpoint is selected by the mean of validation
frame AP and onset AP.

Layout: ``DIR/study.json`` (the configuration), ``DIR/environment.json``, ``DIR/cache/`` (features),
``DIR/<task>/<method>/f<fraction>/seed<k>/`` a cell: ``cell.json`` (its configuration, the validation score of
every learning rate tried, the selection curve and the test metrics), ``metrics.json`` and ``model/`` (a
:class:`DownstreamModel`, or for a note head a self-contained :class:`~jtm.models.note_transcriber.NoteTranscriber`
with its front end and decoding thresholds; either usable by ``jtm transcribe``/``jtm evaluate``),
``run.json`` (not for note heads)/``splits.json``.
``DIR/results.csv`` has one row per cell, ``DIR/summary.csv`` one per (task, method, fraction) plus the chance
rows, ``DIR/comparisons.csv`` every CPC arm against its baselines seed by seed (a paired difference: seed k of
every arm trains on the same label subset), ``DIR/label_efficiency_<task>.png`` the plot with its bands. A
finished cell is reused on a re-run only when its configuration is unchanged; a changed one is refused (delete the
cell to recompute it).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from jtm.audio import FRAME_RATE
from jtm.data.store import Store
from jtm.data.tasks import frame_roll, is_frame_task, labelled_tracks, positive_weight, task_data
from jtm.errors import JTMError
from jtm.evaluation.metrics import ranking_average_precision, tune_note_thresholds, tune_threshold
from jtm.evaluation.plots import plot_label_efficiency
from jtm.evaluation.stats import chance_row, comparison_pairs, paired_differences, summarize_results
from jtm.fileio import atomic_path, folder_lock, load_json, write_json_atomic
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.models.downstream import load_frontend_source
from jtm.models.logmel import LogMel
from jtm.models.note_transcriber import NoteThresholds, NoteTranscriber
from jtm.pipelines.arms import (NOTE_HEADS, ONSET_MAX_POS_WEIGHT, ONSET_WIDTH, EndToEnd, FrozenNoteHead, FrozenProbe,
                                TaskView, frame_limit)
from jtm.pipelines.evaluate import (NOTE_HEADLINE, headline_metric, json_safe, pool_recordings, score_classification,
                                    score_frames, score_notes, split_heldout_timbre, track_labels)
from jtm.pipelines.features import FeatureCache
from jtm.training.config import DownstreamConfig
from jtm.pipelines.study_config import METHODS, NOTE_TASK, StudyConfig
from jtm.training.runs import changed_keys, refuse_changed_config
from jtm.training.selection import train_selected


def fraction_dir(fraction: float) -> str:
    """``f0.01``, ``f0.1``, ``f1.0``: the folder name of a label fraction."""
    return f"f{float(fraction)!r}"


def cell_dir(out: Path, task: str, method: str, fraction: float, seed: int) -> Path:
    """The folder of one study cell: ``OUT/<task>/<method>/<fraction_dir>/seed<seed>``."""
    return out / task / method / fraction_dir(fraction) / f"seed{int(seed)}"


def parse_list(text: str | Sequence[Any] | None, kind: Callable[[str], Any] = str) -> list[Any]:
    """``"a,b"`` -> ``[kind(a), kind(b)]`` (sequences pass through, converted)."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [kind(str(i).strip()) for i in items if str(i).strip()]


# ------------------------------------------------------------------------------------------- one cell


class _Frontends:
    """The study's front ends and their feature caches, built once and shared by every cell."""

    def __init__(self, cfg: StudyConfig, store: Store, out: Path) -> None:
        self.cfg, self.store, self.cache_root = cfg, store, out / "cache"
        self.pretrained = None if cfg.pretrained is None else load_frontend_source(cfg.pretrained).eval()
        self.architecture = self.pretrained.config if self.pretrained is not None else CPCConfig()
        self._caches: dict[str, FeatureCache] = {}

    def encoder(self, kind: str) -> CPCEncoder:
        if kind == "pretrained":
            assert self.pretrained is not None
            return self.pretrained
        import torch

        torch.manual_seed(self.cfg.seed)  # the random arm: one fixed draw of the architecture, like a checkpoint
        return CPCEncoder(self.architecture).eval()

    def cache(self, kind: str) -> FeatureCache:
        if kind not in self._caches:
            if kind == "logmel":
                frontend: CPCEncoder | LogMel = LogMel()
                layer = "encoder"
            elif kind == "cqt":
                if self.architecture.encoder != "gabor":
                    raise JTMError(f"the cqt arms read the gabor encoder's log spectrum at its constant-Q start; "
                                   f"--pretrained must be a gabor model, not {self.architecture.encoder!r}")
                frontend, layer = self.encoder("random"), "spectrum"  # the filterbank starts the same in every draw
            else:
                frontend, layer = self.encoder(kind), self.cfg.features
            self._caches[kind] = FeatureCache(self.cache_root, self.store, frontend, layer, name=kind)
        return self._caches[kind]


def _headline(task: str) -> str:
    """The metric a study reports per task: note-onset F1 for the notes task, else ``jtm evaluate``'s."""
    return NOTE_HEADLINE if task == NOTE_TASK else headline_metric(task)


def _task_view(cfg: StudyConfig, store: Store, task: str, fraction: float, repeat: int) -> TaskView:
    task = "transcription" if task == NOTE_TASK else task  # the notes task learns from transcription's labels
    data = task_data(store, task, fraction, cfg.seed, cfg.val_fraction, subset_seed=cfg.seed + repeat)
    pos_weight = positive_weight(store, data.splits.train, task, 100.0) if is_frame_task(task) else 1.0
    return TaskView(store, task, data, cfg.window, cfg.batch_size, pos_weight)


def _validation_score(arm: Any, model: Any, view: TaskView, truths: list[np.ndarray], max_seconds: float | None
                      ) -> float:
    """Frame AP (frame tasks) or window accuracy (classification) on the validation recordings; for a note head
    the mean of frame AP and onset AP (rank-based like frame AP, so no threshold is tuned at every validation)."""
    outputs = arm.predict(model, view.data.splits.val, max_seconds)
    if isinstance(arm, FrozenNoteHead):
        truth = np.concatenate(truths)
        onset = np.concatenate([o for o, _ in outputs])
        frame = np.concatenate([f for _, f in outputs])
        frame_ap = ranking_average_precision(truth[:, :128], frame)
        return 0.5 * (frame_ap + ranking_average_precision(truth[:, 128:], onset))
    if view.frame_task:
        return ranking_average_precision(np.concatenate(truths), np.concatenate(outputs))
    hits = [(o.argmax(1) == y).mean() for o, y in zip(outputs, truths)]
    counts = [len(o) for o in outputs]
    return float(np.average(hits, weights=counts))


def _validation_truth(view: TaskView, max_seconds: float | None, arm: Any = None) -> list[np.ndarray]:
    val = view.data.splits.val
    if isinstance(arm, FrozenNoteHead):
        return [arm.targets(int(t), frame_limit(max_seconds, view.store.sample_rate)) for t in val]
    if view.frame_task:
        limit = frame_limit(max_seconds, view.store.sample_rate)
        return [frame_roll(view.store, int(t), view.task)[:limit] for t in val]
    return list(track_labels(view.store, val, view.task, view.data.classes or []))


def run_cell(cfg: StudyConfig, fronts: _Frontends, task: str, method: str, fraction: float, repeat: int,
             lr_choice: float | None, cell: Path) -> dict[str, Any]:
    """Train (over the learning-rate grid, or at ``lr_choice``), select on validation, score on test."""
    spec = METHODS[method]
    view = _task_view(cfg, fronts.store, task, fraction, repeat)
    if len(view.data.splits.val) == 0:
        raise JTMError(f"{fronts.store.path}: no validation recording for {task!r}; the study needs one to select "
                       "models (more recordings, or a larger --val-fraction)")
    if spec.trains_encoder:
        arm: Any = EndToEnd(view, fronts.encoder("pretrained" if spec.finetune else "random"), spec.finetune)
    elif spec.probe == "note":
        arm = FrozenNoteHead(view, fronts.cache(spec.encoder), options=NOTE_HEADS[spec.head], eq=cfg.eq)
    else:
        arm = FrozenProbe(view, fronts.cache(spec.encoder), spec.probe, cfg.hidden, cfg.dropout, eq=cfg.eq)
    lrs = [lr_choice] if lr_choice is not None else list(cfg.encoder_lrs if spec.trains_encoder else cfg.probe_lrs)
    val_truth = _validation_truth(view, cfg.max_val_seconds, arm)
    seed = cfg.seed + repeat
    tried: dict[str, float] = {}
    best = None
    for lr in lrs:
        model, optimizer = arm.build(seed, lr)
        selected = train_selected(model, optimizer, arm.batches(seed), lambda b: arm.loss(model, b),
                                  lambda: _validation_score(arm, model, view, val_truth, cfg.max_val_seconds),
                                  cfg.budget)
        tried[f"{lr:g}"] = selected.val_score
        if best is None or selected.val_score > best[1].val_score or math.isnan(best[1].val_score):
            best = (lr, selected, model)
    assert best is not None
    lr, selected, model = best
    result = _score_cell(cfg, arm, model, view, cell, lr, selected, tried, val_truth, task)
    if not isinstance(arm, FrozenNoteHead):  # a note transcriber is no downstream run: its model/ stands alone
        run = _downstream_config(cfg, view, cell, lr, method, fraction, cfg.seed + repeat)
        write_json_atomic(cell / "run.json", run.to_dict())
    return result


def _score_cell(cfg: StudyConfig, arm: Any, model: Any, view: TaskView, cell: Path, lr: float, selected: Any,
                tried: dict[str, float], val_truth: list[np.ndarray], task: str | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    # Held-out-timbre recordings (jtm data synth --renderings) are scored apart, with the same thresholds, as
    # jtm evaluate splits them.
    test, test_heldout = split_heldout_timbre(view.store, view.data.splits.test)
    threshold = onset_threshold = sustain_threshold = None
    metrics_heldout: dict[str, Any] | None = None
    if task == NOTE_TASK:
        metrics, *rest = _score_notes(cfg, arm, model, view, val_truth,
                                      [test, test_heldout] if len(test_heldout) else [test])
        metrics_heldout = rest[0] if rest else None
        threshold, onset_threshold = metrics["threshold"], metrics["onset_threshold"]
        sustain_threshold = metrics["sustain_threshold"]
    elif view.frame_task:
        val_probs = arm.predict(model, view.data.splits.val, cfg.max_val_seconds)
        pitch = [_pitch_view(p, view.task) for p in val_probs]
        truth = [_pitch_view(t, view.task) for t in val_truth]
        threshold = tune_threshold(np.concatenate(truth), np.concatenate(pitch))
        outputs = arm.predict(model, test, cfg.max_eval_seconds)
        metrics = score_frames(view.store, test, view.task, outputs, threshold, cell)
        if len(test_heldout):
            outputs = arm.predict(model, test_heldout, cfg.max_eval_seconds)
            metrics_heldout = score_frames(view.store, test_heldout, view.task, outputs, threshold)
    else:
        outputs = arm.predict(model, test, cfg.max_eval_seconds)
        metrics = score_classification(view.store, test, view.task, view.data.classes or [], outputs, cell)
        if len(test_heldout):
            outputs = arm.predict(model, test_heldout, cfg.max_eval_seconds)
            metrics_heldout = score_classification(view.store, test_heldout, view.task, view.data.classes or [],
                                                   outputs)
    exported = arm.export(model)
    if isinstance(exported, NoteTranscriber):
        exported.thresholds = NoteThresholds(onset=float(onset_threshold), sustain=float(sustain_threshold),
                                             frame=float(threshold))
    else:
        exported.threshold = threshold
    exported.save_pretrained(cell / "model")
    ids = view.store.tracks["id"].astype(str).to_numpy()
    splits = view.data.splits
    lists = {k: ids[getattr(splits, k)].tolist() for k in ("train", "train_pool", "val")}
    write_json_atomic(cell / "splits.json", {**lists, "test": ids[test].tolist(),
                                             "test_heldout_timbre": ids[test_heldout].tolist()})
    return {"lr": lr, "lrs_tried": tried, "val_score": selected.val_score, "best_step": selected.best_step,
            "steps": selected.steps, "curve": selected.curve, "train_seconds": round(selected.seconds, 3),
            "eval_seconds": round(time.perf_counter() - t0, 3), "threshold": threshold,
            "n_train_tracks": int(len(splits.train)), "n_val": int(len(splits.val)), "n_test": int(len(test)),
            "metrics": metrics, **({"onset_threshold": onset_threshold, "sustain_threshold": sustain_threshold}
                                   if task == NOTE_TASK else {}),
            **({"n_test_heldout_timbre": int(len(test_heldout)), "metrics_heldout_timbre": metrics_heldout}
               if metrics_heldout is not None else {})}


NOTE_METRICS = ("frame_f1", "note_f1", "note_offset_f1", "frame_ap", "onset_ap")
"""Scores of the notes task that summary.csv gives a mean and 95 % interval of, besides the headline."""

HELDOUT_HEADLINE = "heldout_timbre_headline"
"""results.csv column: the headline metric on the held-out-timbre test recordings (when the store has them)."""

def _score_notes(cfg: StudyConfig, arm: Any, model: Any, view: TaskView, val_truth: list[np.ndarray],
                 test_sets: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """The notes task's scores on each set of test recordings in ``test_sets``. Every threshold comes from the
    validation recordings: the frame threshold of the frame metrics (and of frame-wise decoding) by frame F1; a
    note head's two decoding thresholds by :func:`tune_note_thresholds` (onsets by note-onset F1, sustain by note
    F1 with offsets). The test recordings are predicted only once all are fixed."""
    store, val = view.store, view.data.splits.val
    val_out = arm.predict(model, val, cfg.max_val_seconds)
    val_pooled = pool_recordings(store, val, val_out)
    frame_truth = np.concatenate([t[:, :128] for t in val_truth])
    val_frames = np.concatenate([o[1] if isinstance(o, tuple) else o for o in val_out])
    frame_threshold = sustain_threshold = tune_threshold(frame_truth, val_frames)
    onset_threshold = None
    if val_pooled["onset"] is not None:
        onset_threshold, sustain_threshold = tune_note_thresholds(val_pooled["ref"], val_pooled["onset"],
                                                                  val_pooled["frame"], frame_rate=FRAME_RATE)
    return [score_notes(store, tracks, arm.predict(model, tracks, cfg.max_eval_seconds), frame_threshold,
                        sustain_threshold, onset_threshold) for tracks in test_sets]


def _downstream_config(cfg: StudyConfig, view: TaskView, cell: Path, lr: float, method_name: str, fraction: float,
                       seed: int) -> DownstreamConfig:
    """The cell described as a downstream run (``run.json``), so ``jtm evaluate CELL``, ``jtm transcribe --model
    CELL`` and the report treat it like any other: same store, task, splits (hold-out seed, subset seed), window."""
    method = METHODS[method_name]
    encoder = {"pretrained": str(cfg.pretrained), "cqt": "random"}.get(method.encoder, method.encoder)
    return DownstreamConfig(
        data=str(Path(cfg.data).resolve()), out=str(cell), task=view.task, encoder=encoder,
        architecture=cfg.pretrained if method.encoder in ("random", "supervised", "cqt") else None,
        probe=method.probe, finetune=method.finetune, features=_features_read(cfg, method.encoder),
        label_fraction=float(fraction), subset_seed=seed, seed=cfg.seed, val_fraction=cfg.val_fraction,
        window=cfg.window, batch_size=cfg.batch_size, steps=cfg.steps, eval_every=cfg.eval_every, lr=lr,
        hidden=cfg.hidden, probe_dropout=cfg.dropout, tune_max_seconds=cfg.max_val_seconds, progress=False)


def _features_read(cfg: StudyConfig, encoder: str) -> str:
    """The layer an arm's probe reads: the study's ``features`` of a CPC model, the log spectrum for the cqt arm."""
    return {"pretrained": cfg.features, "random": cfg.features, "cqt": "spectrum"}.get(encoder, "context")


def _pitch_view(roll: np.ndarray, task: str) -> np.ndarray:
    """The (F, 128) pitch projection a frame threshold applies to (max over instruments for pitch-instrument)."""
    return roll.reshape(len(roll), 11, -1).max(axis=1) if task == "pitch-instrument" else roll


# ------------------------------------------------------------------------------------------- the study


def _check_study_folder(cfg: StudyConfig, out: Path) -> None:
    # Tasks, fractions, arms and seeds may grow between runs: each cell checks its own configuration.
    ignore = (*StudyConfig.MACHINE_KEYS, "tasks", "fractions", "methods", "seeds", "skip")
    refuse_changed_config(out / "study.json", cfg.to_dict(), ignore, kind="study")


def _row(task: str, method: str, fraction: float, repeat: int, cfg: StudyConfig, result: dict[str, Any],
         cell: Path) -> dict[str, Any]:
    name = _headline(task)
    metrics = result["metrics"]
    row: dict[str, Any] = {"task": task, "method": method, "fraction": float(fraction), "seed": cfg.seed + repeat,
                           "headline_metric": name, "headline": metrics.get(name)}
    for key in ("val_score", "lr", "best_step", "steps", "train_seconds", "eval_seconds", "n_train_tracks",
                "n_val", "n_test"):
        row[key] = result.get(key)
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in row:
            row[key] = value
    heldout = result.get("metrics_heldout_timbre")
    if heldout:
        row["n_test_heldout_timbre"] = result.get("n_test_heldout_timbre")
        row[HELDOUT_HEADLINE] = heldout.get(name)
        row.update({f"heldout_timbre_{k}": v for k, v in heldout.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    row["run"] = str(cell)
    return row


def _chance_rows(cfg: StudyConfig, store: Store) -> list[dict[str, Any]]:
    """A constant predictor per (task, fraction): frame AP = the positive rate of the test frames; majority
    accuracy = the share of test windows whose class is the most common class of the training recordings."""
    rows = []
    for task in cfg.tasks:
        if task == NOTE_TASK:
            continue  # no constant predictor has a meaningful note F1 (it transcribes no note, or every note)
        test = labelled_tracks(store, task, "test")
        if is_frame_task(task):
            limit = frame_limit(cfg.max_eval_seconds, store.sample_rate)
            pos = total = 0
            for t in test:
                roll = _pitch_view(frame_roll(store, int(t), task)[:limit], task)
                pos, total = pos + int(roll.sum()), total + roll.size
            value = pos / max(total, 1)
        else:
            data = task_data(store, task, 1.0, cfg.seed, cfg.val_fraction)
            majority = np.bincount(data.class_of_track[data.splits.train_pool]).argmax()
            windows = np.maximum(store.lengths[test] // cfg.window, 1)
            value = float(windows[data.class_of_track[test] == majority].sum() / windows.sum())
        rows.extend(chance_row(task, f, headline_metric(task), value) for f in cfg.fractions)
    return rows


BEST_CPC = "cpc-best"
"""A derived arm: per (task, fraction, seed), whichever CPC arm scored best on validation (never on test)."""


def best_cpc_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the :data:`BEST_CPC` arm, chosen by ``val_score`` among the cpc-* arms present (when two or more)."""
    # Note heads are left out: their validation score (frame and onset AP) is not the probes' frame AP.
    cpc = df[df["method"].str.startswith("cpc-") & (df["method"] != BEST_CPC) & ~df["method"].str.endswith("-note")]
    if cpc["method"].nunique() < 2:
        return df.iloc[0:0]
    best = cpc.loc[cpc.groupby(["task", "fraction", "seed"])["val_score"].idxmax()]
    return best.assign(chosen=best["method"], method=BEST_CPC)


def _write_tables(out: Path, cfg: StudyConfig, store: Store, rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df = pd.concat([df, best_cpc_rows(df)], ignore_index=True)
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    extra = (NOTE_METRICS if NOTE_TASK in cfg.tasks else ()) + (HELDOUT_HEADLINE,)  # only where the column exists
    summary = pd.concat([summarize_results(df, extra_metrics=extra), pd.DataFrame(_chance_rows(cfg, store))],
                        ignore_index=True)
    with atomic_path(out / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(out / "comparisons.csv") as tmp:
        paired_differences(df, comparison_pairs(df["method"].unique())).to_csv(tmp, index=False)
    return df


def run_study(cfg: StudyConfig, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run (or complete) the study; return the results table (one row per task, method, fraction, seed).

    The study folder is locked (:func:`jtm.fileio.folder_lock`): a second study into it is refused.
    """
    cfg.validate()
    with folder_lock(cfg.out):
        return _run_study(cfg, log)


def _run_study(cfg: StudyConfig, log: Callable[[str], None]) -> pd.DataFrame:
    import torch

    from jtm.environment import environment_info, usable_cpus

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_study_folder(cfg, out)
    torch.set_num_threads(int(cfg.threads or usable_cpus()))
    write_json_atomic(out / "study.json", cfg.to_dict())
    write_json_atomic(out / "environment.json", environment_info())
    store = Store.open(cfg.data)
    fronts = _Frontends(cfg, store, out)
    cells = cfg.cells()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for k, (task, method, fraction) in enumerate(cells, start=1):
        lr_choice = None
        for repeat in range(cfg.seeds):
            cell = cell_dir(out, task, method, fraction, cfg.seed + repeat)
            label = f"[{k}/{len(cells)}] {task} {method} f={fraction:g} seed {cfg.seed + repeat}"
            result, status = _cell_result(cfg, fronts, task, method, fraction, repeat, lr_choice, cell)
            lr_choice = result["lr"]
            rows.append(_row(task, method, fraction, repeat, cfg, result, cell))
            _write_tables(out, cfg, store, rows)
            value = rows[-1]["headline"]
            shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
            log(f"{label}: {rows[-1]['headline_metric']}={shown} lr={result['lr']:g} step {result['best_step']}"
                f"/{result['steps']} ({status}; {time.perf_counter() - started:.0f} s elapsed)")
    df = pd.read_csv(out / "results.csv")
    summary = pd.read_csv(out / "summary.csv")
    for task in cfg.tasks:
        sub = df[df["task"] == task]
        if sub["headline"].notna().any():
            chance = summary[(summary["task"] == task) & (summary["method"] == "chance")]
            plot_label_efficiency(sub, out / f"label_efficiency_{_safe(task)}.png", metric_name=_headline(task),
                                  value_column="headline", title=f"{task}: label efficiency", chance=chance)
    log(f"study done: {len(rows)} runs in {time.perf_counter() - started:.0f} s; results in {out / 'summary.csv'}")
    return df


def _cell_result(cfg: StudyConfig, fronts: _Frontends, task: str, method: str, fraction: float, repeat: int,
                 lr_choice: float | None, cell: Path) -> tuple[dict[str, Any], str]:
    """The cell's result: reused when finished with the same configuration, else computed and saved."""
    config = cfg.cell_config(task, method, fraction, repeat)
    if METHODS[method].probe == "note":
        config["note_head"] = {**NOTE_HEADS[METHODS[method].head], "onset_width": ONSET_WIDTH,
                               "onset_max_pos_weight": ONSET_MAX_POS_WEIGHT,
                               "decoding": "onset threshold by note F1, frame threshold by note F1 with offsets"}
    path = cell / "cell.json"
    if path.is_file():
        saved = load_json(path)
        if saved.get("config") == config:
            return saved["result"], "done earlier, reused"
        changed = changed_keys(saved.get("config") or {}, config)
        raise JTMError(f"{path}: this cell was computed with another configuration ({', '.join(changed)} differ); "
                       "delete the cell folder (or use a new --out) to recompute it")
    cell.mkdir(parents=True, exist_ok=True)
    result = run_cell(cfg, fronts, task, method, fraction, repeat, lr_choice, cell)
    write_json_atomic(cell / "metrics.json", json_safe({"task": task, "split": "test",
                                                         "headline_metric": _headline(task),
                                                         "headline": result["metrics"].get(_headline(task)),
                                                         **result["metrics"]}))
    write_json_atomic(path, json_safe({"config": config, "result": result}))
    return load_json(path)["result"], f"trained {result['train_seconds']:.1f} s, scored {result['eval_seconds']:.1f} s"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

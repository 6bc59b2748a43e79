"""A downstream run from start to finish: train the probe (``jtm.training.downstream``), pick the frame threshold
on the validation recordings (``jtm.evaluation.metrics.tune_threshold``), save ``RUN/model``.

Used by ``jtm downstream`` and ``main.py --supervised``; the run folder's layout is described in
``jtm.training.downstream`` and docs/ARCHITECTURE.md ("Downstream runs").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jtm.data.labels import N_INSTRUMENTS
from jtm.data.store import Store
from jtm.data.tasks import frame_roll
from jtm.evaluation.metrics import tune_threshold
from jtm.models.downstream import DownstreamModel
from jtm.training.config import DownstreamConfig
from jtm.training.downstream import finished_summary, resolve_config, train_downstream


def run_downstream(cfg: DownstreamConfig) -> dict[str, Any]:
    """Train (or resume, or skip when finished) a downstream run; save ``RUN/model``. Returns a summary."""
    cfg = resolve_config(cfg)
    finished = finished_summary(cfg)
    if finished is not None:
        return finished
    run = train_downstream(cfg)
    threshold = None
    if run.is_global_zero:
        if run.model.is_frame_task:
            # Tune on validation recordings; with no hold-out (a single training recording) fall back to the
            # training subset, which flatters the threshold but keeps the run usable.
            splits = run.data.splits
            threshold = tune_frame_threshold(run.model, run.store, splits.val if len(splits.val) else splits.train,
                                             cfg)
            run.model.threshold = threshold
        run.model.save_pretrained(Path(cfg.out) / "model")
    return {"out": str(Path(cfg.out)), "skipped": False, "threshold": threshold, **run.summary}


def tune_frame_threshold(model: DownstreamModel, store: Store, tracks: np.ndarray, cfg: DownstreamConfig) -> float:
    """The frame threshold maximising pooled frame F1 on whole ``tracks`` (validation recordings).

    For pitch-instrument the threshold applies to the pitch projection (max over instruments), the roll on
    which frame and note P/R/F1 are reported.
    """
    truths, probs = [], []
    limit = None if cfg.tune_max_seconds is None else int(cfg.tune_max_seconds * store.sample_rate)
    for t in tracks:
        audio = store.audio(int(t))[:limit]
        prob = model.predict_frames(audio, cfg.window, cfg.context_frames, cfg.batch_size)
        truth = frame_roll(store, int(t), cfg.task, len(prob))
        if cfg.task == "pitch-instrument":
            prob = prob.reshape(len(prob), N_INSTRUMENTS, -1).max(axis=1)
            truth = truth.reshape(len(truth), N_INSTRUMENTS, -1).any(axis=1)
        truths.append(truth)
        probs.append(prob)
    truth, prob = np.concatenate(truths), np.concatenate(probs)
    return tune_threshold(truth, prob) if truth.any() else 0.5

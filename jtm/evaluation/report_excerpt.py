"""The piano roll's test excerpt for ``jtm report``: read from a run's ``excerpt.npz``, or predicted by the
run's model on a stretch of its store's first labelled test track."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jtm.evaluation.report_runs import Missing, read_json


def pitch_view(roll: np.ndarray) -> np.ndarray:
    """(N, 128) as is; (N, 1408) or (N, 11, 128) pitch-instrument rolls -> (N, 128), max over instruments."""
    roll = np.asarray(roll)
    if roll.ndim == 3:
        return roll.max(axis=1)
    if roll.ndim == 2 and roll.shape[1] > 128 and roll.shape[1] % 128 == 0:
        return roll.reshape(roll.shape[0], -1, 128).max(axis=1)
    return roll


def load_excerpt(path: Path) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Read an ``excerpt.npz``: ground truth (N, 128) bool, prediction (N, 128) probabilities, frame rate, caption.

    Accepted keys: ``truth`` / ``target`` / ``y_true`` and ``pred`` / ``prob`` / ``y_score`` / ``scores``;
    optional ``frame_rate``, ``track``, ``start``. Pitch-instrument rolls are reduced to pitch by a max over
    instruments.
    """
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)

        def pick(*names: str) -> np.ndarray:
            for n in names:
                if n in keys:
                    return z[n]
            raise ValueError(f"{path}: none of the arrays {names} (has {sorted(keys)})")

        truth = pitch_view(pick("truth", "target", "y_true", "labels")).astype(bool)
        pred = pitch_view(pick("pred", "prob", "probs", "y_score", "scores")).astype(np.float32)
        rate = float(z["frame_rate"]) if "frame_rate" in keys else 100.0
        where = []
        for k in ("track", "track_id", "id", "start", "start_seconds"):
            if k in keys:
                where.append(f"{k} {z[k].item() if z[k].ndim == 0 else z[k]}")
    caption = f"Test excerpt ({', '.join(where) or path.name}): ground truth (top) against predicted probabilities."
    return truth, pred, rate, caption


def compute_excerpt(run: Path, seconds: float = 10.0) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Predict a ``seconds``-long excerpt from the middle of the first labelled test track of the run's store.

    Needs the run's ``run.json`` to name its store (key ``data``) and that store to have labels. The excerpt is
    cut into chunks as the run's evaluation cuts recordings (``Chunking.for_run``; one chunk without a window
    in run.json) and run through the same chunked runner.
    """
    from jtm.audio import HOP
    from jtm.data.labels import piano_roll
    from jtm.data.store import Store
    from jtm.models.downstream import DownstreamModel
    from jtm.models.inference import Chunking, run_array

    cfg = read_json(run / "run.json")
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not data or not Path(data).exists():
        raise Missing("no excerpt.npz, and the run's store (run.json 'data') is not available to compute one.")
    store = Store.open(data)
    if not store.has_labels:
        raise Missing(f"the store {data} has no note labels.")
    candidates = [int(i) for i in store.indices("test")] or [int(i) for i in store.indices("train")]
    track = next((i for i in candidates if len(store.notes(i).start)), None)
    if track is None:
        raise Missing(f"no track of {data} has notes.")
    audio = store.audio(track)
    n = int(seconds * store.sample_rate) // HOP * HOP
    start = max(0, (audio.size - n) // 2) // HOP * HOP
    clip = audio[start:start + n]
    model = DownstreamModel.from_pretrained(run / "model").eval()
    chunking = Chunking.for_run(cfg) or Chunking(core=max(1, clip.size // HOP), pad_end=False)
    pred = pitch_view(run_array(clip, model.frame_probabilities, chunking, model.n_out))
    truth = piano_roll(store.notes(track), start, pred.shape[0])
    track_id = store.tracks.iloc[track]["id"] if "id" in store.tracks.columns else track
    caption = (f"Test track {track_id}, {start / store.sample_rate:.1f}-{(start + clip.size) / store.sample_rate:.1f} s "
               "(computed for this report): ground truth (top) against predicted probabilities.")
    return truth, pred, store.sample_rate / HOP, caption

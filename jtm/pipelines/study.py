"""``jtm study``: the label-efficiency study. For every task x label fraction x method, one downstream run and
its evaluation on the whole test recordings; then one results table and one plot per task.

Methods (``METHODS``), all probing the same frame rate (100 frames/s):
    random-linear   the CPC architecture, randomly initialised and frozen, + linear probe
    logmel-linear   log-mel spectrogram + linear probe (the classical MIR front end)
    logmel-mlp      log-mel spectrogram + one-hidden-layer MLP
    cpc-linear      the pretrained CPC encoder, frozen, + linear probe
    cpc-mlp         the pretrained CPC encoder, frozen, + MLP
    cpc-finetune    the pretrained CPC encoder fine-tuned with a linear probe
    supervised      the CPC architecture trained end to end from scratch (+ linear output layer)

Layout: ``DIR/<task>/<method>/f<fraction>/`` is a downstream run folder (``jtm downstream``) with its
``metrics.json`` (``jtm evaluate``). A cell whose ``metrics.json`` exists is skipped on a re-run; an interrupted
cell resumes from its checkpoints. ``DIR/results.csv`` / ``DIR/results.json`` (written atomically after every
cell) hold one row per (task, method, fraction): ``headline_metric``/``headline`` (frame AP for transcription,
AP over the 11 x 128 outputs for pitch-instrument, accuracy for classification; ``macro_f1`` is a column too),
every scalar metric, and the cell's cost; ``DIR/label_efficiency_<task>.png`` plots the headline metric against
the fraction, one line per method.

Every fraction of a task shares its validation and test recordings (``jtm.data.subsets``); the random front end
and the from-scratch model copy the pretrained encoder's architecture.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from jtm.errors import JTMError
from jtm.evaluation.plots import plot_label_efficiency
from jtm.fileio import atomic_path, load_json, write_json_atomic
from jtm.pipelines.evaluate import evaluate_run, headline_metric
from jtm.training.downstream import DownstreamConfig, run_downstream


@dataclass(frozen=True)
class Method:
    """A study arm: which front end, which probe, fine-tuned or not."""

    encoder: str  # 'pretrained', 'random', 'logmel' or 'supervised'
    probe: str
    finetune: bool = False


METHODS: dict[str, Method] = {
    "random-linear": Method("random", "linear"),
    "logmel-linear": Method("logmel", "linear"),
    "logmel-mlp": Method("logmel", "mlp"),
    "cpc-linear": Method("pretrained", "linear"),
    "cpc-mlp": Method("pretrained", "mlp"),
    "cpc-finetune": Method("pretrained", "linear", finetune=True),
    "supervised": Method("supervised", "linear"),
}

# Scalar keys of metrics.json that describe the cell rather than score it.
_DESCRIPTIVE = {"encoder", "probe", "finetune", "features", "label_fraction", "split", "task", "headline_metric",
                "headline", "max_seconds", "context_frames", "seconds", "n_tracks"}


def fraction_dir(fraction: float) -> str:
    """``f0.01``, ``f0.1``, ``f1.0``: the folder name of a label fraction."""
    return f"f{float(fraction)!r}"


def parse_list(text: str | Sequence[Any] | None, kind: Callable[[str], Any] = str) -> list[Any]:
    """``"a,b"`` -> ``[kind(a), kind(b)]`` (sequences pass through, converted)."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [kind(str(i).strip()) for i in items if str(i).strip()]


def _row(task: str, method: str, fraction: float, metrics: dict[str, Any], cell: Path,
         train_seconds: float | None, eval_seconds: float | None) -> dict[str, Any]:
    """One results row: identifiers, headline, then every scalar metric of ``metrics.json``."""
    name = headline_metric(task)
    row: dict[str, Any] = {"task": task, "method": method, "fraction": float(fraction),
                           "headline_metric": name, "headline": metrics.get(name)}
    for key, value in metrics.items():
        if key in _DESCRIPTIVE or isinstance(value, (dict, list, str, bool)):
            continue
        row[key] = value
    run = load_json(cell / "run.json") if (cell / "run.json").is_file() else {}
    row.update({"n_test": metrics.get("n_tracks"), "seed": run.get("seed"), "epochs": run.get("epochs"),
                "train_seconds": train_seconds, "eval_seconds": eval_seconds, "run": str(cell)})
    splits = cell / "splits.json"
    if splits.is_file():
        s = load_json(splits)
        row["n_train_tracks"] = len(s.get("train", []))
        row["n_val"] = len(s.get("val", []))
    return row


def _write_results(out: Path, rows: list[dict[str, Any]], full: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_json_atomic(out / "results.json", [_json_safe(r) for r in full])
    return df


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_study(
    data: str | Path,
    out: str | Path,
    *,
    pretrained: str | Path | None = None,
    tasks: Sequence[str] = ("transcription",),
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    methods: Sequence[str] | None = None,
    epochs: int = 10,
    finetune_epochs: int | None = None,
    batch_size: int = 8,
    window: int = 20480,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.1,
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    max_eval_seconds: float | None = None,
    tune_max_seconds: float | None = None,
    class_weights: bool = False,
    hidden: int = 512,
    max_memory_gb: float | None = None,
    threads: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run (or complete) the study; return the results table (one row per task, method, fraction).

    ``progress`` shows the per-run Lightning bars; ``log`` receives one line per cell (with elapsed time) and
    an overall counter. Per-cell cost is bounded by ``epochs``, ``limit_train_batches``, ``limit_val_batches``,
    ``max_eval_seconds`` (seconds of each test recording) and ``tune_max_seconds`` (of each validation
    recording, for the threshold). ``finetune_epochs`` (default ``epochs``) applies to cpc-finetune and
    supervised, the arms that train an encoder.
    """
    out = Path(out)
    methods = list(METHODS) if not methods else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise JTMError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    needs_cpc = [m for m in methods if METHODS[m].encoder in ("pretrained", "random", "supervised")]
    if pretrained is None and any(METHODS[m].encoder == "pretrained" for m in methods):
        raise JTMError(f"methods {', '.join(m for m in needs_cpc if METHODS[m].encoder == 'pretrained')} "
                       "need --pretrained RUN (a CPC pretraining run or its encoder/)")
    fractions = [float(f) for f in fractions]
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise JTMError(f"label fractions must lie in (0, 1], got {f}")
    if not tasks:
        raise JTMError("no task given")
    out.mkdir(parents=True, exist_ok=True)
    base = DownstreamConfig(
        data=str(data), out="", batch_size=batch_size, window=window, lr=lr, seed=seed, val_fraction=val_fraction,
        limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches, class_weights=class_weights,
        hidden=hidden, max_memory_gb=max_memory_gb, threads=threads, progress=progress,
        tune_max_seconds=tune_max_seconds, architecture=None if pretrained is None else str(pretrained),
    )
    cells = [(t, m, f) for t in tasks for m in methods for f in sorted(fractions)]
    rows: list[dict[str, Any]] = []
    full: list[dict[str, Any]] = []
    started = time.perf_counter()
    for k, (task, method, fraction) in enumerate(cells, start=1):
        spec = METHODS[method]
        cell = out / task / method / fraction_dir(fraction)
        label = f"[{k}/{len(cells)}] {task} {method} f={fraction:g}"
        t0 = time.perf_counter()
        train_s = eval_s = None
        if (cell / "metrics.json").is_file():
            metrics = load_json(cell / "metrics.json")
            status = "done earlier, skipped"
        else:
            trains_encoder = spec.finetune or spec.encoder == "supervised"
            cfg = dataclasses.replace(
                base, out=str(cell), task=task, probe=spec.probe, finetune=spec.finetune, label_fraction=fraction,
                encoder=str(pretrained) if spec.encoder == "pretrained" else spec.encoder,
                architecture=base.architecture if spec.encoder in ("random", "supervised") else None,
                epochs=(finetune_epochs or epochs) if trains_encoder else epochs,
            )
            log(f"{label}: training ...")
            run_downstream(cfg)
            train_s = time.perf_counter() - t0
            metrics = evaluate_run(cell, "test", max_seconds=max_eval_seconds, progress=False)
            eval_s = time.perf_counter() - t0 - train_s
            status = f"trained {train_s:.1f} s, evaluated {eval_s:.1f} s"
        row = _row(task, method, fraction, metrics, cell, train_s, eval_s)
        rows.append(row)
        full.append({**{k: row[k] for k in ("task", "method", "fraction", "headline_metric", "headline", "run")},
                     "train_seconds": train_s, "eval_seconds": eval_s, "metrics": metrics})
        df = _write_results(out, rows, full)
        value = row["headline"]
        shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
        log(f"{label}: {row['headline_metric']}={shown} ({status}; {time.perf_counter() - started:.0f} s elapsed)")
    for task in tasks:
        sub = df[df["task"] == task]
        if sub["headline"].notna().any():
            plot_label_efficiency(sub, out / f"label_efficiency_{_safe(task)}.png", metric_name=headline_metric(task),
                                  value_column="headline", title=f"{task}: label efficiency")
    log(f"study done: {len(cells)} cells in {time.perf_counter() - started:.0f} s; results in {out / 'results.csv'}")
    return df


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

"""Evaluation figures as PNG files or PNG bytes (for embedding in the HTML report).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly instead of through pyplot: no
global backend switch (importing jtm never changes a user's notebook backend), no global figure registry to
leak memory in long loops, and it works headless. Every ``plot_*`` writes its PNG atomically; the matching
``*_png`` function returns the same image as bytes.
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from jtm.evaluation.stats import CHANCE, mean_ci
from jtm.fileio import atomic_path

_DPI = 110


def _to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _write(path: str | Path, png: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


# ------------------------------------------------------------------------------------------------ confusion


def confusion_png(confusion: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], title: str = "") -> bytes:
    """Confusion matrix (C, C) (rows = true class, columns = predicted) as PNG bytes.

    Colours are row-normalised (per-class recall) so rare classes are as visible as common ones; the cells
    are annotated with raw counts when there are at most 25 classes.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix is {cm.shape}, expected ({n}, {n}) for {n} class names")
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 2.5 + 0.45 * n
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "Confusion matrix")
    return _to_png(fig)


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write ``confusion_png`` to ``path``."""
    return _write(path, confusion_png(confusion, class_names, title))


# ----------------------------------------------------------------------------------------------- piano roll


def piano_roll_png(
    truth: np.ndarray,
    pred: np.ndarray,
    frame_rate: float = 100.0,
    title: str = "",
    threshold: float = 0.5,
) -> bytes:
    """Ground truth against prediction, two stacked panels sharing axes, as PNG bytes.

    Args:
        truth: (N, P) bool reference roll (column = MIDI pitch).
        pred: (N, P) predicted probabilities.
        threshold: used only to decide which pitches count as active when cropping.

    The pitch axis is cropped to pitches active in either roll (+-2 semitones of margin) so a piece's few
    octaves fill the figure; the prediction panel outlines the true notes so misses and false alarms stand out.
    """
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=np.float64)
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} must be the same (frames, pitches) shape")
    n_frames, n_pitches = truth.shape
    active = np.flatnonzero(truth.any(axis=0) | (pred >= threshold).any(axis=0))
    if active.size:
        lo, hi = max(int(active.min()) - 2, 0), min(int(active.max()) + 2, n_pitches - 1)
    else:  # nothing to show: fall back to the piano's range
        lo, hi = min(21, n_pitches - 1), min(108, n_pitches - 1)
    extent = (0.0, n_frames / frame_rate, lo - 0.5, hi + 0.5)
    width = float(np.clip(n_frames / frame_rate * 0.6, 6.0, 16.0))
    fig = Figure(figsize=(width, 6.5))
    ax_t, ax_p = fig.subplots(2, 1, sharex=True, sharey=True)
    ax_t.imshow(truth[:, lo:hi + 1].T, origin="lower", aspect="auto", extent=extent, cmap="Greys",
                vmin=0, vmax=1, interpolation="nearest")
    ax_t.set_title("ground truth")
    im = ax_p.imshow(pred[:, lo:hi + 1].T, origin="lower", aspect="auto", extent=extent, cmap="magma",
                     vmin=0, vmax=1, interpolation="nearest")
    if truth[:, lo:hi + 1].any():
        # Contour of the true notes on top of the probabilities: cell centres at (frame + 0.5) / rate, pitch.
        x = (np.arange(n_frames) + 0.5) / frame_rate
        y = np.arange(lo, hi + 1)
        ax_p.contour(x, y, truth[:, lo:hi + 1].T.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
    ax_p.set_title("prediction (probability); cyan = true notes")
    fig.colorbar(im, ax=[ax_t, ax_p], fraction=0.03, pad=0.02, label="probability")
    for ax in (ax_t, ax_p):
        ax.set_ylabel("MIDI pitch")
    ax_p.set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return _to_png(fig)


def plot_piano_roll(
    truth: np.ndarray,
    pred: np.ndarray,
    path: str | Path,
    frame_rate: float = 100.0,
    title: str = "",
    threshold: float = 0.5,
) -> Path:
    """Write ``piano_roll_png`` to ``path``."""
    return _write(path, piano_roll_png(truth, pred, frame_rate, title, threshold))


# ------------------------------------------------------------------------------------------- label efficiency


def label_efficiency_png(
    results: pd.DataFrame,
    metric_name: str = "metric",
    value_column: str | None = None,
    title: str = "",
    chance: float | pd.DataFrame | None = None,
) -> bytes:
    """Metric against the fraction of labels used, one line per method, log x axis, as PNG bytes.

    ``results`` has columns ``method``, ``fraction`` (0 < f <= 1) and the metric's values in ``value_column``
    (default: the column named ``metric_name`` if there is one, else ``value``); one row per run. Repeated runs
    (seeds) of one (method, fraction) are drawn as their mean, the single runs as faint dots and the 95 %
    confidence interval of the mean (:func:`jtm.evaluation.stats.mean_ci`) as a band.

    ``chance`` is the score of a constant predictor, drawn as a dashed grey line: a number, or rows with
    ``fraction`` and ``mean`` (summary.csv's chance rows) or the value column. Rows of ``results`` whose
    method is ``"chance"`` are used the same way.
    """
    if value_column is None:
        value_column = metric_name if metric_name in results.columns else "value"
    missing = {"method", "fraction", value_column} - set(results.columns)
    if missing:
        raise ValueError(f"label-efficiency results lack column(s) {sorted(missing)}")
    runs = results.dropna(subset=[value_column])
    is_chance = runs["method"].astype(str) == CHANCE
    if chance is None and is_chance.any():
        chance = runs[is_chance]
    runs = runs[~is_chance]
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    stats = _seed_stats(runs, value_column)
    for method, grp in stats.groupby("method", sort=True):
        _draw_method(ax, str(method), grp, runs[runs["method"] == method], value_column)
    drew_chance = _draw_chance(ax, chance, value_column)
    ax.set_xscale("log")
    fractions = np.sort(stats["fraction"].unique())
    if fractions.size:
        ax.set_xticks(fractions, labels=[f"{f:g}" for f in fractions])
        ax.minorticks_off()
    ax.set_xlabel("fraction of labelled training data")
    ax.set_ylabel(metric_name)
    ax.grid(True, alpha=0.3)
    if not stats.empty or drew_chance:
        ax.legend(fontsize=8)
    ax.set_title(title or f"Label efficiency: {metric_name}")
    return _to_png(fig)


def _seed_stats(runs: pd.DataFrame, value_column: str) -> pd.DataFrame:
    """Columns method, fraction, mean, std, ci95_low, ci95_high, min, max, n: one row per (method, fraction)."""
    rows = []
    for (method, fraction), grp in runs.groupby(["method", "fraction"]):
        s = mean_ci(pd.to_numeric(grp[value_column], errors="coerce"))
        rows.append({"method": method, "fraction": float(fraction), **s})
    return pd.DataFrame(rows, columns=["method", "fraction", "mean", "std", "ci95_low", "ci95_high", "min", "max", "n"])


def _draw_method(ax: Axes, method: str, stats: pd.DataFrame, runs: pd.DataFrame, value_column: str) -> None:
    """One method's mean line, and with several seeds its single runs and CI band."""
    stats = stats.sort_values("fraction")
    several = bool((stats["n"] > 1).any())
    label = f"{method} (n={int(stats['n'].max())})" if several else method
    (line,) = ax.plot(stats["fraction"], stats["mean"], marker="o", ms=4, label=label)
    if several:
        ax.fill_between(stats["fraction"], stats["ci95_low"], stats["ci95_high"], color=line.get_color(),
                        alpha=0.18, linewidth=0)
        ax.scatter(runs["fraction"], runs[value_column], s=9, color=line.get_color(), alpha=0.45, linewidths=0)


def _draw_chance(ax: Axes, chance: float | pd.DataFrame | None, value_column: str) -> bool:
    """The chance level as a dashed grey line (horizontal when it does not depend on the fraction)."""
    if chance is None:
        return False
    style = {"color": "grey", "linestyle": "--", "linewidth": 1.2, "label": "chance"}
    if not isinstance(chance, pd.DataFrame):
        if not np.isfinite(float(chance)):
            return False
        ax.axhline(float(chance), **style)
        return True
    column = next((c for c in ("mean", value_column, "value", "headline") if c in chance.columns), None)
    if column is None or "fraction" not in chance.columns:
        raise ValueError("chance rows need a 'fraction' and a 'mean' (or value) column")
    level = chance.dropna(subset=[column]).groupby("fraction")[column].mean().sort_index()
    if level.empty:
        return False
    if np.allclose(level.to_numpy(), level.iloc[0]):
        ax.axhline(float(level.iloc[0]), **style)
    else:  # e.g. the majority class of a small labelled subset differs between fractions
        ax.plot(level.index.to_numpy(dtype=float), level.to_numpy(dtype=float), **style)
    return True


def plot_label_efficiency(
    results: pd.DataFrame,
    path: str | Path,
    metric_name: str = "metric",
    value_column: str | None = None,
    title: str = "",
    chance: float | pd.DataFrame | None = None,
) -> Path:
    """Write ``label_efficiency_png`` to ``path``."""
    return _write(path, label_efficiency_png(results, metric_name, value_column, title, chance))


# --------------------------------------------------------------------------------------------- CPC training

_CPC_COLUMN = re.compile(r"^(train|val)/(loss|acc)_k(\d+)(?:_(epoch|step))?$")
# When Lightning logs both, the per-epoch aggregate is the smoother, comparable-to-validation curve.
_SUFFIX_PREFERENCE = {None: 0, "epoch": 1, "step": 2}


def cpc_curve_columns(columns: Sequence[str]) -> dict[tuple[str, str], dict[int, str]]:
    """Map (split, kind) -> {k: column} for a Lightning CSVLogger's metric names.

    Accepts ``train/loss_k3`` as well as ``train/loss_k3_epoch`` / ``train/loss_k3_step``; if several exist for
    one k the plain name wins, then ``_epoch``, then ``_step``.
    """
    found: dict[tuple[str, str], dict[int, tuple[int, str]]] = {}
    for col in columns:
        m = _CPC_COLUMN.match(str(col))
        if not m:
            continue
        split, kind, k, suffix = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        rank = _SUFFIX_PREFERENCE[suffix]
        slot = found.setdefault((split, kind), {})
        if k not in slot or rank < slot[k][0]:
            slot[k] = (rank, str(col))
    return {key: {k: col for k, (_, col) in sorted(v.items())} for key, v in found.items()}


def cpc_curves_png(metrics: pd.DataFrame | str | Path, title: str = "") -> bytes:
    """CPC training curves as PNG bytes: 2 x 2 panels (train loss, train acc, val loss, val acc), one line per
    prediction step k coloured along a colormap.

    Args:
        metrics: a Lightning CSVLogger ``metrics.csv`` (path or DataFrame) with ``step`` (and/or ``epoch``) and
            ``{train,val}/{loss,acc}_k{k}[_epoch|_step]`` columns. Rows are sparse (NaN where a metric was not
            logged at that row), so each curve uses only its own non-NaN rows. x is ``step`` when present,
            else ``epoch``, else the row number.
    """
    df = pd.read_csv(metrics) if isinstance(metrics, (str, Path)) else metrics
    cols = cpc_curve_columns(list(df.columns))
    x_name = "step" if "step" in df.columns else "epoch" if "epoch" in df.columns else None
    x_all = df[x_name].to_numpy(dtype=np.float64) if x_name else np.arange(len(df), dtype=np.float64)
    ks = sorted({k for v in cols.values() for k in v}) or [1]
    cmap = colormaps["viridis"]
    norm = Normalize(vmin=min(ks), vmax=max(max(ks), min(ks) + 1))
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2, sharex=True)
    for row, split in enumerate(("train", "val")):
        for col_i, kind in enumerate(("loss", "acc")):
            ax = axes[row, col_i]
            series = cols.get((split, kind), {})
            for k, name in series.items():
                y = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
                ok = np.isfinite(y) & np.isfinite(x_all)
                if ok.any():
                    # Validation is logged once per epoch, often a single point early on: show markers then.
                    ax.plot(x_all[ok], y[ok], color=cmap(norm(k)), lw=1.2, marker="o" if ok.sum() < 3 else None,
                            ms=3)
            if not series:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_title(f"{split} {'loss' if kind == 'loss' else 'accuracy'}")
            ax.set_ylabel("InfoNCE loss" if kind == "loss" else "accuracy")
            if kind == "acc" and series:
                ax.set_ylim(bottom=0.0)
            ax.grid(True, alpha=0.3)
            if row == 1:
                ax.set_xlabel(x_name or "row")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, fraction=0.025, pad=0.02, label="prediction step k")
    fig.suptitle(title or "CPC training")
    return _to_png(fig)


def plot_cpc_curves(metrics: pd.DataFrame | str | Path, path: str | Path, title: str = "") -> Path:
    """Write ``cpc_curves_png`` to ``path``."""
    return _write(path, cpc_curves_png(metrics, title))

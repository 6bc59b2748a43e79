"""A study's results in ``jtm report``: label-efficiency figures, the spread tables (mean ± 95 % CI over seeds
per method and label fraction, chance last) and a compact per-run table.

Reads ``results.csv`` / ``summary.csv`` through :mod:`jtm.evaluation.report_runs`; tables and figures are
built with :mod:`jtm.evaluation.report_html`. Older tables (one row per cell, long or wide by metric) are
accepted too.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from jtm.evaluation.report_html import esc, html_table, img, table
from jtm.evaluation.report_runs import load_results, load_summary
from jtm.evaluation.stats import CHANCE


def chance_rows(summary: pd.DataFrame | None, task: str) -> pd.DataFrame | None:
    """The chance rows (method "chance") of one task in a summary table, or None when it has none."""
    if summary is None or "method" not in summary.columns:
        return None
    rows = summary[summary["method"].astype(str) == CHANCE]
    if "task" in rows.columns:
        rows = rows[rows["task"].astype(str) == str(task)]
    return rows if not rows.empty else None


def _metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a wide results table: numeric columns that are not identifiers."""
    ids = {"fraction", "seed", "n_train", "n_labelled", "epochs", "threshold", "n_ref_notes", "n_est_notes",
           "seconds", "n_test", "n_val", "n_train_tracks", "n_windows", "n_test_heldout_timbre", "onset_threshold",
           "sustain_threshold"}
    return [c for c in df.columns if c not in ids and pd.api.types.is_numeric_dtype(df[c])]


PRIMARY_METRICS = ("frame_ap", "note_f1", "frame_f1", "accuracy", "balanced_accuracy", "macro_f1", "value")
"""Preferred metrics for the label-efficiency plot, in order."""


def _long_results(df: pd.DataFrame) -> pd.DataFrame:
    """Normalise a results table to long form: columns task, method, fraction, metric, value.

    Accepts a long table (``metric`` and ``value`` columns) or a wide one (one column per metric); ``method``
    defaults to a ``frontend`` / ``encoder`` column when there is no ``method``.
    """
    df = df.copy()
    if "method" not in df.columns:
        for alt in ("frontend", "encoder", "model"):
            if alt in df.columns:
                df["method"] = df[alt].astype(str)
                break
        else:
            df["method"] = "model"
    if "task" not in df.columns:
        df["task"] = "task"
    if "fraction" not in df.columns:
        raise ValueError("results.csv has no 'fraction' column")
    if {"metric", "value"} <= set(df.columns):
        return df[["task", "method", "fraction", "metric", "value"]]
    metrics = [c for c in _metric_columns(df) if c not in ("method", "task")]
    if not metrics:
        raise ValueError("results.csv has no numeric metric column")
    return df.melt(id_vars=["task", "method", "fraction"], value_vars=metrics, var_name="metric", value_name="value")


def primary_metric(metrics: Iterable[str]) -> str | None:
    """The metric a task's label-efficiency plot shows: the first of :data:`PRIMARY_METRICS` present."""
    available = [m for m in metrics]
    for m in PRIMARY_METRICS:
        if m in available:
            return m
    return available[0] if available else None



def label_efficiency_figures(study: Path) -> list[str]:
    """One ``<figure>`` per task of a study: every run's test score (the seeds give the CI band) and the
    chance level from summary.csv."""
    from jtm.evaluation.plots import label_efficiency_png

    results = load_results(study)
    summary = load_summary(study, results)
    seeded = "seed" in results.columns and results["seed"].nunique() > 1
    band = (" Line: mean over seeds; band: 95 % confidence interval of the mean; dots: single seeds."
            if seeded else "")
    figs = []
    for task, metric, sub in label_efficiency_series(results):
        chance = chance_rows(summary, task)
        png = label_efficiency_png(sub, metric_name=metric, value_column="value",
                                   title=f"{task}: {metric} vs labelled fraction", chance=chance)
        dashed = " Dashed grey: chance (a constant predictor)." if chance is not None else ""
        figs.append(img(png, f"label efficiency of {task} ({metric})",
                        f"{task}: {metric} on the test recordings against the fraction of labelled training "
                        f"recordings, one line per method.{band}{dashed}"))
    return figs


def label_efficiency_series(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(task, metric name, rows with columns method, fraction, value) for each task of a results table.

    A study's table names each task's headline metric (``headline_metric`` / ``headline`` columns); other
    tables fall back to the first of :data:`PRIMARY_METRICS` they have.
    """
    out = []
    if {"headline", "headline_metric"} <= set(df.columns):
        df = df.copy()
        if "task" not in df.columns:
            df["task"] = "task"
        for task, grp in df.groupby("task", sort=False):
            grp = grp.dropna(subset=["headline"])
            if grp.empty:
                continue
            metric = str(grp["headline_metric"].iloc[0])
            out.append((str(task), metric, grp.assign(value=grp["headline"].astype(float))[
                ["method", "fraction", "value"]]))
        return out
    long = _long_results(df).dropna(subset=["value"])
    for task, grp in long.groupby("task", sort=False):
        metric = primary_metric(grp["metric"].unique())
        if metric is not None:
            out.append((str(task), metric, grp[grp["metric"] == metric][["method", "fraction", "value"]]))
    return out



def study_results_html(study: Path, name: str) -> str:
    """A study's results: with seeds, the spread tables per task and the per-seed rows folded away; for an
    old-format study (one row per cell) its results.csv as a table."""
    results = load_results(study)
    summary = load_summary(study, results)
    if summary is None:
        return f"<h3>{esc(name)}: results.csv</h3>" + table(results_summary(results))
    per_seed = table(results_summary(results))
    return (f"<h3>{esc(name)}</h3>" + summary_tables(summary) + comparison_tables(results) + metric_tables(results)
            + f"<details><summary>Every run ({len(results)} rows of results.csv)</summary>{per_seed}</details>")


def summary_tables(summary: pd.DataFrame) -> str:
    """Per task: the test score as mean ± 95 % CI half-width over seeds (rows: methods, chance last; columns:
    label fractions), then the learning rates chosen on validation."""
    df = summary.copy()
    if "task" not in df.columns:
        df["task"] = "task"
    parts = []
    for task, grp in df.groupby("task", sort=False):
        metrics = grp["headline_metric"].dropna() if "headline_metric" in grp else pd.Series(dtype=object)
        metric = str(metrics.iloc[0]) if len(metrics) else "score"
        fractions = sorted(float(f) for f in grp["fraction"].unique())
        methods = list(dict.fromkeys(str(m) for m in grp["method"]))
        methods = [m for m in methods if m != CHANCE] + [m for m in methods if m == CHANCE]
        cells = {(str(r["method"]), float(r["fraction"])): r for _, r in grp.iterrows()}
        parts.append(f"<h4>{esc(task)}: test {esc(metric)}, mean ± 95 % CI half-width over seeds "
                     "(min–max below; hover a cell for details)</h4>")
        parts.append(_grid_table(methods, fractions, lambda m, f: _spread_cell(cells.get((m, f)))))
        if "lrs" in grp.columns and grp["lrs"].notna().any():
            learned = [m for m in methods if m != CHANCE]
            parts.append(f"<p>Learning rate chosen on validation, per seed ({esc(task)}):</p>")
            parts.append(_grid_table(learned, fractions, lambda m, f: _lrs_cell(cells.get((m, f))), "spread lrs"))
    return "".join(parts)


def comparison_tables(results: pd.DataFrame) -> str:
    """Per task, every CPC arm against its baselines, seed by seed on the same label subsets
    (:func:`jtm.evaluation.stats.paired_differences`): mean difference, its 95 % CI and the seeds won, one
    column per fraction. Empty when there is no such pair (or no seeds)."""
    from jtm.evaluation.stats import comparison_pairs, paired_differences

    if not {"task", "method", "fraction", "seed", "headline"} <= set(results.columns):
        return ""
    diffs = paired_differences(results, comparison_pairs(results["method"].astype(str).unique()))
    parts = []
    for task, grp in diffs.groupby("task", sort=False):
        fractions = sorted(float(f) for f in grp["fraction"].unique())
        cells = {(f"{r['method']} − {r['baseline']}", float(r["fraction"])): r for _, r in grp.iterrows()}
        names = list(dict.fromkeys(name for name, _ in cells))
        parts.append(f"<h4>{esc(task)}: paired differences, method − baseline on the same label subsets, mean "
                     "[95 % CI], seeds won</h4>")
        parts.append(_grid_table(names, fractions, lambda m, f: _difference_cell(cells.get((m, f)))))
    return "".join(parts)


def _difference_cell(row: pd.Series | None) -> str:
    if row is None:
        return "<td></td>"
    from jtm.evaluation.stats import format_difference

    return f'<td class="num">{esc(format_difference(row))}</td>'


NOTE_COLUMNS = (("frame_f1", "frame F1"), ("note_f1", "note F1"), ("note_offset_f1", "note F1 with offsets"))
"""The notes task's scores in the report, besides its headline table (results.csv columns, labels)."""
HELDOUT_PREFIX = "heldout_timbre_"
"""results.csv columns of the held-out-timbre test recordings carry this prefix."""


def metric_tables(results: pd.DataFrame) -> str:
    """Per task, when results.csv has more than the headline to show: the notes task's frame F1, note F1 and
    note F1 with offsets, and any task's scores on the held-out-timbre test recordings, as mean ± 95 % CI
    half-width over seeds (rows: method and label fraction; columns: metrics)."""
    if not {"task", "method", "fraction", "seed"} <= set(results.columns):
        return ""
    parts = []
    for task, grp in results.groupby("task", sort=False):
        columns = _metric_columns_of(str(task), grp)
        if not columns:
            continue
        heldout = any(c.startswith(HELDOUT_PREFIX) for c, _ in columns)
        parts.append(f"<h4>{esc(task)}: test scores, mean ± 95 % CI half-width over seeds"
                     + (" (held-out timbres: the test recordings of timbre configurations no training recording "
                        "has, scored apart with the same thresholds)" if heldout else "") + "</h4>")
        parts.append(_metric_table(grp, columns))
    return "".join(parts)


def _metric_columns_of(task: str, grp: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, label) of the metrics shown for one task: [] when there is nothing beyond the headline."""
    def present(column: str) -> bool:
        return column in grp.columns and pd.to_numeric(grp[column], errors="coerce").notna().any()

    base = [(c, label) for c, label in NOTE_COLUMNS if task == "notes" and present(c)]
    if not base and present("headline"):
        names = grp["headline_metric"].dropna() if "headline_metric" in grp.columns else pd.Series(dtype=object)
        base = [("headline", str(names.iloc[0]) if len(names) else "headline")]
    heldout = [(f"{HELDOUT_PREFIX}{c}", f"held-out timbres: {label}") for c, label in base
               if present(f"{HELDOUT_PREFIX}{c}")]
    return base + heldout if task == "notes" or heldout else []


def _metric_table(grp: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> str:
    """Rows (method, fraction) of one task, one mean ± CI cell per metric column."""
    from jtm.evaluation.stats import mean_ci

    head = ("<tr><th>method</th><th>fraction</th>" + "".join(f"<th>{esc(label)}</th>" for _, label in columns)
            + "</tr>")
    rows = []
    for (method, fraction), cell in grp.groupby(["method", "fraction"], sort=False):
        tds = []
        for column, _ in columns:
            s = mean_ci(pd.to_numeric(cell[column], errors="coerce").dropna())
            tds.append(_spread_cell(pd.Series({**s, "n_seeds": s["n"]}) if s["n"] else None))
        rows.append(f"<tr><th>{esc(method)}</th><td class=\"num\">{esc(f'{float(fraction):g}')}</td>"
                    + "".join(tds) + "</tr>")
    return html_table(head, rows, css_class="spread")


def _grid_table(methods: Sequence[str], fractions: Sequence[float], cell: Callable[[str, float], str],
                css_class: str = "spread") -> str:
    """A methods x fractions table whose ``<td>`` cells come from ``cell(method, fraction)``."""
    head = "<tr><th>method \\ fraction</th>" + "".join(f"<th>{esc(f'{f:g}')}</th>" for f in fractions) + "</tr>"
    rows = [f"<tr><th>{esc(m)}</th>" + "".join(cell(m, f) for f in fractions) + "</tr>" for m in methods]
    return html_table(head, rows, css_class=css_class)


def _num(row: pd.Series, key: str) -> float:
    try:
        return float(row.get(key))
    except (TypeError, ValueError):
        return float("nan")


def _spread_cell(row: pd.Series | None) -> str:
    """``0.412 ± 0.031`` with min–max on a small second line and n, the interval and the learning rates in the
    title; a single seed (or the chance level) shows just its value."""
    if row is None or not math.isfinite(_num(row, "mean")):
        return "<td></td>"
    mean, lo, hi = _num(row, "mean"), _num(row, "ci95_low"), _num(row, "ci95_high")
    n = int(_num(row, "n_seeds")) if math.isfinite(_num(row, "n_seeds")) else 1
    tip = [f"n = {n} seed{'s' if n != 1 else ''}"]
    text = f"{mean:.3f}"
    extra = ""
    if n > 1 and math.isfinite(lo) and math.isfinite(hi):
        text += f" ± {(hi - lo) / 2:.3f}"
        tip.append(f"95 % CI {lo:.3f}–{hi:.3f}")
    mn, mx = _num(row, "min"), _num(row, "max")
    if n > 1 and math.isfinite(mn) and math.isfinite(mx):
        extra = f'<span class="range">{mn:.3f}–{mx:.3f}</span>'
        tip.append(f"min {mn:.3f}, max {mx:.3f}")
    lrs = row.get("lrs")
    if isinstance(lrs, str) and lrs:
        tip.append(f"lr {lrs}")
    return f'<td class="num" title="{esc("; ".join(tip))}">{esc(text)}{extra}</td>'


def _lrs_cell(row: pd.Series | None) -> str:
    lrs = row.get("lrs") if row is not None else None
    text = lrs.replace(",", ", ") if isinstance(lrs, str) else ""
    return f'<td class="num">{esc(text)}</td>'


RESULT_COLUMNS = ("task", "method", "fraction", "seed", "headline_metric", "headline", "val_score", "lr",
                  "best_step", "steps", "frame_ap", "frame_f1", "note_f1", "note_offset_f1", "onset_ap",
                  "heldout_timbre_headline", "n_test_heldout_timbre",
                  "accuracy", "balanced_accuracy", "macro_f1", "track_accuracy", "n_train_tracks", "n_test",
                  "train_seconds", "eval_seconds")
"""Columns of a study's results.csv shown in the report (when present), in this order."""


def results_summary(df: pd.DataFrame) -> pd.DataFrame:
    """A compact view of a results table: a study's key columns, or for other tables the mean over seeds of
    each (task, method, fraction), wide by metric."""
    if "headline" in df.columns:
        cols = [c for c in RESULT_COLUMNS if c in df.columns and (c in ("task", "method", "fraction")
                                                                   or df[c].notna().any())]
        return df[cols]
    try:
        long = _long_results(df)
    except ValueError:
        return df
    wide = (long.dropna(subset=["value"]).groupby(["task", "method", "fraction", "metric"])["value"].mean()
            .unstack("metric").reset_index())
    wide.columns.name = None
    return wide.sort_values(["task", "method", "fraction"]).reset_index(drop=True)

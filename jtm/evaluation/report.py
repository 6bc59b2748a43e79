"""``jtm report``: one self-contained HTML page about pretraining runs, downstream runs and studies.

Inputs are folders; each is searched (a few levels deep) for
- pretraining runs: ``run.json`` + ``encoder/`` or ``logs/`` (``jtm pretrain``),
- downstream runs: ``model/config.json`` (``jtm downstream``), with ``metrics.json`` once evaluated and an
  optional ``excerpt.npz`` (a test excerpt's ground truth and prediction),
- studies: ``results.csv`` (``jtm study``; one row per run, or per cell in older studies), with the optional
  ``summary.csv`` (mean, 95 % CI and chosen learning rates per cell, chance rows), ``study.json`` and
  ``environment.json``,
so a demo folder, a study folder or single run folders can all be passed.

Sections (each an ``<section id=...>``): ``overview``, ``cpc-training``, ``label-efficiency``, ``results``,
``confusion``, ``piano-roll``, ``configuration``, ``data``, ``environment``. A section without input keeps its
heading and says why it is empty; a section whose input is broken says what failed. Building a section never
aborts the report. Figures are PNG bytes embedded as ``data:`` URIs, all text goes through ``html.escape`` and
the page is written atomically.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jtm.evaluation import report_template as tpl
from jtm.evaluation.stats import CHANCE, summarize_results
from jtm.fileio import load_json, write_text_atomic

SECTIONS: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("cpc-training", "CPC training curves"),
    ("label-efficiency", "Label efficiency"),
    ("results", "Results table"),
    ("confusion", "Confusion matrices"),
    ("piano-roll", "Piano roll of a test excerpt"),
    ("configuration", "Configuration"),
    ("data", "Data"),
    ("environment", "Environment"),
)
"""(id, heading) of every section, in page order."""

_SKIP_DIRS = {"checkpoints", "logs", "encoder", "model", "shards", "train_data", "test_data", "train_labels",
              "test_labels", "__pycache__"}
_MAX_DEPTH = 5  # DEMO/study/<task>/<method>/f<fraction>/seed<k>


class Missing(Exception):
    """A section has no input: its message is shown as the section's note."""


# ------------------------------------------------------------------------------------------ discovery


@dataclass
class Found:
    """The runs and studies found under the report's inputs (each list sorted, without duplicates)."""

    pretrain: list[Path] = field(default_factory=list)
    downstream: list[Path] = field(default_factory=list)
    studies: list[Path] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.pretrain or self.downstream or self.studies)


def classify(folder: Path) -> set[str]:
    """Which kinds of jtm output ``folder`` itself is: a subset of {"pretrain", "downstream", "study"}."""
    kinds: set[str] = set()
    if (folder / "model" / "config.json").is_file():
        kinds.add("downstream")
    elif (folder / "run.json").is_file() and ((folder / "encoder").is_dir() or (folder / "logs").is_dir()):
        try:
            cfg = load_json(folder / "run.json")
        except Exception:
            cfg = None
        # A downstream run that has not saved its model yet also has run.json + logs/; its config names a task.
        if isinstance(cfg, dict) and "task" in cfg:
            kinds.add("downstream")
        else:
            kinds.add("pretrain")
    if (folder / "results.csv").is_file():
        kinds.add("study")
    return kinds


def discover(inputs: Iterable[str | Path]) -> Found:
    """Find runs and studies in and below each input folder (at most a few levels down).

    Raises FileNotFoundError for an input that does not exist.
    """
    seen: dict[str, set[Path]] = {"pretrain": set(), "downstream": set(), "study": set()}

    def walk(folder: Path, depth: int) -> None:
        kinds = classify(folder)
        for kind in kinds:
            seen[kind].add(folder.resolve())
        if depth >= _MAX_DEPTH:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name in _SKIP_DIRS or child.name.startswith("."):
                continue
            walk(child, depth + 1)

    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run or study folder")
        walk(path if path.is_dir() else path.parent, 0)
    return Found(sorted(seen["pretrain"]), sorted(seen["downstream"]), sorted(seen["study"]))


# ------------------------------------------------------------------------------------------ HTML helpers


def esc(value: object) -> str:
    """HTML-escape any value's text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def img(png: bytes, alt: str, caption: str | None = None) -> str:
    """A ``<figure>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def fmt_value(value: object) -> str:
    """Numbers to 4 significant digits (ints as ints), NaN/None as an empty cell, anything else as text."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return ""
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(value)


def table(df: pd.DataFrame, max_rows: int = 500) -> str:
    """An escaped HTML table of a DataFrame (numbers right-aligned); long tables are cut with a note."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for record in df.head(max_rows).itertuples(index=False):
        cells = []
        for v in record:
            numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{esc(fmt_value(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = note(f"{len(df) - max_rows} more rows not shown.") if len(df) > max_rows else ""
    return html_table(f"<tr>{head}</tr>", rows, css_class="data") + more


def html_table(head: str, rows: Sequence[str], css_class: str = "") -> str:
    """A table from ready HTML (``head``: the header's ``<tr>``s, may be empty; ``rows``: body ``<tr>``s),
    inside a ``div.table-wrap`` so a wide table scrolls sideways instead of running off the page."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    thead = f"<thead>{head}</thead>" if head else ""
    return f'<div class="table-wrap"><table{cls}>{thead}<tbody>{"".join(rows)}</tbody></table></div>'


def key_values(d: dict[str, Any]) -> str:
    """A two-column table of a flat dict (nested values shown as compact JSON)."""
    rows = []
    for k, v in d.items():
        text = json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else fmt_value(v)
        rows.append(f"<tr><th>{esc(k)}</th><td>{esc(text)}</td></tr>")
    return html_table("", rows)


def json_block(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=2, default=str))}</pre>"


def _label(path: Path, root: Path | None) -> str:
    """A short name for a run: its path relative to the common root when possible."""
    if root is not None:
        try:
            rel = path.relative_to(root)
            return str(rel) if str(rel) != "." else path.name
        except ValueError:
            pass
    return str(path)


# ------------------------------------------------------------------------------------------ sections


@dataclass
class Context:
    """What the section builders share: the discovered runs and a common root for short names."""

    found: Found
    root: Path | None
    inputs: list[Path]

    def name(self, path: Path) -> str:
        return _label(path, self.root)


def _read_json(path: Path) -> Any:
    return load_json(path) if path.is_file() else None


def section_overview(ctx: Context) -> str:
    f = ctx.found
    rows = pd.DataFrame(
        [("pretraining runs", len(f.pretrain)), ("downstream runs", len(f.downstream)), ("studies", len(f.studies))],
        columns=["found", "count"],
    )
    inputs = "".join(f"<li><code>{esc(p)}</code></li>" for p in ctx.inputs)
    body = f"<p>Inputs:</p><ul>{inputs}</ul>{table(rows)}"
    if f.empty:
        body += note("No jtm run or study folder was found under the inputs; every section below is empty.")
    return body


def section_cpc(ctx: Context) -> str:
    from jtm.evaluation.plots import cpc_curves_png

    if not ctx.found.pretrain:
        raise Missing("No pretraining run (a folder with run.json and logs/) was given.")
    parts = []
    for run in ctx.found.pretrain:
        parts.append(f"<h3>{esc(ctx.name(run))}</h3>")
        try:
            metrics = training_log(run)
        except FileNotFoundError as e:
            parts.append(note(f"{e} (training has not logged yet)."))
            continue
        try:
            png = cpc_curves_png(metrics, title=f"CPC training: {ctx.name(run)}")
        except Exception as e:  # one broken log must not hide the other runs
            parts.append(_error(f"could not plot the training log of {ctx.name(run)}", e))
            continue
        parts.append(img(png, f"CPC loss and accuracy per prediction step for {ctx.name(run)}",
                         "InfoNCE loss and prediction accuracy for each step k = 1..K, train and validation."))
        final = _read_json(run / "metrics.json")
        if isinstance(final, dict) and final:
            parts.append(_final_cpc_table(final))
    return "".join(parts)


def training_log(run: Path) -> pd.DataFrame:
    """Everything a pretraining run logged (all starts stitched by ``jtm.training.logs.read_metrics``);
    falls back to a single ``logs/metrics.csv``. Raises FileNotFoundError when there is no log."""
    from jtm.training.logs import read_metrics

    try:
        return read_metrics(run)
    except FileNotFoundError:
        legacy = run / "logs" / "metrics.csv"
        if legacy.is_file():
            return pd.read_csv(legacy)
        raise


def _final_cpc_table(metrics: dict[str, float]) -> str:
    """Final per-step accuracy/loss of a pretraining run as a small table (k as rows)."""
    rows: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        for split in ("train", "val"):
            for kind in ("loss", "acc"):
                prefix = f"{split}/{kind}_k"
                if key.startswith(prefix):
                    rest = key[len(prefix):].removesuffix("_epoch")
                    if rest.isdigit():
                        rows.setdefault(int(rest), {})[f"{split} {kind}"] = value
    if not rows:
        return ""
    df = pd.DataFrame([{"k": k, **v} for k, v in sorted(rows.items())])
    return "<p>Final values per prediction step:</p>" + table(df)


def load_results(study: Path) -> pd.DataFrame:
    """A study's ``results.csv`` as a DataFrame."""
    return pd.read_csv(study / "results.csv")


def load_summary(study: Path, results: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """A study's ``summary.csv`` (mean, CI and learning rates per task x method x fraction, chance rows too).

    A study that has per-seed results (``seed`` and ``headline`` columns) but no summary.csv yet (still
    running) gets one computed here without chance rows; an old-format study (one row per cell) gets None.
    """
    if (study / "summary.csv").is_file():
        return pd.read_csv(study / "summary.csv")
    results = load_results(study) if results is None else results
    if {"seed", "headline", "task", "method", "fraction"} <= set(results.columns):
        return summarize_results(results.dropna(subset=["headline"]))
    return None


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
           "seconds", "n_test", "n_val", "n_train_tracks", "n_windows"}
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


def section_label_efficiency(ctx: Context) -> str:
    if not ctx.found.studies:
        raise Missing("No study (a folder with results.csv from jtm study) was given.")
    parts = []
    for study in ctx.found.studies:
        parts.append(f"<h3>{esc(ctx.name(study))}</h3>")
        figs = label_efficiency_figures(study)
        parts.append(f'<div class="grid">{"".join(figs)}</div>' if figs else note("results.csv has no values yet."))
    return "".join(parts)


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


def section_results(ctx: Context) -> str:
    if not ctx.found.studies and not ctx.found.downstream:
        raise Missing("No study results.csv or evaluated downstream run was given.")
    parts = []
    for study in ctx.found.studies:
        parts.append(study_results_html(study, ctx.name(study)))
    evaluated = []
    for run in ctx.found.downstream:
        metrics = _read_json(run / "metrics.json")
        if isinstance(metrics, dict):
            flat = {k: v for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            evaluated.append({"run": ctx.name(run), **flat})
    if evaluated:
        parts.append("<h3>Evaluated downstream runs (metrics.json)</h3>")
        parts.append(table(pd.DataFrame(evaluated)))
    elif not ctx.found.studies:
        raise Missing("The downstream runs have no metrics.json yet (run jtm evaluate).")
    return "".join(parts)


def study_results_html(study: Path, name: str) -> str:
    """A study's results: with seeds, the spread tables per task and the per-seed rows folded away; for an
    old-format study (one row per cell) its results.csv as a table."""
    results = load_results(study)
    summary = load_summary(study, results)
    if summary is None:
        return f"<h3>{esc(name)}: results.csv</h3>" + table(results_summary(results))
    per_seed = table(results_summary(results))
    return (f"<h3>{esc(name)}</h3>" + summary_tables(summary)
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
                  "best_step", "steps", "frame_ap", "frame_f1", "note_f1",
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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _find_confusions(obj: Any, path: str = "") -> list[tuple[str, list[list[int]], list[str]]]:
    """Every ``{"confusion": [[...]], "class_names": [...]}`` inside a metrics JSON, with where it was."""
    found = []
    if isinstance(obj, dict):
        if isinstance(obj.get("class_names"), list):
            # evaluate_run writes the per-window matrix (what the headline accuracy scores) as "confusion";
            # its per-recording "track_confusion" counts only a handful of test pieces and is left to the table.
            if isinstance(obj.get("confusion"), list):
                found.append((f"{path}.windows" if path else "windows", obj["confusion"], obj["class_names"]))
        for k, v in obj.items():
            if k not in ("confusion", "track_confusion", "class_names"):
                found.extend(_find_confusions(v, f"{path}.{k}" if path else str(k)))
    return found


def representative_runs(runs: Sequence[Path]) -> list[Path]:
    """One downstream run per arm (task, front end, probe, fine-tuning): the one with the most labels.

    A study has a run per label fraction; figures of every one would repeat themselves, the largest fraction
    shows what each arm can do.
    """
    best: dict[tuple, tuple[float, Path]] = {}
    for run in runs:
        cfg = _read_json(run / "run.json")
        cfg = cfg if isinstance(cfg, dict) else {}
        key = (cfg.get("task"), cfg.get("encoder"), cfg.get("probe"), cfg.get("finetune"), cfg.get("features"))
        if key == (None,) * 5:
            key = (str(run),)  # not a jtm downstream run.json: keep every such run
        fraction = float(cfg.get("label_fraction") or 0.0)
        if key not in best or fraction > best[key][0]:
            best[key] = (fraction, run)
    return sorted(run for _, run in best.values())


def section_confusion(ctx: Context) -> str:
    from jtm.evaluation.plots import confusion_png

    figs = []
    for run in representative_runs(ctx.found.downstream):
        metrics = _read_json(run / "metrics.json")
        for where, cm, names in _find_confusions(metrics):
            title = ctx.name(run) + (f" ({where})" if where else "")
            try:
                figs.append(img(confusion_png(cm, names, title=title), f"confusion matrix of {title}", title))
            except Exception as e:
                figs.append(_error(f"could not draw the confusion matrix of {title}", e))
    if not figs:
        raise Missing("No evaluated classification run (metrics.json with a confusion matrix) was given.")
    return f'<div class="grid">{"".join(figs)}</div>'


def _frame_task(run: Path) -> str | None:
    cfg = _read_json(run / "model" / "config.json")
    task = cfg.get("task") if isinstance(cfg, dict) else None
    return task if task in ("transcription", "pitch-instrument") else None


def section_piano_roll(ctx: Context, compute: bool = True) -> str:
    from jtm.evaluation.plots import piano_roll_png

    runs = [r for r in representative_runs(ctx.found.downstream) if _frame_task(r)]
    if not runs:
        raise Missing("No transcription or pitch-instrument downstream run was given.")
    # One figure per run with a saved excerpt; computing one is slow, so only for the first run without.
    parts, computed = [], False
    for run in runs:
        excerpt = run / "excerpt.npz"
        try:
            if excerpt.is_file():
                truth, pred, rate, caption = load_excerpt(excerpt)
            elif compute and not computed:
                truth, pred, rate, caption = compute_excerpt(run)
                computed = True
            else:
                continue
            parts.append(f"<h3>{esc(ctx.name(run))}</h3>")
            parts.append(img(piano_roll_png(truth, pred, frame_rate=rate, title=ctx.name(run)),
                             f"piano roll of {ctx.name(run)}", caption))
        except Missing as e:
            parts.append(note(f"{ctx.name(run)}: {e}"))
        except Exception as e:
            parts.append(_error(f"could not draw a piano roll for {ctx.name(run)}", e))
    if not parts:
        raise Missing("No excerpt could be drawn.")
    return "".join(parts)


def _pitch_view(roll: np.ndarray) -> np.ndarray:
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

        truth = _pitch_view(pick("truth", "target", "y_true", "labels")).astype(bool)
        pred = _pitch_view(pick("pred", "prob", "probs", "y_score", "scores")).astype(np.float32)
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

    cfg = _read_json(run / "run.json")
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
    pred = _pitch_view(run_array(clip, model.frame_probabilities, chunking, model.n_out))
    truth = piano_roll(store.notes(track), start, pred.shape[0])
    track_id = store.tracks.iloc[track]["id"] if "id" in store.tracks.columns else track
    caption = (f"Test track {track_id}, {start / store.sample_rate:.1f}-{(start + clip.size) / store.sample_rate:.1f} s "
               "(computed for this report): ground truth (top) against predicted probabilities.")
    return truth, pred, store.sample_rate / HOP, caption


def _top_folders(ctx: Context) -> list[Path]:
    """The input folders and the studies, resolved and without duplicates (a study folder given as the input
    is both, and its study.json / environment.json must be shown once)."""
    folders = [p if p.is_dir() else p.parent for p in ctx.inputs]
    return list(dict.fromkeys(p.resolve() for p in [*folders, *ctx.found.studies]))


CONFIG_COLUMNS = ("task", "encoder", "probe", "finetune", "features", "label_fraction", "epochs", "window",
                  "batch_size", "lr", "seed", "threshold")
"""Settings of downstream runs shown side by side in the configuration section."""


def section_configuration(ctx: Context) -> str:
    parts = []
    for folder in _top_folders(ctx):
        for name in ("demo.json", "study.json"):
            cfg = _read_json(folder / name)
            if cfg is not None:
                parts.append(f"<h3>{esc(ctx.name(folder))}/{esc(name)}</h3>{json_block(cfg)}")
    for run in ctx.found.pretrain:
        cfg = _read_json(run / "run.json")
        if cfg is not None:
            parts.append(f"<h3>Pretraining: {esc(ctx.name(run))}/run.json</h3>{json_block(cfg)}")
    rows, details = [], []
    for run in ctx.found.downstream:
        cfg = _read_json(run / "run.json")
        if not isinstance(cfg, dict):
            continue
        model_cfg = _read_json(run / "model" / "config.json")
        threshold = model_cfg.get("threshold") if isinstance(model_cfg, dict) else None
        rows.append({"run": ctx.name(run), **{k: cfg.get(k) for k in CONFIG_COLUMNS if k != "threshold"},
                     "threshold": threshold})
        details.append(f"<details><summary>{esc(ctx.name(run))}/run.json</summary>{json_block(cfg)}</details>")
    if rows:
        df = pd.DataFrame(rows)
        df = df[[c for c in df.columns if df[c].notna().any()]]
        parts.append("<h3>Downstream runs</h3>" + table(df.astype(object).where(df.notna(), None)))
        parts.append("".join(details))
    if not parts:
        raise Missing("No run.json was found.")
    return "".join(parts)


def _stores(ctx: Context) -> list[Path]:
    """The prepared stores the runs were trained on (``data`` in their run.json), in order, without duplicates."""
    stores: dict[Path, None] = {}
    for run in ctx.found.pretrain + ctx.found.downstream + ctx.found.studies:
        for name in ("run.json", "study.json"):
            cfg = _read_json(run / name)
            data = cfg.get("data") if isinstance(cfg, dict) else None
            if isinstance(data, str) and data:
                stores[Path(data).resolve()] = None
    return list(stores)


def section_data(ctx: Context) -> str:
    from jtm.data.store import Store

    stores = _stores(ctx)
    if not stores:
        raise Missing("No run names its prepared store (run.json 'data').")
    parts = []
    for path in stores:
        parts.append(f"<h3><code>{esc(path)}</code></h3>")
        if not (path / "store.json").is_file():
            parts.append(note("The store is not available on this machine."))
            continue
        try:
            summary = Store.open(path).summary()
        except Exception as e:
            parts.append(_error(f"could not open the store {path}", e))
            continue
        parts.append(data_summary_html(summary))
    return "".join(parts)


def data_summary_html(summary: dict[str, Any]) -> str:
    """Store.summary() as tables: counts per split, then composers and ensembles."""
    top = {k: v for k, v in summary.items() if k not in ("composers", "ensembles")}
    splits = sorted(set(top.get("n_tracks", {})) | set(top.get("minutes", {})))
    out = []
    if splits:
        df = pd.DataFrame({"split": splits,
                           "pieces": [top.get("n_tracks", {}).get(s) for s in splits],
                           "minutes": [top.get("minutes", {}).get(s) for s in splits]})
        out.append(table(df))
    rest = {k: v for k, v in top.items() if k not in ("n_tracks", "minutes")}
    if rest:
        out.append(key_values(rest))
    for key, label in (("ensembles", "ensemble"), ("composers", "composer")):
        counts = summary.get(key)
        if counts:
            out.append(f"<p>{esc(key.capitalize())} ({len(counts)}):</p>")
            out.append(table(pd.DataFrame({label: list(counts), "pieces": list(counts.values())})))
    return "".join(out)


def section_environment(ctx: Context) -> str:
    from jtm.environment import environment_info

    info = environment_info()
    body = "<p>Where this report was generated:</p>" + key_values(info)
    recorded = []
    for run in dict.fromkeys([*_top_folders(ctx), *ctx.found.pretrain, *ctx.found.downstream]):
        env = _read_json(run / "environment.json")
        if isinstance(env, dict):
            recorded.append(f"<h3>{esc(ctx.name(run))}/environment.json</h3>" + key_values(env))
    return body + "".join(recorded)


def _error(what: str, e: BaseException) -> str:
    return f'<p class="error">{esc(what)}: {esc(type(e).__name__)}: {esc(e)}</p>'


BUILDERS: dict[str, Callable[[Context], str]] = {
    "overview": section_overview,
    "cpc-training": section_cpc,
    "label-efficiency": section_label_efficiency,
    "results": section_results,
    "confusion": section_confusion,
    "piano-roll": section_piano_roll,
    "configuration": section_configuration,
    "data": section_data,
    "environment": section_environment,
}


def render_report(inputs: Sequence[str | Path], title: str = "JTM report",
                  log: Callable[[str], None] | None = None) -> str:
    """Build the report's HTML (a complete document) for the runs and studies under ``inputs``."""
    from jtm import __version__

    paths = [Path(p) for p in inputs]
    found = discover(paths)
    everything = found.pretrain + found.downstream + found.studies
    root: Path | None = None
    if everything:
        common = Path(_common_path([str(p) for p in everything]))
        root = common if common.is_dir() else common.parent
    ctx = Context(found=found, root=root, inputs=paths)
    sections, nav = [], []
    for sid, heading in SECTIONS:
        if log is not None:
            log(f"report: {heading.lower()}")
        try:
            body = BUILDERS[sid](ctx)
        except Missing as e:
            body = note(str(e))
        except Exception as e:  # a broken input must cost one section, never the report
            body = _error("this section could not be built", e)
        sections.append(tpl.SECTION.format(id=esc(sid), title=esc(heading), body=body))
        nav.append(tpl.NAV_LINK.format(id=esc(sid), title=esc(heading)))
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    subtitle = "".join(f"<p><code>{esc(p)}</code></p>" for p in paths)
    return tpl.PAGE.format(title=esc(title), subtitle=subtitle, nav=" ".join(nav), sections="".join(sections),
                           version=esc(__version__), generated=esc(generated))


def _common_path(paths: list[str]) -> str:
    return os.path.commonpath(paths)


def write_report(inputs: Sequence[str | Path], out: str | Path, title: str = "JTM report",
                 log: Callable[[str], None] | None = None) -> Path:
    """Render the report for ``inputs`` and write it atomically to ``out``; returns ``out``."""
    out = Path(out)
    write_text_atomic(out, render_report(inputs, title=title, log=log))
    return out

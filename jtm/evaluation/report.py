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

The work is split by job: :mod:`~jtm.evaluation.report_runs` finds the runs and reads their files,
:mod:`~jtm.evaluation.report_sections` (with :mod:`~jtm.evaluation.report_study` for a study's results and
:mod:`~jtm.evaluation.report_excerpt` for the piano roll's excerpt) builds each section, and
:mod:`~jtm.evaluation.report_html` with :mod:`~jtm.evaluation.report_template` renders the page. This module
composes them and keeps the names other code imports from ``jtm.evaluation.report``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from jtm.evaluation.report_excerpt import compute_excerpt, load_excerpt
from jtm.evaluation.report_html import esc, fmt_value, html_table, img, json_block, key_values, note, page, table
from jtm.evaluation.report_runs import (Found, Missing, classify, common_root, discover, load_results, load_summary,
                                        representative_runs, training_log)
from jtm.evaluation.report_sections import (BUILDERS, CONFIG_COLUMNS, SECTIONS, Context, build_sections,
                                            data_summary_html)
from jtm.evaluation.report_study import (PRIMARY_METRICS, RESULT_COLUMNS, chance_rows, label_efficiency_figures,
                                         label_efficiency_series, primary_metric, results_summary,
                                         study_results_html, summary_tables)
from jtm.fileio import write_text_atomic

__all__ = [
    "BUILDERS", "CONFIG_COLUMNS", "PRIMARY_METRICS", "RESULT_COLUMNS", "SECTIONS", "Context", "Found", "Missing",
    "chance_rows", "classify", "compute_excerpt", "data_summary_html", "discover", "esc", "fmt_value",
    "html_table", "img", "json_block", "key_values", "label_efficiency_figures", "label_efficiency_series",
    "load_excerpt", "load_results", "load_summary", "note", "primary_metric", "render_report",
    "representative_runs", "results_summary", "study_results_html", "summary_tables", "table", "training_log",
    "write_report",
]


def render_report(inputs: Sequence[str | Path], title: str = "JTM report",
                  log: Callable[[str], None] | None = None) -> str:
    """Build the report's HTML (a complete document) for the runs and studies under ``inputs``."""
    paths = [Path(p) for p in inputs]
    found = discover(paths)
    ctx = Context(found=found, root=common_root(found), inputs=paths)
    return page(title, paths, build_sections(ctx, log))


def write_report(inputs: Sequence[str | Path], out: str | Path, title: str = "JTM report",
                 log: Callable[[str], None] | None = None) -> Path:
    """Render the report for ``inputs`` and write it atomically to ``out``; returns ``out``."""
    out = Path(out)
    write_text_atomic(out, render_report(inputs, title=title, log=log))
    return out

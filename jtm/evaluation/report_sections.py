"""The sections of ``jtm report``: one builder per section, from the runs and studies that were found to
the section's HTML body.

Each builder takes a :class:`Context` and returns HTML, or raises :class:`~jtm.evaluation.report_runs.Missing`
when it has no input (the section then says why it is empty). :func:`build_sections` runs them all in page
order and turns any other failure into an error note, so one broken input never costs the whole report.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from jtm.evaluation.report_excerpt import compute_excerpt, load_excerpt
from jtm.evaluation.report_html import error, esc, img, json_block, key_values, note, table
from jtm.evaluation.report_runs import (Found, Missing, frame_task, read_json, representative_runs, short_name,
                                        stores, top_folders, training_log)
from jtm.evaluation.report_study import label_efficiency_figures, study_results_html


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


@dataclass
class Context:
    """What the section builders share: the discovered runs and a common root for short names."""

    found: Found
    root: Path | None
    inputs: list[Path]

    def name(self, path: Path) -> str:
        return short_name(path, self.root)


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


def _per_folder(ctx: Context, folders: list[Path], render: Callable[[Path], str]) -> str:
    """One block per folder: its name as a heading, then what ``render`` makes of it."""
    return "".join(f"<h3>{esc(ctx.name(folder))}</h3>{render(folder)}" for folder in folders)


def section_cpc(ctx: Context) -> str:
    if not ctx.found.pretrain:
        raise Missing("No pretraining run (a folder with run.json and logs/) was given.")
    return _per_folder(ctx, ctx.found.pretrain, lambda run: _cpc_run(ctx, run))


def _cpc_run(ctx: Context, run: Path) -> str:
    """A pretraining run's curves per prediction step and its final values (or why they are missing)."""
    from jtm.evaluation.plots import cpc_curves_png

    try:
        metrics = training_log(run)
    except FileNotFoundError as e:
        return note(f"{e} (training has not logged yet).")
    try:
        png = cpc_curves_png(metrics, title=f"CPC training: {ctx.name(run)}")
    except Exception as e:  # one broken log must not hide the other runs
        return error(f"could not plot the training log of {ctx.name(run)}", e)
    html = img(png, f"CPC loss and accuracy per prediction step for {ctx.name(run)}",
               "InfoNCE loss and prediction accuracy for each step k = 1..K, train and validation.")
    final = read_json(run / "metrics.json")
    return html + (_final_cpc_table(final) if isinstance(final, dict) and final else "")


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


def section_label_efficiency(ctx: Context) -> str:
    if not ctx.found.studies:
        raise Missing("No study (a folder with results.csv from jtm study) was given.")

    def figures(study: Path) -> str:
        figs = label_efficiency_figures(study)
        return f'<div class="grid">{"".join(figs)}</div>' if figs else note("results.csv has no values yet.")

    return _per_folder(ctx, ctx.found.studies, figures)


def section_results(ctx: Context) -> str:
    if not ctx.found.studies and not ctx.found.downstream:
        raise Missing("No study results.csv or evaluated downstream run was given.")
    parts = []
    for study in ctx.found.studies:
        parts.append(study_results_html(study, ctx.name(study)))
    evaluated = []
    for run in ctx.found.downstream:
        metrics = read_json(run / "metrics.json")
        if isinstance(metrics, dict):
            flat = {k: v for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            evaluated.append({"run": ctx.name(run), **flat})
    if evaluated:
        parts.append("<h3>Evaluated downstream runs (metrics.json)</h3>")
        parts.append(table(pd.DataFrame(evaluated)))
    elif not ctx.found.studies:
        raise Missing("The downstream runs have no metrics.json yet (run jtm evaluate).")
    return "".join(parts)


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


def section_confusion(ctx: Context) -> str:
    from jtm.evaluation.plots import confusion_png

    figs = []
    for run in representative_runs(ctx.found.downstream):
        metrics = read_json(run / "metrics.json")
        for where, cm, names in _find_confusions(metrics):
            title = ctx.name(run) + (f" ({where})" if where else "")
            try:
                figs.append(img(confusion_png(cm, names, title=title), f"confusion matrix of {title}", title))
            except Exception as e:
                figs.append(error(f"could not draw the confusion matrix of {title}", e))
    if not figs:
        raise Missing("No evaluated classification run (metrics.json with a confusion matrix) was given.")
    return f'<div class="grid">{"".join(figs)}</div>'


def section_piano_roll(ctx: Context, compute: bool = True) -> str:
    from jtm.evaluation.plots import piano_roll_png

    runs = [r for r in representative_runs(ctx.found.downstream) if frame_task(r)]
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
            parts.append(error(f"could not draw a piano roll for {ctx.name(run)}", e))
    if not parts:
        raise Missing("No excerpt could be drawn.")
    return "".join(parts)


CONFIG_COLUMNS = ("task", "encoder", "probe", "finetune", "features", "label_fraction", "epochs", "window",
                  "batch_size", "lr", "seed", "threshold")
"""Settings of downstream runs shown side by side in the configuration section."""


def section_configuration(ctx: Context) -> str:
    parts = []
    for folder in top_folders(ctx.inputs, ctx.found):
        for name in ("demo.json", "study.json"):
            cfg = read_json(folder / name)
            if cfg is not None:
                parts.append(f"<h3>{esc(ctx.name(folder))}/{esc(name)}</h3>{json_block(cfg)}")
    for run in ctx.found.pretrain:
        cfg = read_json(run / "run.json")
        if cfg is not None:
            parts.append(f"<h3>Pretraining: {esc(ctx.name(run))}/run.json</h3>{json_block(cfg)}")
    rows, details = [], []
    for run in ctx.found.downstream:
        cfg = read_json(run / "run.json")
        if not isinstance(cfg, dict):
            continue
        model_cfg = read_json(run / "model" / "config.json")
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


def section_data(ctx: Context) -> str:
    from jtm.data.store import Store

    paths = stores(ctx.found)
    if not paths:
        raise Missing("No run names its prepared store (run.json 'data').")
    parts = []
    for path in paths:
        parts.append(f"<h3><code>{esc(path)}</code></h3>")
        if not (path / "store.json").is_file():
            parts.append(note("The store is not available on this machine."))
            continue
        try:
            summary = Store.open(path).summary()
        except Exception as e:
            parts.append(error(f"could not open the store {path}", e))
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
    for run in dict.fromkeys([*top_folders(ctx.inputs, ctx.found), *ctx.found.pretrain, *ctx.found.downstream]):
        env = read_json(run / "environment.json")
        if isinstance(env, dict):
            recorded.append(f"<h3>{esc(ctx.name(run))}/environment.json</h3>" + key_values(env))
    return body + "".join(recorded)


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


def build_sections(ctx: Context, log: Callable[[str], None] | None = None) -> list[tuple[str, str, str]]:
    """(id, heading, body HTML) of every section in :data:`SECTIONS` order. A section without input holds its
    note; one whose builder fails holds the error, and the others are built all the same."""
    built = []
    for sid, heading in SECTIONS:
        if log is not None:
            log(f"report: {heading.lower()}")
        try:
            body = BUILDERS[sid](ctx)
        except Missing as e:
            body = note(str(e))
        except Exception as e:  # a broken input must cost one section, never the report
            body = error("this section could not be built", e)
        built.append((sid, heading, body))
    return built

"""Finding what ``jtm report`` shows: the run and study folders under its inputs, and reading their files.

Nothing here writes HTML; :mod:`jtm.evaluation.report_sections` turns what these functions return into sections.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from jtm.evaluation.stats import summarize_results
from jtm.fileio import load_json

_SKIP_DIRS = {"checkpoints", "logs", "encoder", "model", "shards", "train_data", "test_data", "train_labels",
              "test_labels", "__pycache__"}
_MAX_DEPTH = 5  # DEMO/study/<task>/<method>/f<fraction>/seed<k>


class Missing(Exception):
    """A section has no input: its message is shown as the section's note."""


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


def common_root(found: Found) -> Path | None:
    """The folder every found run and study lies under (None when nothing was found): runs are named
    relative to it."""
    everything = found.pretrain + found.downstream + found.studies
    if not everything:
        return None
    common = Path(os.path.commonpath([str(p) for p in everything]))
    return common if common.is_dir() else common.parent


def short_name(path: Path, root: Path | None) -> str:
    """A short name for a run: its path relative to the common root when possible."""
    if root is not None:
        try:
            rel = path.relative_to(root)
            return str(rel) if str(rel) != "." else path.name
        except ValueError:
            pass
    return str(path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file (a broken file raises)."""
    return load_json(path) if path.is_file() else None


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


def representative_runs(runs: Sequence[Path]) -> list[Path]:
    """One downstream run per arm (task, front end, probe, fine-tuning): the one with the most labels.

    A study has a run per label fraction; figures of every one would repeat themselves, the largest fraction
    shows what each arm can do.
    """
    best: dict[tuple, tuple[float, Path]] = {}
    for run in runs:
        cfg = read_json(run / "run.json")
        cfg = cfg if isinstance(cfg, dict) else {}
        key = (cfg.get("task"), cfg.get("encoder"), cfg.get("probe"), cfg.get("finetune"), cfg.get("features"))
        if key == (None,) * 5:
            key = (str(run),)  # not a jtm downstream run.json: keep every such run
        fraction = float(cfg.get("label_fraction") or 0.0)
        if key not in best or fraction > best[key][0]:
            best[key] = (fraction, run)
    return sorted(run for _, run in best.values())


def frame_task(run: Path) -> str | None:
    """The run's task when it predicts frames (transcription or pitch-instrument), else None."""
    cfg = read_json(run / "model" / "config.json")
    task = cfg.get("task") if isinstance(cfg, dict) else None
    return task if task in ("transcription", "pitch-instrument") else None


def top_folders(inputs: Sequence[Path], found: Found) -> list[Path]:
    """The input folders and the studies, resolved and without duplicates (a study folder given as the input
    is both, and its study.json / environment.json must be shown once)."""
    folders = [p if p.is_dir() else p.parent for p in inputs]
    return list(dict.fromkeys(p.resolve() for p in [*folders, *found.studies]))


def stores(found: Found) -> list[Path]:
    """The prepared stores the runs were trained on (``data`` in their run.json), in order, without duplicates."""
    paths: dict[Path, None] = {}
    for run in found.pretrain + found.downstream + found.studies:
        for name in ("run.json", "study.json"):
            cfg = read_json(run / name)
            data = cfg.get("data") if isinstance(cfg, dict) else None
            if isinstance(data, str) and data:
                paths[Path(data).resolve()] = None
    return list(paths)

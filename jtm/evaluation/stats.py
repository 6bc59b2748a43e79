"""Summary statistics over repeated runs (seeds), shared by ``jtm study`` (summary.csv), the label-efficiency
plot and ``jtm report`` so all three show the same numbers.

The confidence interval is the Student-t interval of the mean: ``mean +- t_{(1+c)/2, n-1} * std / sqrt(n)``
with the sample standard deviation (ddof = 1). With a handful of seeds the t quantile is large (4.30 for
n = 3), which is the honest width; a normal quantile would understate it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

SUMMARY_COLUMNS = ("task", "method", "fraction", "headline_metric", "n_seeds", "mean", "std", "ci95_low",
                   "ci95_high", "min", "max", "lrs")
"""Columns of a study's ``summary.csv``, in order."""

CHANCE = "chance"
"""The ``method`` of summary.csv's rows for a constant predictor (the chance level)."""


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, spread and confidence interval of the mean of ``values`` (NaN values are ignored).

    Returns ``{"mean", "std", "ci95_low", "ci95_high", "min", "max", "n"}`` (the keys keep the ``ci95`` names
    whatever ``confidence`` is, so the result maps onto summary.csv's columns). ``std`` uses ddof = 1.
    With one value there is no observed spread: std is 0.0 and the interval is the value itself. With no
    value every statistic is NaN and n is 0.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(list(values), dtype=np.float64)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "ci95_low": nan, "ci95_high": nan, "min": nan, "max": nan, "n": 0}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    half = ci_half_width(std, n, confidence)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half,
            "min": float(x.min()), "max": float(x.max()), "n": n}


def ci_half_width(std: float, n: int, confidence: float = 0.95) -> float:
    """Half-width ``t_{(1+c)/2, n-1} * std / sqrt(n)`` of the t interval of a mean; 0.0 for n <= 1."""
    if n <= 1 or not math.isfinite(std):
        return 0.0
    # Imported here: scipy.stats is slow to import and most jtm commands never need it. scipy itself is
    # always installed (scikit-learn and mir_eval, both required by jtm, depend on it).
    from scipy import stats as scipy_stats

    t = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, df=n - 1))
    return t * std / math.sqrt(n)


def format_lrs(lrs: Iterable[float]) -> str:
    """Learning rates as summary.csv's ``lrs`` text: ``"0.001,0.003,0.001"`` (NaN skipped, order kept)."""
    out = []
    for lr in lrs:
        try:
            v = float(lr)
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            out.append(f"{v:g}")
    return ",".join(out)


def summarize_results(
    results: pd.DataFrame,
    value_column: str = "headline",
    keys: Sequence[str] = ("task", "method", "fraction"),
    confidence: float = 0.95,
    extra_metrics: Sequence[str] = (),
) -> pd.DataFrame:
    """One summary.csv row per ``keys`` group of a per-seed results table (without chance rows).

    ``results`` needs the ``keys`` and ``value_column``; ``headline_metric`` (first value of the group),
    ``seed`` (orders the ``lrs`` text) and ``lr`` are used when present. Groups keep their first appearance
    order. Returns the columns of :data:`SUMMARY_COLUMNS`, then for each of ``extra_metrics`` that ``results``
    has, ``<metric>_mean``, ``<metric>_ci95_low`` and ``<metric>_ci95_high`` (NaN for groups without values).
    """
    missing = {*keys, value_column} - set(results.columns)
    if missing:
        raise ValueError(f"results lack column(s) {sorted(missing)}")
    df = results.sort_values("seed", kind="stable") if "seed" in results.columns else results
    extras = [m for m in extra_metrics if m in results.columns]
    rows = []
    for key, grp in df.groupby(list(keys), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        s = mean_ci(pd.to_numeric(grp[value_column], errors="coerce"), confidence)
        row = dict(zip(keys, key))
        row["headline_metric"] = grp["headline_metric"].iloc[0] if "headline_metric" in grp else value_column
        row.update({"n_seeds": s["n"], **{k: s[k] for k in ("mean", "std", "ci95_low", "ci95_high", "min", "max")}})
        row["lrs"] = format_lrs(grp["lr"]) if "lr" in grp else ""
        for metric in extras:
            m = mean_ci(pd.to_numeric(grp[metric], errors="coerce"), confidence)
            row.update({f"{metric}_mean": m["mean"], f"{metric}_ci95_low": m["ci95_low"],
                        f"{metric}_ci95_high": m["ci95_high"]})
        rows.append(row)
    cols = [c for c in SUMMARY_COLUMNS if c not in ("task", "method", "fraction")]
    cols += [f"{m}_{s}" for m in extras for s in ("mean", "ci95_low", "ci95_high")]
    return pd.DataFrame(rows, columns=[*keys, *cols])


def chance_row(task: str, fraction: float, headline_metric: str, value: float) -> dict[str, object]:
    """A summary.csv row for a constant predictor's score (method "chance", one "seed", no spread)."""
    v = float(value)
    return {"task": task, "method": CHANCE, "fraction": float(fraction), "headline_metric": headline_metric,
            "n_seeds": 1, "mean": v, "std": 0.0, "ci95_low": v, "ci95_high": v, "min": v, "max": v, "lrs": ""}


COMPARISON_COLUMNS = ("task", "fraction", "method", "baseline", "n_seeds", "mean", "ci95_low", "ci95_high", "wins")
"""Columns of a study's ``comparisons.csv``, in order."""

BASELINE_PREFIXES = ("random", "supervised", "logmel", "cqt")
"""What each CPC arm is compared with: the untrained architecture, the architecture trained from scratch, and the
two hand-made spectral front ends."""


def comparison_pairs(methods: Iterable[str]) -> list[tuple[str, str]]:
    """(CPC arm, baseline) pairs among ``methods``: every ``cpc-<probe>`` arm against ``<baseline>-<probe>`` for
    each of :data:`BASELINE_PREFIXES`, or ``<baseline>-linear`` when that probe has no such arm (cpc-best,
    cpc-finetune), and against ``supervised``. Only pairs whose two arms are both in ``methods``."""
    present = list(dict.fromkeys(str(m) for m in methods))
    pairs = []
    for method in (m for m in present if m.startswith("cpc-")):
        probe = method.split("-", 1)[1]
        for prefix in BASELINE_PREFIXES:
            if prefix == "supervised":
                baseline = "supervised"
            else:
                baseline = f"{prefix}-{probe}" if f"{prefix}-{probe}" in present else f"{prefix}-linear"
            if baseline in present:
                pairs.append((method, baseline))
    return pairs


def paired_differences(results: pd.DataFrame, pairs: Sequence[tuple[str, str]], value_column: str = "headline",
                       confidence: float = 0.95) -> pd.DataFrame:
    """Seed-by-seed differences ``method - baseline`` per (task, fraction): mean, t interval and wins.

    In a study every arm's seed k trains on the same label subset, so the difference of two arms on one seed
    removes the variance of the subset, which dominates the per-arm intervals at small fractions: this is the
    paired comparison that says whether one arm beats another. ``results`` needs task, method, fraction, seed and
    ``value_column``; seeds present for only one of the two arms are left out. ``wins`` counts the seeds on
    which the method scored higher. Returns the columns of :data:`COMPARISON_COLUMNS`.
    """
    missing = {"task", "method", "fraction", "seed", value_column} - set(results.columns)
    if missing:
        raise ValueError(f"results lack column(s) {sorted(missing)}")
    values = results.assign(_value=pd.to_numeric(results[value_column], errors="coerce"))
    rows = []
    for (task, fraction), grp in values.groupby(["task", "fraction"], sort=False):
        by_seed = grp.pivot_table(index="seed", columns="method", values="_value", aggfunc="first")
        for method, baseline in pairs:
            if method not in by_seed or baseline not in by_seed:
                continue
            diff = (by_seed[method] - by_seed[baseline]).dropna()
            if diff.empty:
                continue
            s = mean_ci(diff, confidence)
            rows.append({"task": task, "fraction": float(fraction), "method": method, "baseline": baseline,
                         "n_seeds": s["n"], "mean": s["mean"], "ci95_low": s["ci95_low"],
                         "ci95_high": s["ci95_high"], "wins": int((diff > 0).sum())})
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def format_difference(row: pd.Series | Mapping[str, Any]) -> str:
    """A comparisons.csv row as ``+0.073 [+0.010, +0.136] 3/3``: mean difference, its interval, seeds won."""
    return (f"{row['mean']:+.3f} [{row['ci95_low']:+.3f}, {row['ci95_high']:+.3f}] "
            f"{int(row['wins'])}/{int(row['n_seeds'])}")

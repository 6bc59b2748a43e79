"""Summary statistics over seeds: the t interval of the mean, summary.csv rows."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from jtm.evaluation.stats import SUMMARY_COLUMNS, chance_row, format_lrs, mean_ci, summarize_results


def test_mean_ci_of_three_values() -> None:
    s = mean_ci([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(1.0)
    # t_{0.975, 2} = 4.302653; half-width 4.302653 / sqrt(3) = 2.48414.
    assert s["ci95_high"] - s["mean"] == pytest.approx(2.48414, abs=1e-5)
    assert s["mean"] - s["ci95_low"] == pytest.approx(2.48414, abs=1e-5)
    assert (s["min"], s["max"]) == (1.0, 3.0)


def test_mean_ci_single_value_and_nan_and_empty() -> None:
    s = mean_ci([0.4])
    assert s["n"] == 1 and s["ci95_low"] == s["ci95_high"] == s["mean"] == 0.4 and s["std"] == 0.0
    assert mean_ci([0.4, float("nan")])["n"] == 1  # a failed seed does not count
    empty = mean_ci([])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    # A wider confidence gives a wider interval.
    assert mean_ci([1, 2, 3], confidence=0.99)["ci95_high"] > mean_ci([1, 2, 3])["ci95_high"]
    with pytest.raises(ValueError):
        mean_ci([1.0], confidence=1.5)


def test_summarize_results_one_row_per_cell_with_lrs_in_seed_order() -> None:
    rows = [
        {"task": "t", "method": m, "fraction": f, "seed": s, "headline_metric": "frame_ap",
         "headline": base + s, "lr": lr}
        for m, base in (("cpc-linear", 1.0), ("supervised", 0.0))
        for f in (0.1, 1.0)
        for s, lr in reversed(list(enumerate((0.001, 0.003, 0.001))))
    ]
    summary = summarize_results(pd.DataFrame(rows))
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 4
    cell = summary[(summary.method == "cpc-linear") & (summary.fraction == 0.1)].iloc[0]
    assert cell["n_seeds"] == 3 and cell["mean"] == pytest.approx(2.0) and cell["lrs"] == "0.001,0.003,0.001"
    assert cell["headline_metric"] == "frame_ap"
    assert format_lrs([0.0003, float("nan"), "x", 1e-4]) == "0.0003,0.0001"
    chance = chance_row("t", 0.1, "frame_ap", 0.05)
    assert set(chance) == set(SUMMARY_COLUMNS) and chance["method"] == "chance" and chance["max"] == 0.05

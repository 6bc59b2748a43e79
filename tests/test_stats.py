"""Summary statistics over seeds: the t interval of the mean, summary.csv rows."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from jtm.evaluation.stats import (COMPARISON_COLUMNS, SUMMARY_COLUMNS, chance_row, comparison_pairs, format_lrs,
                                  mean_ci, paired_differences, summarize_results)


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


def _results(values: dict[str, list[float]], task: str = "transcription", fraction: float = 0.1) -> pd.DataFrame:
    return pd.DataFrame([{"task": task, "method": m, "fraction": fraction, "seed": k, "headline": v}
                         for m, per_seed in values.items() for k, v in enumerate(per_seed)])


def test_paired_differences_remove_the_label_subsets_variance() -> None:
    # Seeds differ a lot (label subsets of very different difficulty), but cpc beats random by 0.05 on every one:
    # the per-arm intervals overlap, the paired interval is a point at +0.05.
    df = _results({"cpc-linear": [0.35, 0.65, 0.85], "random-linear": [0.30, 0.60, 0.80]})
    per_arm = {m: mean_ci(g["headline"]) for m, g in df.groupby("method")}
    assert per_arm["cpc-linear"]["ci95_low"] < per_arm["random-linear"]["ci95_high"]
    out = paired_differences(df, [("cpc-linear", "random-linear")])
    assert list(out.columns) == list(COMPARISON_COLUMNS)
    row = out.iloc[0]
    assert (row["method"], row["baseline"], row["n_seeds"], row["wins"]) == ("cpc-linear", "random-linear", 3, 3)
    assert row["mean"] == pytest.approx(0.05)
    assert row["ci95_low"] == pytest.approx(0.05) and row["ci95_high"] == pytest.approx(0.05)


def test_paired_differences_pair_by_seed_and_skip_unpaired_seeds() -> None:
    df = pd.concat([_results({"cpc-best": [0.5, 0.7, 0.2], "supervised": [0.6, 0.4]}),
                    _results({"cpc-best": [0.9], "supervised": [0.1]}, fraction=1.0)], ignore_index=True)
    df = df.sample(frac=1.0, random_state=0)  # order of rows must not matter, only the seed
    out = paired_differences(df, [("cpc-best", "supervised"), ("cpc-best", "logmel-linear")])
    assert len(out) == 2  # no logmel rows: that pair is left out
    small = out[out["fraction"] == 0.1].iloc[0]
    diffs = [0.5 - 0.6, 0.7 - 0.4]  # seed 2 has no supervised run
    assert small["n_seeds"] == 2 and small["wins"] == 1
    assert small["mean"] == pytest.approx(sum(diffs) / 2)
    expected = mean_ci(diffs)
    assert small["ci95_low"] == pytest.approx(expected["ci95_low"])
    single = out[out["fraction"] == 1.0].iloc[0]
    assert single["mean"] == pytest.approx(0.8) and single["n_seeds"] == 1


def test_comparison_pairs_match_probe_kinds_and_fall_back_to_linear() -> None:
    methods = ["cpc-linear", "cpc-mlp", "cpc-note", "cpc-best", "random-linear", "random-note", "logmel-linear",
               "supervised", "cqt-note"]
    pairs = comparison_pairs(methods)
    assert ("cpc-linear", "random-linear") in pairs and ("cpc-note", "random-note") in pairs
    assert ("cpc-note", "cqt-note") in pairs and ("cpc-linear", "cqt-linear") not in pairs
    assert ("cpc-mlp", "random-linear") in pairs  # no random-mlp arm: compared with the linear one
    assert ("cpc-best", "supervised") in pairs
    assert all(m.startswith("cpc-") for m, _ in pairs)
    assert comparison_pairs(["logmel-linear", "random-linear"]) == []

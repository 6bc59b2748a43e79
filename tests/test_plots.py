"""Every plot writes a valid, non-trivial PNG and has a bytes variant."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from jtm.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000
    assert not list(path.parent.glob("*.tmp"))


def test_confusion(tmp_path: Path) -> None:
    cm = [[5, 1, 0], [2, 3, 0], [0, 0, 0]]  # last class absent: its row must not divide by zero
    _check_png(plots.plot_confusion(cm, ["Bach", "Beethoven", "Mozart"], tmp_path / "cm.png"))
    assert plots.confusion_png(cm, ["a", "b", "c"])[:8] == PNG_MAGIC


def test_piano_roll(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((300, 128), bool)
    truth[20:120, 60] = truth[150:280, 67] = True
    pred = np.clip(truth * 0.8 + rng.random((300, 128)) * 0.3, 0, 1)
    _check_png(plots.plot_piano_roll(truth, pred, tmp_path / "roll.png", frame_rate=100, title="demo"))
    # Nothing active at all still draws.
    assert plots.piano_roll_png(np.zeros((10, 128), bool), np.zeros((10, 128)))[:8] == PNG_MAGIC


def test_label_efficiency(tmp_path: Path) -> None:
    rows = [
        {"method": m, "fraction": f, "seed": s, "value": base + 0.3 * np.log10(f * 100) / 2 + 0.01 * s}
        for m, base in (("cpc", 0.5), ("supervised", 0.3))
        for f in (0.01, 0.1, 1.0)
        for s in range(2)
    ]
    _check_png(plots.plot_label_efficiency(pd.DataFrame(rows), tmp_path / "le.png", metric_name="frame AP"))
    # The value column may also be named after the metric.
    df = pd.DataFrame(rows).rename(columns={"value": "frame_ap"})
    assert plots.label_efficiency_png(df, metric_name="frame_ap")[:8] == PNG_MAGIC


def test_label_efficiency_with_seeds_and_chance(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = [
        {"method": m, "fraction": f, "seed": s, "headline": base + 0.1 * np.log10(f * 10) + rng.normal(0, 0.02)}
        for m, base in (("cpc-linear", 0.5), ("logmel-linear", 0.35))
        for f in (0.1, 1.0)
        for s in range(3)
    ]
    results = pd.DataFrame(rows)
    chance = pd.DataFrame({"task": "t", "method": "chance", "fraction": [0.1, 1.0], "mean": [0.05, 0.05]})
    png = plots.label_efficiency_png(results, metric_name="frame_ap", value_column="headline", chance=chance)
    assert png[:8] == PNG_MAGIC and len(png) > 5_000
    # A chance level that depends on the fraction, given as a number, or as "chance" rows of the results.
    varying = chance.assign(mean=[0.3, 0.4])
    _check_png(plots.plot_label_efficiency(results, tmp_path / "le.png", "accuracy", "headline", chance=varying))
    assert plots.label_efficiency_png(results, "frame_ap", "headline", chance=0.05)[:8] == PNG_MAGIC
    inline = pd.concat([results, chance.rename(columns={"mean": "headline"})], ignore_index=True)
    assert plots.label_efficiency_png(inline, "frame_ap", "headline")[:8] == PNG_MAGIC
    # The band is the 95 % t interval of the seeds' mean, the same numbers as summary.csv.
    stats = plots._seed_stats(results, "headline")
    assert set(stats["n"]) == {3} and (stats["ci95_high"] > stats["mean"]).all()


def _fake_metrics_csv(epoch_suffix: bool) -> pd.DataFrame:
    # Lightning CSVLogger layout: one row per logging event, NaN elsewhere; val once per epoch.
    rows = []
    step = 0
    for epoch in range(3):
        for _ in range(5):
            step += 1
            row = {"epoch": epoch, "step": step}
            for k in range(1, 13):
                name = "train/loss_k{}" + ("_step" if epoch_suffix else "")
                row[name.format(k)] = 5.0 - 0.1 * step / k
                row[f"train/acc_k{k}" + ("_step" if epoch_suffix else "")] = min(1.0, 0.02 * step / k * 4)
            rows.append(row)
        val = {"epoch": epoch, "step": step}
        for k in range(1, 13):
            val[f"val/loss_k{k}"] = 4.8 - 0.3 * epoch / k
            val[f"val/acc_k{k}"] = 0.1 * (epoch + 1) / k
        rows.append(val)
        if epoch_suffix:
            rows.append({"epoch": epoch, "step": step, **{f"train/acc_k{k}_epoch": 0.1 * (epoch + 1) for k in range(1, 13)}})
    return pd.DataFrame(rows)


def test_cpc_curves(tmp_path: Path) -> None:
    df = _fake_metrics_csv(epoch_suffix=False)
    _check_png(plots.plot_cpc_curves(df, tmp_path / "cpc.png"))
    # Also from a metrics.csv path, with _step/_epoch suffixed train columns.
    csv_path = tmp_path / "metrics.csv"
    _fake_metrics_csv(epoch_suffix=True).to_csv(csv_path, index=False)
    _check_png(plots.plot_cpc_curves(csv_path, tmp_path / "cpc2.png"))


def test_cpc_column_resolution() -> None:
    cols = plots.cpc_curve_columns(
        ["epoch", "step", "train/acc_k1_step", "train/acc_k1_epoch", "train/acc_k2", "train/acc_k2_epoch", "val/loss_k1"]
    )
    assert cols[("train", "acc")] == {1: "train/acc_k1_epoch", 2: "train/acc_k2"}
    assert cols[("val", "loss")] == {1: "val/loss_k1"}
    assert ("val", "acc") not in cols

"""The label-efficiency study on a tiny store: 2 fractions x 2 methods, results files, plot, and skipping."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from jtm.errors import JTMError
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.pipelines.study import METHODS, fraction_dir, parse_list, run_study


def test_study_writes_results_and_skips_finished_cells(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    pretrained = tmp_path / "pre"
    torch.manual_seed(0)
    CPCEncoder(CPCConfig(encoder_dim=32, context_dim=32)).save_pretrained(pretrained / "encoder")
    out = tmp_path / "study"
    kwargs = dict(pretrained=pretrained, tasks=["transcription"], fractions=[0.4, 1.0],
                  methods=["random-linear", "logmel-linear"], epochs=1, window=2560, batch_size=2,
                  limit_train_batches=2, limit_val_batches=1, val_fraction=0.25, threads=1)
    lines: list[str] = []
    df = run_study(store.path, out, log=lines.append, **kwargs)

    assert len(df) == 4
    assert set(df["method"]) == {"random-linear", "logmel-linear"} and set(df["fraction"]) == {0.4, 1.0}
    assert (df["headline_metric"] == "frame_ap").all() and df["headline"].between(0, 1).all()
    for method in ("random-linear", "logmel-linear"):
        for fraction in (0.4, 1.0):
            cell = out / "transcription" / method / fraction_dir(fraction)
            assert (cell / "metrics.json").is_file() and (cell / "model" / "config.json").is_file()
    # Nested label subsets, shared validation and test, per method.
    small = json.loads((out / "transcription" / "random-linear" / "f0.4" / "splits.json").read_text())
    full = json.loads((out / "transcription" / "random-linear" / "f1.0" / "splits.json").read_text())
    assert set(small["train"]) < set(full["train"])
    assert small["val"] == full["val"] and small["test"] == full["test"]
    # The random front end copies the pretrained architecture.
    random_cfg = json.loads((out / "transcription" / "random-linear" / "f1.0" / "model" / "config.json").read_text())
    assert random_cfg["frontend"]["config"]["encoder_dim"] == 32

    on_disk = pd.read_csv(out / "results.csv")
    assert len(on_disk) == 4 and {"task", "method", "fraction", "headline", "frame_ap", "note_f1"} <= set(on_disk)
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4 and "frame_f1" in rows[0]["metrics"]
    assert (out / "label_efficiency_transcription.png").stat().st_size > 1000
    assert any("[4/4]" in line for line in lines)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    lines.clear()
    again = run_study(store.path, out, log=lines.append, **kwargs)
    assert sum("skipped" in line for line in lines) == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
    pd.testing.assert_frame_equal(again[["method", "fraction"]], df[["method", "fraction"]])


def test_study_arguments() -> None:
    assert parse_list("0.01, 0.1,1.0", float) == [0.01, 0.1, 1.0]
    assert fraction_dir(0.01) == "f0.01" and fraction_dir(1) == "f1.0"
    assert set(METHODS) == {"random-linear", "logmel-linear", "logmel-mlp", "cpc-linear", "cpc-mlp", "cpc-finetune",
                            "supervised"}
    with pytest.raises(JTMError, match="pretrained"):
        run_study("nowhere", "nowhere", methods=["cpc-linear"])
    with pytest.raises(JTMError, match="unknown method"):
        run_study("nowhere", "nowhere", methods=["cpc-magic"])

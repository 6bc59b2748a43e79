"""The benchmarks stay runnable: each module's run functions on tiny sizes, checked for their documented keys."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import cpc_step, data_pipeline, transcribe

LABEL_KEYS = {"windows_per_s", "loader_us_per_window", "fast_labeller_us_per_window", "pandas_labeller_ms_per_window",
              "labels_equal", "pandas_windows_checked", "pandas_over_fast_labeller", "pandas_over_loader",
              "train_windows_per_s", "train_source", "loader_over_training", "load_average_1min"}
MEMORY_KEYS = {"budget_mb", "store_audio_mb", "peak_resident_mb", "rss_hwm_growth_mb", "rss_anon_peak_growth_mb",
               "within_budget", "load_average_1min"}


def test_cpc_step_tiny():
    r = cpc_step.run("tiny", steps=1, warmup=0, batch=2, window=3200, naive=False, matmul_size=64)
    assert r["windows_per_s"] > 0 and r["load_average_1min"] >= 0


def test_data_pipeline_tiny(tmp_path: Path):
    cpc = tmp_path / "cpc_step.json"
    cpc.write_text(json.dumps({"config": "x", "windows_per_s": 2.0}) + "\n" + json.dumps({"config": "y", "windows_per_s": 5.0}))
    lines: list[str] = []
    results = data_pipeline.run_all(tmp_path, tracks=3, track_seconds=8.0, notes_per_second=12.0, n_batches=3,
                                    n_reference=12, n_per_frame=2, repeats=1, memory_store_mb=1.5, budgets_mb=(0.5,),
                                    train_results=cpc, workers=1, emit=lambda d: lines.append(json.dumps(d)))
    assert [r["config"] for r in results] == ["prepare", "labels-transcription", "labels-pitch-instrument", "memory-0"]
    assert len(lines) == len(results)  # every result is JSON-serialisable
    prep = results[0]
    assert prep["n_tracks"] == 3 and prep["audio_seconds_per_wall_second"] > 0 and prep["notes_per_second"] > 5
    for r in results[1:3]:
        assert LABEL_KEYS <= r.keys()
        assert r["labels_equal"] is True and r["pandas_windows_checked"] == 12  # fast labels == pandas labels
        assert r["pandas_per_frame_windows"] == 2 and r["pandas_per_frame_ms_per_window"] > 0
        assert r["windows_per_s"] > 0 and r["pandas_labeller_ms_per_window"] > 0
        assert r["train_windows_per_s"] == 5.0 and r["train_source"] == "cpc_step.json:y"  # the fastest consumer
    mem = results[3]
    assert MEMORY_KEYS <= mem.keys()
    assert mem["within_budget"] is True and 0 < mem["peak_resident_mb"] <= mem["budget_mb"]
    assert mem["n_groups"] > 1 and mem["store_audio_mb"] > mem["budget_mb"]


def test_pandas_labeller_catches_a_difference(tmp_path: Path):
    """The reference is a real check: a note moved by one frame changes its labels."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"start_time": [0, 44100], "end_time": [44100, 88200], "instrument": [1, 41], "note": [60, 64]})
    a = data_pipeline.pandas_window_labels(df, 0, 128, 16000 * 3, by_instrument=False)
    assert a.shape == (128, 128) and a[:100, 60].all() and not a[100:, 60].any() and a[100:, 64].all()
    df.loc[1, "start_time"] += 441
    b = data_pipeline.pandas_window_labels(df, 0, 128, 16000 * 3, by_instrument=True)
    assert b.shape == (128, 11 * 128) and b[:, 2 * 128 + 64].sum() == 27 and not np.array_equal(a, b[:, :128])


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_transcribe_tiny(tmp_path: Path, threshold):
    r = transcribe.run(seconds=3.0, repeats=1, threshold=threshold, threads=1, tiny=True, workdir=tmp_path)
    assert {"x_real_time", "rtf", "audio_seconds", "architecture", "n_notes", "load_average_1min"} <= r.keys()
    assert r["architecture_source"].startswith("DemoConfig")
    assert r["audio_seconds"] == pytest.approx(3.0, abs=0.02) and r["x_real_time"] > 0
    assert r["rtf"] == pytest.approx(1 / r["x_real_time"], rel=0.05)
    assert r["threads"] == 1 and r["chunk_seconds"] > 0 and r["batch_size"] >= 1  # the run.json's chunking was read


@pytest.mark.parametrize("frontend", ["cpc", "logmel", "harmonic"])
def test_transcribe_tiny_note_model(tmp_path: Path, frontend: str):
    r = transcribe.run(seconds=3.0, repeats=1, threads=1, tiny=True, workdir=tmp_path, note_frontend=frontend)
    assert r["model"] == "note transcriber" and 0 < r["onset_threshold"] < 1 and r["n_notes"] > 0
    assert r["audio_seconds"] == pytest.approx(3.0, abs=0.02) and r["x_real_time"] > 0 and r["chunk_seconds"] == 10


def test_pretrain_e2e_tiny(tmp_path: Path, monkeypatch):
    """The end-to-end figures come from a real `jtm pretrain` run and add up."""
    from benchmarks import pretrain_e2e

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # chosen by load, as the CLI would; restored afterwards

    store = pretrain_e2e.make_store(tmp_path, minutes=0.5)
    r = pretrain_e2e.run("tiny", store, epochs=1, steps=2, isolated_steps=1, rounds=2)
    assert r["steps"] == 2 and r["fit_s"] >= r["step_s_in_run"] > 0
    assert r["outside_step_s"] == pytest.approx(r["fit_s"] - r["step_s_in_run"], abs=0.02)
    # validation is part of the time outside the steps (this 30-second store may hold no validation batch)
    assert 0 <= r["validation_s"] <= r["outside_step_s"]
    assert r["validation_fraction"] == pytest.approx(r["validation_s"] / r["fit_s"], abs=1e-3)
    assert r["e2e_windows_per_s"] > 0 and r["isolated_windows_per_s"] > 0 and r["e2e_over_isolated"] > 0
    # the isolated step brackets the run, and the ratio is taken against the mean of the two
    before, after = r["isolated_windows_per_s_before_after"]
    assert r["isolated_windows_per_s"] == pytest.approx((before + after) / 2, abs=0.01)
    assert r["e2e_over_isolated"] == pytest.approx(r["e2e_windows_per_s"] / r["isolated_windows_per_s"], rel=0.01)
    # the isolated step ran with the OpenMP wait policy of the command (chosen by load unless the user set one)
    assert r["isolated_omp_wait_policy"] == r["omp_wait_policy"] in ("ACTIVE", "PASSIVE")
    assert r["median_step_ms_in_run"] > 0 and r["in_run_median_step_over_isolated"] > 0
    assert r["peak_rss_mb"] > 100  # the pretraining process's own peak (it imports torch), not a sum or a zero
    # two rounds, each a run bracketed by isolated steps; the figures are those of the round with the median ratio
    assert r["rounds"] == 2 and r["e2e_over_isolated"] == min(r["e2e_over_isolated_rounds"])
    assert r["e2e_windows_per_s"] in r["e2e_windows_per_s_rounds"]
    assert len(r["e2e_over_isolated_rounds"]) == len(r["e2e_windows_per_s_rounds"]) == 2


def test_step_settings_tiny():
    from benchmarks import step_settings

    results = step_settings.run(["tiny"], rounds=1, steps=1,
                                extra=["--warmup", "0", "--batch", "2", "--window", "3200", "--matmul-size", "64"])
    names = {r["setting"] for r in results}
    assert {"glibc", "glibc-retain"} <= names and all(r["ms_step"] > 0 for r in results)

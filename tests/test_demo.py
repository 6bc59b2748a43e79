"""``jtm demo``: configuration, results table, refusal of a mixed folder, and the quick demo end to end."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from jtm.errors import JTMError
from jtm.pipelines.demo import DemoConfig, _check_out, results_table


def test_demo_configs() -> None:
    full, quick = DemoConfig.full(), DemoConfig.quick()
    assert full.minutes == 20.0 and quick.minutes < 3
    assert len(full.fractions) >= 2 and {"transcription", "ensemble"} <= set(full.tasks)
    assert "cpc-linear" in full.methods
    assert quick.encoder_dim < full.encoder_dim and quick.pretrain_epochs <= 2
    assert DemoConfig.from_dict(full.to_dict()) == full
    assert "threads" not in full.content() and "minutes" in full.content()


def test_a_demo_folder_refuses_another_configuration(tmp_path: Path) -> None:
    cfg = DemoConfig.quick()
    (tmp_path / "d").mkdir()
    _check_out(tmp_path / "d", cfg)
    cfg.threads = 1  # machine settings may change between runs
    _check_out(tmp_path / "d", cfg)
    cfg.minutes = 2.5
    with pytest.raises(JTMError, match="minutes"):
        _check_out(tmp_path / "d", cfg)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(JTMError, match="not a jtm demo folder"):
        _check_out(other, DemoConfig.quick())


def test_results_table(tmp_path: Path) -> None:
    rows = [("transcription", m, f, "frame_ap", v) for m, f, v in
            [("cpc-linear", 0.1, 0.2), ("cpc-linear", 1.0, 0.4), ("logmel-linear", 0.1, 0.1),
             ("logmel-linear", 1.0, float("nan"))]]
    rows.append(("ensemble", "cpc-linear", 1.0, "accuracy", 0.75))
    pd.DataFrame(rows, columns=["task", "method", "fraction", "headline_metric", "headline"]).to_csv(
        tmp_path / "results.csv", index=False)
    text = results_table(tmp_path / "results.csv")
    lines = text.splitlines()
    assert lines[0].startswith("transcription: frame_ap")
    assert "f=0.1" in lines[1] and "f=1" in lines[1]
    assert lines[2].split() == ["cpc-linear", "0.200", "0.400"]
    assert lines[3].split() == ["logmel-linear", "0.100", "n/a"]
    assert any(line.startswith("ensemble: accuracy") for line in lines)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", "from jtm.cli import main; main()", "demo", "--quick", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    for stage in ("synthesise", "prepare", "pretrain", "study", "report"):
        assert f"{stage}: done in" in stdout, stage
    assert "stage timings:" in stdout and "total" in stdout
    assert "transcription: frame_ap" in stdout and "ensemble: accuracy" in stdout
    assert f"report: {out / 'report.html'}" in stdout

    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 4 and 'id="label-efficiency"' in html
    results = pd.read_csv(out / "study" / "results.csv")
    assert set(results["task"]) == {"transcription", "ensemble"}
    assert len(set(results["fraction"])) >= 2 and results["headline"].notna().all()
    assert (out / "pretrain" / "encoder" / "model.safetensors").is_file()
    assert seconds < 300, f"the quick demo took {seconds:.0f} s"

    # A second run reuses every finished stage and only rebuilds the report.
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("synthesise", "prepare", "pretrain", "study"):
        assert f"{stage}: " in again.stdout and "finished earlier, reused" in again.stdout
    assert again.stdout.count("finished earlier, reused") == 4

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
    assert full.transcriber == "cqt-harmonic" and DemoConfig(transcriber=None).transcriber is None
    for bad in (dict(transcriber="cqt-linear"), dict(transcriber="magic"), dict(encoder="conv")):
        with pytest.raises(ValueError, match="transcriber"):
            DemoConfig(**bad)
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
    from jtm.evaluation.stats import chance_row, summarize_results

    rows = []
    for method, values in (("cpc-linear", {0.1: [0.2, 0.3], 1.0: [0.4, 0.5]}),
                           ("logmel-linear", {0.1: [0.1, 0.1], 1.0: [float("nan"), float("nan")]})):
        for fraction, per_seed in values.items():
            rows += [{"task": "transcription", "method": method, "fraction": fraction, "seed": k,
                      "headline_metric": "frame_ap", "headline": v, "lr": 1e-3} for k, v in enumerate(per_seed)]
    rows.append({"task": "ensemble", "method": "cpc-linear", "fraction": 1.0, "seed": 0, "headline_metric": "accuracy",
                 "headline": 0.75, "lr": 1e-2})
    chance = [chance_row("transcription", f, "frame_ap", 0.05) for f in (0.1, 1.0)]
    chance.append(chance_row("ensemble", 1.0, "accuracy", 0.5))
    summary = pd.concat([summarize_results(pd.DataFrame(rows)), pd.DataFrame(chance)], ignore_index=True)
    summary.to_csv(tmp_path / "summary.csv", index=False)
    text = results_table(tmp_path / "summary.csv")
    lines = text.splitlines()
    assert lines[0].startswith("transcription: frame_ap") and "2 seed(s)" in lines[0]
    assert "f=0.1" in lines[1] and "f=1" in lines[1]
    # mean +- half-width of the t interval: t(0.975, 1) * std([0.2, 0.3]) / sqrt(2) = 12.706 * 0.0707 / 1.414
    assert lines[2].split() == ["cpc-linear", "0.250", "+-", "0.635", "0.450", "+-", "0.635"]
    assert lines[3].split() == ["logmel-linear", "0.100", "+-", "0.000", "n/a"]
    assert lines[4].split() == ["chance", "0.050", "0.050"]  # last, and without an interval
    ensemble = lines.index(next(line for line in lines if line.startswith("ensemble: accuracy")))
    assert lines[ensemble + 2].split() == ["cpc-linear", "0.750", "+-", "0.000"]
    assert lines[ensemble + 3].split() == ["chance", "0.500"]


def test_comparisons_table_shows_the_best_cpc_arm_against_each_baseline(tmp_path: Path) -> None:
    from jtm.pipelines.demo import comparisons_table

    per_seed = {"cpc-linear": [0.50, 0.70, 0.60], "cpc-mlp": [0.40, 0.60, 0.50], "random-linear": [0.45, 0.62, 0.58],
                "supervised": [0.55, 0.60, 0.40]}
    rows = [{"task": "transcription", "method": m, "fraction": 0.1, "seed": k, "headline": v, "val_score": v}
            for m, values in per_seed.items() for k, v in enumerate(values)]
    rows += [{**r, "method": "cpc-best", "chosen": "cpc-linear"} for r in rows if r["method"] == "cpc-linear"]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    lines = comparisons_table(tmp_path / "results.csv").splitlines()
    assert lines[0].startswith("transcription: paired differences") and "f=0.1" in lines[1]
    table = {" ".join(line.split()[:3]): line.split()[3:] for line in lines[2:]}
    assert set(table) == {"cpc-linear - random-linear", "cpc-best - random-linear", "cpc-best - supervised"}
    # cpc-best - supervised per seed: -0.05, +0.10, +0.20 -> mean +0.083, won on 2 of 3 seeds
    assert table["cpc-best - supervised"][0] == "+0.083" and table["cpc-best - supervised"][-1] == "2/3"
    assert table["cpc-linear - random-linear"][-1] == "3/3"
    pd.DataFrame([{**r, "method": "logmel-linear"} for r in rows]).to_csv(tmp_path / "results.csv", index=False)
    assert comparisons_table(tmp_path / "results.csv") == ""  # no CPC arm: nothing to compare


def test_study_config_follows_the_demo_config(tmp_path: Path) -> None:
    from jtm.pipelines.demo import study_config

    for cfg in (DemoConfig.full(), DemoConfig.quick()):
        study = study_config(cfg, tmp_path / "store", tmp_path / "pretrain", tmp_path / "study")
        study.validate()
        assert (study.steps, study.eval_every, study.patience, study.seeds) == (cfg.study_steps, cfg.eval_every,
                                                                                cfg.patience, cfg.seeds)
        assert study.probe_lrs == cfg.probe_lrs and study.encoder_lrs == cfg.encoder_lrs
        assert study.max_val_seconds == cfg.max_val_seconds and study.max_eval_seconds == cfg.max_eval_seconds
        assert study.pretrained == str(tmp_path / "pretrain") and study.out == str(tmp_path / "study")
        assert tuple(study.methods) == cfg.methods and tuple(study.fractions) == cfg.fractions
    quick = DemoConfig.quick()
    assert quick.seeds >= 2 and quick.study_steps <= 50  # a spread to show, in seconds


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory):
    """``jtm demo --quick`` run twice in one folder: (out, first process, its seconds, second process)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", "from jtm.cli import main; main()", "demo", "--quick", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - t0
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300) if proc.returncode == 0 else None
    return out, proc, seconds, again


@pytest.mark.slow
def test_quick_demo_end_to_end(quick_demo) -> None:
    out, proc, seconds, again = quick_demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    for stage in ("synthesise", "prepare", "pretrain", "study", "notes", "report"):
        assert f"{stage}: done in" in stdout, stage
    assert "stage timings:" in stdout and "total" in stdout
    assert "transcription: frame_ap" in stdout and "ensemble: accuracy" in stdout
    assert f"report: {out / 'report.html'}" in stdout

    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="label-efficiency"' in html
    results = pd.read_csv(out / "study" / "results.csv")
    assert set(results["task"]) == {"transcription", "ensemble"}
    assert len(set(results["fraction"])) >= 2 and results["headline"].notna().all()
    quick = DemoConfig.quick()
    assert sorted(set(results["seed"])) == list(range(quick.seed, quick.seed + quick.seeds))
    assert len(results) == len(quick.tasks) * len(quick.methods) * len(quick.fractions) * quick.seeds
    assert (out / "study" / "summary.csv").is_file() and "chance" in stdout
    assert (out / "pretrain" / "encoder" / "model.safetensors").is_file()
    assert seconds < 300, f"the quick demo took {seconds:.0f} s"

    # A second run reuses every finished stage and only rebuilds the report.
    assert again is not None and again.returncode == 0, again.stderr[-3000:] if again else "first run failed"
    for stage in ("synthesise", "prepare", "pretrain", "study", "notes"):
        assert f"{stage}: " in again.stdout and "finished earlier, reused" in again.stdout
    assert again.stdout.count("finished earlier, reused") == 5


@pytest.mark.slow
def test_quick_demo_report_has_every_figure(quick_demo) -> None:
    out, proc, _, _ = quick_demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 4


@pytest.mark.slow
def test_quick_demo_leaves_its_note_transcriber_and_jtm_transcribe_takes_it(quick_demo) -> None:
    """OUT/transcriber is the notes cell of DemoConfig.transcriber (the pitch-equivariant head), its learning rate
    chosen on validation, and jtm transcribe writes MIDI with it."""
    import json

    out, proc, _, _ = quick_demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = json.loads((out / "transcriber" / "cell.json").read_text())
    assert chosen["config"]["method"] == DemoConfig.quick().transcriber == "cqt-harmonic"
    tried = chosen["result"]["lrs_tried"]
    assert chosen["result"]["lr"] == float(max(tried, key=tried.get))
    model = json.loads((out / "transcriber" / "model" / "config.json").read_text())["config"]
    assert model["head"]["kind"] == "harmonic" and model["features"] == "spectrum"
    assert "note transcriber (cqt-harmonic" in proc.stdout
    wav = next((out / "corpus" / "test_data").glob("*.wav"))
    cmd = [sys.executable, "-c", "from jtm.cli import main; main()", "transcribe", str(wav), "--model",
           str(out / "transcriber"), "-o", str(out / "midi")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "midi" / f"{wav.stem}.mid").stat().st_size > 0


@pytest.mark.slow
def test_without_a_note_arm_the_frame_cell_chosen_on_validation_is_exported(quick_demo, tmp_path: Path) -> None:
    """DemoConfig(transcriber=None) leaves the transcription cell with the best validation frame AP (not the best
    test score)."""
    import json

    from jtm.pipelines.demo import export_transcriber

    out, proc, _, _ = quick_demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "study" / "results.csv")
    cells = df[(df["task"] == "transcription") & (df["method"] != "cpc-best")]
    row = export_transcriber(out / "study", tmp_path / "transcriber")
    chosen = json.loads((tmp_path / "transcriber" / "cell.json").read_text())
    assert chosen["result"]["val_score"] == pytest.approx(cells["val_score"].max()) == row["val_score"]
    assert (tmp_path / "transcriber" / "run.json").is_file() and (tmp_path / "transcriber" / "model").is_dir()

"""``jtm study`` on a tiny store: one row per seed, summary with spreads and chance, an equal optimizer-step
budget at every label fraction, learning rate and checkpoint chosen on validation without reading a test
recording, reuse of finished cells and refusal of changed ones."""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import jtm.pipelines.study as study_mod
from jtm.data.store import Store
from jtm.errors import JTMError
from jtm.evaluation.metrics import frame_average_precision
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder
from jtm.models.downstream import DownstreamModel
from jtm.pipelines.features import FeatureCache
from jtm.pipelines.study import METHODS, StudyConfig, fraction_dir, parse_list, run_study
from jtm.data.tasks import frame_roll

FRACTIONS = (0.4, 1.0)
METHODS_RUN = ("cpc-linear", "supervised")  # a probe on cached frozen features, and an arm trained on audio
STEPS, EVAL_EVERY, SEEDS = 20, 10, 2
LRS = (1e-3, 3e-2)


@dataclass
class Probe:
    """What the instrumented study run saw, per cell ``(method, fraction, repeat)``."""

    optimizer_steps: Counter = field(default_factory=Counter)
    batch_shapes: dict = field(default_factory=lambda: defaultdict(set))
    touched: set = field(default_factory=set)
    """Track indices whose audio or cached features were read since the last scoring step ended."""
    before_scoring: dict = field(default_factory=dict)
    """Per cell: the tracks read between the end of the previous scoring step and the start of this one."""
    during_scoring: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)
    current: Any = None


def tiny_pretrained(root: Path) -> Path:
    torch.manual_seed(0)
    CPCEncoder(CPCConfig(encoder_dim=16, context_dim=16)).save_pretrained(root / "encoder")
    return root


def config(store: Store, pretrained: Path, out: Path, **changes: Any) -> StudyConfig:
    cfg = StudyConfig(data=str(store.path), out=str(out), pretrained=str(pretrained), tasks=("transcription",),
                      fractions=FRACTIONS, methods=METHODS_RUN, seeds=SEEDS, steps=STEPS, eval_every=EVAL_EVERY,
                      patience=0, probe_lrs=LRS, encoder_lrs=LRS, batch_size=2, window=2560, val_fraction=0.25,
                      max_val_seconds=None, max_eval_seconds=None, threads=1)
    return replace(cfg, **changes)


def instrumented_run(cfg: StudyConfig, probe: Probe) -> pd.DataFrame:
    """run_study with every optimizer step counted and every audio/feature read recorded, per cell."""
    original_run_cell, original_score = study_mod.run_cell, study_mod._score_cell
    adam_step = torch.optim.Adam.step
    audio_int16 = Store.audio_int16
    cache_call = FeatureCache.__call__
    frozen_loss, e2e_loss = study_mod.FrozenProbe.loss, study_mod.EndToEnd.loss

    def run_cell(cfg, fronts, task, method, fraction, repeat, lr_choice, cell):
        probe.current = (method, float(fraction), repeat)
        try:
            return original_run_cell(cfg, fronts, task, method, fraction, repeat, lr_choice, cell)
        finally:
            probe.current = None

    def score_cell(*args, **kwargs):
        probe.before_scoring[probe.current] = set(probe.touched)
        try:
            return original_score(*args, **kwargs)
        finally:
            probe.during_scoring[probe.current] = set(probe.touched)
            probe.touched.clear()

    def step(self, *args, **kwargs):
        probe.optimizer_steps[probe.current] += 1
        return adam_step(self, *args, **kwargs)

    def read_audio(self, i, *args, **kwargs):
        probe.touched.add(int(i))
        return audio_int16(self, i, *args, **kwargs)

    def read_features(self, track):
        probe.touched.add(int(track))
        return cache_call(self, track)

    def loss_frozen(self, model, batch):
        probe.batch_shapes[probe.current].add(tuple(batch[0].shape[:2]))
        return frozen_loss(self, model, batch)

    def loss_e2e(self, model, batch):
        probe.batch_shapes[probe.current].add(tuple(batch["audio"].shape))
        return e2e_loss(self, model, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(study_mod, "run_cell", run_cell)
        mp.setattr(study_mod, "_score_cell", score_cell)
        mp.setattr(torch.optim.Adam, "step", step)
        mp.setattr(Store, "audio_int16", read_audio)
        mp.setattr(FeatureCache, "__call__", read_features)
        mp.setattr(study_mod.FrozenProbe, "loss", loss_frozen)
        mp.setattr(study_mod.EndToEnd, "loss", loss_e2e)
        return run_study(cfg, log=probe.lines.append)


@dataclass
class Study:
    store: Store
    cfg: StudyConfig
    out: Path
    df: pd.DataFrame
    probe: Probe
    rerun: pd.DataFrame
    rerun_lines: list
    stamps_before: dict
    stamps_after: dict


@pytest.fixture(scope="module")
def study(prepared_store, tmp_path_factory: pytest.TempPathFactory) -> Study:
    store, _ = prepared_store
    root = tmp_path_factory.mktemp("study")
    cfg = config(store, tiny_pretrained(root / "pre"), root / "study")
    probe = Probe()
    df = instrumented_run(cfg, probe)
    out = Path(cfg.out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")}
    lines: list[str] = []
    again = run_study(cfg, log=lines.append)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")}
    return Study(store, cfg, out, df, probe, again, lines, stamps, after)


def cells():
    return [(m, f, k) for m in METHODS_RUN for f in FRACTIONS for k in range(SEEDS)]


def cell_dir(s: Study, method: str, fraction: float, repeat: int) -> Path:
    return s.out / "transcription" / method / fraction_dir(fraction) / f"seed{s.cfg.seed + repeat}"


def cell_json(s: Study, method: str, fraction: float, repeat: int) -> dict[str, Any]:
    return json.loads((cell_dir(s, method, fraction, repeat) / "cell.json").read_text())


# ------------------------------------------------------------------------------------------- outputs


def test_results_have_one_row_per_task_method_fraction_seed(study: Study) -> None:
    on_disk = pd.read_csv(study.out / "results.csv")
    for df in (study.df, on_disk):
        assert len(df) == len(cells())
        keys = list(zip(df["task"], df["method"], df["fraction"], df["seed"]))
        assert sorted(keys) == sorted(("transcription", m, f, k) for m, f, k in cells())
        assert (df["headline_metric"] == "frame_ap").all() and df["headline"].between(0, 1).all()
        assert {"lr", "val_score", "best_step", "steps", "frame_ap", "note_f1", "n_train_tracks", "run"} <= set(df)
    for m, f, k in cells():
        cell = cell_dir(study, m, f, k)
        for name in ("cell.json", "metrics.json", "splits.json", "model/config.json"):
            assert (cell / name).is_file(), cell / name
        row = on_disk[(on_disk["method"] == m) & (on_disk["fraction"] == f) & (on_disk["seed"] == k)].iloc[0]
        metrics = json.loads((cell / "metrics.json").read_text())
        assert row["headline"] == pytest.approx(metrics["frame_ap"]) and metrics["split"] == "test"
        assert Path(row["run"]) == cell
    assert (study.out / "label_efficiency_transcription.png").stat().st_size > 1000


def test_summary_has_spreads_per_cell_and_a_chance_row(study: Study) -> None:
    results = pd.read_csv(study.out / "results.csv")
    summary = pd.read_csv(study.out / "summary.csv")
    assert {"mean", "std", "ci95_low", "ci95_high", "min", "max", "n_seeds", "lrs"} <= set(summary)
    for method in METHODS_RUN:
        for fraction in FRACTIONS:
            rows = summary[(summary["method"] == method) & (summary["fraction"] == fraction)]
            assert len(rows) == 1
            r = rows.iloc[0]
            values = results[(results["method"] == method) & (results["fraction"] == fraction)]["headline"]
            assert r["n_seeds"] == SEEDS and r["task"] == "transcription"
            assert r["mean"] == pytest.approx(values.mean()) and r["min"] == pytest.approx(values.min())
            assert r["max"] == pytest.approx(values.max())
            assert r["ci95_low"] <= r["mean"] <= r["ci95_high"]
            if values.std() > 0:
                assert r["ci95_low"] < values.min() and r["ci95_high"] > values.max()  # t(0.975, 1) = 12.7
    chance = summary[summary["method"] == "chance"]
    assert sorted(zip(chance["task"], chance["fraction"])) == [("transcription", f) for f in FRACTIONS]
    # The chance level of frame AP is the positive rate of the test frames.
    store = study.store
    rolls = [frame_roll(store, int(t), "transcription") for t in store.indices("test")]
    rate = sum(int(r.sum()) for r in rolls) / sum(r.size for r in rolls)
    assert chance["mean"].to_numpy() == pytest.approx([rate] * len(FRACTIONS))
    assert (chance["headline_metric"] == "frame_ap").all() and (chance["n_seeds"] == 1).all()


def test_comparisons_are_seed_by_seed_differences_of_the_results(study: Study) -> None:
    results = pd.read_csv(study.out / "results.csv")
    comparisons = pd.read_csv(study.out / "comparisons.csv")
    assert list(zip(comparisons["method"], comparisons["baseline"])) == [("cpc-linear", "supervised")] * len(FRACTIONS)
    for _, row in comparisons.iterrows():
        per_seed = results[(results["fraction"] == row["fraction"])].set_index(["method", "seed"])["headline"]
        diffs = [per_seed[(row["method"], k)] - per_seed[(row["baseline"], k)] for k in range(SEEDS)]
        assert row["n_seeds"] == SEEDS and row["wins"] == sum(d > 0 for d in diffs)
        assert row["mean"] == pytest.approx(sum(diffs) / SEEDS)
        assert row["ci95_low"] <= row["mean"] <= row["ci95_high"]


def test_study_and_environment_json_are_written(study: Study) -> None:
    saved = json.loads((study.out / "study.json").read_text())
    assert StudyConfig.from_dict(saved) == study.cfg
    assert saved["steps"] == STEPS and saved["seeds"] == SEEDS and saved["methods"] == list(METHODS_RUN)
    env = json.loads((study.out / "environment.json").read_text())
    assert {"python", "torch", "numpy", "torch_threads"} <= set(env)
    assert env["torch_threads"] == 1


def test_splits_share_validation_and_test_and_nest_per_seed(study: Study) -> None:
    test_ids = set(study.store.tracks["id"].astype(str).to_numpy()[study.store.indices("test")])
    splits = {(m, f, k): json.loads((cell_dir(study, m, f, k) / "splits.json").read_text()) for m, f, k in cells()}
    first = splits[cells()[0]]
    for key, s in splits.items():
        assert s["val"] == first["val"] and s["test"] == first["test"] and s["train_pool"] == first["train_pool"]
        assert set(s["test"]) == test_ids and not set(s["train"]) & (set(s["val"]) | test_ids)
    for m in METHODS_RUN:
        for k in range(SEEDS):
            small, full = splits[(m, 0.4, k)], splits[(m, 1.0, k)]
            assert set(small["train"]) < set(full["train"])
            # the subset of a seed does not depend on the method
            assert small["train"] == splits[(METHODS_RUN[0], 0.4, k)]["train"]


def test_the_exported_model_reproduces_the_test_score(study: Study) -> None:
    """model/ is the selected model: run on the whole test recording, it gives the cell's test frame AP."""
    store = study.store
    for m, f, k in [("cpc-linear", 1.0, 0), ("supervised", 0.4, 1)]:
        cell = cell_dir(study, m, f, k)
        model = DownstreamModel.from_pretrained(cell / "model")
        metrics = json.loads((cell / "metrics.json").read_text())
        truths, probs = [], []
        for t in store.indices("test"):
            audio = store.audio(int(t))
            if METHODS[m].trains_encoder:
                prob = model.predict_frames(audio, study.cfg.window, (study.cfg.window // 160) // 8, 2)
            else:
                with torch.no_grad():
                    prob = torch.sigmoid(model(torch.from_numpy(audio)[None]))[0].numpy()
            probs.append(prob)
            truths.append(frame_roll(store, int(t), "transcription", len(prob)))
        ap = frame_average_precision(np.concatenate(truths), np.concatenate(probs))
        assert ap == pytest.approx(metrics["frame_ap"], abs=2e-3), (m, f, k)


# ------------------------------------------------------------------------------------------- protocol


def test_every_fraction_gets_the_same_optimizer_steps(study: Study) -> None:
    """Equal budget: with patience 0 every run takes exactly ``steps`` steps, at 40 % and at 100 % of the labels,
    for the frozen-feature probe and for the from-scratch model alike (counted on Adam.step itself)."""
    counted = study.probe.optimizer_steps
    assert set(counted) == set(cells())
    for m, f, k in cells():
        result = cell_json(study, m, f, k)["result"]
        assert result["steps"] == STEPS
        assert [s for s, _ in result["curve"]] == [EVAL_EVERY, STEPS]
        tried = len(result["lrs_tried"])
        assert tried == (len(LRS) if k == 0 else 1)
        assert counted[(m, f, k)] == STEPS * tried, (m, f, k)
    for m in METHODS_RUN:
        for k in range(SEEDS):
            assert counted[(m, 0.4, k)] == counted[(m, 1.0, k)]
    results = pd.read_csv(study.out / "results.csv")
    assert (results["steps"] == STEPS).all()


def _batch_shapes(study: Study, end_to_end: bool) -> None:
    w = study.cfg.window
    for m, f, k in cells():
        if METHODS[m].trains_encoder != end_to_end:
            continue
        shapes = study.probe.batch_shapes[(m, f, k)]
        expected = (study.cfg.batch_size, w) if end_to_end else (study.cfg.batch_size, w // 160)
        assert shapes == {expected}, (m, f, k, shapes)


def test_every_probe_step_sees_a_full_batch_of_full_windows(study: Study) -> None:
    """The same amount of labelled data per step everywhere: batch_size windows of window samples."""
    _batch_shapes(study, end_to_end=False)


def test_every_end_to_end_step_sees_a_full_batch_of_full_windows(study: Study) -> None:
    _batch_shapes(study, end_to_end=True)


def test_training_and_selection_never_read_a_test_recording(study: Study) -> None:
    test = set(study.store.indices("test").tolist())
    val = set(json.loads((cell_dir(study, "cpc-linear", 1.0, 0) / "splits.json").read_text())["val"])
    ids = study.store.tracks["id"].astype(str).to_numpy()
    seen = study.probe.before_scoring
    assert set(seen) == set(cells())
    for key, touched in seen.items():
        assert touched, key  # the instrumentation did see the training reads
        assert not touched & test, (key, sorted(touched & test))
        assert test <= study.probe.during_scoring[key], key  # the scoring step, and only it, reads them
    # ...and the validation recordings were read before scoring (selection used them), by both kinds of arm.
    for m in METHODS_RUN:
        assert any(set(ids[list(seen[(m, f, k)])]) & val for f in FRACTIONS for k in range(SEEDS)), m


def test_learning_rate_is_chosen_on_validation_at_the_first_seed(study: Study) -> None:
    results = pd.read_csv(study.out / "results.csv")
    for m in METHODS_RUN:
        for f in FRACTIONS:
            first = cell_json(study, m, f, 0)["result"]
            tried = {float(lr): score for lr, score in first["lrs_tried"].items()}
            assert set(tried) == set(LRS)
            scores = [-np.inf if tried[lr] is None else tried[lr] for lr in LRS]
            best = LRS[int(np.argmax(scores))]
            assert first["lr"] == best and first["val_score"] == pytest.approx(max(scores))
            for k in range(1, SEEDS):
                later = cell_json(study, m, f, k)["result"]
                assert later["lr"] == best and [float(x) for x in later["lrs_tried"]] == [best]
            rows = results[(results["method"] == m) & (results["fraction"] == f)]
            assert (rows["lr"] == best).all()


def test_end_to_end_validation_with_fractional_max_val_seconds(prepared_store) -> None:
    store, _ = prepared_store
    cfg = StudyConfig(data=str(store.path), out="unused", window=2560, batch_size=2, val_fraction=0.25)
    view = study_mod._task_view(cfg, store, "transcription", 1.0, 0)
    torch.manual_seed(0)
    arm = study_mod.EndToEnd(view, CPCEncoder(CPCConfig(encoder_dim=16, context_dim=16)), finetune=False)
    model, _ = arm.build(0, 1e-3)
    truth = study_mod._validation_truth(view, 2.3)
    score = study_mod._validation_score(arm, model.eval(), view, truth, 2.3)
    assert 0.0 <= score <= 1.0


def test_jtm_evaluate_accepts_a_study_cell(study: Study, tmp_path: Path) -> None:
    from jtm.pipelines.evaluate import evaluate_run

    cell = tmp_path / "cell"
    shutil.copytree(cell_dir(study, "cpc-linear", 1.0, 0), cell)
    metrics = evaluate_run(cell, "test", data=study.store.path, progress=False)
    assert metrics["frame_ap"] == pytest.approx(cell_json(study, "cpc-linear", 1.0, 0)["result"]["metrics"]["frame_ap"],
                                                abs=2e-3)


# ------------------------------------------------------------------------------------------- re-runs


def test_a_rerun_reuses_every_finished_cell(study: Study) -> None:
    assert study.stamps_after == study.stamps_before and len(study.stamps_before) == len(cells())
    cell_lines = [line for line in study.rerun_lines if line.startswith("[")]
    assert len(cell_lines) == len(cells()) and all("reused" in line for line in cell_lines)
    assert not any("reused" in line for line in study.probe.lines)
    pd.testing.assert_frame_equal(study.rerun, study.df)


def test_a_changed_configuration_is_refused_not_reused(study: Study, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(study.out, out, ignore=shutil.ignore_patterns("cache"))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")}
    pretrained = Path(study.cfg.pretrained)
    # The study folder knows its configuration...
    with pytest.raises(JTMError, match=r"study\.json.*steps"):
        run_study(config(study.store, pretrained, out, steps=STEPS + 10), log=lambda _: None)
    # ...and so does every cell, even without study.json.
    (out / "study.json").unlink()
    first = out / "transcription" / METHODS_RUN[0] / fraction_dir(FRACTIONS[0]) / "seed0" / "cell.json"
    with pytest.raises(JTMError) as err:
        run_study(config(study.store, pretrained, out, steps=STEPS + 10), log=lambda _: None)
    assert str(first) in str(err.value) and "steps" in str(err.value)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("cell.json")} == stamps
    # Machine settings may change.
    (out / "study.json").unlink()
    lines: list[str] = []
    run_study(config(study.store, pretrained, out, threads=2), log=lines.append)
    assert sum("reused" in line for line in lines) == len(cells())


def test_study_arguments(tmp_path: Path) -> None:
    assert parse_list("0.01, 0.1,1.0", float) == [0.01, 0.1, 1.0]
    assert fraction_dir(0.01) == "f0.01" and fraction_dir(1) == "f1.0"
    assert set(METHODS) == {"random-linear", "logmel-linear", "logmel-mlp", "cqt-linear", "cpc-linear", "cpc-mlp",
                            "cpc-finetune", "supervised", "random-note", "logmel-note", "cpc-note", "cqt-note",
                            "cqt-harmonic"}
    base = StudyConfig(data="nowhere", out=str(tmp_path / "s"))
    with pytest.raises(JTMError, match="pretrained"):
        run_study(replace(base, methods=("cpc-linear",)))
    with pytest.raises(JTMError, match="unknown method"):
        run_study(replace(base, methods=("cpc-magic",)))
    for bad in (dict(fractions=(0.0,)), dict(steps=0), dict(probe_lrs=()), dict(features="middle"),
                dict(window=1000), dict(patience=-1)):
        with pytest.raises(JTMError):
            run_study(replace(base, methods=("logmel-linear",), **bad))
    assert not (tmp_path / "s").exists()
    assert StudyConfig.from_dict(base.to_dict()) == base
    with pytest.raises(JTMError, match="unknown key .epochs. in StudyConfig"):
        StudyConfig.from_dict({**base.to_dict(), "epochs": 3})


def study_command(store: Store, out: Path, fractions: str, seeds: int, steps: int, eval_every: int) -> list[Any]:
    """``jtm study`` arguments for a tiny logmel-linear transcription study of ``store``."""
    return ["study", "--data", store.path, "--out", out, "--tasks", "transcription", "--fractions", fractions,
            "--methods", "logmel-linear", "--seeds", str(seeds), "--steps", str(steps), "--eval-every",
            str(eval_every), "--patience", "0", "--probe-lrs", "0.01", "--batch-size", "2", "--window", "2560",
            "--val-fraction", "0.25", "--max-val-seconds", "2", "--threads", "1"]


def test_the_study_command(prepared_store, tmp_path: Path) -> None:
    """``jtm study`` maps its options onto StudyConfig, runs, and prints the summary table with chance."""
    from tests.apply_helpers import run_cli

    store, _ = prepared_store
    out = tmp_path / "cli"
    args = study_command(store, out, "0.4,1", seeds=2, steps=6, eval_every=3)
    code, stdout, err = run_cli(args)
    assert code == 0, err
    saved = json.loads((out / "study.json").read_text())
    assert (saved["steps"], saved["eval_every"], saved["patience"], saved["seeds"]) == (6, 3, 0, 2)
    assert saved["fractions"] == [0.4, 1.0] and saved["probe_lrs"] == [0.01] and saved["max_val_seconds"] == 2.0
    assert len(pd.read_csv(out / "results.csv")) == 4
    assert "transcription: frame_ap" in stdout and "logmel-linear" in stdout and "chance" in stdout
    result = json.loads((out / "transcription" / "logmel-linear" / "f0.4" / "seed1" / "cell.json").read_text())
    assert result["result"]["steps"] == 6
    # A changed setting on the same folder is an error message, not a traceback.
    code, _, err = run_cli([*args[:args.index("--steps")], "--steps", "7", *args[args.index("--steps") + 2:]])
    assert code != 0 and "study.json" in err and "steps" in err


def test_augment_applies_to_spectral_arms_only_and_is_part_of_their_cells(tmp_path: Path) -> None:
    """--augment eq is refused for arms that read no spectrum; it enters the configuration of the cells it trains
    (so they are never reused for a study without it, nor for another strength), and a study.json written before
    the option existed still matches a study without it."""
    from jtm.training.runs import changed_keys

    base = StudyConfig(data="nowhere", out=str(tmp_path / "s"), methods=("logmel-note", "cqt-linear"),
                       tasks=("notes",), pretrained="somewhere")
    for bad, match in ((dict(methods=("cqt-linear", "cpc-linear")), "cpc-linear read no spectrum"),
                       (dict(methods=("supervised",), tasks=("transcription",)), "supervised read no spectrum"),
                       (dict(augment="reverb"), "--augment must be one of eq"),
                       (dict(augment=None), "give --augment")):
        with pytest.raises(JTMError, match=match):
            run_study(replace(base, **{"augment": "eq", "augment_db": 3.0, **bad}))
    assert not (tmp_path / "s").exists()
    plain = base.cell_config("notes", "logmel-note", 1.0, 0)
    assert "augment" not in plain
    eq = replace(base, augment="eq").cell_config("notes", "logmel-note", 1.0, 0)
    strong = replace(base, augment="eq", augment_db=12.0).cell_config("notes", "logmel-note", 1.0, 0)
    assert eq["augment"]["kind"] == "eq" and eq["augment"]["gain_db"] == 6.0 and strong["augment"]["gain_db"] == 12.0
    assert changed_keys(plain, eq) == ["augment"] and changed_keys(eq, strong) == ["augment"]
    old = {k: v for k, v in base.to_dict().items() if not k.startswith("augment")}
    assert changed_keys(old, base.to_dict()) == [] and changed_keys(old, replace(base, augment="eq").to_dict())


def test_the_study_command_with_augment(prepared_store, tmp_path: Path) -> None:
    """``jtm study --augment eq --augment-db N`` records the augmentation in study.json and every cell, and a
    re-run of the folder without it is refused, not served the augmented cells."""
    from tests.apply_helpers import run_cli

    store, _ = prepared_store
    out = tmp_path / "cli"
    args = study_command(store, out, "1", seeds=1, steps=4, eval_every=2)
    code, _, err = run_cli([*args, "--augment", "eq", "--augment-db", "3"])
    assert code == 0, err
    saved = json.loads((out / "study.json").read_text())
    assert saved["augment"] == "eq" and saved["augment_db"] == 3.0
    cell = json.loads((out / "transcription" / "logmel-linear" / "f1.0" / "seed0" / "cell.json").read_text())
    assert cell["config"]["augment"]["kind"] == "eq" and cell["config"]["augment"]["gain_db"] == 3.0
    code, _, err = run_cli(args)
    assert code != 0 and "study.json" in err and "augment" in err
    code, _, err = run_cli([*args, "--augment", "reverb"])
    assert code != 0 and "reverb" in err


def test_best_cpc_arm_is_chosen_on_validation_never_on_test() -> None:
    """cpc-best takes, per (task, fraction, seed), the CPC arm with the higher validation score, even when the
    other one scored higher on test."""
    from jtm.pipelines.study import BEST_CPC, best_cpc_rows

    rows = pd.DataFrame({"task": ["transcription"] * 4, "method": ["cpc-linear", "cpc-mlp"] * 2,
                         "fraction": [0.1, 0.1, 1.0, 1.0], "seed": [0] * 4, "val_score": [0.5, 0.6, 0.7, 0.4],
                         "headline": [0.9, 0.2, 0.1, 0.8]})
    best = best_cpc_rows(rows)
    assert list(best["method"]) == [BEST_CPC, BEST_CPC]
    assert list(best["chosen"]) == ["cpc-mlp", "cpc-linear"] and list(best["headline"]) == [0.2, 0.1]
    assert best_cpc_rows(rows[rows["method"] == "cpc-linear"]).empty  # one CPC arm: nothing to choose


# ------------------------------------------------------------------------------------------- the notes task


NOTE_METHODS = ("cpc-note", "logmel-linear")


@dataclass
class NoteStudy:
    store: Store
    cfg: StudyConfig
    out: Path
    df: pd.DataFrame
    probe: Probe
    tuned_after_test_read: list


@pytest.fixture(scope="module")
def note_study(prepared_store, tmp_path_factory: pytest.TempPathFactory) -> NoteStudy:
    """transcription + notes with a note head on CPC features and a frame-wise log-mel probe; every threshold
    tuning call records whether a test recording had been read before it."""
    store, _ = prepared_store
    root = tmp_path_factory.mktemp("note_study")
    cfg = config(store, tiny_pretrained(root / "pre"), root / "study", tasks=("transcription", "notes"),
                 methods=NOTE_METHODS, fractions=(1.0,))
    probe = Probe()
    test = set(store.indices("test").tolist())
    late: list = []
    scoring_notes = [False]

    def watch(fn):
        def tuned(*args, **kwargs):
            if scoring_notes[0]:
                late.append(bool(probe.touched & test))
            return fn(*args, **kwargs)
        return tuned

    def score_notes(*args, **kwargs):
        scoring_notes[0] = True
        try:
            return original_score_notes(*args, **kwargs)
        finally:
            scoring_notes[0] = False

    original_score_notes = study_mod._score_notes
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(study_mod, "_score_notes", score_notes)
        mp.setattr(study_mod, "tune_threshold", watch(study_mod.tune_threshold))
        mp.setattr(study_mod, "tune_note_thresholds", watch(study_mod.tune_note_thresholds))
        df = instrumented_run(cfg, probe)
    return NoteStudy(store, cfg, Path(cfg.out), df, probe, late)


def test_the_notes_task_writes_frame_and_note_scores(note_study: NoteStudy) -> None:
    df = pd.read_csv(note_study.out / "results.csv")
    keys = sorted(zip(df["task"], df["method"], df["seed"]))
    assert keys == sorted((t, m, k) for t, m in [("notes", "cpc-note"), ("notes", "logmel-linear"),
                                                  ("transcription", "logmel-linear")] for k in range(SEEDS))
    notes = df[df["task"] == "notes"]
    assert (notes["headline_metric"] == "note_f1").all() and (notes["headline"] == notes["note_f1"]).all()
    for column in ("frame_f1", "note_f1", "note_offset_f1", "frame_ap"):
        assert notes[column].between(0, 1).all(), column
    assert (notes["note_offset_f1"] <= notes["note_f1"] + 1e-12).all()  # an offset match is also an onset match
    head = notes[notes["method"] == "cpc-note"]
    assert head["onset_ap"].between(0, 1).all() and notes[notes["method"] == "logmel-linear"]["onset_ap"].isna().all()
    summary = pd.read_csv(note_study.out / "summary.csv")
    rows = summary[summary["task"] == "notes"]
    assert set(rows["method"]) == {"cpc-note", "logmel-linear"}  # and no chance row for note F1
    for metric in ("frame_f1", "note_offset_f1"):
        for _, row in rows.iterrows():
            values = notes[notes["method"] == row["method"]][metric]
            assert row[f"{metric}_mean"] == pytest.approx(values.mean())
            assert row[f"{metric}_ci95_low"] <= row[f"{metric}_mean"] <= row[f"{metric}_ci95_high"]
    cell = note_study.out / "notes" / "cpc-note" / "f1.0" / "seed0"
    result = json.loads((cell / "cell.json").read_text())["result"]
    assert 0 < result["onset_threshold"] < 1 and 0 < result["threshold"] < 1 and 0 < result["sustain_threshold"] < 1
    assert result["metrics"]["decoding"] == "onsets" and result["lrs_tried"].keys() == {f"{lr:g}" for lr in LRS}
    assert (note_study.out / "label_efficiency_notes.png").is_file()


def test_note_selection_and_thresholds_never_read_a_test_recording(note_study: NoteStudy) -> None:
    test = set(note_study.store.indices("test").tolist())
    assert note_study.probe.before_scoring and all(not touched & test for touched in
                                                   note_study.probe.before_scoring.values())
    assert all(test <= seen for seen in note_study.probe.during_scoring.values())
    # every frame threshold (2 arms x 2 seeds) and decoding thresholds (the note head's 2 seeds) of the notes
    # task were tuned before its cell read a test recording
    assert len(note_study.tuned_after_test_read) == 3 * SEEDS and not any(note_study.tuned_after_test_read)


def test_the_notes_cell_model_is_a_note_transcriber_that_reproduces_the_test_scores(note_study: NoteStudy) -> None:
    """CELL/model holds front end, head and thresholds: loaded alone, it gives the probabilities the study scored
    (its cached features through the head) and, scored with its saved thresholds, the study's test metrics."""
    from jtm.models.note_head import NoteHead
    from jtm.models.note_transcriber import NoteTranscriber
    from jtm.pipelines.evaluate import score_notes

    store, cell = note_study.store, note_study.out / "notes" / "cpc-note" / "f1.0" / "seed1"
    model = NoteTranscriber.from_pretrained(cell / "model")
    result = json.loads((cell / "cell.json").read_text())["result"]
    thresholds = model.thresholds
    assert (thresholds.onset, thresholds.sustain, thresholds.frame) == (
        result["onset_threshold"], result["sustain_threshold"], result["threshold"])
    assert model.features_from == "context" and not (cell / "run.json").exists()
    encoder = CPCEncoder.from_pretrained(Path(note_study.cfg.pretrained) / "encoder")
    assert all(torch.equal(a, b) for a, b in zip(model.frontend.state_dict().values(), encoder.state_dict().values()))
    test = store.indices("test")
    outputs = [model.predict(store.audio(int(t))) for t in test]
    cache = next(p for p in (note_study.out / "cache").iterdir() if (p / "frontend.json").is_file()
                 and json.loads((p / "frontend.json").read_text())["name"] == "pretrained")
    ids = store.tracks["id"].astype(str).to_numpy()
    for t, (onset, frame) in zip(test, outputs):
        cached = torch.from_numpy(np.load(cache / f"{ids[t]}.npy"))[None]
        head_onset, head_frame = NoteHead.probabilities(model.head, cached)
        np.testing.assert_allclose(onset, head_onset[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(frame, head_frame[0].numpy(), atol=1e-5)
    metrics = score_notes(store, test, outputs, thresholds.frame, thresholds.sustain, thresholds.onset)
    for key in ("frame_ap", "onset_ap", "frame_f1", "note_f1", "note_offset_f1"):
        assert metrics[key] == pytest.approx(result["metrics"][key], abs=1e-3), key


def test_jtm_transcribe_of_a_notes_cell_gives_the_studys_probabilities_and_notes(note_study: NoteStudy,
                                                                                   tmp_path: Path) -> None:
    """A test recording written to a file and transcribed with the cell (streamed in 0.7 s chunks): the onset
    and frame probabilities the study scored (its cached features through the cell's head) and the notes
    decode_notes makes of them with the thresholds chosen on validation."""
    import soundfile as sf

    from jtm.evaluation.notes import decode_notes
    from jtm.pipelines.transcribe import iter_note_probabilities, load_transcriber, transcribe_file

    store, cell = note_study.store, note_study.out / "notes" / "cpc-note" / "f1.0" / "seed0"
    track = int(store.indices("test")[0])
    path = tmp_path / "test.wav"
    sf.write(str(path), store.audio(track), store.sample_rate, subtype="FLOAT")
    tr = load_transcriber(cell)
    streamed = list(iter_note_probabilities(tr, path, tr.chunking(chunk_seconds=0.7)))
    onset, frame = (np.concatenate(p) for p in zip(*streamed))
    cache = next(p for p in (note_study.out / "cache").iterdir() if (p / "frontend.json").is_file()
                 and json.loads((p / "frontend.json").read_text())["name"] == "pretrained")
    ids = store.tracks["id"].astype(str).to_numpy()
    features = torch.from_numpy(np.load(cache / f"{ids[track]}.npy"))[None]
    study_onset, study_frame = (p[0].numpy() for p in tr.model.head.probabilities(features))
    np.testing.assert_allclose(onset, study_onset, atol=1e-5)
    np.testing.assert_allclose(frame, study_frame, atol=1e-5)
    thresholds = tr.model.thresholds
    expected = decode_notes(study_onset, study_frame, thresholds.onset, thresholds.sustain, 100.0)
    result = transcribe_file(tr, path, tmp_path / "out", csv=True, chunk_seconds=0.7)
    assert len(expected) > 0 and result.n_notes == len(expected)
    table = pd.read_csv(tmp_path / "out" / "test.csv")
    frames = np.round(np.stack([expected.onset, expected.offset]) * 100).astype(int) * 441  # samples at 44.1 kHz
    assert sorted(zip(table["note"], table["start_time"], table["end_time"])) == sorted(
        zip(expected.pitch.tolist(), *frames.tolist()))


def test_jtm_evaluate_of_a_notes_cell_reproduces_the_studys_test_scores(note_study: NoteStudy, tmp_path: Path) -> None:
    """jtm evaluate CELL on a copy of the study (found through study.json above the cell): the scores the study
    gave the cell, written into CELL/metrics.json; the model folder alone needs --data."""
    from jtm.pipelines.evaluate import evaluate_run, format_metrics

    relative = Path("notes") / "cpc-note" / "f1.0" / "seed0"
    (tmp_path / "study").mkdir()
    shutil.copy(note_study.out / "study.json", tmp_path / "study" / "study.json")
    shutil.copytree(note_study.out / relative, tmp_path / "study" / relative)
    cell = tmp_path / "study" / relative
    (cell / "metrics.json").unlink()
    metrics = evaluate_run(cell, progress=False)
    study = json.loads((note_study.out / relative / "cell.json").read_text())["result"]["metrics"]
    for key in ("frame_ap", "onset_ap", "frame_precision", "frame_f1", "note_f1", "note_offset_f1"):
        assert metrics[key] == pytest.approx(study[key], abs=1e-3), key
    assert metrics["headline_metric"] == "note_f1" and metrics["task"] == "notes"
    assert json.loads((cell / "metrics.json").read_text())["note_offset_f1"] == pytest.approx(metrics["note_offset_f1"])
    assert "note_offset_f1" in format_metrics(metrics) and "onset_ap" in format_metrics(metrics)
    alone = tmp_path / "alone"
    shutil.copytree(cell / "model", alone)
    with pytest.raises(JTMError, match="--data"):
        evaluate_run(alone, progress=False)
    with pytest.raises(JTMError, match="--split test"):
        evaluate_run(alone, "val", data=note_study.store.path, progress=False)
    assert evaluate_run(alone, data=note_study.store.path, progress=False)["note_f1"] == pytest.approx(
        metrics["note_f1"])


def test_adding_the_notes_task_leaves_the_other_tasks_unchanged(note_study: NoteStudy, tmp_path: Path) -> None:
    """The same transcription cell computed in a study without the notes task gives the same numbers."""
    cfg = replace(note_study.cfg, out=str(tmp_path / "alone"), tasks=("transcription",), methods=("logmel-linear",))
    alone = run_study(cfg, log=lambda _: None)
    both = note_study.df[note_study.df["task"] == "transcription"].reset_index(drop=True)
    for column in ("headline", "val_score", "lr", "best_step", "frame_f1", "note_f1"):
        np.testing.assert_allclose(alone[column].to_numpy(float), both[column].to_numpy(float), err_msg=column)


def test_note_arms_run_only_on_the_notes_task(tmp_path: Path) -> None:
    base = StudyConfig(data="nowhere", out=str(tmp_path / "s"), tasks=("transcription", "notes"),
                       methods=("logmel-note", "supervised", "logmel-linear"), fractions=(1.0,))
    assert base.cells() == [("transcription", "supervised", 1.0), ("transcription", "logmel-linear", 1.0),
                            ("notes", "logmel-note", 1.0), ("notes", "logmel-linear", 1.0)]
    with pytest.raises(JTMError, match="no method of this study runs on task"):
        run_study(replace(base, tasks=("notes",), methods=("supervised",)))
    with pytest.raises(JTMError, match="no method of this study runs on task"):
        run_study(replace(base, tasks=("transcription",), methods=("logmel-note",)))


def test_heldout_timbre_recordings_are_scored_apart(tmp_path: Path) -> None:
    """Test recordings whose timbre no training recording has are kept out of the test score and scored on their
    own, with the thresholds validation chose; both land in results.csv and summary.csv."""
    from jtm.data.prepare import prepare_store
    from jtm.data.store import HELDOUT_TIMBRE, TIMBRE_COLUMN
    from tests.helpers import make_musicnet_folder

    make_musicnet_folder(tmp_path / "src", n_train=4, n_test=2, seconds=[4.1, 3.3, 5.2, 4.15, 3.05, 3.4])
    prepare_store(tmp_path / "src", tmp_path / "store", workers=1, progress=False)
    tracks = pd.read_csv(tmp_path / "store" / "tracks.csv", dtype=str, keep_default_na=False)
    tracks[TIMBRE_COLUMN] = "rendering0"
    tracks.loc[tracks.index[tracks["split"] == "test"][-1], TIMBRE_COLUMN] = HELDOUT_TIMBRE
    tracks.to_csv(tmp_path / "store" / "tracks.csv", index=False)
    store = Store.open(tmp_path / "store")
    heldout_id = tracks.loc[tracks[TIMBRE_COLUMN] == HELDOUT_TIMBRE, "id"].item()

    cfg = config(store, tiny_pretrained(tmp_path / "pre"), tmp_path / "study", methods=("logmel-linear", "logmel-note"),
                 fractions=(1.0,), seeds=1, tasks=("transcription", "notes"))
    df = run_study(cfg, log=lambda line: None)
    assert set(df["task"]) == {"transcription", "notes"} and len(df) == 3
    assert (df["n_test"] == 1).all() and (df["n_test_heldout_timbre"] == 1).all()
    assert df["heldout_timbre_headline"].between(0, 1).all()
    assert not np.allclose(df["heldout_timbre_headline"], df["headline"])  # another recording, another score
    for cell in (tmp_path / "study").rglob("splits.json"):
        splits = json.loads(cell.read_text())
        assert splits["test_heldout_timbre"] == [heldout_id] and heldout_id not in splits["test"]
    summary = pd.read_csv(tmp_path / "study" / "summary.csv")
    assert sorted(summary.dropna(subset=["heldout_timbre_headline_mean"])["method"]) == [
        "logmel-linear", "logmel-linear", "logmel-note"]
    # jtm evaluate scores the held-out-timbre recordings apart too, as the study did: a frame model and a note model
    from jtm.pipelines.evaluate import evaluate_run, format_metrics

    # (a frame model's evaluation cuts recordings into training windows, whose STFT edges the study's whole-recording
    # features do not have: its scores are compared with the study's only for the note model, which is exact)
    for task, method, keys in (("transcription", "logmel-linear", ()),
                               ("notes", "logmel-note", ("frame_f1", "onset_ap", "note_f1", "note_offset_f1"))):
        metrics = evaluate_run(tmp_path / "study" / task / method / "f1.0" / "seed0", progress=False)
        row = df[(df["task"] == task) & (df["method"] == method)].iloc[0]
        assert metrics["n_tracks"] == 1 and metrics["n_tracks_heldout_timbre"] == 1
        assert metrics["heldout_timbre_tracks"] == [heldout_id] and heldout_id not in metrics["tracks"]
        assert "note_offset_f1" in metrics and "heldout_timbre_note_offset_f1" in metrics
        for key in keys:
            assert metrics[key] == pytest.approx(row[key], abs=2e-3), (task, key)
            heldout = f"heldout_timbre_{key}"
            assert metrics[heldout] == pytest.approx(row[heldout], abs=2e-3), (task, key)
        assert 0 <= metrics["heldout_timbre_note_f1"] <= 1 and "heldout_timbre_note_f1" in format_metrics(metrics)


def test_the_cqt_arm_reads_the_untrained_log_spectrum_and_its_model_reproduces_the_score(prepared_store,
                                                                                        tmp_path: Path) -> None:
    """cqt-linear probes the gabor encoder's log spectrum at its constant-Q start: its cached features are exactly
    that spectrum (whatever the pretrained weights), and the exported model gives the cell's test frame AP."""
    store, _ = prepared_store
    torch.manual_seed(0)
    gabor = CPCConfig(encoder="gabor", encoder_dim=16, context_dim=16, gabor_filters=48, gabor_kernel=1025)
    trained = CPCEncoder(gabor)
    with torch.no_grad():
        trained.encoder.log_gain.add_(1.0)  # a "pretrained" gain: the cqt arm must not read it
    trained.save_pretrained(tmp_path / "pre" / "encoder")
    cfg = config(store, tmp_path / "pre", tmp_path / "study", methods=("cqt-linear",), fractions=(1.0,), seeds=1)
    df = run_study(cfg, log=lambda line: None)
    assert list(df["method"]) == ["cqt-linear"] and df["frame_ap"].notna().all()
    cell = Path(cfg.out) / "transcription" / "cqt-linear" / fraction_dir(1.0) / f"seed{cfg.seed}"
    model = DownstreamModel.from_pretrained(cell / "model")
    assert model.features_from == "spectrum" and model.probe_config["in_dim"] == 48
    untrained = CPCEncoder(gabor).eval()
    audio = torch.from_numpy(store.audio(int(store.indices("test")[0])))[None]
    with torch.no_grad():
        torch.testing.assert_close(model.frontend.features(audio, "spectrum"), untrained.encoder.spectrum(audio))
    metrics = json.loads((cell / "metrics.json").read_text())
    truths, probs = [], []
    for t in store.indices("test"):
        with torch.no_grad():
            prob = torch.sigmoid(model(torch.from_numpy(store.audio(int(t)))[None]))[0].numpy()
        probs.append(prob)
        truths.append(frame_roll(store, int(t), "transcription", len(prob)))
    assert frame_average_precision(np.concatenate(truths), np.concatenate(probs)) == pytest.approx(
        metrics["frame_ap"], abs=2e-3)
    # a model without the gabor front end has no such spectrum: a clear error, before any cell runs
    with pytest.raises(JTMError, match="cqt arms read the gabor encoder"):
        run_study(config(store, tiny_pretrained(tmp_path / "conv"), tmp_path / "study2", methods=("cqt-linear",),
                         fractions=(1.0,), seeds=1), log=lambda line: None)


@pytest.mark.parametrize("method,filters", [("cqt-note", 48), ("cqt-harmonic", 192)])
def test_the_cqt_note_arms_leave_a_note_transcriber_on_the_log_spectrum(prepared_store, tmp_path: Path, method: str,
                                                                       filters: int) -> None:
    from jtm.models.note_transcriber import NoteTranscriber

    store, _ = prepared_store
    torch.manual_seed(0)
    gabor = CPCConfig(encoder="gabor", encoder_dim=16, context_dim=16, gabor_filters=filters, gabor_kernel=1025)
    CPCEncoder(gabor).save_pretrained(tmp_path / "pre" / "encoder")
    cfg = config(store, tmp_path / "pre", tmp_path / "study", tasks=("notes",), methods=(method,),
                 fractions=(1.0,), seeds=1)
    df = run_study(cfg, log=lambda line: None)
    assert list(df["method"]) == [method] and df["note_f1"].notna().all()
    model = NoteTranscriber.from_pretrained(Path(cfg.out) / "notes" / method / fraction_dir(1.0) /
                                            f"seed{cfg.seed}" / "model")
    audio = torch.from_numpy(store.audio(int(store.indices("test")[0])))[None]
    with torch.no_grad():
        torch.testing.assert_close(model.features(audio), CPCEncoder(gabor).eval().encoder.spectrum(audio))


def test_the_harmonic_arm_refuses_a_spectrum_that_is_not_24_bins_an_octave(prepared_store, tmp_path: Path) -> None:
    store, _ = prepared_store
    gabor = CPCConfig(encoder="gabor", encoder_dim=16, context_dim=16, gabor_filters=48, gabor_kernel=1025)
    CPCEncoder(gabor).save_pretrained(tmp_path / "pre" / "encoder")
    cfg = config(store, tmp_path / "pre", tmp_path / "study", tasks=("notes",), methods=("cqt-harmonic",),
                 fractions=(1.0,), seeds=1)
    with pytest.raises(JTMError, match="192-bin constant-Q spectrum.*48 wide"):
        run_study(cfg, log=lambda line: None)

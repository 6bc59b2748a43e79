"""``jtm downstream``, ``jtm evaluate`` and ``jtm study``: probes on frozen or fine-tuned features, their
evaluation on whole test recordings, and the label-efficiency study."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from jtm.audio import HOP
from jtm.cli.app import app, choices, config_from_options, default_of, parse_devices
from jtm.cli.pretrain import is_global_zero
from jtm.hardware import pin_mkl_rounding
from jtm.data.augment import AUGMENTATIONS
from jtm.models.config import FEATURE_LAYERS
from jtm.pipelines.study_config import METHODS, StudyConfig
from jtm.training.config import PROBES, DownstreamConfig

Probe = choices("Probe", PROBES)
Features = choices("Features", FEATURE_LAYERS)
Augment = choices("Augment", AUGMENTATIONS)


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"


def _run(name: str, enum=None):
    """Default of a DownstreamConfig field."""
    return default_of(DownstreamConfig, name, enum)


# Deliberately alike in shape (duplicates): one typer.Option a config field, each with its own help, the default read
# from the dataclass (`_run`, `_study`); typer needs them spelled out in the signature.
@app.command("downstream")
def downstream(
    data: Path = typer.Option(..., help="A prepared store (jtm data prepare)."),
    task: str = typer.Option(_run("task"), help="transcription (128 pitches per 10 ms frame), pitch-instrument "
                             "(11 instruments x 128 pitches), or a metadata column to classify (ensemble, composer, "
                             "...)."),
    encoder: str = typer.Option(..., help="A pretraining RUN, its encoder/ folder or an encoder file; or random "
                                "(same architecture, random, frozen), logmel (log-mel baseline), supervised (from "
                                "scratch)."),
    out: Path = typer.Option(..., help="Run folder; re-running with the same folder resumes, or skips if finished."),
    probe: Probe = typer.Option(_run("probe", Probe), help="linear, or mlp (one hidden layer)."),
    finetune: bool = typer.Option(_run("finetune"), help="Train the pretrained encoder together with the probe."),
    features: Features = typer.Option(_run("features", Features), help="CPC layer the probe reads: context (c), "
                                      "encoder (z), both ([z, c]) or spectrum (a gabor encoder's log filterbank)."),
    label_fraction: float = typer.Option(_run("label_fraction"), help="Fraction of the labelled training recordings "
                                         "to train on (seeded, nested across fractions; validation and test never "
                                         "subsampled)."),
    architecture: Optional[Path] = typer.Option(_run("architecture"), help="For random/supervised: copy this run's "
                                                "CPC architecture (default: jtm pretrain's defaults)."),
    epochs: int = typer.Option(_run("epochs"), help="Training epochs (ignored with --steps)."),
    steps: Optional[int] = typer.Option(_run("steps"), help="Train for N optimizer steps instead of epochs: the same "
                                        "budget at every label fraction; the checkpoint of lowest validation loss is "
                                        "kept."),
    eval_every: int = typer.Option(_run("eval_every"), help="With --steps: validate every N steps."),
    batch_size: int = typer.Option(_run("batch_size"), help="Windows per batch."),
    window: int = typer.Option(_run("window"), help=f"Window length in samples at 16 kHz (a multiple of {HOP})."),
    lr: float = typer.Option(_run("lr"), help="Adam learning rate of the probe."),
    frontend_lr: Optional[float] = typer.Option(_run("frontend_lr"), help="Learning rate of a trained front end "
                                                "(default: lr/10 when fine-tuning, lr from scratch)."),
    hidden: int = typer.Option(_run("hidden"), help="Hidden units of the MLP probe."),
    seed: int = typer.Option(_run("seed"), help="Seed of the label subset, the validation hold-out, initialisation "
                             "and order."),
    val_fraction: float = typer.Option(_run("val_fraction"), help="Training recordings held out for validation and "
                                       "the threshold."),
    class_weights: bool = typer.Option(_run("class_weights"), help="Weight the cross-entropy by inverse class "
                                       "frequency."),
    pos_weight: Optional[float] = typer.Option(_run("pos_weight"), help="BCE positive weight for frame tasks "
                                               "(default: from the training labels, clipped negatives/positives)."),
    max_memory_gb: Optional[float] = typer.Option(_run("max_memory_gb"), help="Budget of audio held in memory (GB)."),
    limit_train_batches: Optional[int] = typer.Option(_run("limit_train_batches"), help="Cap training batches per "
                                                      "epoch (smoke runs)."),
    limit_val_batches: Optional[int] = typer.Option(_run("limit_val_batches"), help="Cap validation batches per "
                                                    "epoch."),
    precision: str = typer.Option(_run("precision"), help="Lightning precision: 32-true or bf16-mixed."),
    accelerator: str = typer.Option(_run("accelerator"), help="Lightning accelerator (cpu, gpu, auto)."),
    devices: str = typer.Option(_run("devices"), help="Devices (a number, or 'auto')."),
    threads: Optional[int] = typer.Option(_run("threads"), help="Torch CPU threads (default: all cores)."),
    progress: bool = typer.Option(_run("progress"), help="Show a progress bar."),
) -> None:
    """Train a linear or MLP probe (or fine-tune) on a task; save RUN/model with a validation-tuned threshold."""
    options = dict(locals())
    from jtm.pipelines.downstream import run_downstream

    cfg = config_from_options(DownstreamConfig, options, devices=parse_devices(devices))
    summary = run_downstream(cfg)
    if not is_global_zero():
        return  # under DDP every process runs this command; one report is enough
    if summary.get("skipped"):
        typer.echo(f"{out}: already finished (delete {out / 'model'} to retrain); next: jtm evaluate {out}")
    typer.echo(json.dumps({k: v for k, v in summary.items() if not k.endswith("_step")}, default=str))


@app.command("evaluate")
def evaluate(
    run: Path = typer.Argument(..., help="A finished downstream run folder."),
    split: Split = typer.Option(Split.test, help="Recordings to score: test, val (the hold-out) or train (the subset)."),
    data: Optional[Path] = typer.Option(None, help="Use this store instead of the one in run.json."),
    context_frames: Optional[int] = typer.Option(None, help="Frames of context on each side of a prediction chunk "
                                                 "(default: window/8; 0: non-overlapping chunks)."),
    batch_size: Optional[int] = typer.Option(None, help="Chunks per forward pass (default: the run's batch size)."),
    max_seconds: Optional[float] = typer.Option(None, help="Score only the first N seconds of each recording."),
    progress: bool = typer.Option(True, help="Print a line per recording."),
) -> None:
    """Score a downstream run on whole recordings; write RUN/metrics.json and print a table."""
    from jtm.pipelines.evaluate import evaluate_run, format_metrics

    metrics = evaluate_run(run, split.value, data=data, context_frames=context_frames, batch_size=batch_size,
                           max_seconds=max_seconds, progress=progress)
    typer.echo(format_metrics(metrics))
    typer.echo(f"written: {run / 'metrics.json'}")


def _study(name: str):
    """Default of a StudyConfig field (a tuple as comma-separated text)."""
    return default_of(StudyConfig, name)


# Alike in shape to `downstream` and `jtm pretrain` on purpose: see the note above `downstream`.
@app.command("study")
def study(
    data: Path = typer.Option(..., help="A prepared store with labels."),
    out: Path = typer.Option(..., help="Study folder; a re-run reuses finished cells whose configuration is "
                             "unchanged."),
    pretrained: Optional[Path] = typer.Option(_study("pretrained"), help="The CPC pretraining RUN (or encoder/) to "
                                              "probe and fine-tune; the random and from-scratch arms copy its "
                                              "architecture."),
    tasks: str = typer.Option(_study("tasks"), help="Comma-separated tasks, e.g. "
                            "transcription,ensemble; notes: transcription scored as notes (note F1 with and without "
                            "offsets), with the *-note arms' onset head."),
    fractions: str = typer.Option(_study("fractions"), help="Comma-separated label fractions."),
    methods: str = typer.Option(_study("methods"), help=f"Comma-separated arms: {', '.join(METHODS)}."),
    skip: str = typer.Option(_study("skip"), help="Comma-separated task/method pairs to leave out, e.g. "
                             "ensemble/supervised."),
    seeds: int = typer.Option(_study("seeds"), help="Repeats per cell, each with its own label subset."),
    seed: int = typer.Option(_study("seed"), help="Base seed (validation hold-out; repeat k uses seed + k)."),
    steps: int = typer.Option(_study("steps"), help="Optimizer steps of every run, at every label fraction."),
    eval_every: int = typer.Option(_study("eval_every"), help="Validate every N steps; the best is kept."),
    patience: int = typer.Option(_study("patience"), help="Stop after N validations without improvement "
                                 "(0: never)."),
    probe_lrs: str = typer.Option(_study("probe_lrs"), help="Learning-rate grid of the frozen-feature probes."),
    encoder_lrs: str = typer.Option(_study("encoder_lrs"), help="Learning-rate grid of the arms that train an "
                                    "encoder (fine-tuning runs the encoder at a tenth)."),
    batch_size: int = typer.Option(_study("batch_size"), help="Windows per batch."),
    window: int = typer.Option(_study("window"), help="Window length in samples at 16 kHz."),
    features: str = typer.Option(_study("features"), help="CPC layer of the frozen probes: context, encoder "
                                 "or both."),
    hidden: int = typer.Option(_study("hidden"), help="Hidden units of the MLP probes."),
    val_fraction: float = typer.Option(_study("val_fraction"), help="Training recordings held out for "
                                       "validation (selection and thresholds)."),
    max_val_seconds: Optional[float] = typer.Option(_study("max_val_seconds"), help="Seconds of each "
                                                    "validation recording scored."),
    max_eval_seconds: Optional[float] = typer.Option(_study("max_eval_seconds"), help="Score only the first N "
                                                     "seconds of each test recording."),
    threads: Optional[int] = typer.Option(_study("threads"), help="Torch CPU threads (default: the usable cores)."),
    augment: Optional[Augment] = typer.Option(_study("augment"), help="eq: filter every training crop of the spectral "
                                          "arms (logmel-*, cqt-*) with a random smooth equaliser, so they learn "
                                          "from many timbres (those arms only; default: none)."),
    augment_db: Optional[float] = typer.Option(_study("augment_db"), help="Strength of --augment eq: the overall "
                                               "gain ranges over +-N dB, tilt and bumps in proportion (default 6)."),
) -> None:
    """Label efficiency: every task x method x fraction x seed, at an equal step budget, with the learning rate and
    the checkpoint chosen on validation; results.csv, summary.csv (mean, 95 % CI, min-max, chance) and plots."""
    options = dict(locals())
    pin_mkl_rounding()  # before torch's first MKL call: the same command gives the same table
    from jtm.pipelines.study import parse_list, run_study

    cfg = config_from_options(
        StudyConfig, options, tasks=tuple(parse_list(tasks)), fractions=tuple(parse_list(fractions, float)),
        methods=tuple(parse_list(methods)), skip=tuple(parse_list(skip)),
        probe_lrs=tuple(parse_list(probe_lrs, float)), encoder_lrs=tuple(parse_list(encoder_lrs, float)))
    run_study(cfg, log=typer.echo)
    from jtm.pipelines.demo import comparisons_table, results_table

    typer.echo(results_table(out / "summary.csv"))
    comparisons = comparisons_table(out / "results.csv")
    if comparisons:
        typer.echo("\n" + comparisons)

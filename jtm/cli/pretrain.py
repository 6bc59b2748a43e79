"""``jtm pretrain``: contrastive predictive coding on a prepared store."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from jtm.cli.app import app


class Encoder(str, Enum):
    conv = "conv"
    sinc = "sinc"
    gabor = "gabor"


class Norm(str, Enum):
    layer = "layer"
    instance = "instance"
    batch = "batch"
    none = "none"


class Context(str, Enum):
    gru = "gru"
    lstm = "lstm"
    rnn = "rnn"
    transformer = "transformer"


class NegativesFrom(str, Enum):
    batch = "batch"
    window = "window"


class Score(str, Enum):
    dot = "dot"
    cosine = "cosine"


class Sampling(str, Enum):
    uniform = "uniform"
    samesequence = "samesequence"
    samecategory = "samecategory"
    sequential = "sequential"


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def is_global_zero() -> bool:
    """Whether this is the process that reports: rank 0 of a distributed run (set by Lightning), or the only one."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@app.command("pretrain")
def pretrain(
    data: Path = typer.Option(..., help="A prepared store (jtm data prepare)."),
    out: Path = typer.Option(..., help="Run folder; re-running with the same folder resumes."),
    encoder: Encoder = typer.Option(Encoder.conv, help="conv: 5 strided convs; sinc: SincNet first layer; "
                                    "gabor: learnable constant-Q Gabor filterbank (128 ms windows)."),
    gabor_filters: int = typer.Option(192, help="Gabor filters from 30 Hz to 7.5 kHz (192: 24 per octave)."),
    gabor_kernel: int = typer.Option(2049, help="Gabor window in samples (odd, at least 1025)."),
    gabor_learnable: bool = typer.Option(True, help="Let CPC move the Gabor filters' centres and widths "
                                         "(--no-gabor-learnable keeps the constant-Q start)."),
    norm: Norm = typer.Option(Norm.layer, help="Normalisation in the encoder."),
    context: Context = typer.Option(Context.gru, help="Context network over the encoded frames."),
    context_layers: int = typer.Option(1, help="Layers in the context network."),
    encoder_dim: int = typer.Option(256, help="Hidden size of the encoder."),
    context_dim: int = typer.Option(256, help="Hidden size of the context network."),
    heads: int = typer.Option(8, help="Attention heads (transformer context)."),
    predict_steps: int = typer.Option(12, help="K: how many future frames to predict."),
    negatives: int = typer.Option(128, help="Negatives per positive, drawn from the batch."),
    negatives_from: NegativesFrom = typer.Option(NegativesFrom.batch, help="batch: any frame of the batch; "
                                                 "window: frames of the positive's own window."),
    score: Score = typer.Option(Score.dot, help="dot: pred . z / D (CPC_audio); cosine: cos(pred, z) / --temperature "
                                "(wav2vec 2.0), which keeps the features from collapsing onto a few directions."),
    temperature: float = typer.Option(0.1, help="Temperature of the cosine score."),
    sampling: Sampling = typer.Option(Sampling.samesequence, help="Where a batch's windows, hence the negatives, "
                                      "come from (samesequence: one recording per batch)."),
    labels_by: Optional[str] = typer.Option(None, help="Metadata column for samecategory (ensemble, composer, ...)."),
    reverse: bool = typer.Option(False, help="Reverse mode: predict the past instead of the future."),
    dropout: float = typer.Option(0.0, help="Dropout in the context network."),
    window: int = typer.Option(20480, help="Window length in samples at 16 kHz (20480 = 1.28 s = 128 frames)."),
    batch_size: int = typer.Option(8, help="Windows per batch."),
    epochs: int = typer.Option(10, help="Training epochs."),
    lr: float = typer.Option(2e-4, help="Adam learning rate."),
    beta1: float = typer.Option(0.9, help="Adam beta1."),
    beta2: float = typer.Option(0.999, help="Adam beta2."),
    eps: float = typer.Option(1e-8, help="Adam epsilon."),
    schedule_step: int = typer.Option(0, help="Halve the learning rate every N epochs (0: never)."),
    ramp_epochs: int = typer.Option(0, help="Linear learning-rate warm-up over N epochs (0: none)."),
    seed: int = typer.Option(0, help="Random seed (data order, offsets, negatives, initialisation)."),
    random_offset: bool = typer.Option(True, help="Shift the window grid by a random offset every epoch."),
    max_memory_gb: Optional[float] = typer.Option(None, help="Budget of audio held in memory (GB); the loader "
                                                  "cycles through groups of tracks that fit."),
    val_fraction: float = typer.Option(0.1, help="Fraction of training recordings held out for validation."),
    precision: str = typer.Option("32-true", help="Lightning precision: 32-true or bf16-mixed."),
    accelerator: str = typer.Option("cpu", help="Lightning accelerator (cpu, gpu, auto)."),
    devices: str = typer.Option("1", help="Devices per node (a number, or 'auto')."),
    num_nodes: int = typer.Option(1, help="Nodes (with torchrun or SLURM)."),
    strategy: str = typer.Option("auto", help="Lightning strategy (auto, ddp, ...)."),
    checkpoint_every_n_steps: Optional[int] = typer.Option(None, help="Also checkpoint every N training steps."),
    limit_train_batches: Optional[int] = typer.Option(None, help="Cap training batches per epoch (smoke runs)."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: all cores)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Pretrain a CPC encoder; export it to RUN/encoder (safetensors + config.json)."""
    from jtm.models.config import CPCConfig
    from jtm.training.pretrain import PretrainConfig, run_pretrain

    try:
        model = CPCConfig(
            encoder=encoder.value, encoder_dim=encoder_dim, norm=norm.value, context=context.value,
            context_dim=context_dim, context_layers=context_layers, heads=heads, dropout=dropout,
            predict_steps=predict_steps, negatives=negatives, reverse=reverse,
            negatives_from=negatives_from.value, gabor_filters=gabor_filters, gabor_kernel=gabor_kernel,
            gabor_learnable=gabor_learnable,
            score=score.value, temperature=temperature,
        )
    except ValueError as e:  # e.g. an even --gabor-kernel: a usage error, not a crash
        raise typer.BadParameter(str(e)) from None
    cfg = PretrainConfig(
        data=str(data), out=str(out), model=model, window=window, batch_size=batch_size, epochs=epochs, lr=lr,
        beta1=beta1, beta2=beta2, eps=eps, schedule_step=schedule_step, ramp_epochs=ramp_epochs,
        sampling=sampling.value, labels_by=labels_by, max_memory_gb=max_memory_gb, val_fraction=val_fraction,
        random_offset=random_offset, seed=seed, precision=precision, accelerator=accelerator,
        devices=_devices(devices), num_nodes=num_nodes, strategy=strategy,
        checkpoint_every_n_steps=checkpoint_every_n_steps, limit_train_batches=limit_train_batches,
        threads=threads, progress=progress,
    )
    if sampling == Sampling.samecategory and not labels_by:
        raise typer.BadParameter("--sampling samecategory needs --labels-by COLUMN (e.g. ensemble)")
    metrics = run_pretrain(cfg)
    if not is_global_zero():
        return  # under DDP every process runs this command; one report is enough
    accs = [metrics.get(f"val/acc_k{k}", metrics.get(f"train/acc_k{k}_epoch")) for k in range(1, predict_steps + 1)]
    typer.echo(json.dumps({"out": str(out), "encoder": str(out / "encoder"),
                           "acc_per_step": [None if a is None else round(a, 4) for a in accs]}))

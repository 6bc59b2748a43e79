"""``jtm pretrain``: contrastive predictive coding on a prepared store."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from jtm.cli.app import app, choices, config_from_options, default_of, parse_devices
from jtm.audio import HOP, SAMPLE_RATE
from jtm.configs import DEFAULT_WINDOW
from jtm.data.samplers import SAMPLINGS
from jtm.data.views import VIEWS
from jtm.models.config import CONTEXTS, ENCODERS, GABOR_MIN_KERNEL, NEGATIVE_SOURCES, NORMS, SCORES, TARGETS, CPCConfig
from jtm.training.config import PretrainConfig

Encoder = choices("Encoder", ENCODERS)
Norm = choices("Norm", NORMS)
Context = choices("Context", CONTEXTS)
NegativesFrom = choices("NegativesFrom", NEGATIVE_SOURCES)
Score = choices("Score", SCORES)
Target = choices("Target", TARGETS)
Sampling = choices("Sampling", SAMPLINGS)
Views = choices("Views", VIEWS)


def _model(name: str, enum=None):
    """Default of a CPCConfig field."""
    return default_of(CPCConfig, name, enum)


def _run(name: str, enum=None):
    """Default of a PretrainConfig field."""
    return default_of(PretrainConfig, name, enum)


def is_global_zero() -> bool:
    """Whether this is the process that reports: rank 0 of a distributed run (set by Lightning), or the only one."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# Deliberately alike in shape (duplicates): one typer.Option a config field, its default read from the dataclass.
@app.command("pretrain")
def pretrain(
    data: Path = typer.Option(..., help="A prepared store (jtm data prepare)."),
    out: Path = typer.Option(..., help="Run folder; re-running with the same folder resumes."),
    encoder: Encoder = typer.Option(_model("encoder", Encoder), help="conv: 5 strided convs; sinc: SincNet first "
                                    "layer; gabor: learnable constant-Q Gabor filterbank (128 ms windows)."),
    sinc_kernel: int = typer.Option(_model("sinc_kernel"), help="SincNet filter length in samples (odd; 251 = "
                                    "16 ms, as SincNet; 2049 = 128 ms, the gabor window)."),
    gabor_filters: int = typer.Option(_model("gabor_filters"), help="Gabor filters from 30 Hz to 7.5 kHz "
                                      "(192: 24 per octave)."),
    gabor_kernel: int = typer.Option(_model("gabor_kernel"), help="Gabor window in samples (odd, at least "
                                     f"{GABOR_MIN_KERNEL})."),
    gabor_learnable: bool = typer.Option(_model("gabor_learnable"), help="Let CPC move the Gabor filters' centres "
                                         "and widths (--no-gabor-learnable keeps the constant-Q start)."),
    norm: Norm = typer.Option(_model("norm", Norm), help="Normalisation in the encoder."),
    context: Context = typer.Option(_model("context", Context), help="Context network over the encoded frames."),
    context_layers: int = typer.Option(_model("context_layers"), help="Layers in the context network."),
    encoder_dim: int = typer.Option(_model("encoder_dim"), help="Hidden size of the encoder."),
    context_dim: int = typer.Option(_model("context_dim"), help="Hidden size of the context network."),
    heads: int = typer.Option(_model("heads"), help="Attention heads (transformer context)."),
    predict_steps: int = typer.Option(_model("predict_steps"), help="K: how many future frames to predict."),
    negatives: int = typer.Option(_model("negatives"), help="Negatives per positive, drawn from the batch."),
    negatives_from: NegativesFrom = typer.Option(_model("negatives_from", NegativesFrom), help="batch: any frame "
                                                 "of the batch; window: frames of the positive's own window."),
    score: Score = typer.Option(_model("score", Score), help="dot: pred . z / D (CPC_audio); cosine: cos(pred, z) "
                                "/ --temperature (wav2vec 2.0), which keeps the features from collapsing onto a few "
                                "directions."),
    temperature: float = typer.Option(_model("temperature"), help="Temperature of the cosine score."),
    target: Target = typer.Option(_model("target", Target), help="What c predicts: z (CPC's learned encoder "
                                  "output), frontend (the gabor filterbank's frames, fixed; keeps pitch in the "
                                  "features) or cqt (a fixed constant-Q spectrum: the same for any --encoder)."),
    sampling: Sampling = typer.Option(_run("sampling", Sampling), help="Where a batch's windows, hence the "
                                      "negatives, come from (samesequence: one recording per batch)."),
    labels_by: Optional[str] = typer.Option(_run("labels_by"), help="Metadata column for samecategory (ensemble, "
                                            "composer, ...)."),
    views: Views = typer.Option(_run("views", Views), help="Where the targets come from: same (the window "
                                "itself) or renderings (the same samples of another rendering of the piece, from "
                                "jtm data synth --renderings; needs --target frontend or cqt): multi-view CPC."),
    reverse: bool = typer.Option(_model("reverse"), help="Reverse mode: predict the past instead of the future."),
    dropout: float = typer.Option(_model("dropout"), help="Dropout in the context network."),
    window: int = typer.Option(_run("window"), help=f"Window length in samples at 16 kHz ({DEFAULT_WINDOW} = "
                               f"{DEFAULT_WINDOW / SAMPLE_RATE:g} s = {DEFAULT_WINDOW // HOP} frames)."),
    batch_size: int = typer.Option(_run("batch_size"), help="Windows per batch."),
    epochs: int = typer.Option(_run("epochs"), help="Training epochs."),
    lr: float = typer.Option(_run("lr"), help="Adam learning rate."),
    beta1: float = typer.Option(_run("beta1"), help="Adam beta1."),
    beta2: float = typer.Option(_run("beta2"), help="Adam beta2."),
    eps: float = typer.Option(_run("eps"), help="Adam epsilon."),
    schedule_step: int = typer.Option(_run("schedule_step"), help="Halve the learning rate every N epochs "
                                      "(0: never)."),
    ramp_epochs: int = typer.Option(_run("ramp_epochs"), help="Linear learning-rate warm-up over N epochs (0: none)."),
    seed: int = typer.Option(_run("seed"), help="Random seed (data order, offsets, negatives, initialisation)."),
    random_offset: bool = typer.Option(_run("random_offset"), help="Shift the window grid by a random offset every "
                                       "epoch."),
    max_memory_gb: Optional[float] = typer.Option(_run("max_memory_gb"), help="Budget of audio held in memory (GB); "
                                                  "the loader cycles through groups of tracks that fit."),
    val_fraction: float = typer.Option(_run("val_fraction"), help="Fraction of training recordings held out for "
                                       "validation."),
    precision: str = typer.Option(_run("precision"), help="Lightning precision: 32-true, bf16-mixed, or auto "
                                  "(bf16-mixed on a CPU with avx512_bf16 or AMX, else 32-true)."),
    accelerator: str = typer.Option(_run("accelerator"), help="Lightning accelerator (cpu, gpu, auto)."),
    devices: str = typer.Option(_run("devices"), help="Devices per node (a number, or 'auto')."),
    num_nodes: int = typer.Option(_run("num_nodes"), help="Nodes (with torchrun or SLURM)."),
    strategy: str = typer.Option(_run("strategy"), help="Lightning strategy (auto, ddp, ...)."),
    checkpoint_every_n_steps: Optional[int] = typer.Option(_run("checkpoint_every_n_steps"), help="Also checkpoint "
                                                           "every N training steps."),
    limit_train_batches: Optional[int] = typer.Option(_run("limit_train_batches"), help="Cap training batches per "
                                                      "epoch (smoke runs)."),
    threads: Optional[int] = typer.Option(_run("threads"), help="Torch CPU threads (default: all cores)."),
    progress: bool = typer.Option(_run("progress"), help="Show a progress bar."),
) -> None:
    """Pretrain a CPC encoder; export it to RUN/encoder (safetensors + config.json)."""
    options = dict(locals())
    from jtm.training.pretrain import run_pretrain

    if sampling.value == "samecategory" and not labels_by:
        raise typer.BadParameter("--sampling samecategory needs --labels-by COLUMN (e.g. ensemble)")
    model = config_from_options(CPCConfig, options)
    cfg = config_from_options(PretrainConfig, options, model=model, devices=parse_devices(devices))
    metrics = run_pretrain(cfg)
    if not is_global_zero():
        return  # under DDP every process runs this command; one report is enough
    accs = [metrics.get(f"val/acc_k{k}", metrics.get(f"train/acc_k{k}_epoch")) for k in range(1, predict_steps + 1)]
    typer.echo(json.dumps({"out": str(out), "encoder": str(out / "encoder"),
                           "acc_per_step": [None if a is None else round(a, 4) for a in accs]}))

"""The original JTM command line, kept working on top of jtm.

The original project (CPC on MusicNet, after CPC_audio) was driven by ``python main.py`` with camelCase flags::

    python main.py --samplingType samesequence --useSincNet --maxChunksInMem 5          # CPC pretraining
    python main.py --supervised --load logs/checkpoint3.pt --maxChunksInMem 5          # downstream transcription

Both still work as written. This script only parses those flags (argparse) and maps them onto jtm:
pretraining runs :func:`jtm.training.pretrain.run_pretrain`, ``--supervised`` runs
:func:`jtm.pipelines.downstream.run_downstream` and then :func:`jtm.pipelines.evaluate.evaluate_run`.

Where things go
    Data: ``--pathDB`` or the ``JTM_DATA`` environment variable: a prepared store (``jtm data prepare``), or a
    MusicNet-layout folder, which is prepared once into ``<pathDB>/.jtm-store``.
    Output (``--pathCheckpoint``, default ``logs``):
      pretraining writes the jtm run folder ``logs/pretrain/`` (resumable) and, every ``--saveStep`` epochs and
      after the last one, ``logs/checkpoint<epoch>.pt`` (epochs counted from 0, as in the original);
      ``--supervised`` writes the downstream run folder ``logs/downstream_<task>/`` with ``metrics.json``.
    The ``checkpoint<N>.pt`` files are **safetensors** files (despite the historical ``.pt`` suffix): the CPC
    encoder's weights, with its configuration in the safetensors metadata, so ``--load`` never unpickles.

Mapping notes
    ``--maxChunksInMem N`` with ``--chunkSize S`` bytes (default 1e9) is a memory budget of N * S bytes for the
    resident audio, i.e. N GB by default (jtm's ``max_memory_gb``).
    ``--supervised`` without ``--load`` trains the same architecture from scratch; with ``--load`` the loaded
    encoder is fine-tuned together with the linear output layer, as the original optimiser covered both.
    ``--task classification`` classifies the ``--labelsBy`` column; jtm's task names (``transcription``,
    ``pitch-instrument``, ``ensemble``, ``composer``, ...) are accepted too.
    ``--onEncoder`` reads the downstream features from the encoder instead of the context network.
    ``--randomSeed`` defaults to 0 (the original drew a random seed), so runs are reproducible.
    ``--load`` matters only with ``--supervised``; pretraining resumes from ``logs/pretrain`` by itself.
    Flags without a meaning in jtm (``--abspos``, ``--loadCriterion``, ``--transcriptionWindow``,
    ``--ignoreCache``, ``--log2Board``) are accepted with a one-line warning; any other unknown flag is an error
    that names it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

_NORMS = {"layernorm": "layer", "layer": "layer", "instancenorm": "instance", "instance": "instance",
          "batchnorm": "batch", "batch": "batch", "id": "none", "none": "none"}
_CONTEXTS = {"gru": "gru", "lstm": "lstm", "rnn": "rnn", "transformer": "transformer"}
_SAMPLINGS = ("samesequence", "samecategory", "uniform", "sequential")
# Original flags that jtm accepts but ignores (each gets a one-line warning when given).
_IGNORED = {
    "abspos": "jtm's transformer context uses its own positional encoding",
    "loadCriterion": "jtm never reloads a CPC criterion into a downstream run",
    "transcriptionWindow": "jtm transcribes every 10 ms frame",
    "ignoreCache": "jtm's prepared store detects changed inputs itself",
    "log2Board": "jtm logs to TensorBoard and CSV under the run folder",
}


def build_parser() -> argparse.ArgumentParser:
    """The original flags (camelCase), plus ``--pathDB`` and a few jtm extras listed in ``--help``."""
    p = argparse.ArgumentParser(
        prog="main.py", allow_abbrev=False,
        description="JTM's original command line, mapped onto jtm (see the module docstring).",
    )
    m = p.add_argument_group("Model")
    m.add_argument("--hiddenEncoder", type=int, default=256, help="Encoder hidden size (z dimension).")
    m.add_argument("--hiddenGar", type=int, default=256, help="Context network hidden size (c dimension).")
    m.add_argument("--nPredicts", type=int, default=12, help="Future steps CPC predicts.")
    m.add_argument("--negativeSamplingExt", type=int, default=128, help="Negatives per positive.")
    m.add_argument("--cpcMode", default="none", choices=["none", "reverse"], help="reverse: predict the past.")
    m.add_argument("--encoderType", default="cpc", help="'sinc' for a SincNet first layer; anything else: convs.")
    m.add_argument("--useSincNet", action="store_true", help="Same as --encoderType sinc.")
    m.add_argument("--normMode", default="layerNorm", help="layerNorm | instanceNorm | batchNorm | ID.")
    m.add_argument("--arMode", default="GRU", help="Context network: GRU | LSTM | RNN | transformer.")
    m.add_argument("--nLevelsGRU", type=int, default=1, help="Layers of the context network.")
    m.add_argument("--dropout", type=float, nargs="?", const=0.1, default=0.0,
                   help="Dropout in the context network (bare --dropout: 0.1).")
    m.add_argument("--onEncoder", action="store_true", help="Downstream: use encoder features, not context.")
    m.add_argument("--abspos", action="store_true", help="(accepted, ignored)")
    t = p.add_argument_group("Training")
    t.add_argument("--learningRate", type=float, default=2e-4)
    t.add_argument("--schedulerStep", type=int, default=-1, help="Halve the learning rate every N epochs.")
    t.add_argument("--schedulerRamp", type=int, default=None, help="Warm up the learning rate over N epochs.")
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.999)
    t.add_argument("--epsilon", type=float, default=1e-8)
    t.add_argument("--sizeWindow", type=int, default=20480, help="Window in samples at 16 kHz.")
    t.add_argument("--batchSize", type=int, default=8)
    t.add_argument("--nEpoch", type=int, default=10)
    t.add_argument("--samplingType", default="samecategory", choices=_SAMPLINGS,
                   help="Where a batch's windows (hence CPC's negatives) come from.")
    t.add_argument("--randomSeed", type=int, default=None)
    d = p.add_argument_group("Dataset")
    d.add_argument("--pathDB", default=None, help="Prepared store or MusicNet-layout folder (else $JTM_DATA).")
    d.add_argument("--maxChunksInMem", type=int, default=7, help="Memory budget: N chunks of --chunkSize bytes.")
    d.add_argument("--chunkSize", type=float, default=1e9, help="Bytes per chunk (see --maxChunksInMem).")
    d.add_argument("--labelsBy", default="ensemble", help="Metadata column for samecategory and classification.")
    d.add_argument("--ignoreCache", action="store_true", help="(accepted, ignored)")
    s = p.add_argument_group("Supervised mode")
    s.add_argument("--supervised", action="store_true", help="Train a downstream task instead of CPC.")
    s.add_argument("--task", default="transcription",
                   help="transcription | classification (of --labelsBy) | pitch-instrument | a metadata column.")
    s.add_argument("--transcriptionWindow", type=int, default=None, help="(accepted, ignored)")
    o = p.add_argument_group("Save and load")
    o.add_argument("--pathCheckpoint", default="logs", help="Output folder.")
    o.add_argument("--load", nargs="*", default=None, help="An encoder checkpoint (logs/checkpoint<N>.pt).")
    o.add_argument("--loadCriterion", action="store_true", help="(accepted, ignored)")
    o.add_argument("--saveStep", type=int, default=1, help="Write logs/checkpoint<epoch>.pt every N epochs.")
    o.add_argument("--loggingStep", type=int, default=1000, help="Log every N training steps.")
    o.add_argument("--log2Board", type=int, default=None, help="(accepted, ignored)")
    x = p.add_argument_group("jtm extras")
    x.add_argument("--threads", type=int, default=None, help="Torch CPU threads.")
    x.add_argument("--limitTrainBatches", type=int, default=None, help="Cap training batches per epoch.")
    x.add_argument("--noProgress", action="store_true", help="Hide progress bars.")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown flag exits with argparse's error, which names it."""
    args = build_parser().parse_args(list(argv))
    given = {a.split("=", 1)[0].lstrip("-") for a in argv if a.startswith("--")}
    for flag, why in _IGNORED.items():
        if flag in given:
            print(f"warning: --{flag} has no effect in jtm ({why})", file=sys.stderr)
    if args.normMode.lower() not in _NORMS:
        build_parser().error(f"--normMode {args.normMode!r}: expected one of layerNorm, instanceNorm, batchNorm, ID")
    if args.arMode.lower() not in _CONTEXTS:
        build_parser().error(f"--arMode {args.arMode!r}: expected one of GRU, LSTM, RNN, transformer")
    if args.load is not None and len(args.load) == 0:
        build_parser().error("--load needs a checkpoint path")
    return args


def model_config(args: argparse.Namespace) -> Any:
    """The CPC architecture the flags describe (a :class:`jtm.models.config.CPCConfig`)."""
    from jtm.models.config import CPCConfig

    sinc = args.useSincNet or args.encoderType.lower() == "sinc"
    return CPCConfig(
        encoder="sinc" if sinc else "conv", encoder_dim=args.hiddenEncoder, norm=_NORMS[args.normMode.lower()],
        context=_CONTEXTS[args.arMode.lower()], context_dim=args.hiddenGar, context_layers=args.nLevelsGRU,
        dropout=float(args.dropout), predict_steps=args.nPredicts, negatives=args.negativeSamplingExt,
        reverse=args.cpcMode == "reverse",
    )


def memory_gb(args: argparse.Namespace) -> float:
    """``--maxChunksInMem`` x ``--chunkSize`` bytes, in jtm's GB (N GB for the default 1e9-byte chunks)."""
    return args.maxChunksInMem * args.chunkSize / 1e9


def resolve_store(args: argparse.Namespace) -> Path:
    """The prepared store to use: ``--pathDB`` / ``$JTM_DATA`` itself, or ``<it>/.jtm-store`` prepared from a
    MusicNet-layout folder (prepared once; an up-to-date store is reused)."""
    from jtm.errors import JTMError

    raw = args.pathDB or os.environ.get("JTM_DATA")
    if not raw:
        raise JTMError("no data: pass --pathDB FOLDER or set JTM_DATA to a prepared store or a MusicNet-layout folder")
    path = Path(raw)
    if not path.is_dir():
        raise JTMError(f"{path}: data folder not found (from {'--pathDB' if args.pathDB else 'JTM_DATA'})")
    if (path / "store.json").is_file():
        return path
    from jtm.data.prepare import prepare_store

    store = path / ".jtm-store"
    # prepare_store is idempotent: an up-to-date store is only checked, a stale or partial one is rebuilt.
    print(f"{'checking' if (store / 'store.json').is_file() else 'preparing'} {store} (from {path})")
    prepare_store(path, store, progress=not args.noProgress)
    return store


def _checkpoint_path(out: Path, epoch: int) -> Path:
    return out / f"checkpoint{epoch}.pt"


def export_epoch_checkpoints(run: Path, out: Path, save_step: int, last_epoch: int) -> list[Path]:
    """Turn the run's per-epoch Lightning checkpoints into ``out/checkpoint<epoch>.pt`` encoder files.

    Every ``save_step``-th epoch (0, N, 2N, ...) and the last one are exported; existing files are kept.
    """
    from jtm.models.downstream import save_encoder_file
    from jtm.models.config import CPCConfig
    from jtm.training.checkpoints import load_checkpoint

    run_cfg = json.loads((run / "run.json").read_text())
    config = CPCConfig.from_dict(run_cfg["model"])
    written = []
    for ckpt in sorted((run / "checkpoints").glob("epoch*.ckpt")):
        try:
            epoch = int(ckpt.stem[len("epoch"):])
        except ValueError:
            continue
        if not (epoch % max(1, save_step) == 0 or epoch == last_epoch):
            continue
        target = _checkpoint_path(out, epoch)
        if target.exists():
            continue
        state = load_checkpoint(ckpt)["state_dict"]
        weights = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        save_encoder_file(target, weights, config)
        written.append(target)
    return written


def run_pretraining(args: argparse.Namespace) -> dict[str, Any]:
    """CPC pretraining as the flags describe; returns the final metrics."""
    from jtm.training.pretrain import PretrainConfig, run_pretrain

    out = Path(args.pathCheckpoint)
    store = resolve_store(args)
    sampling = args.samplingType
    if sampling == "samecategory":
        from jtm.data.store import Store

        if args.labelsBy not in Store.open(store).tracks.columns:
            print(f"warning: no column {args.labelsBy!r} for samecategory sampling; using samesequence", file=sys.stderr)
            sampling = "samesequence"
    cfg = PretrainConfig(
        data=str(store), out=str(out / "pretrain"), model=model_config(args), window=args.sizeWindow,
        batch_size=args.batchSize, epochs=args.nEpoch, lr=args.learningRate, beta1=args.beta1, beta2=args.beta2,
        eps=args.epsilon, schedule_step=max(0, args.schedulerStep), ramp_epochs=args.schedulerRamp or 0,
        sampling=sampling, labels_by=args.labelsBy if sampling == "samecategory" else None,
        max_memory_gb=memory_gb(args), seed=args.randomSeed if args.randomSeed is not None else 0,
        log_every_n_steps=args.loggingStep, threads=args.threads, progress=not args.noProgress,
        limit_train_batches=args.limitTrainBatches,
    )
    metrics = run_pretrain(cfg)
    written = export_epoch_checkpoints(out / "pretrain", out, args.saveStep, args.nEpoch - 1)
    for path in written:
        print(f"wrote {path}")
    return metrics


def _downstream_task(args: argparse.Namespace) -> str:
    return args.labelsBy if args.task == "classification" else args.task


def run_supervised(args: argparse.Namespace) -> dict[str, Any]:
    """A downstream run (and its test evaluation) as the flags describe; returns the test metrics."""
    from jtm.pipelines.evaluate import evaluate_run
    from jtm.pipelines.downstream import run_downstream
    from jtm.training.config import DownstreamConfig

    out = Path(args.pathCheckpoint)
    store = resolve_store(args)
    task = _downstream_task(args)
    load = args.load[0] if args.load else None
    cfg = DownstreamConfig(
        data=str(store), out=str(out / f"downstream_{task}"), task=task,
        encoder=str(Path(load).resolve()) if load else "supervised",
        architecture=None, model=None if load else model_config(args),
        probe="linear", finetune=bool(load), features="encoder" if args.onEncoder else "context",
        window=args.sizeWindow, batch_size=args.batchSize, epochs=args.nEpoch, lr=args.learningRate,
        frontend_lr=args.learningRate, beta1=args.beta1, beta2=args.beta2, eps=args.epsilon,
        seed=args.randomSeed if args.randomSeed is not None else 0, max_memory_gb=memory_gb(args),
        log_every_n_steps=args.loggingStep, threads=args.threads, progress=not args.noProgress,
        limit_train_batches=args.limitTrainBatches,
    )
    run_downstream(cfg)
    return evaluate_run(cfg.out, split="test", progress=not args.noProgress)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the original command line; returns the process exit code."""
    from jtm.errors import JTMError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.load and not args.supervised:
        print(f"warning: --load {args.load[0]} is ignored without --supervised: jtm resumes pretraining from its own "
              f"checkpoints in {Path(args.pathCheckpoint) / 'pretrain'}", file=sys.stderr)
    try:
        if args.supervised:
            metrics = run_supervised(args)
        else:
            metrics = run_pretraining(args)
    except JTMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``jtm demo``: the whole method on built-in data, sized for a laptop CPU.

Stages, each in its own folder under ``OUT``:

1. ``corpus/``   synthesise a MusicNet-layout corpus from real scores with a GM soundfont
                 (:func:`jtm.data.synth.build_corpus`)
2. ``store/``    prepare it at 16 kHz (:func:`jtm.data.prepare.prepare_store`)
3. ``pretrain/`` pretrain CPC (:func:`jtm.training.pretrain.run_pretrain`)
4. ``study/``    the label-efficiency study (:func:`jtm.pipelines.study.run_study`): transcription and ensemble
                 classification at several label fractions, CPC against a log-mel and a random-encoder baseline
5. ``notes/``    the note transcriber the demo leaves (a one-cell notes study: ``transcriber``, by default the
                 pitch-equivariant head on the constant-Q spectrum, all labels, the note heads' longer budget),
                 copied to ``transcriber/`` for ``jtm transcribe --model``
6. ``report.html`` the HTML report of all of it (:func:`jtm.evaluation.report.write_report`)

Re-running with the same ``OUT`` reuses finished stages: every stage leaves ``OUT/stages/<name>.json`` when it
completes, and the steps underneath are idempotent anyway (synthesis skips rendered pieces, preparation sees an
up-to-date store, pretraining and study cells resume from checkpoints or skip finished runs), so an interrupted
demo continues where it stopped. ``OUT/demo.json`` records the configuration; a re-run with a different one is
refused rather than mixing results.

Sizing (2-core AMD EPYC, no GPU): 20 min of audio in 41 pieces of at most 30 s; a 128-dimensional gabor (batch
norm) + GRU CPC model with the cosine score, predicting the filterbank's frames, 6 epochs at 2e-3 (510 steps of
8 x 1.28 s windows, about 2-3 min);
the study's protocol at 300 steps a run, 3 seeds, the learning rate chosen on validation (frozen probes about
3 s a run with the feature cache, the from-scratch arm about 30 s). The README gives the measured stage times.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jtm.configs import (MAX_WIDTH, batch_size_field, bounded, check_bounds, count_field, field_default,
                         load_config, window_field)
from jtm.errors import JTMError
from jtm.fileio import load_json, write_json_atomic
from jtm.models.config import CPCConfig
from jtm.pipelines.study_config import StudyConfig
from jtm.training.runs import changed_keys

Echo = Callable[[str], None]


def _study_default(name: str) -> Any:
    return field_default(StudyConfig, name)


@dataclass
class DemoConfig:
    """Everything the demo does; ``full()`` is the README's demo, ``quick()`` a smoke test of every stage."""

    # -- corpus
    minutes: float = bounded(20.0, 0.01, 100_000.0)
    """Minutes of audio to synthesise."""
    max_seconds: float = 30.0
    """At most this many seconds of each piece: more, shorter pieces give the study more recordings (41 pieces,
    6 of them test, for 20 minutes)."""
    test_fraction: float = 0.15
    seed: int = 0
    # -- CPC pretraining
    encoder: str = "gabor"
    """A learnable constant-Q filterbank with 128 ms windows: fine enough to resolve semitones, which the 29 ms
    receptive field of the conv stack cannot below about 580 Hz."""
    score: str = "cosine"
    """InfoNCE on cosine similarity / 0.1: with CPC_audio's dot product a few feature directions carry the loss
    and a linear probe's frame AP halves (docs/RESULTS.md)."""
    target: str = "frontend"
    """c predicts the gabor filterbank's (fixed) frames rather than the learned z: with z as target, CPC + linear
    scored 0.08 below the untrained encoder on transcription; with these targets it scores above it
    (docs/RESULTS.md, section 6)."""
    encoder_dim: int = bounded(128, 1, MAX_WIDTH)
    context_dim: int = bounded(128, 1, MAX_WIDTH)
    norm: str = "batch"
    """Encoder normalisation. Batch norm with a high learning rate learns within the few hundred steps a CPU
    affords; CPC_audio's per-frame channel norm needs ~2e-4 and far more steps (at 5e-4 it collapsed to
    chance within 30 steps here)."""
    predict_steps: int = field_default(CPCConfig, "predict_steps")
    negatives: int = field_default(CPCConfig, "negatives")
    window: int = window_field()
    batch_size: int = batch_size_field()
    pretrain_epochs: int = count_field(6)
    pretrain_lr: float = 2e-3
    pretrain_limit_batches: int | None = count_field(None)
    """Cap on training batches per pretraining epoch (None: the whole corpus every epoch)."""
    # -- label-efficiency study (jtm.pipelines.study: equal step budget, lr and checkpoint chosen on validation)
    tasks: tuple[str, ...] = ("transcription", "ensemble")
    fractions: tuple[float, ...] = (0.1, 1.0)
    methods: tuple[str, ...] = ("cpc-linear", "cpc-mlp", "logmel-linear", "cqt-linear", "random-linear",
                                "supervised")
    """The project's question in six arms: CPC features under a linear and an MLP probe (the study adds
    cpc-best, whichever of the two validation prefers), two hand-made front ends (log-mel, and the constant-Q
    spectrum the gabor encoder starts from), an untrained encoder of the same architecture, and that architecture
    trained from scratch on the labels alone."""
    skip: tuple[str, ...] = ("ensemble/supervised",)
    """Training the encoder from scratch is the study's costliest arm (about 30 s a run here, 5 runs a cell);
    the demo keeps it for transcription, the project's headline task (``jtm study`` runs every pair)."""
    # The protocol's settings default to jtm study's own (StudyConfig), so each is written once.
    seeds: int = _study_default("seeds")
    study_steps: int = _study_default("steps")
    eval_every: int = _study_default("eval_every")
    patience: int = _study_default("patience")
    probe_lrs: tuple[float, ...] = _study_default("probe_lrs")
    encoder_lrs: tuple[float, ...] = _study_default("encoder_lrs")
    max_val_seconds: float | None = _study_default("max_val_seconds")
    """Seconds of each validation recording scored for selection and the threshold (None: all)."""
    max_eval_seconds: float | None = None
    """Seconds of each test recording that are evaluated (None: all)."""
    # -- the note transcriber the demo leaves in OUT/transcriber
    transcriber: str | None = "cqt-harmonic"
    """The notes arm of ``jtm study`` trained on all the labels into ``OUT/notes`` and left at ``OUT/transcriber``:
    the pitch-equivariant head on the constant-Q spectrum, the best transcriber measured (held-out-timbre note F1
    0.69, frame-wise cells at most 0.40; docs/RESULTS.md section 5). None: leave the study's transcription cell
    with the best validation frame AP instead."""
    transcriber_steps: int = count_field(1500)
    """Steps of the transcriber's training: a note head needs more than the label-efficiency study's budget (its
    validation note F1 still rose at 1,000 steps)."""
    transcriber_lrs: tuple[float, ...] = (1e-3, 3e-3)
    # -- machine (not part of what is computed: may change between a run and its continuation)
    threads: int | None = bounded(None, 1, 4096)
    workers: int | None = bounded(None, 1, 4096)

    MACHINE_KEYS = ("threads", "workers")
    RETIRED_KEYS = ("study_epochs", "study_lr", "study_limit_batches", "tune_max_seconds")
    """Keys of demo.json files written before the study's protocol moved to StudyConfig; read and ignored."""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.transcriber is not None:
            from jtm.pipelines.study_config import METHODS

            method = METHODS.get(self.transcriber)
            if method is None or method.probe != "note":
                notes = ", ".join(m for m, spec in METHODS.items() if spec.probe == "note")
                raise ValueError(f"transcriber must be a note arm of jtm study ({notes}), not {self.transcriber!r}")
            if method.encoder == "cqt" and self.encoder != "gabor":
                raise ValueError(f"transcriber {self.transcriber!r} reads the gabor encoder's spectrum; the demo's "
                                 f"encoder is {self.encoder!r}")

    @classmethod
    def full(cls) -> "DemoConfig":
        """The README's demo: ~20 min of audio, ~12-15 min of wall time on 2 cores."""
        return cls()

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A smoke run of every stage in about two minutes: 1.5 min of audio, a tiny model, one epoch."""
        return cls(minutes=1.5, max_seconds=20.0, test_fraction=0.25, encoder_dim=32, context_dim=32,
                   predict_steps=4, negatives=16, batch_size=4, pretrain_epochs=1,
                   pretrain_limit_batches=10, fractions=(0.5, 1.0),
                   methods=("cpc-linear", "logmel-linear", "random-linear"), skip=(), seeds=2, study_steps=20,
                   eval_every=10, probe_lrs=(1e-3, 1e-2), max_val_seconds=10.0, max_eval_seconds=15.0,
                   transcriber_steps=20, transcriber_lrs=(3e-3,))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("tasks", "fractions", "methods", "skip", "probe_lrs", "encoder_lrs", "transcriber_lrs"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path = "demo.json") -> "DemoConfig":
        """Strictly, as :func:`jtm.configs.load_config` (JSON lists become the tuples)."""
        return load_config(cls, d, str(source))

    def content(self) -> dict[str, Any]:
        """The settings that determine the results (everything but threads and workers)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.MACHINE_KEYS}


@dataclass
class DemoResult:
    """Where the demo's outputs are and how long each stage took."""

    out: Path
    report: Path
    results: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    table: str = ""


STAGES = ("synthesise", "prepare", "pretrain", "study", "notes", "report")


class _Stages:
    """Completion markers ``OUT/stages/<name>.json`` and the stage banner / timing lines."""

    def __init__(self, out: Path, echo: Echo) -> None:
        self.dir = out / "stages"
        self.echo = echo
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []

    def done(self, name: str, output: Path | None = None) -> bool:
        """A stage is finished when its marker exists and (if given) its output is still there."""
        return (self.dir / f"{name}.json").is_file() and (output is None or output.exists())

    def run(self, name: str, what: str, fn: Callable[[], Any], output: Path | None = None) -> Any:
        k = STAGES.index(name) + 1
        if self.done(name, output):
            self.echo(f"[{k}/{len(STAGES)}] {name}: {what} -- finished earlier, reused")
            self.seconds[name] = 0.0
            self.reused.append(name)
            return None
        self.echo(f"[{k}/{len(STAGES)}] {name}: {what} ...")
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        self.seconds[name] = seconds
        write_json_atomic(self.dir / f"{name}.json", {"stage": name, "seconds": round(seconds, 2),
                                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self.echo(f"[{k}/{len(STAGES)}] {name}: done in {_fmt_seconds(seconds)}")
        return value


class Heartbeat:
    """Print ``status()`` every ``every`` seconds from a daemon thread while a long step runs.

    Lightning's progress bar only draws on a terminal; when the demo's output goes to a file or a pipe (CI,
    nohup, a test) this keeps the stage visibly alive.
    """

    def __init__(self, status: Callable[[], str], echo: Echo, every: float = 30.0) -> None:
        self.status, self.echo, self.every = status, echo, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jtm-demo-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.echo(self.status())
            except Exception:  # a status line is never worth crashing the demo for
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{int(s // 60)} min {s % 60:04.1f} s"


def _check_out(out: Path, cfg: DemoConfig) -> None:
    """Record the configuration in ``OUT/demo.json``; refuse to continue a demo made with another one."""
    path = out / "demo.json"
    if path.is_file():
        old = load_json(path)
        changed = changed_keys(old.get("config") or {}, cfg.content(), ignore=DemoConfig.MACHINE_KEYS)
        if changed:
            raise JTMError(f"{out}: this demo folder was made with a different configuration ({', '.join(changed)} "
                           "differ); use another --out, or delete the folder to start over")
    elif out.exists() and any(out.iterdir()):
        raise JTMError(f"{out}: the folder exists and is not a jtm demo folder (no demo.json); choose another --out")
    write_json_atomic(path, {"format": "jtm-demo", "version": 1, "config": cfg.to_dict()})


# Warnings that every demo run would print and that say nothing about the user's run: Lightning's advice on
# loggers and data loaders (the demo's loaders are single-process and short by design), a deprecation inside
# Lightning itself, and sklearn's note that a small test set held a single class.
_NOISE = (
    r".*smaller than the logging interval.*",
    r".*IterableDataset.*has `__len__` defined.*",
    r".*LeafSpec.*is deprecated.*",
    r".*A single label was found in 'y_true' and 'y_pred'.*",
    r".*does not have many workers which may be a bottleneck.*",
)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep the demo's output to its own progress lines: silence Lightning's INFO banners (accelerator,
    model summary, tips) and the known-harmless warnings in :data:`_NOISE`; progress bars stay."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def pretrain_config(cfg: DemoConfig, store: Path, out: Path):
    """The :class:`~jtm.training.pretrain.PretrainConfig` of the demo's CPC model."""
    from jtm.models.config import CPCConfig
    from jtm.training.pretrain import PretrainConfig

    model = CPCConfig(encoder=cfg.encoder, score=cfg.score, target=cfg.target, encoder_dim=cfg.encoder_dim,
                      norm=cfg.norm,
                      context="gru", context_dim=cfg.context_dim, predict_steps=cfg.predict_steps,
                      negatives=cfg.negatives)
    return PretrainConfig(data=str(store), out=str(out), model=model, window=cfg.window, batch_size=cfg.batch_size,
                          epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, seed=cfg.seed,
                          limit_train_batches=cfg.pretrain_limit_batches, threads=cfg.threads, progress=True,
                          log_every_n_steps=5,
                          # fp32 everywhere, so the README's table reproduces on CPUs with and without bf16
                          precision="32-true")


def study_config(cfg: DemoConfig, store: Path, pretrain: Path, out: Path):
    """The :class:`~jtm.pipelines.study.StudyConfig` of the demo's label-efficiency study."""
    from jtm.pipelines.study import StudyConfig

    return StudyConfig(data=str(store), out=str(out), pretrained=str(pretrain), tasks=cfg.tasks,
                       fractions=cfg.fractions, methods=cfg.methods, skip=cfg.skip, seeds=cfg.seeds, seed=cfg.seed,
                       steps=cfg.study_steps, eval_every=cfg.eval_every, patience=cfg.patience,
                       probe_lrs=cfg.probe_lrs, encoder_lrs=cfg.encoder_lrs, batch_size=cfg.batch_size,
                       window=cfg.window, max_val_seconds=cfg.max_val_seconds,
                       max_eval_seconds=cfg.max_eval_seconds, threads=cfg.threads)


def notes_config(cfg: DemoConfig, store: Path, pretrain: Path, out: Path):
    """The one-cell notes study that trains the demo's note transcriber (``cfg.transcriber``): every label, one
    seed, the learning rate, checkpoint and decoding thresholds chosen on validation."""
    from jtm.pipelines.study import StudyConfig

    assert cfg.transcriber is not None
    return StudyConfig(data=str(store), out=str(out), pretrained=str(pretrain), tasks=("notes",), fractions=(1.0,),
                       methods=(cfg.transcriber,), seeds=1, seed=cfg.seed, steps=cfg.transcriber_steps,
                       eval_every=cfg.eval_every, patience=cfg.patience, probe_lrs=cfg.transcriber_lrs,
                       batch_size=cfg.batch_size, window=cfg.window, max_val_seconds=cfg.max_val_seconds,
                       max_eval_seconds=cfg.max_eval_seconds, threads=cfg.threads)


def _copy_cell(cell: Path, dest: Path, names: tuple[str, ...]) -> None:
    """Copy a study cell's ``model/`` and the files ``names`` to ``dest`` through a temporary folder, so ``dest``
    is either the old copy or the whole new one."""
    import shutil

    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cell / "model", tmp / "model")
    for name in names:
        shutil.copy2(cell / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _row_dict(row: Any) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.to_dict().items()}


def export_transcriber(study: Path, dest: Path) -> dict[str, Any] | None:
    """Copy the study's transcription cell with the best validation frame AP (never test) to ``dest``, a run
    folder ``jtm transcribe --model`` takes; return its results row (None without transcription cells)."""
    import pandas as pd

    results = study / "results.csv"
    if not results.is_file():
        return None
    df = pd.read_csv(results)
    cells = df[(df["task"] == "transcription") & (df["method"] != "cpc-best")].dropna(subset=["val_score"])
    if cells.empty:
        return None
    from jtm.pipelines.study import cell_dir

    best = cells.loc[cells["val_score"].idxmax()]
    cell = cell_dir(study, "transcription", str(best["method"]), best["fraction"], best["seed"])
    _copy_cell(cell, dest, ("run.json", "splits.json", "metrics.json", "cell.json"))
    return _row_dict(best)


def export_note_transcriber(notes: Path, dest: Path) -> dict[str, Any] | None:
    """Copy the notes study's cell (one, :func:`notes_config`) to ``dest``, a folder ``jtm transcribe --model``
    and ``jtm evaluate`` take; return its results row (None if the study has not finished)."""
    import pandas as pd

    from jtm.pipelines.study import cell_dir

    results = notes / "results.csv"
    if not results.is_file():
        return None
    df = pd.read_csv(results)
    cells = df[df["task"] == "notes"]
    if cells.empty:
        return None
    row = cells.iloc[0]
    cell = cell_dir(notes, "notes", str(row["method"]), row["fraction"], row["seed"])
    _copy_cell(cell, dest, ("splits.json", "metrics.json", "cell.json"))
    return _row_dict(row)


def results_table(summary_csv: Path) -> str:
    """A study's ``summary.csv`` as text: per task, one row per method (chance last), one column per fraction,
    each cell the mean over seeds +- the half-width of its 95 % interval."""
    import pandas as pd

    df = pd.read_csv(summary_csv)
    lines = []
    for task, grp in df.groupby("task", sort=False):
        metric = str(grp["headline_metric"].iloc[0])
        fractions = sorted(grp["fraction"].unique())
        methods = [m for m in grp["method"].unique() if m != "chance"] + ["chance"]
        n = int(grp.loc[grp["method"] != "chance", "n_seeds"].max())
        width = max(16, *(len(str(m)) + 2 for m in methods))
        lines.append(f"{task}: {metric} on the test recordings, mean +- 95 % CI over {n} seed(s), "
                     "by fraction of labelled training recordings")
        lines.append("  " + "method".ljust(width) + "".join(f"{'f=' + format(f, 'g'):>18}" for f in fractions))
        for method in methods:
            cells = []
            for f in fractions:
                row = grp[(grp["method"] == method) & (grp["fraction"] == f)]
                if row.empty or pd.isna(row["mean"].iloc[0]):
                    cells.append(f"{'n/a':>18}")
                    continue
                r = row.iloc[0]
                half = (r["ci95_high"] - r["ci95_low"]) / 2
                text = f"{r['mean']:.3f}" if method == "chance" else f"{r['mean']:.3f} +- {half:.3f}"
                cells.append(f"{text:>18}")
            lines.append("  " + str(method).ljust(width) + "".join(cells))
        lines.append("")
    return "\n".join(lines).rstrip()


def comparisons_table(results_csv: Path) -> str:
    """The paired comparisons of a study's ``results.csv`` as text (:func:`jtm.evaluation.stats.paired_differences`):
    per task, one row per comparison (the best CPC arm against each baseline, and CPC + linear against the
    untrained encoder + linear), one column per fraction, each cell ``mean [95 % CI] wins/seeds``. Empty when
    the study has no CPC arm with a baseline beside it."""
    import pandas as pd

    from jtm.evaluation.stats import comparison_pairs, format_difference, paired_differences

    df = pd.read_csv(results_csv)
    pairs = [(m, b) for m, b in comparison_pairs(df["method"].unique())
             if m == "cpc-best" or (m, b) == ("cpc-linear", "random-linear")]
    diffs = paired_differences(df, pairs)
    lines = []
    for task, grp in diffs.groupby("task", sort=False):
        fractions = sorted(grp["fraction"].unique())
        lines.append(f"{task}: paired differences on the test recordings (seed k of every arm has the same label "
                     "subset), mean [95 % CI] and seeds won")
        lines.append("  " + "comparison".ljust(30) + "".join(f"{'f=' + format(f, 'g'):>30}" for f in fractions))
        for (method, baseline), rows in grp.groupby(["method", "baseline"], sort=False):
            cells = []
            for f in fractions:
                row = rows[rows["fraction"] == f]
                if row.empty:
                    cells.append(f"{'n/a':>30}")
                    continue
                cells.append(format_difference(row.iloc[0]).rjust(30))
            lines.append("  " + f"{method} - {baseline}".ljust(30) + "".join(cells))
        lines.append("")
    return "\n".join(lines).rstrip()


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage of a demo writes: its folder ``out`` and, below it, one output per stage."""

    out: Path
    corpus: Path
    store: Path
    pretrain: Path
    study: Path
    notes: Path
    report: Path

    @classmethod
    def under(cls, out: Path) -> "DemoPaths":
        return cls(out, out / "corpus", out / "store", out / "pretrain", out / "study", out / "notes",
                   out / "report.html")


def _start(paths: DemoPaths, cfg: DemoConfig, echo: Echo) -> None:
    """Claim the folder for this configuration, set torch's threads and announce what will run."""
    import torch

    from jtm.hardware import usable_cpus

    paths.out.mkdir(parents=True, exist_ok=True)
    _check_out(paths.out, cfg)
    torch.set_num_threads(int(cfg.threads or usable_cpus()))
    echo(f"jtm demo in {paths.out}: {cfg.minutes:g} min of audio, "
         f"CPC {cfg.encoder_dim}/{cfg.context_dim}-dim {cfg.encoder}+GRU, "
         f"{cfg.pretrain_epochs} pretraining epoch(s), study of {', '.join(cfg.tasks)} at label fractions "
         f"{', '.join(format(f, 'g') for f in cfg.fractions)} ({torch.get_num_threads()} threads)")


def _synthesise(cfg: DemoConfig, paths: DemoPaths, echo: Echo) -> None:
    from jtm.data.synth import build_corpus

    summary = build_corpus(paths.corpus, minutes=cfg.minutes, max_seconds=cfg.max_seconds,
                           test_fraction=cfg.test_fraction, seed=cfg.seed, workers=cfg.workers)
    d = summary.to_dict()
    echo(f"    {d.get('n_pieces')} pieces ({d.get('n_train')} train, {d.get('n_test')} test), "
         f"{float(d.get('seconds', 0)) / 60:.1f} min of audio")


def _prepare(cfg: DemoConfig, paths: DemoPaths) -> None:
    from jtm.data.prepare import prepare_store

    prepare_store(paths.corpus, paths.store, workers=cfg.workers)


def _pretrain(cfg: DemoConfig, paths: DemoPaths, echo: Echo) -> None:
    """Pretrain CPC (with a heartbeat line when there is no terminal for the progress bar) and print the final
    validation accuracy per prediction step."""
    from jtm.training.pretrain import run_pretrain

    t0 = time.perf_counter()

    def status() -> str:
        done = len(list((paths.pretrain / "checkpoints").glob("epoch*.ckpt")))
        return (f"    pretraining: {done}/{cfg.pretrain_epochs} epoch(s) done, "
                f"{_fmt_seconds(time.perf_counter() - t0)} elapsed")

    if sys.stdout.isatty():
        metrics = run_pretrain(pretrain_config(cfg, paths.store, paths.pretrain))
    else:
        with Heartbeat(status, echo):
            metrics = run_pretrain(pretrain_config(cfg, paths.store, paths.pretrain))
    accs = [metrics.get(f"val/acc_k{k}") for k in range(1, cfg.predict_steps + 1)]
    shown = ", ".join("n/a" if a is None else f"{a:.2f}" for a in accs)
    echo(f"    CPC validation accuracy for k = 1..{cfg.predict_steps}: {shown}")


def _study(cfg: DemoConfig, paths: DemoPaths, echo: Echo) -> None:
    from jtm.pipelines.study import run_study

    run_study(study_config(cfg, paths.store, paths.pretrain, paths.study), log=lambda line: echo(f"    {line}"))


def _notes(cfg: DemoConfig, paths: DemoPaths, echo: Echo) -> None:
    from jtm.pipelines.study import run_study

    run_study(notes_config(cfg, paths.store, paths.pretrain, paths.notes), log=lambda line: echo(f"    {line}"))


def _report(paths: DemoPaths) -> None:
    from jtm.evaluation.report import write_report

    write_report([paths.out], paths.report, title="JTM demo: CPC on synthesised music")


def _run_stages(cfg: DemoConfig, paths: DemoPaths, stages: _Stages, echo: Echo) -> None:
    """Every stage in order, each skipped when it finished in an earlier run (the report is always rebuilt)."""
    with quiet_libraries():
        stages.run("synthesise", f"render about {cfg.minutes:g} min of scores with a GM soundfont",
                   lambda: _synthesise(cfg, paths, echo), paths.corpus)
        stages.run("prepare", "resample to 16 kHz and build the store", lambda: _prepare(cfg, paths),
                   paths.store / "store.json")
        stages.run("pretrain", f"CPC, {cfg.pretrain_epochs} epoch(s)", lambda: _pretrain(cfg, paths, echo),
                   paths.pretrain / "encoder" / "config.json")
        n_runs = len(study_config(cfg, paths.store, paths.pretrain, paths.study).cells()) * cfg.seeds
        stages.run("study", f"{n_runs} selected runs ({', '.join(cfg.methods)}; {cfg.seeds} seeds)",
                   lambda: _study(cfg, paths, echo), paths.study / "summary.csv")
        if cfg.transcriber is not None:
            stages.run("notes", f"the note transcriber: {cfg.transcriber}, all labels, {cfg.transcriber_steps} steps",
                       lambda: _notes(cfg, paths, echo), paths.notes / "summary.csv")
        # The report is cheap and reflects everything above: rebuild it on every run.
        (stages.dir / "report.json").unlink(missing_ok=True)
        stages.run("report", "write the HTML report", lambda: _report(paths))


def _echo_timings(stages: _Stages, total: float, echo: Echo) -> None:
    echo("")
    echo("stage timings:")
    for name in STAGES:
        seconds = stages.seconds.get(name, 0.0)
        note = " (reused)" if name in stages.reused else ""
        echo(f"  {name:<11} {_fmt_seconds(seconds):>14}{note}")
    echo(f"  {'total':<11} {_fmt_seconds(total):>14}")


def _export_and_announce_transcriber(cfg: DemoConfig, paths: DemoPaths, echo: Echo) -> None:
    """Copy the demo's transcriber to ``OUT/transcriber`` and say how to use it: the notes cell
    (``cfg.transcriber``), or without one the transcription cell chosen on validation."""
    dest = paths.out / "transcriber"
    use = f"use it with `jtm transcribe YOUR_AUDIO --model {dest} -o midi`"
    if cfg.transcriber is not None:
        row = export_note_transcriber(paths.notes, dest)
        if row is not None:
            held = row.get("heldout_timbre_note_f1")
            held_text = f", held-out timbres note F1 {held:.3f}" if isinstance(held, float) and held == held else ""
            echo(f"note transcriber ({row['method']}, learning rate and thresholds chosen on validation): test note "
                 f"F1 {row['note_f1']:.3f}, frame F1 {row['frame_f1']:.3f}{held_text}; copied to {dest}; {use}")
        return
    row = export_transcriber(paths.study, dest)
    if row is not None:
        echo(f"transcription model chosen on validation: {row['run']} (validation frame AP "
             f"{row['val_score']:.3f}), copied to {dest}; {use}")


def run_demo(out: str | Path = "jtm-demo", cfg: DemoConfig | None = None, echo: Echo = print) -> DemoResult:
    """Run (or finish) the demo in ``out``; print progress, stage timings and the results table."""
    cfg = cfg or DemoConfig.full()
    paths = DemoPaths.under(Path(out))
    started = time.perf_counter()
    _start(paths, cfg, echo)
    stages = _Stages(paths.out, echo)
    _run_stages(cfg, paths, stages, echo)
    total = time.perf_counter() - started
    _echo_timings(stages, total, echo)
    results = paths.study / "summary.csv"
    table = results_table(results) if results.is_file() else "(no study results)"
    if (paths.study / "results.csv").is_file():
        table = "\n\n".join(t for t in (table, comparisons_table(paths.study / "results.csv")) if t)
    echo("")
    echo(table)
    echo("")
    _export_and_announce_transcriber(cfg, paths, echo)
    write_json_atomic(paths.out / "stages" / "timings.json",
                      {"stage_seconds": stages.seconds, "total_seconds": total, "reused": stages.reused})
    return DemoResult(out=paths.out, report=paths.report, results=results, stage_seconds=stages.seconds,
                      reused=stages.reused, table=table)

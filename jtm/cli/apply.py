"""``jtm transcribe``, ``jtm embed``, ``jtm report`` and ``jtm demo``: applying and presenting trained models."""
from __future__ import annotations

import dataclasses
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from jtm.cli.app import Layer, OnError, app, config_from_options
from jtm.errors import JTMError
from jtm.hardware import pin_mkl_rounding
from jtm.pipelines.demo import DemoConfig


class Pool(str, Enum):
    none = "none"
    mean = "mean"


def _expand_inputs(inputs: List[Path]) -> list[Path]:
    """Files as given; folders replaced by the audio files under them (sorted). A missing path stays in the list
    so that the pipeline reports it like any other bad input."""
    from jtm.audio import AUDIO_EXTENSIONS, find_audio_files

    out: list[Path] = []
    for p in inputs:
        out.extend(find_audio_files(p) if p.is_dir() else [p])
    if not out:
        raise JTMError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return out


def _finish(outcome, verb: str) -> None:
    """Print the batch summary and the skipped inputs; exit 1 when nothing at all was produced."""
    from jtm.pipelines.chunked import summary_line

    typer.echo(summary_line(outcome, verb))
    for path, reason in outcome.skipped:
        typer.echo(f"  skipped {path}: {reason}", err=True)
    if not outcome.results:
        typer.echo("error: every input was skipped; nothing was written", err=True)
        # SystemExit rather than typer.Exit: jtm's main() runs click with standalone_mode=False, where click
        # turns Exit into a return value that main() does not pass on.
        raise SystemExit(1)


@app.command("transcribe")
def transcribe(
    audio: List[Path] = typer.Argument(..., help="Audio files (wav, flac, ogg, mp3, ...; any rate, mono or "
                                       "multichannel, any length) or folders of them."),
    model: Path = typer.Option(..., "--model", "-m", help="A downstream RUN folder (jtm downstream) for the "
                               "transcription or pitch-instrument task, or its model/ folder; or a note "
                               "transcriber: a study's notes cell with a note head (e.g. "
                               "STUDY/notes/logmel-note/f1.0/seed0), or its model/ folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <stem>.mid per input (+ .png, .csv)."),
    piano_roll: bool = typer.Option(False, "--piano-roll", help="Also draw <stem>.png, the notes as a piano roll."),
    csv: bool = typer.Option(False, "--csv", help="Also write <stem>.csv, the notes in MusicNet's label format."),
    threshold: Optional[float] = typer.Option(None, help="Frame probability threshold (a note model: the one that "
                                              "sustains a note; default: the one tuned on validation data and "
                                              "saved with the model, else 0.5)."),
    onset_threshold: Optional[float] = typer.Option(None, help="Onset probability threshold that starts a note "
                                                    "(note models only; default: the one chosen on validation)."),
    on_error: OnError = typer.Option(OnError.raise_, "--on-error", help="raise: stop at the first bad input; "
                                     "skip: count, report and leave out bad inputs."),
    chunk_seconds: Optional[float] = typer.Option(None, help="Audio kept per chunk (default: as the run's "
                                                  "evaluation: its training window less the context; a note "
                                                  "model: 10 s; memory is bounded by one batch of chunks)."),
    context_seconds: Optional[float] = typer.Option(None, help="Extra audio the model sees on each side of a "
                                                    "chunk (default: as the run's evaluation; a note model: its "
                                                    "front end's receptive field, which this may only widen)."),
    batch_size: Optional[int] = typer.Option(None, help="Chunks per model call (default 8 with the run's "
                                             "chunking; a recurrent context runs much faster batched)."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: torch's, all cores)."),
) -> None:
    """Transcribe audio to MIDI with a trained transcription model; prints the real-time factor."""
    from jtm.pipelines.transcribe import transcribe_files

    outcome = transcribe_files(model, _expand_inputs(audio), out, threshold=threshold,
                               onset_threshold=onset_threshold, piano_roll=piano_roll,
                               csv=csv, on_error=on_error.value, chunk_seconds=chunk_seconds,
                               context_seconds=context_seconds, batch_size=batch_size, threads=threads,
                               echo=typer.echo)
    _finish(outcome, "transcribed")


@app.command("embed")
def embed(
    audio: List[Path] = typer.Argument(..., help="Audio files (any format, rate, channels, length) or folders."),
    model: Path = typer.Option(..., "--model", "-m", help="A pretraining RUN folder (jtm pretrain) or its "
                               "encoder/ folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <stem>.npy per input."),
    layer: Layer = typer.Option(Layer.context, help="context: the c vectors (context network); encoder: z; "
                                "spectrum: a gabor encoder's log filterbank."),
    pool: Pool = typer.Option(Pool.none, help="none: one row per 10 ms frame (100 per second); mean: one row "
                              "per file."),
    on_error: OnError = typer.Option(OnError.raise_, "--on-error", help="raise: stop at the first bad input; "
                                     "skip: count, report and leave out bad inputs."),
    chunk_seconds: float = typer.Option(10.0, help="Audio per model call (bounds memory)."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: torch's, all cores)."),
) -> None:
    """Write CPC features of audio files as float32 .npy arrays (np.load(..., allow_pickle=False))."""
    from jtm.pipelines.embed import embed_files

    outcome = embed_files(model, _expand_inputs(audio), out, layer=layer.value, pool=pool.value,
                          on_error=on_error.value, chunk_seconds=chunk_seconds, threads=threads, echo=typer.echo)
    _finish(outcome, "embedded")


@app.command("report")
def report(
    runs: List[Path] = typer.Argument(..., help="Pretraining runs, downstream runs, study folders, or a folder "
                                      "holding them (e.g. a demo folder): searched a few levels deep."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML file to write."),
    title: str = typer.Option("JTM report", help="The report's title."),
) -> None:
    """Write a single self-contained HTML report: training curves, label efficiency, results, figures."""
    from jtm.evaluation.report import write_report

    missing = [p for p in runs if not p.exists()]
    if missing:
        raise JTMError(f"{missing[0]}: no such run or study folder")
    path = write_report(runs, out, title=title)
    typer.echo(f"report: {path}")


_FULL, _QUICK = DemoConfig.full(), DemoConfig.quick()


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("jtm-demo"), "--out", "-o", help="Folder for everything the demo makes; "
                             "re-running reuses finished stages."),
    minutes: Optional[float] = typer.Option(None, help=f"Minutes of audio to synthesise (default: {_FULL.minutes:g}, "
                                            f"quick: {_QUICK.minutes:g})."),
    quick: bool = typer.Option(False, "--quick", help="A smoke version (about 2 minutes): little audio, a tiny "
                               "model, one epoch."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: all cores)."),
    workers: Optional[int] = typer.Option(None, help="Processes for synthesis and preparation (default: all cores)."),
) -> None:
    """The whole method on built-in data: synthesise, prepare, pretrain CPC, label-efficiency study, report."""
    pin_mkl_rounding()  # before torch's first MKL call: the same command gives the same table
    from jtm.pipelines.demo import run_demo

    # --minutes, --threads and --workers override the preset (full or quick) only when given.
    given = {k: v for k, v in dict(minutes=minutes, threads=threads, workers=workers).items() if v is not None}
    cfg = config_from_options(DemoConfig, {**dataclasses.asdict(_QUICK if quick else _FULL), **given})
    result = run_demo(out, cfg, echo=typer.echo)
    sys.stdout.flush()
    typer.echo(f"report: {result.report}")

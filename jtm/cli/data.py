"""``jtm data synth`` and ``jtm data prepare``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from jtm.cli.app import OnError, data_app


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Folder to write the MusicNet-layout corpus into."),
    minutes: float = typer.Option(20.0, help="Total minutes of audio to render."),
    max_seconds: float = typer.Option(60.0, help="At most this many seconds of each piece."),
    test_fraction: float = typer.Option(0.15, help="Fraction of pieces in test_data/."),
    seed: int = typer.Option(0, help="Same seed, same bytes."),
    soundfont: Optional[List[Path]] = typer.Option(
        None, help="A .sf2/.sf3 General MIDI soundfont (default: TimGM6mb); repeat it to cycle through several."),
    renderings: int = typer.Option(1, help="Recordings per piece, each with its own timbre (programs of the same "
                                          "instrument, dynamics, level, EQ, reverb, detuning); labels stay exact."),
    heldout_timbre: Optional[bool] = typer.Option(
        None, "--heldout-timbre/--no-heldout-timbre", show_default=False,
        help="Give each test piece one more recording with a held-out timbre no training recording uses "
             "(default: on when --renderings > 1 or --heldout-soundfont is given)."),
    heldout_soundfont: Optional[List[Path]] = typer.Option(
        None, help="A soundfont used only for held-out-timbre recordings (repeatable)."),
    workers: Optional[int] = typer.Option(None, help="Processes to render with (default: all cores)."),
) -> None:
    """Render real scores (music21's corpus) with GM soundfonts into MusicNet's exact layout."""
    from jtm.data.synth import build_corpus

    try:
        summary = build_corpus(out, minutes=minutes, max_seconds=max_seconds, test_fraction=test_fraction,
                               seed=seed, soundfont=soundfont or None, renderings=renderings,
                               heldout_timbre=heldout_timbre, heldout_soundfont=heldout_soundfont or (),
                               workers=workers)
    except ValueError as e:  # out-of-range sizes, fractions, renderings or worker counts
        raise typer.BadParameter(str(e)) from None
    typer.echo(json.dumps(summary.to_dict(), indent=2))


@data_app.command("prepare")
def prepare(
    src: Path = typer.Argument(..., help="A MusicNet-layout folder, or any folder of audio files (no labels)."),
    store: Path = typer.Argument(..., help="Where to write the prepared 16 kHz store."),
    workers: Optional[int] = typer.Option(None, help="Processes to decode and resample with (default: all cores)."),
    on_error: OnError = typer.Option(OnError.raise_, "--on-error", help="raise: stop at the first bad file; "
                                     "skip: count, report and leave out bad files."),
    shard_mb: int = typer.Option(64, help="Target size of one audio shard file, in MB."),
) -> None:
    """Resample to 16 kHz (soxr) and write audio shards, a track table and a note table."""
    from jtm.data.prepare import prepare_store

    summary = prepare_store(src, store, workers=workers, on_error=on_error.value, shard_mb=shard_mb)
    typer.echo(json.dumps(summary.to_dict(), indent=2))

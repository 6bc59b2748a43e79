"""Render a note list with a General MIDI soundfont (tinysoundfont) and write the WAV + label CSV atomically."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from jtm.data.instruments import MUSICNET_INSTRUMENTS
from jtm.data.synth.effects import add_reverb, equalise
from jtm.data.synth.score import SYNTH_RATE, PieceNotes
from jtm.data.synth.timbre import REFERENCE, Timbre
from jtm.errors import DataError
from jtm.fileio import atomic_path

LABEL_COLUMNS = ("start_time", "end_time", "instrument", "note", "start_beat", "end_beat", "note_value")
PEAK_DBFS = -1.0
SOUNDFONT_SUFFIXES = (".sf2", ".sf3")


def default_soundfont() -> Path:
    """pretty_midi's bundled General MIDI soundfont (TimGM6mb, ~6 MB): always installed, nothing to download."""
    import pretty_midi

    return Path(os.path.dirname(pretty_midi.__file__)) / "TimGM6mb.sf2"


def check_soundfont(path: str | Path | None) -> Path:
    """Resolve and validate a soundfont: it must exist, load, and hold a preset for each MusicNet instrument.

    Raises :class:`DataError` naming the file otherwise, so a bad ``--soundfont`` fails before any work starts.
    """
    import tinysoundfont

    path = default_soundfont() if path is None else Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, "soundfont not found")
    if path.suffix.lower() not in SOUNDFONT_SUFFIXES:
        raise DataError(path, f"not a soundfont: expected a {' or '.join(SOUNDFONT_SUFFIXES)} file")
    synth = tinysoundfont.Synth(samplerate=SYNTH_RATE)
    try:
        sfid = synth.sfload(str(path))
    except Exception as e:  # tinysoundfont raises RuntimeError / its own SoundFontException
        raise DataError(path, f"not a loadable soundfont ({e})") from None
    for program, name in MUSICNET_INSTRUMENTS.items():
        try:
            synth.program_select(0, sfid, 0, program - 1)
        except Exception:
            raise DataError(path, f"soundfont has no General MIDI preset {program} ({name}) in bank 0") from None
    return path


def available_programs(path: Path, candidates: set[int]) -> frozenset[int]:
    """Which of ``candidates`` (1-based GM programs) the soundfont at ``path`` has in bank 0."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SYNTH_RATE)
    sfid = synth.sfload(str(path))
    found = set()
    for program in sorted(candidates):
        try:
            synth.program_select(0, sfid, 0, program - 1)
            found.add(program)
        except Exception:
            pass
    return frozenset(found)


def _synthesise(piece: PieceNotes, soundfont: Path, timbre: Timbre) -> np.ndarray:
    """The soundfont's stereo output ``(n_samples, 2)`` float32 for exactly the labelled notes, event by event."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SYNTH_RATE)
    sfid = synth.sfload(str(soundfont))
    programs: dict[int, int] = {}
    for n in piece.notes:
        programs.setdefault(n.channel, n.program)
    for channel, program in sorted(programs.items()):
        synth.program_select(channel, sfid, 0, timbre.program_for(program) - 1)
        if timbre.detune_cents:
            synth.set_tuning(channel, timbre.detune_cents / 100)

    # (sample, 0 = off / 1 = on, channel, key, velocity)
    events = sorted(
        [(n.start, 1, n.channel, n.pitch, timbre.velocity(n.velocity)) for n in piece.notes]
        + [(n.end, 0, n.channel, n.pitch, 0) for n in piece.notes]
    )
    out = np.zeros((piece.n_samples, 2), dtype=np.float32)
    pos = 0
    for sample, kind, channel, key, velocity in events:
        if sample > pos:
            out[pos:sample] = np.frombuffer(synth.generate(sample - pos), dtype=np.float32).reshape(-1, 2)
            pos = sample
        if kind:
            synth.noteon(channel, key, velocity)
        else:
            synth.noteoff(channel, key)
    if piece.n_samples > pos:
        out[pos:] = np.frombuffer(synth.generate(piece.n_samples - pos), dtype=np.float32).reshape(-1, 2)
    return out


def render(piece: PieceNotes, soundfont: Path, timbre: Timbre = REFERENCE) -> np.ndarray:
    """Render ``piece`` to int16 mono at 44.1 kHz with ``timbre``; shape ``(piece.n_samples,)``.

    Note-offs sort before note-ons at the same sample so a repeated key restarts cleanly. EQ and reverb keep the
    length, so label times stay exact. The mix is peak-normalised to -1 dBFS, which makes every piece comparably
    loud whatever the soundfont's gain and the number of voices; then the timbre's gain (<= 0 dB) sets its level.
    """
    mono = _synthesise(piece, soundfont, timbre).mean(axis=1, dtype=np.float64)
    mono = equalise(mono, timbre.low_shelf_db, timbre.high_shelf_db, SYNTH_RATE)
    mono = add_reverb(mono, timbre.reverb_seconds, timbre.reverb_db, timbre.reverb_seed, SYNTH_RATE)
    peak = float(np.max(np.abs(mono)))
    if peak > 0:
        mono *= 10 ** ((PEAK_DBFS + min(timbre.gain_db, 0.0)) / 20) / peak
    return np.round(mono * 32767).astype(np.int16)


def _fmt(x: float) -> str:
    """Beats as short, exact-enough decimals; repr of a rounded float is deterministic across platforms."""
    return repr(round(float(x), 6))


def labels_csv(piece: PieceNotes) -> str:
    """The label table in MusicNet's format, notes ordered by start time."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LABEL_COLUMNS)
    for n in piece.notes:
        w.writerow((n.start, n.end, n.program, n.pitch, _fmt(n.start_beat), _fmt(n.beats), n.note_value))
    return buf.getvalue()


def write_piece(piece: PieceNotes, audio: np.ndarray, wav_path: Path, csv_path: Path) -> None:
    """Write the CSV, then the WAV, each atomically. The WAV is the build's 'done' marker, so it goes last."""
    with atomic_path(csv_path) as tmp:
        tmp.write_text(labels_csv(piece), encoding="utf-8")
    with atomic_path(wav_path) as tmp:
        sf.write(tmp, audio, SYNTH_RATE, subtype="PCM_16", format="WAV")

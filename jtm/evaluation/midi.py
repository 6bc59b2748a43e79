"""Write transcribed notes as a MIDI file or as a MusicNet label CSV.

Both take ``notes_by_instrument``: a mapping from a **1-based** General MIDI program (MusicNet's instrument
numbers, e.g. 1 = piano, 41 = violin) to that instrument's ``NoteList`` (times in seconds). Both write
atomically, so an interrupted run never leaves a truncated file under the final name.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pretty_midi

from jtm.data.instruments import MUSICNET_INSTRUMENTS
from jtm.evaluation.notes import NoteList
from jtm.fileio import atomic_path, write_text_atomic

MUSICNET_CSV_HEADER = ("start_time", "end_time", "instrument", "note", "start_beat", "end_beat", "note_value")

# 960 ticks per beat at 120 bpm = 1920 ticks/s: note times survive the file to within 0.26 ms, far below the
# 10 ms frame, where pretty_midi's default (220 ticks per beat) would round to 2.3 ms.
_RESOLUTION = 960
_TEMPO = 120.0


def _check_program(program: int) -> int:
    program = int(program)
    if not 1 <= program <= 128:
        raise ValueError(f"instrument {program} is not a 1-based General MIDI program (1..128)")
    return program


def confidence_to_velocity(confidence: np.ndarray) -> np.ndarray:
    """Map confidences in [0, 1], shape (n,), to MIDI velocities 1..127, shape (n,) int.

    Velocity 0 would mean note-off in MIDI, so the floor is 1; nan confidence counts as 1.0.
    """
    conf = np.nan_to_num(np.asarray(confidence, dtype=np.float64), nan=1.0)
    return np.clip(np.round(conf * 127), 1, 127).astype(int)


def notes_to_pretty_midi(notes_by_instrument: Mapping[int, NoteList]) -> pretty_midi.PrettyMIDI:
    """Build the ``PrettyMIDI`` object: one ``Instrument`` per GM program (pretty_midi's program = program - 1)."""
    pm = pretty_midi.PrettyMIDI(resolution=_RESOLUTION, initial_tempo=_TEMPO)
    for program in sorted(notes_by_instrument):
        gm = _check_program(program)
        notes = notes_by_instrument[program]
        name = MUSICNET_INSTRUMENTS.get(gm, f"Program {gm}")
        inst = pretty_midi.Instrument(program=gm - 1, is_drum=False, name=name)
        velocity = confidence_to_velocity(notes.confidence)
        for on, off, pitch, vel in zip(notes.onset.tolist(), notes.offset.tolist(), notes.pitch.tolist(), velocity):
            inst.notes.append(pretty_midi.Note(velocity=int(vel), pitch=int(pitch), start=on, end=off))
        pm.instruments.append(inst)
    return pm


def notes_to_midi(notes_by_instrument: Mapping[int, NoteList], path: str | Path) -> Path:
    """Write a Standard MIDI File (one track per instrument, velocity from note confidence); returns ``path``."""
    pm = notes_to_pretty_midi(notes_by_instrument)
    path = Path(path)
    with atomic_path(path) as tmp:
        pm.write(str(tmp))
    return path


def notes_to_csv(notes_by_instrument: Mapping[int, NoteList], path: str | Path, sample_rate: int = 44100) -> Path:
    """Write notes in MusicNet's label format; returns ``path``.

    Columns ``start_time,end_time,instrument,note,start_beat,end_beat,note_value``: start/end are sample indices
    at ``sample_rate`` (44.1 kHz in MusicNet, rounded to the nearest sample), instrument the 1-based GM program,
    note the MIDI pitch. The score position is unknown for transcribed audio, so ``start_beat`` and
    ``end_beat`` are written as 0 (numeric, so readers that parse them as floats still work) and
    ``note_value`` (MusicNet's "Quarter", "Dotted Half", ...) is left empty. Rows are sorted by
    (start_time, instrument, note).
    """
    rows: list[tuple[int, int, int, int]] = []
    for program, notes in notes_by_instrument.items():
        gm = _check_program(program)
        start = np.round(notes.onset * sample_rate).astype(np.int64)
        # At least one sample long: a label with end <= start would be rejected by the MusicNet reader.
        end = np.maximum(np.round(notes.offset * sample_rate).astype(np.int64), start + 1)
        rows.extend(zip(start.tolist(), end.tolist(), [gm] * len(notes), notes.pitch.astype(int).tolist()))
    rows.sort(key=lambda r: (r[0], r[2], r[3]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MUSICNET_CSV_HEADER)
    writer.writerows((s, e, inst, note, 0, 0, "") for s, e, inst, note in rows)
    path = Path(path)
    write_text_atomic(path, buf.getvalue())
    return path

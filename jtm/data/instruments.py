"""MusicNet's instrument vocabulary: 1-based General MIDI program numbers."""
from __future__ import annotations

MUSICNET_INSTRUMENTS: dict[int, str] = {
    1: "Piano",
    7: "Harpsichord",
    41: "Violin",
    42: "Viola",
    43: "Cello",
    44: "Contrabass",
    61: "Horn",
    69: "Oboe",
    71: "Bassoon",
    72: "Clarinet",
    74: "Flute",
}
"""GM program (1-based) -> name, for the 11 instruments that occur in MusicNet."""

INSTRUMENT_PROGRAMS: tuple[int, ...] = tuple(MUSICNET_INSTRUMENTS)
"""The instrument axis of pitch x instrument labels, in this order."""

N_PITCHES = 128


def instrument_index(program: int) -> int:
    """Position of a 1-based GM program on the instrument axis; ValueError for programs MusicNet lacks."""
    try:
        return INSTRUMENT_PROGRAMS.index(program)
    except ValueError:
        raise ValueError(
            f"unknown instrument number {program}; MusicNet uses GM programs {list(INSTRUMENT_PROGRAMS)}"
        ) from None

"""Turn a music21 score into the humanised note list that is both rendered and written as labels.

Runs inside the build's worker processes (parsing is the slow part of a build). Every random choice comes from a
numpy Generator seeded by ``(seed, piece id)``, so a piece's notes do not depend on which worker made them.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from jtm.data.synth.catalogue import PieceSpec

SYNTH_RATE = 44_100
"""MusicNet's sample rate: label times are sample indices at this rate."""

TAIL_SECONDS = 0.75
"""Audio kept after the last note-off so release tails are not cut."""

_MIN_NOTE_SAMPLES = 441  # 10 ms: jitter never shrinks a note below this
_JITTER_STD_S = 0.003
_JITTER_MAX_S = 0.008
_QPM_RANGE = (40.0, 220.0)  # clamp on tempo marks, against typos such as a half-note mark read as quarter

# Dynamic marking -> MIDI velocity. Accent-type marks (sf, sfz, fz) raise only the notes they sit on.
_LEVELS = {"pppp": 24, "ppp": 32, "pp": 44, "p": 56, "mp": 68, "mf": 80, "f": 94, "ff": 106, "fff": 116,
           "ffff": 124, "fp": 94, "sfp": 100}
_ACCENTS = {"sf": 14, "sfz": 16, "fz": 14, "rfz": 10, "rf": 10, "sffz": 20}
_DEFAULT_VELOCITY = 76

_TYPE_NAMES = {"maxima": "Maxima", "longa": "Longa", "breve": "Breve", "whole": "Whole", "half": "Half",
               "quarter": "Quarter", "eighth": "Eighth", "16th": "Sixteenth", "32nd": "Thirty Second",
               "64th": "Sixty Fourth", "128th": "One Hundred Twenty Eighth", "256th": "Two Hundred Fifty Sixth"}
_DOTS = {0: "", 1: "Dotted ", 2: "Double Dotted ", 3: "Triple Dotted "}


@dataclass(frozen=True)
class SynthNote:
    """One sounding note. ``start``/``end`` are sample indices at 44.1 kHz (end exclusive, end > start)."""

    start: int
    end: int
    program: int  # 1-based GM program
    pitch: int  # MIDI
    start_beat: float  # quarter-note beats from the excerpt's start
    beats: float  # sounding duration in quarter-note beats (after truncation)
    note_value: str
    velocity: int
    channel: int


@dataclass(frozen=True)
class PieceNotes:
    """The notes of one piece and the length of its audio in samples."""

    notes: tuple[SynthNote, ...]
    n_samples: int


class TempoMap:
    """Quarter-note offsets -> seconds, piecewise constant tempo, scaled by a global factor."""

    def __init__(self, changes: list[tuple[float, float]], scale: float) -> None:
        # changes: sorted (offset in quarters, qpm); the first one applies from offset 0.
        self._offsets = [o for o, _ in changes]
        self._qpm = [q * scale for _, q in changes]
        self._seconds = [0.0]
        for i in range(1, len(changes)):
            span = self._offsets[i] - self._offsets[i - 1]
            self._seconds.append(self._seconds[-1] + span * 60.0 / self._qpm[i - 1])

    def seconds(self, offset: float) -> float:
        i = max(bisect.bisect_right(self._offsets, offset) - 1, 0)
        return self._seconds[i] + (offset - self._offsets[i]) * 60.0 / self._qpm[i]

    def offset(self, seconds: float) -> float:
        """The inverse: the quarter offset reached at ``seconds``."""
        i = max(bisect.bisect_right(self._seconds, seconds) - 1, 0)
        return self._offsets[i] + (seconds - self._seconds[i]) * self._qpm[i] / 60.0


def _simple_name(kind: str, dots: int) -> str:
    return _DOTS.get(dots, f"{dots}-Dotted ") + _TYPE_NAMES.get(kind, kind.title())


def note_value_name(duration) -> str:  # music21.duration.Duration
    """A MusicNet-style note value name: 'Quarter', 'Dotted Eighth', 'Triplet Sixteenth', 'Half tied to Eighth'."""
    if duration.type == "complex":
        # Components are plain (type, dots, quarterLength) tuples: tuplets live on the Duration only.
        return " tied to ".join(_simple_name(c.type, c.dots) for c in duration.components) or "Complex"
    name = _simple_name(duration.type, duration.dots)
    for t in duration.tuplets:
        if (t.numberNotesActual, t.numberNotesNormal) == (3, 2):
            name = "Triplet " + name
        else:
            name = f"{t.numberNotesActual}:{t.numberNotesNormal} Tuplet " + name
    return name


def parse_score(corpus_path: str):
    """Parse one corpus file from source (forceSource: music21 would otherwise cache pickles outside OUT)."""
    from music21 import corpus

    return corpus.parse(corpus_path, forceSource=True)


def _tempo_changes(score, default_qpm: float) -> list[tuple[float, float]]:
    """Tempo marks of the score as (quarter offset, qpm), first part's marks (they are repeated in every part)."""
    from music21 import tempo

    marks: dict[float, float] = {}
    source = score.parts[0] if len(score.parts) else score
    for mm in source.flatten().getElementsByClass(tempo.MetronomeMark):
        qpm = mm.getQuarterBPM()  # includes numbers implied by tempo words ('Allegro')
        if qpm is None or not np.isfinite(qpm) or qpm <= 0:
            continue
        marks[float(mm.offset)] = float(np.clip(qpm, *_QPM_RANGE))
    changes = sorted(marks.items())
    if not changes:
        return [(0.0, default_qpm)]
    if changes[0][0] > 0:  # the first mark also governs any pickup before it
        changes[0] = (0.0, changes[0][1])
    return changes


def _select_parts(score, spec: PieceSpec) -> list[tuple[object, tuple[int, ...]]]:
    """(part, programs) pairs for the parts that will sound."""
    parts = list(score.parts)
    if spec.satb:
        # Chorales: find the four voices by name; instrumental doubling parts (e.g. 'Horn 2') are dropped.
        by_role: dict[str, object] = {}
        for p in parts:
            name = (p.partName or "").strip().lower()
            for role in ("soprano", "alto", "tenor", "bass"):
                if name.startswith(role) and role not in by_role:
                    by_role[role] = p
        if len(by_role) == 4:
            ordered = [by_role[r] for r in ("soprano", "alto", "tenor", "bass")]
        elif len(parts) == 4:
            ordered = parts
        else:
            raise ValueError(f"expected soprano, alto, tenor and bass parts, found {[p.partName for p in parts]}")
        return [(p, progs) for p, progs in zip(ordered, spec.voices) if progs]
    chosen = []
    for i, p in enumerate(parts):
        progs = spec.voices[i] if i < len(spec.voices) else (
            (spec.default_program,) if spec.default_program is not None else ())
        if progs:
            chosen.append((p, progs))
    return chosen


def _transposition(part) -> int:
    """Semitones from written to sounding pitch (Bb clarinet: -2); 0 for parts already at sounding pitch.

    Done by hand because ``Score.toSoundingPitch`` re-walks the whole score and costs seconds per piece.
    """
    if part.atSoundingPitch is True:
        return 0
    inst = part.getInstrument(returnDefault=False)
    interval = getattr(inst, "transposition", None) if inst is not None else None
    return int(interval.semitones) if interval is not None else 0


def _dynamics(flat) -> tuple[list[float], list[int], dict[float, int]]:
    """Velocity levels (sorted offsets, velocities) and accents (offset -> extra velocity) of one part."""
    from music21 import dynamics

    level_at: dict[float, int] = {}
    accents: dict[float, int] = {}
    for d in flat.getElementsByClass(dynamics.Dynamic):
        value = str(d.value).strip().lower()
        off = float(d.offset)
        if value in _ACCENTS:
            accents[off] = max(accents.get(off, 0), _ACCENTS[value])
        elif value in _LEVELS:
            level_at[off] = _LEVELS[value]
        elif d.volumeScalar is not None:
            level_at[off] = int(round(20 + 100 * float(d.volumeScalar)))
    offsets = sorted(level_at)
    return offsets, [level_at[o] for o in offsets], accents


def extract_notes(score, spec: PieceSpec, *, seed: int, max_seconds: float) -> PieceNotes:
    """The humanised, truncated notes of ``spec``'s excerpt (from the beginning, at most ``max_seconds``).

    Humanisation: a global tempo factor 0.9-1.1, onset/offset jitter of a few ms, velocities from the part's
    dynamics (or a mid value) with small random variation. Notes of one key on one channel never overlap (the
    earlier is cut at the later's onset), because a synth's note-off would otherwise silence both; the labels
    describe exactly what is rendered.
    """
    rng = np.random.default_rng([seed, spec.id])
    tempo_map = TempoMap(_tempo_changes(score, spec.default_qpm), scale=float(rng.uniform(0.9, 1.1)))
    end_quarters = tempo_map.offset(max_seconds)
    max_samples = int(round(max_seconds * SYNTH_RATE))

    selected = _select_parts(score, spec)
    if not selected:
        raise ValueError("no part to play")
    raw = _on_channels(selected, end_quarters)
    if not raw:
        raise ValueError("the excerpt has no notes")
    raw.sort(key=lambda r: (r[0], r[6], r[3]))
    notes = _humanise(raw, rng, tempo_map, end_quarters, max_samples)
    kept = _cut_overlaps(notes)
    kept.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[8]))
    final = tuple(
        SynthNote(start=s, end=e, program=pg, pitch=pt, start_beat=float(sb), beats=float(b), note_value=v,
                  velocity=vel, channel=ch)
        for s, e, pg, pt, sb, b, v, vel, ch in kept
    )
    if not final:
        raise ValueError("the excerpt has no notes")
    n_samples = max(n.end for n in final) + int(round(TAIL_SECONDS * SYNTH_RATE))
    return PieceNotes(notes=final, n_samples=n_samples)


def _part_notes(part, end_quarters: float) -> list[tuple[float, float, int, int, str]]:
    """The notes of one part's excerpt (up to ``end_quarters``), ties joined, at sounding pitch:
    ``(offset_q, duration_q, pitch, velocity, note value)``; a pitch sounds once per onset."""
    shift = _transposition(part)
    flat = part.flatten()
    level_offsets, levels, accents = _dynamics(flat)
    # Only the excerpt: slicing before stripTies keeps it cheap on long movements.
    excerpt = flat.getElementsByOffset(0.0, end_quarters, includeEndBoundary=False, mustBeginInSpan=True).stream()
    seen: set[tuple[float, int]] = set()
    part_notes: list[tuple[float, float, int, int, str]] = []
    for el in excerpt.stripTies().notes:
        dur = float(el.quarterLength)
        if dur <= 0:  # grace notes have no notated duration
            continue
        off = float(el.offset)
        i = bisect.bisect_right(level_offsets, off) - 1
        base = levels[i] if i >= 0 else _DEFAULT_VELOCITY
        vel = base + accents.get(off, 0)
        value = note_value_name(el.duration)
        for p in el.pitches:
            pitch = int(p.midi) + shift
            if not 0 <= pitch <= 127 or (off, pitch) in seen:  # unison within one part sounds once
                continue
            seen.add((off, pitch))
            part_notes.append((off, dur, pitch, vel, value))
    return part_notes


def _on_channels(selected: list, end_quarters: float) -> list[tuple[float, float, int, int, int, str, int]]:
    """Every selected part's notes once per program it is played by, each (part, program) on its own MIDI
    channel (skipping percussion channel 10): ``(offset_q, duration_q, program, pitch, velocity, value, channel)``."""
    raw: list[tuple[float, float, int, int, int, str, int]] = []
    channel = 0
    for part, programs in selected:
        part_notes = _part_notes(part, end_quarters)
        for program in programs:
            if channel == 9:  # GM channel 10 is percussion
                channel += 1
            if channel > 15:
                raise ValueError("more parts than MIDI channels")
            for off, dur, pitch, vel, value in part_notes:
                raw.append((off, dur, program, pitch, vel, value, channel))
            channel += 1
    return raw


def _humanise(raw: list[tuple[float, float, int, int, int, str, int]], rng: np.random.Generator,
              tempo_map: TempoMap, end_quarters: float, max_samples: int) -> list[list]:
    """``raw`` notes (sorted) in samples, with onset/offset jitter and velocity noise, cut to ``max_samples``:
    ``[start, end, program, pitch, start_beat, beats, value, velocity, channel]`` lists."""
    n = len(raw)
    jitter = np.clip(rng.normal(0.0, _JITTER_STD_S, size=(n, 2)), -_JITTER_MAX_S, _JITTER_MAX_S)
    vel_noise = rng.integers(-6, 7, size=n)
    notes: list[list] = []
    for k, (off, dur, program, pitch, vel, value, ch) in enumerate(raw):
        t0 = tempo_map.seconds(off) + float(jitter[k, 0])
        t1 = tempo_map.seconds(off + dur) + float(jitter[k, 1])
        start = max(int(round(t0 * SYNTH_RATE)), 0)
        end = min(int(round(t1 * SYNTH_RATE)), max_samples)
        if start >= max_samples:
            continue
        end = max(end, min(start + _MIN_NOTE_SAMPLES, max_samples))
        if end <= start:
            continue
        beats = min(dur, end_quarters - off)
        velocity = int(np.clip(vel + int(vel_noise[k]), 1, 127))
        notes.append([start, end, program, pitch, off, beats, value, velocity, ch])
    return notes


def _cut_overlaps(notes: list[list]) -> list[list]:
    """No overlapping notes of one key on one channel: the earlier is cut at the later's onset (dropped when
    nothing is left of it), since a synth's note-off would otherwise silence both."""
    notes.sort(key=lambda r: (r[8], r[3], r[0], r[1]))
    kept: list[list] = []
    for r in notes:
        if kept and kept[-1][8] == r[8] and kept[-1][3] == r[3] and kept[-1][1] > r[0]:
            prev = kept[-1]
            prev[1] = r[0]
            if prev[1] <= prev[0]:
                kept.pop()
        kept.append(r)
    return kept

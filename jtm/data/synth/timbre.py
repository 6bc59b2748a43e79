"""Timbre configurations: how one recording of a piece sounds, and the held-out family kept out of training.

A :class:`Timbre` names the soundfont, the GM program that plays each labelled instrument (always one of the same
MusicNet class, so labels stay true), a velocity curve, the level, a shelving EQ, a short reverb and a detuning of a
few cents. Rendering 0 of every piece uses :data:`REFERENCE` (the corpus as it was before timbres varied); further
renderings draw from the *training* ranges; test pieces get one more rendering drawn from the *held-out* ranges,
which no training recording ever uses: other programs (Electric Grand for piano, Fiddle for violin), any
``--heldout-soundfont``, a strong EQ tilt and a longer reverb.

The build records every recording's timbre in :data:`TIMBRE_FILE`; :func:`heldout_timbre_ids` and
:func:`piece_of` read it back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from jtm.errors import DataError

TIMBRE_FILE = "jtm_timbre.json"

# Label program (MusicNet class) -> GM programs that may render it. Only presets that a listener would still call
# that instrument: no viola for violin, no piccolo for flute, no pizzicato or tremolo strings.
TRAIN_PROGRAMS: dict[int, tuple[int, ...]] = {1: (1, 2)}  # Acoustic Grand, Bright Acoustic
HELDOUT_PROGRAMS: dict[int, tuple[int, ...]] = {1: (3,), 41: (111,)}  # Electric Grand; Fiddle
RENDERED_CLASS: dict[int, int] = {
    rendered: label for table in (TRAIN_PROGRAMS, HELDOUT_PROGRAMS) for label, progs in table.items()
    for rendered in progs
}
"""Rendered GM program -> the MusicNet class it is labelled as."""


@dataclass(frozen=True)
class Ranges:
    """Where a family's random draws come from (uniform; dB and seconds)."""

    low_shelf_db: tuple[float, float]  # training: signed; held-out: a magnitude, signed against the high shelf
    high_shelf_db: tuple[float, float]  # a magnitude; the sign is drawn
    reverb_seconds: tuple[float, float]
    reverb_db: tuple[float, float]
    dry_probability: float


TRAIN_RANGES = Ranges(low_shelf_db=(-4.0, 4.0), high_shelf_db=(0.0, 4.0), reverb_seconds=(0.15, 0.6),
                      reverb_db=(-22.0, -12.0), dry_probability=0.25)
HELDOUT_RANGES = Ranges(low_shelf_db=(2.0, 5.0), high_shelf_db=(6.0, 9.0), reverb_seconds=(0.8, 1.2),
                        reverb_db=(-14.0, -8.0), dry_probability=0.0)
# Shared by both families: none of these makes a timbre unseen on its own.
GAIN_DB = (-9.0, 0.0)
DETUNE_CENTS = (-8.0, 8.0)
VELOCITY_SCALE = (0.8, 1.2)
VELOCITY_OFFSET = (-8, 8)


@dataclass(frozen=True)
class Timbre:
    """One recording's sound. ``programs`` lists (label program, rendered program) pairs that differ."""

    soundfont: int = 0  # index into the build's soundfonts: training ones first, then held-out ones
    programs: tuple[tuple[int, int], ...] = ()
    velocity_scale: float = 1.0  # velocities are stretched around 64 by this, then shifted by velocity_offset
    velocity_offset: int = 0
    gain_db: float = 0.0  # after peak normalisation to -1 dBFS, so never above it
    low_shelf_db: float = 0.0
    high_shelf_db: float = 0.0
    reverb_seconds: float = 0.0  # RT60; 0 is dry
    reverb_db: float = 0.0  # wet level relative to the dry signal
    reverb_seed: int = 0
    detune_cents: float = 0.0
    heldout: bool = False

    def program_for(self, label_program: int) -> int:
        return dict(self.programs).get(label_program, label_program)

    def velocity(self, velocity: int) -> int:
        return int(np.clip(round(64 + (velocity - 64) * self.velocity_scale) + self.velocity_offset, 1, 127))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["programs"] = {str(a): b for a, b in self.programs}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Timbre:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["programs"] = tuple(sorted((int(a), int(b)) for a, b in dict(d.get("programs", {})).items()))
        return cls(**kw)


REFERENCE = Timbre()
"""Rendering 0 of every piece: the soundfont's own presets, the score's velocities, no effects."""


def _round(x: float) -> float:
    return round(float(x), 2)  # short, exact JSON; the audio is rendered from the rounded value


def draw_timbre(rng: np.random.Generator, label_programs: set[int], available: frozenset[int], soundfont: int,
                heldout: bool) -> Timbre:
    """A random timbre of the training or held-out family for a piece whose labels use ``label_programs``.

    ``available`` holds the GM programs the chosen soundfont has; a variant it lacks is not drawn (a held-out
    timbre then keeps the class's own program and differs by soundfont and effects).
    """
    table = HELDOUT_PROGRAMS if heldout else TRAIN_PROGRAMS
    programs = []
    for label in sorted(label_programs):
        options = [p for p in table.get(label, ()) if p in available]
        if not heldout:
            options = sorted(set(options) | {label})
        if options:
            chosen = int(options[int(rng.integers(len(options)))])
            if chosen != label:
                programs.append((label, chosen))
    r = HELDOUT_RANGES if heldout else TRAIN_RANGES
    sign = 1.0 if rng.random() < 0.5 else -1.0
    high = sign * rng.uniform(*r.high_shelf_db)
    low = -sign * rng.uniform(*r.low_shelf_db) if heldout else rng.uniform(*r.low_shelf_db)
    dry = rng.random() < r.dry_probability
    return Timbre(
        soundfont=soundfont, programs=tuple(programs),
        velocity_scale=_round(rng.uniform(*VELOCITY_SCALE)),
        velocity_offset=int(rng.integers(VELOCITY_OFFSET[0], VELOCITY_OFFSET[1] + 1)),
        gain_db=_round(rng.uniform(*GAIN_DB)), low_shelf_db=_round(low), high_shelf_db=_round(high),
        reverb_seconds=0.0 if dry else _round(rng.uniform(*r.reverb_seconds)),
        reverb_db=0.0 if dry else _round(rng.uniform(*r.reverb_db)),
        reverb_seed=int(rng.integers(2 ** 31)), detune_cents=_round(rng.uniform(*DETUNE_CENTS)), heldout=heldout,
    )


def in_training_family(t: Timbre, n_train_soundfonts: int) -> bool:
    """True when ``t`` lies inside the training ranges (what every training recording must satisfy)."""
    return (not t.heldout and t.soundfont < n_train_soundfonts
            and all(p not in HELDOUT_PROGRAMS.get(label, ()) for label, p in t.programs)
            and abs(t.high_shelf_db) <= TRAIN_RANGES.high_shelf_db[1]
            and t.reverb_seconds <= TRAIN_RANGES.reverb_seconds[1])


# --- the sidecar ------------------------------------------------------------------------------------------------

def timbre_json(records: list[dict], soundfonts: list[dict], n_train_soundfonts: int) -> str:
    """The sidecar's text. ``records``: one dict per recording (id, piece, rendering, split, heldout, timbre)."""
    return json.dumps({
        "format": "jtm-synth-timbre", "version": 1, "soundfonts": soundfonts,
        "n_train_soundfonts": n_train_soundfonts, "recordings": sorted(records, key=lambda r: r["id"]),
    }, indent=1) + "\n"


def read_recordings(root: str | Path) -> dict[int, dict]:
    """Recording id -> its record (piece, rendering, split, heldout, timbre as a :class:`Timbre`).

    An empty dict when ``root`` has no :data:`TIMBRE_FILE` (a corpus built with one timbre, or not by jtm).
    Raises :class:`DataError` naming the file when it is not a timbre sidecar.
    """
    path = Path(root) / TIMBRE_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != "jtm-synth-timbre":
            raise ValueError("not a jtm-synth-timbre file")
        out = {}
        for rec in doc["recordings"]:
            out[int(rec["id"])] = {**rec, "id": int(rec["id"]), "piece": int(rec["piece"]),
                                   "heldout": bool(rec["heldout"]), "timbre": Timbre.from_dict(rec["timbre"])}
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(path, f"unreadable timbre sidecar ({type(e).__name__}: {e})") from None


def heldout_timbre_ids(root: str | Path) -> set[int]:
    """Ids of the recordings rendered with a held-out timbre (all in test_data/; empty without a sidecar)."""
    return {i for i, rec in read_recordings(root).items() if rec["heldout"]}


def piece_of(root: str | Path) -> dict[int, int]:
    """Recording id -> id of the piece it renders (its rendering 0). Keep one piece's recordings together when
    carving a validation set from train_data/. Empty without a sidecar, where every recording is its own piece."""
    return {i: rec["piece"] for i, rec in read_recordings(root).items()}

"""Which scores of music21's bundled corpus the synth corpus uses, and how each is orchestrated.

Everything here is decided *without parsing a score*: the plan (an ordered list of :class:`PieceSpec`) depends only
on the seed and on which files music21 ships, so a build can stop parsing as soon as it has enough minutes and the
ids of a plan's prefix never change when ``minutes`` grows.

Metadata (composer, composition, catalogue number) is curated here rather than read from the scores: the bundled
files' own metadata is patchy (many have no composer or title), and keeping it out of the scores lets a resumed build
write the metadata table without re-parsing pieces that are already rendered.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# GM programs, 1-based as in MusicNet's labels (see jtm.data.instruments.MUSICNET_INSTRUMENTS).
PIANO, HARPSICHORD, VIOLIN, VIOLA, CELLO, CONTRABASS = 1, 7, 41, 42, 43, 44
HORN, OBOE, BASSOON, CLARINET, FLUTE = 61, 69, 71, 72, 74

FIRST_ID = 1000
"""Ids are ``FIRST_ID + position in the plan``: four digits, like MusicNet's, and stable for a given seed."""

SOURCE = "music21 corpus"


@dataclass(frozen=True)
class PieceSpec:
    """One planned piece: which score, how to orchestrate it, and its metadata row.

    ``voices`` gives, for the score's parts in order (or for the soprano/alto/tenor/bass parts of a chorale when
    ``satb``), the GM programs that play that part: an empty tuple drops the part, two programs double it.
    Parts beyond ``voices`` are played by ``default_program`` (or dropped when it is None).
    """

    id: int
    corpus_path: str
    composer: str
    composition: str
    movement: str
    ensemble: str
    catalog_name: str
    voices: tuple[tuple[int, ...], ...]
    default_program: int | None = None
    satb: bool = False
    default_qpm: float = 100.0


# --- The original (not re-orchestrated) works --------------------------------------------------------------------

_QUARTET = ((VIOLIN,), (VIOLIN,), (VIOLA,), (CELLO,))

# (corpus folder, movements, composer, composition, catalogue). Movement names are generic ("Movement 2") because
# the files carry no reliable tempo headings.
_QUARTET_WORKS: tuple[tuple[str, int, str, str, str], ...] = (
    ("beethoven/opus18no1", 4, "Beethoven", "String Quartet No 1 in F major", "Op. 18 No. 1"),
    ("beethoven/opus59no1", 4, "Beethoven", "String Quartet No 7 in F major, Razumovsky 1", "Op. 59 No. 1"),
    ("beethoven/opus59no2", 4, "Beethoven", "String Quartet No 8 in E minor, Razumovsky 2", "Op. 59 No. 2"),
    ("beethoven/opus59no3", 4, "Beethoven", "String Quartet No 9 in C major, Razumovsky 3", "Op. 59 No. 3"),
    ("mozart/k80", 4, "Mozart", "String Quartet No 1 in G major", "K. 80"),
    ("mozart/k155", 3, "Mozart", "String Quartet No 2 in D major", "K. 155"),
    ("mozart/k156", 4, "Mozart", "String Quartet No 3 in G major", "K. 156"),
    ("mozart/k458", 4, "Mozart", "String Quartet No 17 in B-flat major, Hunt", "K. 458"),
    ("haydn/opus1no1", 5, "Haydn", "String Quartet in B-flat major", "Op. 1 No. 1"),
    ("haydn/opus74no1", 4, "Haydn", "String Quartet in C major", "Op. 74 No. 1"),
    ("schumann_robert/opus41no1", 5, "Schumann", "String Quartet No 1 in A minor", "Op. 41 No. 1"),
)
# Left out on purpose: beethoven/opus132, opus133, opus18no3-5 and opus74 hold whole quartets in one file and take
# 6-13 s each to parse, which alone would blow the build's time budget for a 60 s excerpt.

# (corpus path, composer, composition, movement, catalogue, ensemble, voices, default program)
_OTHER_WORKS: tuple[tuple[str, str, str, str, str, str, tuple[tuple[int, ...], ...], int | None], ...] = (
    ("mozart/k545/movement1_exposition.mxl", "Mozart", "Piano Sonata No 16 in C major",
     "1. Allegro (exposition)", "K. 545", "Solo Piano", (), PIANO),
    ("joplin/maple_leaf_rag.mxl", "Joplin", "Maple Leaf Rag", "Maple Leaf Rag", "", "Solo Piano", (), PIANO),
    ("chopin/mazurka06-2.krn", "Chopin", "Mazurka in C-sharp minor", "Mazurka", "Op. 6 No. 2", "Solo Piano",
     (), PIANO),
    ("cpebach/h186.mxl", "C.P.E. Bach", "Keyboard Sonata in A major", "2. Poco adagio", "H. 186, Wq. 55/4",
     "Solo Piano", (), PIANO),
    *(
        (f"schumann_clara/polonaise_op1n{n}.mxl", "Clara Schumann", "Quatre Polonaises, Op. 1", f"No. {n}",
         f"Op. 1 No. {n}", "Solo Piano", (), PIANO)
        for n in (1, 2, 3, 4)
    ),
    ("schumann_clara/opus17/movement3.xml", "Clara Schumann", "Piano Trio in G minor", "3. Andante", "Op. 17",
     "Piano Trio", ((VIOLIN,), (CELLO,)), PIANO),
    ("weber/concertino_clarinet.mxl", "Weber", "Clarinet Concertino in E-flat major", "Concertino", "Op. 26",
     "Accompanied Clarinet", ((CLARINET,),), PIANO),
    # Trio sonata: the continuo (violone e organo) line on harpsichord doubled by contrabass, as a continuo
    # group would play it.
    ("corelli/opus3no1/1grave.xml", "Corelli", "Trio Sonata in F major", "1. Grave", "Op. 3 No. 1",
     "Violins and Continuo", ((VIOLIN,), (VIOLIN,), (HARPSICHORD, CONTRABASS)), None),
    # Songs: the voice part is re-orchestrated for a string instrument, and labelled as an arrangement.
    ("schubert/Lindenbaum.xml", "Schubert", "Winterreise: Der Lindenbaum (arr. for violin and piano)",
     "5. Der Lindenbaum", "D. 911 No. 5", "Accompanied Violin", ((VIOLIN,),), PIANO),
    ("handel/rinaldo/Lascia_chio_pianga.mxl", "Handel", "Rinaldo: Lascia ch'io pianga (arr. for cello and piano)",
     "Lascia ch'io pianga", "HWV 7", "Accompanied Cello", ((CELLO,),), PIANO),
)

# --- Bach chorales, re-orchestrated ------------------------------------------------------------------------------

# ensemble -> (how the arrangement is described, programs for soprano, alto, tenor, bass)
CHORALE_ARRANGEMENTS: dict[str, tuple[str, tuple[tuple[int, ...], ...]]] = {
    "Solo Piano": ("piano", ((PIANO,), (PIANO,), (PIANO,), (PIANO,))),
    "String Quartet": ("string quartet", _QUARTET),
    # Four voices, five players: the horn doubles the tenor, as wind-quintet chorale settings often do.
    "Wind Quintet": ("wind quintet", ((FLUTE,), (OBOE,), (CLARINET, HORN), (BASSOON,))),
    "Accompanied Violin": ("violin and piano", ((VIOLIN,), (PIANO,), (PIANO,), (PIANO,))),
    "Accompanied Cello": ("cello and piano", ((PIANO,), (PIANO,), (PIANO,), (CELLO,))),
    "Piano Trio": ("piano trio", ((VIOLIN,), (PIANO,), (PIANO,), (CELLO,))),
    "Violin and Harpsichord": ("violin and harpsichord", ((VIOLIN,), (HARPSICHORD,), (HARPSICHORD,), (HARPSICHORD,))),
    "Solo Violin": ("solo violin, soprano line", ((VIOLIN,), (), (), ())),
    "Solo Cello": ("solo cello, bass line", ((), (), (), (CELLO,))),
}

# A deck of arrangements dealt in seeded order, reshuffled each pass: every stretch of ~20 chorales then holds
# roughly MusicNet's mix (piano-heavy, then strings, winds, accompanied strings), which a plain weighted draw
# would not guarantee for a small corpus.
_CHORALE_DECK: tuple[tuple[str, int], ...] = (
    ("Solo Piano", 5), ("String Quartet", 3), ("Wind Quintet", 3), ("Accompanied Violin", 2),
    ("Accompanied Cello", 2), ("Piano Trio", 2), ("Violin and Harpsichord", 1), ("Solo Violin", 1),
    ("Solo Cello", 1),
)

# Share of plan slots drawn from each stream (renormalised once a stream runs out).
_STREAM_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("chorale", 0.45), ("quartet", 0.33), ("piano", 0.13), ("other", 0.09),
)

_CHORALE_FILE = re.compile(r"bwv(\d+)(?:\.(\d+))?\.mxl")


def transcriber(soundfont_name: str) -> str:
    """The metadata's transcriber column: who made the audio and labels."""
    return f"jtm synth ({soundfont_name})"


def _corpus_dir() -> Path:
    from music21 import common

    return Path(common.getCorpusFilePath())


def _chorale_files(corpus_dir: Path) -> list[tuple[str, str, str | None]]:
    """(corpus path, BWV number, movement number) of each plain chorale file, in a fixed (numeric) order.

    Variant files (``bwv18.5-lz.mxl``, ``-inst``, ...) are skipped: they duplicate a chorale we already have.
    """
    found = []
    for p in (corpus_dir / "bach").glob("bwv*.mxl"):
        m = _CHORALE_FILE.fullmatch(p.name)
        if m:
            found.append((f"bach/{p.name}", m.group(1), m.group(2)))
    # Sort numerically so the order does not depend on the file system's listing order.
    found.sort(key=lambda t: (int(t[1]), int(t[2] or 0)))
    return found


def _chorale_spec(path: str, bwv: str, number: str | None, ensemble: str) -> PieceSpec:
    described, voices = CHORALE_ARRANGEMENTS[ensemble]
    catalog = f"BWV {bwv}" + (f".{number}" if number else "")
    return PieceSpec(
        id=0, corpus_path=path, composer="Bach", composition=f"Chorale {catalog} (arr. for {described})",
        movement="Chorale", ensemble=ensemble, catalog_name=catalog, voices=voices, satb=True, default_qpm=90.0,
    )


def make_plan(seed: int, corpus_dir: Path | None = None) -> list[PieceSpec]:
    """Every candidate piece in the order a build with this seed takes them; ids are assigned by position.

    Four streams (chorales, quartet movements, piano pieces, other works) are each shuffled, then interleaved by a
    seeded weighted draw, so that any prefix mixes composers and ensembles.
    """
    corpus_dir = _corpus_dir() if corpus_dir is None else corpus_dir
    rng = np.random.default_rng([seed, 0x5E7])

    quartets = [
        PieceSpec(0, f"{folder}/movement{m}.mxl", composer, composition, f"Movement {m}", "String Quartet",
                  catalog, _QUARTET)
        for folder, n, composer, composition, catalog in _QUARTET_WORKS
        for m in range(1, n + 1)
    ]
    others = [
        PieceSpec(0, path, composer, composition, movement, ensemble, catalog or path, voices, default)
        for path, composer, composition, movement, catalog, ensemble, voices, default in _OTHER_WORKS
    ]
    streams: dict[str, list[PieceSpec]] = {
        "quartet": [s for s in quartets if (corpus_dir / s.corpus_path).is_file()],
        "piano": [s for s in others if s.ensemble == "Solo Piano" and (corpus_dir / s.corpus_path).is_file()],
        "other": [s for s in others if s.ensemble != "Solo Piano" and (corpus_dir / s.corpus_path).is_file()],
    }
    chorales = _chorale_files(corpus_dir)
    deck = [name for name, count in _CHORALE_DECK for _ in range(count)]
    arrangements: list[str] = []
    while len(arrangements) < len(chorales):
        arrangements.extend(deck[i] for i in rng.permutation(len(deck)))
    chorale_order = rng.permutation(len(chorales))
    streams["chorale"] = [
        _chorale_spec(*chorales[int(i)], arrangements[k]) for k, i in enumerate(chorale_order)
    ]
    for name in ("quartet", "piano", "other"):
        order = rng.permutation(len(streams[name]))
        streams[name] = [streams[name][int(i)] for i in order]

    plan: list[PieceSpec] = []
    cursors = {name: 0 for name, _ in _STREAM_WEIGHTS}
    while True:
        live = [(name, w) for name, w in _STREAM_WEIGHTS if cursors[name] < len(streams[name])]
        if not live:
            break
        weights = np.array([w for _, w in live])
        name = live[int(rng.choice(len(live), p=weights / weights.sum()))][0]
        spec = streams[name][cursors[name]]
        cursors[name] += 1
        plan.append(_with_id(spec, FIRST_ID + len(plan)))
    return plan


def _with_id(spec: PieceSpec, piece_id: int) -> PieceSpec:
    from dataclasses import replace

    return replace(spec, id=piece_id)

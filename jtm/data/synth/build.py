"""``build_corpus``: a MusicNet-layout corpus rendered from music21's bundled scores.

Two phases, both in a process pool:

1. *notes*: workers parse scores in plan order and return humanised note lists; the main process keeps the shortest
   plan prefix whose audio reaches ``minutes`` (speculatively parsed pieces past it are dropped), so the chosen
   pieces do not depend on worker timing;
2. *render*: once the set of pieces and the train/test split are fixed, workers render and write each recording
   (a piece rendered with one timbre; see :mod:`jtm.data.synth.timbre`).

The metadata table is written last. Every random choice comes from numpy Generators seeded by the seed (and the
piece id), so equal arguments give byte-identical folders.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import multiprocessing
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from jtm.data.synth.catalogue import SOURCE, PieceSpec, make_plan, transcriber
from jtm.data.synth.render import available_programs, check_soundfont, render, write_piece
from jtm.data.synth.score import SYNTH_RATE, PieceNotes, extract_notes, parse_score
from jtm.data.synth.timbre import REFERENCE, RENDERED_CLASS, TIMBRE_FILE, Timbre, draw_timbre, timbre_json
from jtm.data.store import HELDOUT_TIMBRE, TIMBRE_COLUMN
from jtm.errors import DataError
from jtm.fileio import write_text_atomic
from jtm.hardware import usable_cpus
from jtm.workers import die_with_parent

log = logging.getLogger(__name__)

METADATA_COLUMNS = ("id", "composer", "composition", "movement", "ensemble", "source", "transcriber",
                    "catalog_name", "seconds")
SETTINGS_FILE = "jtm_synth.json"
SPLITS = ("train", "test")
RENDERING_ID_STRIDE = 10_000
"""Recording ids: rendering r of piece p is ``p + r * RENDERING_ID_STRIDE`` (rendering 0 keeps the piece's id)."""
_LAYOUT = ("train_data", "test_data", "train_labels", "test_labels", "musicnet_metadata.csv")


@dataclass
class CorpusSummary:
    """What a build produced (``seconds_elapsed`` is wall-clock and the only non-deterministic field)."""

    out: str
    n_pieces: int
    n_train: int
    n_test: int
    seconds: float
    seconds_elapsed: float
    ensembles: dict[str, int] = field(default_factory=dict)
    composers: dict[str, int] = field(default_factory=dict)
    n_recordings: int = 0  # pieces x renderings, plus one held-out-timbre rendering per test piece
    n_heldout: int = 0  # recordings with a held-out timbre (all in test_data/)
    recording_seconds: float = 0.0  # audio in all recordings; ``seconds`` counts each piece once

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Piece:
    spec: PieceSpec
    seconds: float
    notes: PieceNotes | None  # None when the piece was already on disk (resumed build)


@dataclass(frozen=True)
class _Recording:
    id: int
    piece: _Piece
    rendering: int
    split: str
    timbre: Timbre


# --- worker-side ------------------------------------------------------------------------------------------------

def _notes_task(spec: PieceSpec, seed: int, max_seconds: float) -> PieceNotes | str:
    """Parse + humanise one piece; a string is the reason the score is unusable (it is skipped, not fatal)."""
    try:
        with warnings.catch_warnings():
            # music21 warns about irregular measures in several bundled files; it is noise to a corpus user.
            warnings.simplefilter("ignore")
            score = parse_score(spec.corpus_path)
            return extract_notes(score, spec, seed=seed, max_seconds=max_seconds)
    except Exception as e:  # a bundled score music21 cannot read or that has nothing playable
        return f"{type(e).__name__}: {e}"


def _render_task(spec: PieceSpec, notes: PieceNotes | None, seed: int, max_seconds: float, soundfont: str,
                 timbre: Timbre, wav_path: str, csv_path: str) -> int:
    if notes is None:  # files were found in the wrong split: rebuild the same notes from the seed
        result = _notes_task(spec, seed, max_seconds)
        if isinstance(result, str):
            raise RuntimeError(f"{spec.corpus_path}: {result}")
        notes = result
    audio = render(notes, Path(soundfont), timbre)
    write_piece(notes, audio, Path(wav_path), Path(csv_path))
    return spec.id


# --- main-process side ------------------------------------------------------------------------------------------

def _paths(out: Path, split: str, piece_id: int) -> tuple[Path, Path]:
    return out / f"{split}_data" / f"{piece_id}.wav", out / f"{split}_labels" / f"{piece_id}.csv"


def _frames(wav: Path) -> int | None:
    """Length of a WAV written by an earlier run, or None when it is missing or unreadable (render it again)."""
    try:
        return sf.info(str(wav)).frames if wav.is_file() else None
    except Exception:
        return None


def _existing_seconds(out: Path, piece_id: int) -> tuple[str, float] | None:
    """(split, seconds) of a piece already written by an earlier run with the same settings, else None."""
    for split in SPLITS:
        wav, lab = _paths(out, split, piece_id)
        if wav.is_file() and lab.is_file():
            frames = _frames(wav)
            return None if frames is None else (split, frames / SYNTH_RATE)
    return None


def _settings(*, minutes: float, max_seconds: float, test_fraction: float, seed: int, soundfonts: list[Path],
              heldout_soundfonts: list[Path], renderings: int, heldout: bool) -> str:
    """The settings marker's text. With one soundfont and one rendering it is exactly what it was before timbres
    varied, so such corpora (and resumes of them) stay byte-identical."""
    import json

    def described(paths: list[Path]) -> list[dict[str, str]]:
        return [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in paths]

    fonts = described(soundfonts)
    settings: dict[str, Any] = {
        "format": "jtm-synth", "version": 1, "minutes": minutes, "max_seconds": max_seconds,
        "test_fraction": test_fraction, "seed": seed, "soundfont": fonts[0]["name"],
        "soundfont_sha256": fonts[0]["sha256"],
    }
    if _varies_timbre(soundfonts, renderings, heldout):
        settings.update(renderings=renderings, heldout_timbre=heldout, soundfonts=fonts,
                        heldout_soundfonts=described(heldout_soundfonts))
    return json.dumps(settings, indent=2) + "\n"


def _varies_timbre(soundfonts: list[Path], renderings: int, heldout: bool) -> bool:
    return len(soundfonts) > 1 or renderings > 1 or heldout


def _prepare_out(out: Path, settings: str) -> None:
    """Claim ``out`` for this build, refusing folders that hold another corpus (or one built differently)."""
    marker = out / SETTINGS_FILE
    if marker.is_file():
        if marker.read_text(encoding="utf-8") != settings:
            raise DataError(marker, "this folder holds a synth corpus built with other settings; "
                                    "use a new output folder, or the same settings to resume")
    elif out.exists() and any((out / name).exists() for name in _LAYOUT):
        raise DataError(out, "folder already holds a MusicNet-layout corpus not made by `jtm data synth`; "
                             "refusing to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, settings)
    # Temporary files of a killed run (atomic_path names them '.<name>.<random>.tmp') would be litter.
    for name in _LAYOUT[:4]:
        folder = out / name
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink()


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers do not inherit the caller's threads (tqdm, torch), and preloading music21 in the server
    # makes each worker start without re-importing it.
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["music21", "jtm.data.synth.build"])
    else:
        ctx = multiprocessing.get_context("spawn")
    # die_with_parent: a SIGKILLed command (synth, demo) must not leave its workers behind.
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent,
                               initargs=(os.getpid(),))


def _choose_pieces(pool: ProcessPoolExecutor, plan: list[PieceSpec], out: Path, *, target: float, seed: int,
                   max_seconds: float, workers: int, progress: bool) -> list[_Piece]:
    """The shortest plan prefix (skipping unusable scores) whose audio adds up to ``target`` seconds."""
    from tqdm.auto import tqdm

    chosen: list[_Piece] = []
    total = 0.0
    in_flight: dict[int, Future | tuple[str, float]] = {}
    next_submit = 0
    depth = 2 * workers  # enough queued work to keep every worker busy, little wasted past the target
    bar = tqdm(total=round(target), unit="s", desc="parsing scores", disable=not progress, leave=False)
    try:
        for i, spec in enumerate(plan):
            if total >= target:
                break
            while next_submit < len(plan) and next_submit < i + depth:
                s = plan[next_submit]
                found = _existing_seconds(out, s.id)
                in_flight[next_submit] = found if found is not None else pool.submit(
                    _notes_task, s, seed, max_seconds)
                next_submit += 1
            job = in_flight.pop(i)
            if isinstance(job, tuple):
                piece = _Piece(spec, job[1], None)
            else:
                result = job.result()
                if isinstance(result, str):
                    log.warning("skipping %s: %s", spec.corpus_path, result)
                    continue
                piece = _Piece(spec, result.n_samples / SYNTH_RATE, result)
            chosen.append(piece)
            total += piece.seconds
            bar.update(min(round(total), round(target)) - bar.n)
    finally:
        bar.close()
        for job in in_flight.values():
            if isinstance(job, Future):
                job.cancel()
    if total < target:
        warnings.warn(f"the music21 corpus gave only {total / 60:.1f} of the {target / 60:.1f} minutes asked for",
                      stacklevel=3)
    return chosen


def split_pieces(pieces: list[tuple[int, str]], test_fraction: float, seed: int) -> dict[int, str]:
    """Assign each (id, ensemble) to 'train' or 'test', stratified by ensemble.

    ``round(test_fraction * n)`` pieces go to test (at least one of each split when n >= 2 and test_fraction > 0).
    Within each ensemble the pieces are ranked in seeded order and piece r of g gets the key (r + 0.5) / g; the
    smallest keys go to test. That is systematic stratified sampling: each ensemble gives test pieces in
    proportion to its size, and the first picks come from different ensembles.
    """
    n = len(pieces)
    n_test = int(round(test_fraction * n))
    if n >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), n - 1)
    rng = np.random.default_rng([seed, 0x7E57])
    groups: dict[str, list[int]] = {}
    for pid, ensemble in sorted(pieces):
        groups.setdefault(ensemble, []).append(pid)
    keyed = []
    for ensemble in sorted(groups):
        ids = groups[ensemble]
        tie = float(rng.random())  # breaks ties between equally sized ensembles without favouring the alphabet
        for rank, i in enumerate(rng.permutation(len(ids))):
            keyed.append(((rank + 0.5) / len(ids), tie, ids[int(i)]))
    keyed.sort()
    test = [pid for _, _, pid in keyed[:n_test]]
    ensemble_of = dict(pieces)
    if n_test >= 2 and len(groups) >= 2 and len({ensemble_of[p] for p in test}) == 1:
        # One dominant ensemble took every test slot: swap the last pick for the best-ranked piece of another
        # ensemble, so an ensemble-level evaluation on test sees more than one class.
        other = next(pid for _, _, pid in keyed if ensemble_of[pid] != ensemble_of[test[0]])
        test[-1] = other
    test_set = set(test)
    return {pid: ("test" if pid in test_set else "train") for pid, _ in pieces}


def _plan_recordings(pieces: list[_Piece], splits: dict[int, str], *, renderings: int, heldout: bool, seed: int,
                     n_train_fonts: int, available: list[frozenset[int]]) -> list[_Recording]:
    """Every recording of every piece: ``renderings`` in the piece's split (rendering 0 with the reference timbre,
    the others drawn from the training family), plus one held-out-timbre rendering of each test piece.

    Soundfonts cycle with piece and rendering; held-out renderings use the held-out soundfonts when there are any.
    Each draw is seeded by (seed, piece, rendering), so a recording does not depend on the others.
    """
    n_heldout_fonts = len(available) - n_train_fonts
    recordings = []
    for p in pieces:
        pid, split = p.spec.id, splits[p.spec.id]
        labels = {prog for voice in p.spec.voices for prog in voice}
        labels |= {p.spec.default_program} if p.spec.default_program is not None else set()
        extra = [True] if heldout and split == "test" else []
        for r, is_heldout in enumerate([False] * renderings + extra):
            if is_heldout and n_heldout_fonts:
                font = n_train_fonts + pid % n_heldout_fonts
            else:
                font = (pid + r) % n_train_fonts
            if r == 0:
                timbre = replace(REFERENCE, soundfont=font)
            else:
                rng = np.random.default_rng([seed, pid, r, 0x71B])
                timbre = draw_timbre(rng, labels, available[font], font, is_heldout)
            recordings.append(_Recording(pid + r * RENDERING_ID_STRIDE, p, r, split, timbre))
    return recordings


def _metadata_csv(recordings: list[_Recording], fonts: list[Path], timbre_column: bool = False) -> str:
    """MusicNet's metadata table; with ``timbre_column``, a last column ``timbre``: ``heldout`` for a held-out-timbre
    recording, else ``rendering<r>``. It travels into the prepared store like any metadata column, which is how
    the study and the report find the held-out-timbre test recordings."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # QUOTE_MINIMAL: titles such as 'Quatre Polonaises, Op. 1' are quoted
    w.writerow(METADATA_COLUMNS + ((TIMBRE_COLUMN,) if timbre_column else ()))
    for rec in sorted(recordings, key=lambda r: r.id):
        s = rec.piece.spec
        row = (rec.id, s.composer, s.composition, s.movement, s.ensemble, SOURCE,
               transcriber(fonts[rec.timbre.soundfont].stem), s.catalog_name, int(round(rec.piece.seconds)))
        if timbre_column:
            row += (HELDOUT_TIMBRE if rec.timbre.heldout else f"rendering{rec.rendering}",)
        w.writerow(row)
    return buf.getvalue()


def _timbre_sidecar(recordings: list[_Recording], fonts: list[Path], n_train_fonts: int) -> str:
    records = [{"id": r.id, "piece": r.piece.spec.id, "rendering": r.rendering, "split": r.split,
                "heldout": r.timbre.heldout, "soundfont": fonts[r.timbre.soundfont].name,
                "timbre": r.timbre.to_dict()} for r in recordings]
    names = [{"name": f.name, "heldout": i >= n_train_fonts} for i, f in enumerate(fonts)]
    return timbre_json(records, names, n_train_fonts)


def _check_options(minutes: float, max_seconds: float, test_fraction: float, workers: int | None,
                   renderings: int) -> int:
    """Validate the numeric options (ValueError, for the CLI to show as a bad parameter); the worker count."""
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"minutes must be a positive number, got {minutes}")
    if not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise ValueError(f"max_seconds must be a positive number, got {max_seconds}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 1 <= renderings <= 9:  # ids stay below 100000 (five digits)
        raise ValueError(f"renderings must be between 1 and 9, got {renderings}")
    workers = usable_cpus() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def _as_list(soundfont: str | Path | Sequence[str | Path] | None) -> list[str | Path | None]:
    if soundfont is None or isinstance(soundfont, (str, Path)):
        return [soundfont]
    return list(soundfont) or [None]


def build_corpus(out: Path, *, minutes: float = 20.0, max_seconds: float = 60.0, test_fraction: float = 0.15,
                 seed: int = 0, soundfont: str | Path | Sequence[str | Path] | None = None, renderings: int = 1,
                 heldout_timbre: bool | None = None, heldout_soundfont: Sequence[str | Path] = (),
                 workers: int | None = None, progress: bool = True) -> CorpusSummary:
    """Build a MusicNet-layout corpus of about ``minutes`` of music in ``out`` from music21's scores.

    Each piece is an excerpt of at most ``max_seconds`` from the beginning of a score (string quartet movements,
    piano pieces, a piano trio, a clarinet concertino, a trio sonata, songs and Bach chorales arranged for several
    MusicNet ensembles), humanised and rendered with ``soundfont`` (one path or several; default: pretty_midi's
    TimGM6mb.sf2). ``test_fraction`` of the pieces go to ``test_*`` (stratified by ensemble).

    Each piece is rendered ``renderings`` times, each a recording with its own id and timbre (see
    :mod:`jtm.data.synth.timbre`), all in the piece's split. With ``heldout_timbre`` (default: when
    ``renderings > 1`` or ``heldout_soundfont`` is given) every test piece gets one more recording with a held-out
    timbre that no training recording uses; ``heldout_soundfont`` files are used for those recordings only.
    Timbres are recorded in ``jtm_timbre.json`` (read it with :func:`~jtm.data.synth.timbre.heldout_timbre_ids`).

    Re-running with the same arguments into the same folder skips recordings already written and ends
    byte-identical to a fresh build. Raises :class:`DataError` for a bad soundfont or an output folder holding
    something else.
    """
    t0 = time.perf_counter()
    out = Path(out)
    workers = _check_options(minutes, max_seconds, test_fraction, workers, renderings)
    heldout = (renderings > 1 or bool(heldout_soundfont)) if heldout_timbre is None else bool(heldout_timbre)
    if heldout_soundfont and not heldout:
        raise ValueError("heldout_soundfont is only used by held-out-timbre renderings, which are switched off")
    fonts = [check_soundfont(f).resolve() for f in _as_list(soundfont)]
    heldout_fonts = [check_soundfont(f).resolve() for f in heldout_soundfont]
    _prepare_out(out, _settings(minutes=minutes, max_seconds=max_seconds, test_fraction=test_fraction, seed=seed,
                                soundfonts=fonts, heldout_soundfonts=heldout_fonts, renderings=renderings,
                                heldout=heldout))
    all_fonts = fonts + heldout_fonts
    available = [available_programs(f, set(RENDERED_CLASS)) for f in all_fonts]

    plan = make_plan(seed)
    with _pool(workers) as pool:
        pieces = _choose_pieces(pool, plan, out, target=minutes * 60.0, seed=seed, max_seconds=max_seconds,
                                workers=workers, progress=progress)
        splits = split_pieces([(p.spec.id, p.spec.ensemble) for p in pieces], test_fraction, seed)
        recordings = _plan_recordings(pieces, splits, renderings=renderings, heldout=heldout, seed=seed,
                                      n_train_fonts=len(fonts), available=available)
        _render_all(pool, recordings, out, all_fonts, seed=seed, max_seconds=max_seconds, progress=progress)

    varies = _varies_timbre(fonts, renderings, heldout)
    if varies:
        write_text_atomic(out / TIMBRE_FILE, _timbre_sidecar(recordings, all_fonts, len(fonts)))
    write_text_atomic(out / "musicnet_metadata.csv", _metadata_csv(recordings, all_fonts, timbre_column=varies))
    counts_e = Counter(p.spec.ensemble for p in pieces)
    counts_c = Counter(p.spec.composer for p in pieces)
    n_test = sum(1 for s in splits.values() if s == "test")
    return CorpusSummary(
        out=str(out), n_pieces=len(pieces), n_train=len(pieces) - n_test, n_test=n_test,
        seconds=float(sum(p.seconds for p in pieces)), seconds_elapsed=time.perf_counter() - t0,
        ensembles=dict(sorted(counts_e.items(), key=lambda kv: (-kv[1], kv[0]))),
        composers=dict(sorted(counts_c.items(), key=lambda kv: (-kv[1], kv[0]))),
        n_recordings=len(recordings), n_heldout=sum(r.timbre.heldout for r in recordings),
        recording_seconds=float(sum(r.piece.seconds for r in recordings)),
    )


def _render_all(pool: ProcessPoolExecutor, recordings: list[_Recording], out: Path, fonts: list[Path], *,
                seed: int, max_seconds: float, progress: bool) -> None:
    """Render every recording not already on disk in its split (removing any copy left in the other split)."""
    from tqdm.auto import tqdm

    jobs = []
    for rec in recordings:
        wav, lab = _paths(out, rec.split, rec.id)
        if lab.is_file() and _frames(wav) is not None:
            continue  # resumed build: already rendered into the right split
        other = "test" if rec.split == "train" else "train"
        for stale in _paths(out, other, rec.id):
            stale.unlink(missing_ok=True)
        jobs.append(pool.submit(_render_task, rec.piece.spec, rec.piece.notes, seed, max_seconds,
                                str(fonts[rec.timbre.soundfont]), rec.timbre, str(wav), str(lab)))
    for job in tqdm(jobs, desc="rendering", unit="recording", disable=not progress, leave=False):
        job.result()

"""Build the prepared store: decode + resample every track to 16 kHz int16, pack shards, write tables.

Stages (each restartable):
1. ``STORE/.work/<safe-id>.npy`` (int16 audio), ``.notes.npz`` and ``.json`` (written last, the marker
   that the track is done) per track, in a process pool. A re-run reuses finished work files whose
   source size and mtime still match.
2. Shards ``STORE/shards/NNNNN.npy``, ``tracks.csv``, ``notes.npz``, each written under a temporary
   name and renamed; ``store.json`` last. ``.work/`` is removed after success.

``store.json`` of an existing store is deleted before anything is rewritten, so an interrupted
(re)build never leaves a folder that ``Store.open`` accepts. When ``store.json`` is complete and the
hashed source listing (paths, sizes, mtimes and the settings) matches, nothing is done.
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from contextlib import closing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from jtm.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, load_audio
from jtm.configs import DEFAULT_WINDOW
from jtm.data.labels import Notes
from jtm.data.musicnet import (
    LABEL_SAMPLE_RATE,
    OnError,
    Skipped,
    TrackSource,
    check_on_error,
    convert_notes,
    read_labels,
    read_source,
    report,
)
from jtm.data.store import CORE_COLUMNS, STORE_FORMAT, STORE_VERSION, read_store_json
from jtm.errors import DataError
from jtm.fileio import (
    FolderNotWritableError,
    atomic_path,
    folder_lock,
    load_npy,
    save_npy_atomic,
    write_json_atomic,
)
from jtm.hardware import usable_cpus
from jtm.workers import die_with_parent

MIN_SECONDS = DEFAULT_WINDOW / SAMPLE_RATE
"""Default shortest usable track: one default training window at 16 kHz (1.28 s)."""
SILENCE_PEAK = 1e-4
"""A track whose peak amplitude stays below this (-80 dBFS) is silent: useless for pretraining."""

@dataclass
class PrepareSummary:
    """What :func:`prepare_store` did. ``throughput`` is seconds of audio per wall-clock second."""

    n_tracks: int
    n_skipped: int
    skipped: list[tuple[str, str]]
    seconds_of_audio: float
    seconds_elapsed: float
    throughput: float
    up_to_date: bool = False
    store: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [list(s) for s in self.skipped]
        return d


@dataclass
class _Task:
    """One track's decode job; plain data so that it pickles to a spawned worker."""

    index: int
    audio_path: str
    label_path: str | None
    work_stem: str
    signature: list[int]
    min_samples: int
    min_seconds: float


@dataclass
class _Done:
    index: int
    length: int = 0
    n_notes: int = 0
    error: tuple[str, str, int | None] | None = None  # (path, problem, row): DataError does not pickle


def safe_id(ident: str) -> str:
    """A file-system-safe, collision-free stem for a track id (ASCII prefix + hash of the full id)."""
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", ident)[:60].strip("._") or "track"
    digest = hashlib.sha1(ident.encode("utf-8")).hexdigest()[:12]
    return f"{prefix}-{digest}"


def _stat_signature(*paths: Path | None) -> list[int]:
    out: list[int] = []
    for p in paths:
        if p is not None:
            st = p.stat()
            out += [st.st_size, st.st_mtime_ns]
    return out


def _process_track(task: _Task) -> _Done:
    """Decode, validate and convert one track into its work files (runs in a worker process)."""
    try:
        return _process_track_inner(task)
    except DataError as e:
        return _Done(task.index, error=(str(e.path), e.problem, e.row))


def _process_track_inner(task: _Task) -> _Done:
    meta_path = Path(task.work_stem + ".json")
    length = n_notes = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("signature") == task.signature:
                length, n_notes = int(meta["length"]), int(meta["n_notes"])
        except (ValueError, KeyError):
            pass  # a damaged marker: redo the track
    if length is None:
        # Labels first: validating a CSV is much cheaper than decoding audio.
        notes44 = read_labels(task.label_path) if task.label_path else None
        audio, _ = load_audio(task.audio_path, SAMPLE_RATE)
        length = int(audio.shape[0])
        if length >= task.min_samples and float(np.max(np.abs(audio))) < SILENCE_PEAK:
            raise DataError(task.audio_path, "audio is silent (peak below -80 dBFS); silence is useless for training")
        # Scale by 32768 so that int16 PCM sources round-trip exactly (reading divides by 32768).
        pcm = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)
        notes = convert_notes(notes44, LABEL_SAMPLE_RATE, SAMPLE_RATE, length) if notes44 is not None else Notes.empty()
        n_notes = len(notes)
        save_npy_atomic(task.work_stem + ".npy", pcm)
        with atomic_path(task.work_stem + ".notes.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **notes._asdict())
        write_json_atomic(meta_path, {"signature": task.signature, "length": length, "n_notes": n_notes})
    if length < task.min_samples:
        raise DataError(
            task.audio_path,
            f"audio is too short: {length / SAMPLE_RATE:.3f} s, less than min_seconds={task.min_seconds:g} s "
            f"(default: one {DEFAULT_WINDOW}-sample window at {SAMPLE_RATE} Hz)",
        )
    return _Done(task.index, length=length, n_notes=n_notes)


def _fingerprint(src: Path, store: Path, settings: dict[str, Any]) -> str:
    """Hash of the source listing (relative paths, sizes, mtimes of audio and CSV files) and settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    store_resolved = store.resolve()
    for p in sorted(src.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in (*AUDIO_EXTENSIONS, ".csv"):
            continue
        if store_resolved in p.resolve().parents:
            continue
        st = p.stat()
        h.update(f"{p.relative_to(src).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8"))
    return h.hexdigest()


def _run_tasks(tasks: list[_Task], workers: int, progress: bool) -> Iterator[_Done]:
    """Run every task, serially (workers <= 1) or in a process pool, yielding results as they finish.

    Results come back in completion order; the caller decides whether an error stops the run.
    """
    bar = tqdm(total=len(tasks), desc="decoding", unit="track", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1:
            for t in tasks:
                done = _process_track(t)
                bar.update(1)
                yield done
            return
        # spawn, not fork: the parent may hold torch/OpenMP threads, and forking those can deadlock.
        ctx = multiprocessing.get_context("spawn")
        # die_with_parent: a SIGKILLed command must not leave idle workers behind.
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            pending: set[Future[_Done]] = {pool.submit(_process_track, t) for t in tasks}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        bar.update(1)
                        yield fut.result()
            finally:
                for fut in pending:
                    fut.cancel()
    finally:
        bar.close()


def _reserve_space(path: Path) -> None:
    """Allocate the disk blocks of a (sparse) file now, so that a full disk raises ENOSPC here.

    Without this, writing into a memory map of a sparse file on a full disk kills the process with SIGBUS.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # a file system without fallocate: nothing to reserve with
            raise OSError(e.errno, e.strerror, str(path)) from None


def _write_shards(store: Path, lengths: list[int], work_stems: list[str], shard_bytes: int) -> list[tuple[int, int]]:
    """Concatenate the work files into int16 shards of about ``shard_bytes``; return (shard, offset) per track.

    A track larger than ``shard_bytes`` gets a shard of its own; tracks are never split.
    """
    shard_dir = store / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for leftover in shard_dir.glob(".*.tmp"):  # temporaries of an interrupted run
        leftover.unlink()
    placement: list[tuple[int, int]] = []
    groups: list[list[int]] = []
    used = shard_bytes  # forces a new shard for the first track
    for i, n in enumerate(lengths):
        if used + 2 * n > shard_bytes and (not groups or groups[-1]):
            groups.append([])
            used = 0
        placement.append((len(groups) - 1, used // 2))
        groups[-1].append(i)
        used += 2 * n
    for k, members in enumerate(groups):
        total = sum(lengths[i] for i in members)
        with atomic_path(shard_dir / f"{k:05d}.npy") as tmp:
            # Written through a memmap so a shard never needs a second in-memory copy.
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(total,))
            _reserve_space(tmp)
            for i in members:
                _, off = placement[i]
                out[off : off + lengths[i]] = load_npy(work_stems[i] + ".npy")
            out.flush()
            del out
    for old in shard_dir.glob("*.npy"):  # shards of a previous, larger build
        if not re.fullmatch(r"\d{5}", old.stem) or int(old.stem) >= len(groups):
            old.unlink()
    return placement


def _tracks_table(src: Path, tracks: list[TrackSource], lengths: list[int], placement: list[tuple[int, int]]) -> pd.DataFrame:
    meta_cols: list[str] = []
    for t in tracks:
        meta_cols += [c for c in t.metadata if c not in meta_cols]
    rows = []
    for t, n, (shard, offset) in zip(tracks, lengths, placement):
        row: dict[str, Any] = {
            "id": t.id,
            "split": t.split,
            "shard": shard,
            "offset": offset,
            "length": n,
            "path": t.audio_path.relative_to(src).as_posix(),
        }
        for c in meta_cols:
            # A metadata column that shares a core column's name is kept under a prefixed name.
            row[f"meta_{c}" if c in CORE_COLUMNS else c] = t.metadata.get(c, "")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(CORE_COLUMNS) + [f"meta_{c}" if c in CORE_COLUMNS else c for c in meta_cols])


def _write_notes(target: Path, work_stems: list[str]) -> int:
    parts = {k: [] for k in ("track", "start", "end", "instrument", "pitch")}
    for i, stem in enumerate(work_stems):
        with np.load(stem + ".notes.npz", allow_pickle=False) as z:
            n = len(z["start"])
            parts["track"].append(np.full(n, i, dtype=np.int32))
            for k in ("start", "end", "instrument", "pitch"):
                parts[k].append(z[k])
    dtypes = {"track": np.int32, "start": np.int64, "end": np.int64, "instrument": np.int16, "pitch": np.int16}
    arrays = {k: np.concatenate(v).astype(dtypes[k]) if v else np.zeros(0, dtypes[k]) for k, v in parts.items()}
    # Per-track notes are sorted by start and tracks are concatenated in order: the table is sorted by (track, start).
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return int(len(arrays["start"]))


def prepare_store(
    src: str | Path,
    store: str | Path,
    *,
    workers: int | None = None,
    on_error: OnError = "raise",
    progress: bool = True,
    shard_mb: float = 64,
    min_seconds: float = MIN_SECONDS,
) -> PrepareSummary:
    """Prepare ``store`` from ``src`` (a MusicNet-layout folder or any folder of audio files).

    ``workers``: decoding processes (None: one per usable CPU, the affinity mask; 1 decodes in this process).
    ``on_error='raise'`` stops at the first bad input with a :class:`DataError` naming the file (and row);
    ``'skip'`` leaves bad inputs out, lists them in the summary and prints them. If every track is bad,
    a ``DataError`` is raised in either mode. Tracks shorter than ``min_seconds`` (default one
    20480-sample window, 1.28 s) and silent tracks are bad inputs.
    """
    t0 = time.perf_counter()
    check_on_error(on_error)
    src, store = Path(src), Path(store)
    if not src.is_dir():
        raise DataError(src, "source folder not found")
    settings = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "sample_rate": SAMPLE_RATE,
        "min_seconds": float(min_seconds),
        "on_error": on_error,
        "shard_mb": float(shard_mb),
    }
    fingerprint = _fingerprint(src, store, settings)
    try:
        # One writer per store: a second prepare into it is refused while this one runs.
        with folder_lock(store):
            done = _up_to_date(store, fingerprint, t0)
            if done is not None:
                # A build killed after writing store.json but before removing its work files left them behind,
                # and every later run finds the store up to date: finish that build's last step here.
                shutil.rmtree(_work_dir(store), ignore_errors=True)
                return done
            return _build_store(src, store, t0, settings, fingerprint, workers=workers, on_error=on_error,
                                        progress=progress, shard_mb=shard_mb, min_seconds=min_seconds)
    except FolderNotWritableError:
        # A store in a read-only folder cannot be locked, but it may well be complete and up to date.
        done = _up_to_date(store, fingerprint, t0)
        if done is None:
            raise
        return done


def _work_dir(store: Path) -> Path:
    """The per-track work files of a build (stage 1); removed once the store is complete."""
    return store / ".work"


def _up_to_date(store: Path, fingerprint: str, t0: float) -> PrepareSummary | None:
    """The summary of a complete store built from the same sources and settings, else None."""
    old = read_store_json(store)
    if old is None or old.get("complete") is not True or old.get("fingerprint") != fingerprint:
        return None
    print(f"{store}: up to date")
    return PrepareSummary(
        n_tracks=int(old.get("n_tracks", 0)),
        n_skipped=int(old.get("n_skipped", 0)),
        skipped=[tuple(s) for s in old.get("skipped", [])],
        seconds_of_audio=float(old.get("seconds_of_audio", 0.0)),
        seconds_elapsed=time.perf_counter() - t0,
        throughput=0.0,
        up_to_date=True,
        store=str(store),
    )


def _build_store(src: Path, store: Path, t0: float, settings: dict[str, Any], fingerprint: str, *,
                 workers: int | None, on_error: OnError, progress: bool, shard_mb: float,
                 min_seconds: float) -> PrepareSummary:
    # From here on the folder is not a valid store until store.json is written again at the very end.
    store.mkdir(parents=True, exist_ok=True)
    (store / "store.json").unlink(missing_ok=True)

    skipped: Skipped = []
    tracks, _ = read_source(src, on_error=on_error, skipped=skipped, exclude=store)
    if not tracks and not skipped:
        raise DataError(src, f"no audio files found (looked for {', '.join(AUDIO_EXTENSIONS)})")
    work = _work_dir(store)
    work.mkdir(parents=True, exist_ok=True)
    tasks = _make_tasks(tracks, work, min_seconds)
    n_workers = usable_cpus() if workers is None else int(workers)
    results = _convert(tasks, max(1, min(n_workers, len(tasks))), progress, on_error, skipped)
    kept = sorted(results)
    if not kept:
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise DataError(src, f"every track was skipped ({len(skipped)} skipped){first}")

    lengths = [results[i].length for i in kept]
    placement = _write_shards(store, lengths, [tasks[i].work_stem for i in kept], int(shard_mb * 2**20))
    table = _tracks_table(src, [tracks[i] for i in kept], lengths, placement)
    with atomic_path(store / "tracks.csv") as tmp:
        table.to_csv(tmp, index=False, encoding="utf-8")
    n_notes = _write_notes(store / "notes.npz", [tasks[i].work_stem for i in kept])

    seconds_of_audio = float(sum(lengths)) / SAMPLE_RATE
    elapsed = time.perf_counter() - t0
    write_json_atomic(store / "store.json", {
        "format": STORE_FORMAT, "version": STORE_VERSION, "sample_rate": SAMPLE_RATE, "complete": True,
        "fingerprint": fingerprint, "settings": settings, "source": str(src.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n_tracks": len(kept),
        "n_shards": 1 + max(s for s, _ in placement), "n_notes": n_notes,
        "splits": {str(k): int(v) for k, v in table["split"].value_counts().sort_index().items()},
        "seconds_of_audio": seconds_of_audio, "n_skipped": len(skipped), "skipped": [list(s) for s in skipped],
    })
    shutil.rmtree(work, ignore_errors=True)
    summary = PrepareSummary(n_tracks=len(kept), n_skipped=len(skipped), skipped=list(skipped),
                             seconds_of_audio=seconds_of_audio, seconds_elapsed=elapsed,
                             throughput=seconds_of_audio / max(elapsed, 1e-9), store=str(store))
    _announce(store, summary, skipped)
    return summary


def _make_tasks(tracks: list[TrackSource], work: Path, min_seconds: float) -> list[_Task]:
    """One decoding task per source track, writing its converted audio and notes under ``work``."""
    min_samples = int(np.ceil(min_seconds * SAMPLE_RATE))
    return [
        _Task(index=i, audio_path=str(t.audio_path),
              label_path=str(t.label_path) if t.label_path is not None else None,
              work_stem=str(work / safe_id(t.id)), signature=_stat_signature(t.audio_path, t.label_path),
              min_samples=min_samples, min_seconds=float(min_seconds))
        for i, t in enumerate(tracks)
    ]


def _convert(tasks: list[_Task], workers: int, progress: bool, on_error: OnError,
             skipped: Skipped) -> dict[int, _Done]:
    """Run the tasks; the converted ones by task index. A failed track is reported (``on_error``) and skipped."""
    results: dict[int, _Done] = {}
    # closing(): a raised error shuts the pool down (cancelling queued tracks) before it propagates.
    with closing(_run_tasks(tasks, workers, progress)) as finished:
        for done in finished:
            if done.error is not None:
                path, problem, row = done.error
                report(DataError(path, problem, row=row), on_error, skipped)
            else:
                results[done.index] = done
    return results


def _announce(store: Path, summary: PrepareSummary, skipped: Skipped) -> None:
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    print(
        f"{store}: {summary.n_tracks} tracks, {summary.seconds_of_audio / 60:.1f} min of audio, "
        f"{summary.n_skipped} skipped, {summary.seconds_elapsed:.1f} s ({summary.throughput:.0f}x real time)"
    )


__all__ = ["MIN_SECONDS", "PrepareSummary", "prepare_store", "read_store_json", "safe_id"]

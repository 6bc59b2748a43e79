"""Real-time factor of ``jtm transcribe`` for the demo's model architecture; one JSON line per configuration.

    .venv/bin/python benchmarks/transcribe.py                   # 60 s of 44.1 kHz stereo, every configuration
    .venv/bin/python benchmarks/transcribe.py --seconds 30 --repeats 2

The model is the demo's CPC architecture (``jtm.pipelines.demo.pretrain_config(DemoConfig.full())``) with random
weights and a linear transcription probe, saved with ``save_pretrained`` as ``RUN/model`` next to a ``RUN/run.json``
holding the demo's training window, as a study run of the demo leaves it, and loaded once with the pipeline's
``load_transcriber``. Each repeat times ``transcribe_file`` end to end: WAV decode + resampling to 16 kHz (streamed),
the model over chunks (``jtm.models.inference.run_chunked``, the runner evaluation uses), note extraction and MIDI
writing. Chunking is the pipeline's default for such a run (``Transcriber.chunking()``, as the run's evaluation:
training-length windows, the outer eighth on each side as context, 8 per batch as the run.json records no batch
size), except in configuration ``chunks-10s`` (10 s chunks, 1 s context, batch 4).

A random probe's outputs say nothing about the music, so the threshold alone sets how many notes come out. Every
configuration but ``threshold-0.5`` saves the threshold at the ``active`` (3 %) upper quantile of the model's outputs
on this audio (about 4 of 128 pitches on per frame, ~17 notes/s: a realistic load for note extraction and MIDI
writing, like a trained model with a tuned threshold); ``threshold-0.5`` keeps 0.5 (far fewer notes here).

Configurations: ``default`` (the pipeline's defaults, torch's default thread count), ``threads-1`` (one torch thread),
``threshold-0.5``, ``chunks-10s``; and three note transcribers (``jtm.models.note_transcriber.NoteTranscriber``, as a
study's notes cell leaves it, random weights, on raw front-end features), decoded from onsets by the pipeline's
default streaming (10 s front-end chunks): the study's note head (``jtm.pipelines.arms.NOTE_HEAD``) on the demo's
CPC context features (``note-cpc``) and on the log-mel spectrogram (``note-logmel``), and the cqt-harmonic arm's
pitch-equivariant head on the demo architecture's constant-Q spectrum (``note-harmonic``). Their onset threshold is calibrated so that
0.2 % of the onset outputs are on (~25 note starts per second), their sustain and frame thresholds at ``active``.
``x_real_time`` is seconds of audio per wall second (what ``jtm transcribe`` prints); ``rtf`` its inverse.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

TARGET_X_REAL_TIME = 30.0
FALLBACK_ARCHITECTURE = dict(encoder="conv", encoder_dim=128, context="gru", context_dim=128)
"""The demo's architecture as of writing; used only if jtm.pipelines.demo cannot be imported."""


def demo_cpc_config(tiny: bool = False):
    """(CPCConfig, where it came from, training window) of the demo's model (``DemoConfig.full()``; ``quick()`` when
    ``tiny``)."""
    from jtm.models.config import CPCConfig

    try:
        from jtm.pipelines.demo import DemoConfig, pretrain_config

        cfg = DemoConfig.quick() if tiny else DemoConfig.full()
        model = pretrain_config(cfg, Path("store"), Path("out")).model
        return model, "DemoConfig.quick()" if tiny else "DemoConfig.full()", int(cfg.window)
    except (ImportError, AttributeError, TypeError) as e:  # the demo module is still being written
        return CPCConfig(**FALLBACK_ARCHITECTURE), f"fallback ({type(e).__name__})", 20480


def write_music(path: Path, seconds: float, sample_rate: int = 44100, seed: int = 0) -> Path:
    """Stereo WAV of chords of sines (a new chord of 2-4 notes every 0.25-1 s) plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    x = 0.003 * rng.standard_normal((n, 2)).astype(np.float32)
    t0 = 0
    while t0 < n:
        length = int(rng.uniform(0.25, 1.0) * sample_rate)
        t = np.arange(min(length, n - t0), dtype=np.float32) / sample_rate
        for p in rng.integers(40, 90, size=rng.integers(2, 5)):
            tone = 0.08 * np.sin(2 * np.pi * 440.0 * 2 ** ((p - 69) / 12) * t) * np.exp(-2.0 * t)
            x[t0:t0 + len(t), 0] += tone
            x[t0:t0 + len(t), 1] += 0.8 * tone
        t0 += length
    sf.write(path, np.clip(x, -1, 1), sample_rate, subtype="PCM_16")
    return path


def build_model(folder: Path, tiny: bool = False, seed: int = 0) -> tuple[Path, dict, str]:
    """A random-weight transcription DownstreamModel of the demo's architecture saved in ``folder``;
    ``folder/../run.json`` records the demo's training window (what the pipeline's default chunking reads)."""
    from jtm.models.cpc import CPCEncoder
    from jtm.models.downstream import DownstreamModel

    from jtm.fileio import write_json_atomic

    torch.manual_seed(seed)
    config, source, window = demo_cpc_config(tiny)
    model = DownstreamModel.build("transcription", CPCEncoder(config), frozen=True)
    model.save_pretrained(folder)
    write_json_atomic(folder.parent / "run.json", {"task": "transcription", "window": window})
    return folder, config.to_dict(), source


def build_note_model(folder: Path, frontend: str, tiny: bool = False, seed: int = 0) -> tuple[Path, dict, str]:
    """A random-weight NoteTranscriber saved in ``folder``, as a study's notes cell leaves it: the study's note head
    on ``frontend`` ("cpc": the demo's architecture, its context; "logmel"), or "harmonic": the cqt-harmonic arm's
    pitch-equivariant head on the demo architecture's constant-Q spectrum."""
    from jtm.models.cpc import CPCEncoder
    from jtm.models.logmel import LogMel, LogMelConfig
    from jtm.models.downstream import feature_dim
    from jtm.models.note_transcriber import NoteTranscriber, build_note_head
    from jtm.pipelines.arms import NOTE_HEADS

    torch.manual_seed(seed)
    if frontend == "logmel":
        front, config, source = LogMel(LogMelConfig(normalize=False)), LogMelConfig(normalize=False), "LogMelConfig()"
    else:
        config, source, _ = demo_cpc_config(tiny)
        front = CPCEncoder(config)
    features = "spectrum" if frontend == "harmonic" else "context"
    options = NOTE_HEADS["harmonic" if frontend == "harmonic" else "frames"]
    head = build_note_head(in_dim=feature_dim(front, features), n_pitches=128, **options)
    NoteTranscriber(front, head, features).save_pretrained(folder)
    return folder, config.to_dict(), source


def calibrate_note_thresholds(model_dir: Path, audio: Path, active: float, onsets: float = 0.002) -> float:
    """Save onset/sustain/frame thresholds at the (1 - onsets) and (1 - active) quantiles of the note model's
    probabilities on the first 10 s of ``audio``; returns the sustain threshold."""
    from jtm.audio import load_audio
    from jtm.models.note_transcriber import NoteThresholds, NoteTranscriber

    model = NoteTranscriber.from_pretrained(model_dir)
    wave, _ = load_audio(audio)
    onset, frame = model.predict(wave[: 10 * 16000])
    sustain = float(np.quantile(frame, 1.0 - active))
    model.thresholds = NoteThresholds(onset=float(np.quantile(onset, 1.0 - onsets)), sustain=sustain, frame=sustain)
    model.save_pretrained(model_dir)
    return sustain


def calibrated_threshold(model_dir: Path, audio: Path, active: float) -> float:
    """The (1 - active)-quantile of the model's probabilities on the first 10 s of ``audio``."""
    from jtm.audio import load_audio
    from jtm.models.downstream import DownstreamModel

    model = DownstreamModel.from_pretrained(model_dir).eval()
    wave, _ = load_audio(audio)
    with torch.inference_mode():
        probs = torch.sigmoid(model(torch.from_numpy(wave[: 10 * 16000])[None])).numpy()
    return float(np.quantile(probs, 1.0 - active))


def run(seconds: float = 60.0, repeats: int = 3, threshold: float | None = None, active: float = 0.03,
        chunk_seconds: float | None = None, context_seconds: float | None = None, batch_size: int | None = None,
        threads: int | None = None, tiny: bool = False, workdir: Path | None = None, config: str | None = None,
        note_frontend: str | None = None) -> dict:
    """Time ``transcribe_file`` on ``seconds`` of 44.1 kHz stereo audio, ``repeats`` times, with one loaded model.

    ``threshold``: the saved decision threshold (None: calibrated so that ``active`` of the outputs are on).
    Chunking arguments left None take the pipeline's defaults (as ``jtm transcribe`` does); ``threads``: torch
    threads for this run (None: torch's default, all cores), as ``jtm transcribe --threads``; ``note_frontend``
    ("cpc", "logmel" or "harmonic"): time a note transcriber on that front end instead of a frame model.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(seconds, repeats, threshold, active, chunk_seconds, context_seconds, batch_size, tiny, workdir,
                    config, note_frontend)
    finally:
        torch.set_num_threads(previous)


def _run(seconds, repeats, threshold, active, chunk_seconds, context_seconds, batch_size, tiny, workdir, config,
         note_frontend):
    from jtm.audio import FRAME_RATE
    from jtm.models.downstream import DownstreamModel
    from jtm.pipelines.chunked import stream_audio
    from jtm.pipelines.transcribe import load_transcriber, transcribe_file

    with tempfile.TemporaryDirectory(prefix="jtm-bench-tr-", dir=workdir) as tmp:
        tmp = Path(tmp)
        audio = write_music(tmp / "music.wav", seconds)
        if note_frontend is not None:
            model_dir, arch, source = build_note_model(tmp / "cell" / "model", note_frontend, tiny)
            thr = calibrate_note_thresholds(model_dir, audio, active)
        else:
            model_dir, arch, source = build_model(tmp / "run" / "model", tiny)
            thr = calibrated_threshold(model_dir, audio, active) if threshold is None else threshold
            if threshold is None:
                model = DownstreamModel.from_pretrained(model_dir)
                model.threshold = thr
                model.save_pretrained(model_dir)
        t0 = time.perf_counter()
        tr = load_transcriber(model_dir)  # once, as transcribe_files does
        load_s = time.perf_counter() - t0
        chunking = tr.chunking(chunk_seconds, context_seconds, batch_size)
        chunk, context, batch = chunking.core / FRAME_RATE, chunking.left / FRAME_RATE, chunking.batch_size
        walls, result = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = transcribe_file(tr, audio, tmp / "out", chunk_seconds=chunk_seconds,
                                     context_seconds=context_seconds, batch_size=batch_size)
            walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in stream_audio(audio):
            pass
        decode_s = time.perf_counter() - t0
        assert result is not None and result.midi.is_file()
        wall = statistics.median(walls)
        out = {
            "benchmark": "transcribe",
            "config": config or ("calibrated" if threshold is None else f"threshold-{threshold:g}"),
            "architecture": arch, "architecture_source": source,
            "n_parameters": int(sum(p.numel() for p in tr.model.parameters())),
            "audio": "44.1 kHz stereo PCM_16 WAV", "audio_seconds": round(result.duration, 2),
            "model": "note transcriber" if note_frontend else "frame model",
            "onset_threshold": None if tr.onset_threshold is None else round(tr.onset_threshold, 4),
            "threshold": round(thr, 4), "chunk_seconds": chunk, "context_seconds": context, "batch_size": batch,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "repeats": repeats, "model_load_seconds": round(load_s, 3),
            "wall_seconds_median": round(wall, 3), "wall_seconds_first": round(walls[0], 3),
            "wall_seconds_min": round(min(walls), 3),
            "decode_resample_seconds": round(decode_s, 3),
            "x_real_time": round(result.duration / wall, 1), "rtf": round(wall / result.duration, 4),
            "x_real_time_pipeline_reported": round(result.speed, 1),
            "n_notes": result.n_notes, "notes_per_second": round(result.n_notes / result.duration, 1),
            "target_x_real_time": TARGET_X_REAL_TIME,
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
        out["meets_target"] = out["x_real_time"] >= TARGET_X_REAL_TIME
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for kwargs in (dict(config="default"), dict(threads=1, config="threads-1"), dict(threshold=0.5),
                   dict(chunk_seconds=10.0, context_seconds=1.0, batch_size=4, config="chunks-10s"),
                   dict(note_frontend="cpc", config="note-cpc"), dict(note_frontend="logmel", config="note-logmel"),
                   dict(note_frontend="harmonic", config="note-harmonic")):
        print(json.dumps(run(args.seconds, args.repeats, **kwargs)), flush=True)


if __name__ == "__main__":
    main()

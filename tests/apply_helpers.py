"""Builders shared by the transcribe / embed / report / API tests: tiny model folders and audio files."""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jtm.data.instruments import INSTRUMENT_PROGRAMS
from jtm.fileio import write_json_atomic
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder

TINY = dict(encoder_dim=32, context_dim=24, predict_steps=3, negatives=8)

# (name, sample rate, channels, subtype): every format/rate/channel combination the tests cover.
FORMATS = (
    ("mono8k.wav", 8_000, 1, "PCM_16"),
    ("stereo22k.flac", 22_050, 2, "PCM_16"),
    ("stereo44k.ogg", 44_100, 2, "VORBIS"),
    ("mono48k.wav", 48_000, 1, "FLOAT"),
)


def tiny_encoder(seed: int = 0) -> CPCEncoder:
    torch.manual_seed(seed)
    return CPCEncoder(CPCConfig(**TINY)).eval()


def make_pretrain_run(root: Path, seed: int = 0) -> Path:
    """A pretraining run folder as ``jtm pretrain`` leaves it (run.json + encoder/), with a random encoder."""
    root.mkdir(parents=True, exist_ok=True)
    enc = tiny_encoder(seed)
    enc.save_pretrained(root / "encoder")
    write_json_atomic(root / "run.json", {"data": "nowhere", "out": str(root), "model": enc.config.to_dict()})
    return root


def make_downstream_run(root: Path, task: str = "transcription", notes: dict[int, list[int]] | None = None,
                        threshold: float | None = 0.5, classes: list[str] | None = None) -> Path:
    """A downstream run folder (run.json + model/) whose probe always predicts the given notes.

    ``notes`` maps a GM program to pitches that are on in every frame (probability ~1); all other outputs are
    off (probability ~0). So a file of any length transcribes to exactly one note per (instrument, pitch)
    spanning the whole file, which makes the expected MIDI known without training.
    """
    from jtm.models.downstream import DownstreamModel

    enc = tiny_encoder(1)
    model = DownstreamModel.build(task, enc, features="context", probe="linear", classes=classes)
    notes = {1: [60]} if notes is None else notes
    with torch.no_grad():
        linear = [m for m in model.probe.modules() if isinstance(m, torch.nn.Linear)][-1]
        linear.weight.zero_()
        linear.bias.fill_(-12.0)
        if task == "transcription":
            for pitches in notes.values():
                for p in pitches:
                    linear.bias[p] = 12.0
        elif task == "pitch-instrument":
            for program, pitches in notes.items():
                i = INSTRUMENT_PROGRAMS.index(program)
                for p in pitches:
                    linear.bias[i * 128 + p] = 12.0
    model.threshold = threshold
    model.save_pretrained(root / "model")
    write_json_atomic(root / "run.json", {"data": "nowhere", "out": str(root), "task": task, "window": 2560})
    return root


def write_tone(path: Path, seconds: float, sample_rate: int, channels: int = 1, subtype: str | None = None,
               freq: float = 440.0) -> Path:
    """A sine tone file (float in [-0.3, 0.3])."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels > 1:
        x = np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sample_rate, subtype=subtype)
    return path


def make_bad_files(folder: Path) -> dict[str, Path]:
    """Files that must be refused: empty, truncated, not audio, NaN samples."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {}
    bad["empty"] = folder / "empty.wav"
    bad["empty"].write_bytes(b"")
    good = write_tone(folder / "full.wav", 1.0, 16_000)
    data = good.read_bytes()
    bad["truncated"] = folder / "truncated.wav"
    bad["truncated"].write_bytes(data[: len(data) // 2])
    good.unlink()
    bad["not_audio"] = folder / "notes.flac"
    bad["not_audio"].write_text("this is not audio\n" * 50)
    x = np.zeros(16_000, dtype=np.float32)
    x[1000] = np.nan
    bad["nan"] = folder / "nan.wav"
    sf.write(bad["nan"], x, 16_000, subtype="FLOAT")
    return bad


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run the ``jtm`` command line in this process: (exit code, stdout, stderr)."""
    from jtm.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    code = 0
    sys.argv = ["jtm", *[str(a) for a in args]]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()

"""Peak memory of ``jtm transcribe`` and ``jtm embed`` on one long recording and on many short files.

    .venv/bin/python benchmarks/long_inputs.py                       # 3-hour file, 500 files of 5 s
    .venv/bin/python benchmarks/long_inputs.py --hours 0.25 --files 50 --tiny

Each command runs as the user runs it (``python -m jtm.cli ...`` in a fresh process, default chunking and threads);
its peak resident memory is the child's ``ru_maxrss`` (from ``os.wait4``), so the number covers the interpreter,
torch, the model and every buffer. A 10-second file gives the baseline: what the command needs whatever the input
length. One JSON line per (command, input): ``peak_rss_mb``, ``growth_over_baseline_mb``, the audio's
seconds, the wall time and ``x_real_time``. The long recording is 44.1 kHz mono 16-bit WAV (written in blocks, never
held in memory here), so decoding and resampling are part of what is measured. The model is the demo's architecture
with random weights (``benchmarks/transcribe.py``'s ``build_model``; ``--tiny``: the quick demo's).

Bound checked: a streaming implementation's peak does not grow with the input's length; ``bounded`` is true when the
long or many-file input stays within ``--bound-mb`` (default 300 MB) of the 10-second baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RATE = 44_100


def write_long_wav(path: Path, seconds: float, block_seconds: float = 60.0, seed: int = 0) -> Path:
    """A mono WAV of ``seconds``: one minute of chords (benchmarks/transcribe.py's generator) repeated with fresh noise."""
    sys.path.insert(0, str(HERE))
    from transcribe import write_music

    minute = path.with_suffix(".block.wav")
    write_music(minute, block_seconds, RATE, seed)
    block = sf.read(minute, dtype="float32")[0].mean(axis=1)
    minute.unlink()
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as f:
        left = int(seconds * RATE)
        while left > 0:
            n = min(left, len(block))
            f.write(np.clip(block[:n] + 0.002 * rng.standard_normal(n).astype(np.float32), -1, 1))
            left -= n
    return path


def write_short_files(folder: Path, n: int, seconds: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    block = None
    for k in range(n):
        if block is None:
            write_long_wav(folder / "f00000.wav", seconds, block_seconds=seconds)
            block = folder / "f00000.wav"
        else:
            os.link(block, folder / f"f{k:05d}.wav")  # same content, 500 names: the per-file path is what is measured
    return folder


TIME = "/usr/bin/time"


def measure(argv: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, stderr tail) of a command run to its end in a fresh process.

    Linux counts a forked child's memory before ``exec`` in its ``ru_maxrss``, so the child is started by
    ``/usr/bin/time`` (a small process) when there is one; otherwise by this process, which then must stay small.
    """
    started = time.perf_counter()
    wrapped = [TIME, "-f", "JTM_PEAK_KB=%M", *argv] if Path(TIME).exists() else argv
    proc = subprocess.Popen(wrapped, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-3000:]}")
    peaks = [line for line in err.splitlines() if line.startswith("JTM_PEAK_KB=")]
    peak_kb = int(peaks[-1].split("=")[1]) if peaks else usage.ru_maxrss
    return peak_kb / 1024, wall, err[-300:]


def models(folder: Path, tiny: bool) -> tuple[Path, Path]:
    """(transcription run's model folder, pretraining encoder folder), both of the demo's architecture."""
    sys.path.insert(0, str(HERE))
    from transcribe import build_model, demo_cpc_config

    from jtm.models.cpc import CPCEncoder

    model_dir, _, _ = build_model(folder / "run" / "model", tiny)
    config, _, _ = demo_cpc_config(tiny)
    CPCEncoder(config).save_pretrained(folder / "encoder")
    return model_dir, folder / "encoder"


def run(hours: float = 3.0, files: int = 500, file_seconds: float = 5.0, tiny: bool = False,
        commands: tuple[str, ...] = ("transcribe", "embed"), bound_mb: float = 300.0,
        workdir: Path | None = None) -> list[dict]:
    jtm = [sys.executable, "-m", "jtm.cli"]
    lines = []
    with tempfile.TemporaryDirectory(prefix="jtm-bench-long-", dir=workdir) as tmp:
        tmp = Path(tmp)
        transcriber, encoder = models(tmp / "models", tiny)
        inputs = {
            "baseline-10s": (write_long_wav(tmp / "short.wav", 10.0), 10.0),
            f"one-file-{hours:g}h": (write_long_wav(tmp / "long.wav", hours * 3600), hours * 3600),
            f"{files}-files-{file_seconds:g}s": (write_short_files(tmp / "many", files, file_seconds),
                                                files * file_seconds),
        }
        for command in commands:
            model = transcriber if command == "transcribe" else encoder
            baseline = None
            for name, (path, seconds) in inputs.items():
                out = tmp / f"out-{command}-{name}"
                rss, wall, _ = measure([*jtm, command, str(path), "--model", str(model), "--out", str(out)])
                baseline = rss if baseline is None else baseline
                line = {"benchmark": "long_inputs", "command": f"jtm {command}", "input": name,
                        "audio_seconds": seconds, "wall_seconds": round(wall, 1),
                        "x_real_time": round(seconds / wall, 1), "peak_rss_mb": round(rss, 1),
                        "growth_over_baseline_mb": round(rss - baseline, 1),
                        "bounded": bool(rss - baseline <= bound_mb), "bound_mb": bound_mb,
                        "architecture": "DemoConfig.quick()" if tiny else "DemoConfig.full()",
                        "load_average_1min": os.getloadavg()[0]}
                print(json.dumps(line), flush=True)
                lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=3.0, help="Length of the long recording.")
    p.add_argument("--files", type=int, default=500, help="Number of short files.")
    p.add_argument("--file-seconds", type=float, default=5.0, help="Length of each short file.")
    p.add_argument("--tiny", action="store_true", help="The quick demo's (smaller) architecture.")
    p.add_argument("--commands", default="transcribe,embed", help="Comma-separated: transcribe, embed.")
    p.add_argument("--bound-mb", type=float, default=300.0, help="Allowed peak growth over the 10 s baseline.")
    p.add_argument("--workdir", type=Path, default=None, help="Where to write the inputs (default: the temp folder).")
    a = p.parse_args(argv)
    run(a.hours, a.files, a.file_seconds, a.tiny, tuple(a.commands.split(",")), a.bound_mb, a.workdir)


if __name__ == "__main__":
    main()

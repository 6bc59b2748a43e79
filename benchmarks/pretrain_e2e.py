"""What `jtm pretrain` achieves end to end, against the isolated training step; one JSON line per configuration.

    .venv/bin/python benchmarks/pretrain_e2e.py                       # demo and default configs, 20-min synth store
    .venv/bin/python benchmarks/pretrain_e2e.py --config demo --epochs 3 --store STORE

Each configuration runs the real command (``jtm pretrain`` in a subprocess, so imports, loader, logging,
validation and checkpoints are all in) for ``--epochs`` whole epochs (optionally capped at ``--steps`` batches
each), bracketed by the isolated step of ``benchmarks/cpc_step.py`` on the same model before and after, with the
allocator setting, precision and OpenMP wait policy that ``jtm pretrain`` uses (glibc-retain; bf16 where the CPU has
it; ``OMP_WAIT_POLICY`` as set, else chosen by the load as the CLI chooses it), each in its own subprocess; this
``--rounds`` times (isolated, run, isolated, run, ..., isolated). Reported, from the round with the median ratio:

- ``e2e_windows_per_s``: windows trained per wall second of ``trainer.fit`` (the run's own ``time/`` figures in
  ``metrics.json``, from :class:`jtm.training.callbacks.StepTimer`);
- ``step_windows_per_s_in_run``: the same windows over the time spent inside the steps;
- ``outside_step_s`` and ``outside_step_fraction``: loader, logging, validation and checkpoints; of it,
  ``validation_s`` and ``validation_fraction`` (the validation loops);
- ``command_s``: the whole command, start-up (imports) included;
- ``median_step_ms_in_run`` (the median step after the first two) and ``first_step_ms_in_run``;
- ``isolated_windows_per_s`` (the mean of the two brackets, each given) and ``e2e_over_isolated`` (target: at
  least 0.9); ``in_run_median_step_over_isolated`` compares the run's warm steps with the isolated ones;
- ``peak_rss_mb`` of the pretraining process;
- and from every round: ``e2e_over_isolated_rounds`` and ``e2e_windows_per_s_rounds``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jtm.hardware import choose_openmp_wait_policy
from jtm.training.config import resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or as benchmarks.<name>
import cpc_step  # noqa: E402

JTM = [sys.executable, "-m", "jtm.cli"]

# Model flags of `jtm pretrain` for each configuration of benchmarks/cpc_step.py, plus the run's optimiser settings.
PRETRAIN_FLAGS = {
    "demo": ["--encoder", "gabor", "--encoder-dim", "128", "--context", "gru", "--context-dim", "128",
             "--norm", "batch", "--score", "cosine", "--target", "frontend", "--lr", "2e-3"],
    "default": ["--encoder", "sinc", "--encoder-dim", "512", "--context", "transformer", "--context-dim", "512"],
    "tiny": ["--encoder", "conv", "--encoder-dim", "16", "--context", "gru", "--context-dim", "16",
             "--predict-steps", "3", "--negatives", "8"],
}


def make_store(workdir: Path, minutes: float) -> Path:
    """A synth corpus of ``minutes`` of audio, prepared as a store (the demo's data, smaller)."""
    from jtm.data.prepare import prepare_store
    from jtm.data.synth import build_corpus

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
        build_corpus(workdir / "corpus", minutes=minutes, max_seconds=30, test_fraction=0.15, seed=0, progress=False)
        prepare_store(workdir / "corpus", workdir / "store", progress=False)
    return workdir / "store"


def run_command(config: str, store: Path, out: Path, epochs: int, steps: int | None, batch: int,
                window: int) -> dict:
    """Run `jtm pretrain` for ``epochs`` epochs (of at most ``steps`` batches); return its time figures and RSS."""
    cmd = [*JTM, "pretrain", "--data", str(store), "--out", str(out), *PRETRAIN_FLAGS[config],
           "--epochs", str(epochs), "--batch-size", str(batch), "--window", str(window), "--no-progress"]
    if steps:
        cmd += ["--limit-train-batches", str(steps)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    # wait4 gives this child's own resource usage: RUSAGE_CHILDREN is the largest of every child so far, which
    # includes the isolated-step runs before this one and the other configurations' runs
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    command_s = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    fit, inside = metrics["time/fit_seconds"], metrics["time/step_seconds"]
    return {
        "steps": int(metrics["time/steps"]), "command_s": round(command_s, 2), "fit_s": fit,
        "step_s_in_run": inside, "outside_step_s": round(fit - inside, 2),
        "outside_step_fraction": round((fit - inside) / fit, 3),
        "validation_s": metrics["time/validation_seconds"],
        "validation_fraction": round(metrics["time/validation_seconds"] / fit, 3),
        "e2e_windows_per_s": metrics["time/windows_per_second"],
        "step_windows_per_s_in_run": metrics["time/step_windows_per_second"],
        "median_step_ms_in_run": round(metrics["time/median_step_seconds"] * 1000, 1),
        "first_step_ms_in_run": round(metrics["time/first_step_seconds"] * 1000, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def run(config: str, store: Path, epochs: int = 2, steps: int | None = None, batch: int = 8, window: int = 20480,
        isolated_steps: int = 10, rounds: int = 1) -> dict:
    """One configuration: the isolated step, then ``rounds`` times the command end to end followed by the isolated
    step again. Each round's ratio is its end-to-end rate over the mean of the two isolated rates that bracket it,
    so a machine whose speed drifts shows up as a gap between the two rather than as a wrong ratio. Reported: the
    round with the median ratio, and every round's ratio (on a shared 2-core machine one round's ratio moved by
    up to 0.08 from the next's)."""
    precision = resolve_precision("auto", "cpu")
    # benchmarks/cpc_step.py on the same model, with jtm pretrain's allocator setting and precision
    flags = ["--steps", str(isolated_steps), "--no-naive", "--batch", str(batch), "--window", str(window),
             "--malloc", "retain", "--precision", "bf16" if precision == "bf16-mixed" else "32"]
    # ... and the OpenMP wait policy the command runs with, chosen here as jtm's CLI chooses it (by the load at
    # start, unless the user set one) and handed to all the subprocesses: for the demo's GRU it alone moves the
    # step by a third (README, performance)
    env = {"OMP_WAIT_POLICY": choose_openmp_wait_policy()}
    isolated_runs = [cpc_step.run_subprocess(config, flags, env)]
    results = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="jtm-e2e-") as tmp:
            e2e = run_command(config, store, Path(tmp) / "run", epochs, steps, batch, window)
        isolated_runs.append(cpc_step.run_subprocess(config, flags, env))
        before, after = isolated_runs[-2:]
        isolated = (before["windows_per_s"] + after["windows_per_s"]) / 2
        isolated_ms = (before["ms_step_median"] + after["ms_step_median"]) / 2
        result = {"config": config, "batch": batch, "window": window, "epochs": epochs, "precision": precision,
                  "omp_wait_policy": env["OMP_WAIT_POLICY"], "isolated_omp_wait_policy": before["omp_wait_policy"],
                  **e2e}
        result["isolated_windows_per_s"] = round(isolated, 2)
        result["isolated_windows_per_s_before_after"] = [before["windows_per_s"], after["windows_per_s"]]
        result["e2e_over_isolated"] = round(e2e["e2e_windows_per_s"] / isolated, 3)
        result["in_run_step_over_isolated"] = round(e2e["step_windows_per_s_in_run"] / isolated, 3)
        # like with like: the median warm step in the run against the isolated median
        result["in_run_median_step_over_isolated"] = round(isolated_ms / e2e["median_step_ms_in_run"], 3)
        result["isolated_mfu"] = round((before["mfu"] + after["mfu"]) / 2, 3)
        results.append(result)
    ratios = [r["e2e_over_isolated"] for r in results]
    median = sorted(results, key=lambda r: r["e2e_over_isolated"])[(rounds - 1) // 2]
    return {**median, "rounds": rounds, "e2e_over_isolated_rounds": ratios,
            "e2e_windows_per_s_rounds": [r["e2e_windows_per_s"] for r in results],
            "load_average_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(PRETRAIN_FLAGS), action="append",
                        help="repeatable; default: demo and default")
    parser.add_argument("--store", help="a prepared store (default: a fresh synth store of --minutes)")
    # The demo's corpus size: epochs of 85 steps, as in `make demo`; on a 4-minute store (17 steps an epoch) the
    # validation and checkpoint at each epoch's end weigh five times as much as in a real run.
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, help="cap on training batches per epoch (default: whole epochs)")
    parser.add_argument("--rounds", type=int, default=3, help="end-to-end runs, each followed by the isolated step; "
                        "the round with the median ratio is reported (default: 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jtm-e2e-store-") as tmp:
        store = Path(args.store) if args.store else make_store(Path(tmp), args.minutes)
        for config in args.config or ["demo", "default"]:
            print(json.dumps(run(config, store, args.epochs, args.steps, rounds=args.rounds)), flush=True)


if __name__ == "__main__":
    main()

"""The CPC step under each allocator and precision, interleaved in one run; one JSON line per (config, setting).

    .venv/bin/python benchmarks/step_settings.py                      # default and demo configs, 2 rounds
    .venv/bin/python benchmarks/step_settings.py --config demo --rounds 5 --steps 6

Settings: ``glibc`` (malloc as the system ships it), ``glibc-retain`` (jtm.allocator.retain_freed_memory, what
the jtm commands use), ``jemalloc`` (LD_PRELOAD of libjemalloc, when installed: ``apt-get install
libjemalloc2``), and ``bf16`` (glibc-retain with bf16 autocast; only on CPUs with avx512_bf16 or AMX, where it
is jtm's default precision). Each round runs every setting once, in a fresh process, so a change in the
machine's load hits all settings alike; a setting's figure is the median over rounds of its per-run median.
``over_jemalloc`` is the setting's step time over jemalloc's (1.05 = 5 % slower).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from jtm.hardware import cpu_has_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or as benchmarks.<name>
import cpc_step  # noqa: E402

JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def jemalloc_path() -> str | None:
    return next((p for p in JEMALLOC_PATHS if Path(p).exists()), None)


def settings() -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (environment additions, cpc_step flags)."""
    out = {"glibc": ({"JTM_MALLOC": "default"}, ["--malloc", "default"]),
           "glibc-retain": ({}, ["--malloc", "retain"])}
    if jemalloc_path():
        out["jemalloc"] = ({"LD_PRELOAD": jemalloc_path()}, ["--malloc", "default"])
    if cpu_has_bf16():
        out["bf16"] = ({}, ["--malloc", "retain", "--precision", "bf16"])
    return out


def run(configs: list[str], rounds: int = 2, steps: int = 5, extra: list[str] = ()) -> list[dict]:
    """Interleave every setting of every config ``rounds`` times; summarise each (config, setting).

    ``extra``: more cpc_step flags for every run (the tests shrink ``--batch``, ``--window``, ``--matmul-size``).
    """
    table = settings()
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(rounds):
        for config in configs:
            for name, (env, flags) in table.items():
                runs.setdefault((config, name), []).append(
                    cpc_step.run_subprocess(config, ["--steps", str(steps), "--no-naive", *flags, *extra], env))
    results = []
    for (config, name), rs in runs.items():
        results.append({
            "config": config, "setting": name, "rounds": rounds,
            "ms_step": round(statistics.median(r["ms_step_median"] for r in rs), 1),
            "ms_step_runs": [r["ms_step_median"] for r in rs],
            "mfu": round(statistics.median(r["mfu"] for r in rs), 3),
            "executed_fraction_of_peak": round(statistics.median(r["executed_fraction_of_peak"] for r in rs), 3),
            "model_gflop_per_step": rs[0]["model_gflop_per_step"],
            "matmul_fp32_gflops": round(statistics.median(r["matmul_fp32_gflops"] for r in rs), 1),
            "matmul_bf16_gflops": round(statistics.median(r["matmul_bf16_gflops"] for r in rs), 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "bf16_loss_rel_diff": rs[0].get("bf16_loss_rel_diff"),
            "load_average_1min": round(os.getloadavg()[0], 2),
        })
    for r in results:
        base = next((b for b in results if b["config"] == r["config"] and b["setting"] == "jemalloc"), None)
        r["over_jemalloc"] = round(r["ms_step"] / base["ms_step"], 3) if base else None
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="a cpc_step configuration (repeatable); default: default, demo")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    for r in run(args.config or ["default", "demo"], args.rounds, args.steps):
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

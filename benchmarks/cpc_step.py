"""Time one full CPC training step (forward, loss, backward, Adam) on CPU; one JSON line per configuration.

    .venv/bin/python benchmarks/cpc_step.py                 # every configuration, each in a fresh subprocess
    .venv/bin/python benchmarks/cpc_step.py --config default --steps 10

Each configuration runs in its own process so that peak RSS (ru_maxrss) is that configuration's alone.
Reported: ms/step (median/min/max after warm-up), windows/s, peak RSS, the fp32 (and bf16) matmul rate
measured in the same process, and the same step with the naive reference loss (ratio naive / efficient).

Two FLOP counts, two utilisations:
- ``model_gflop_per_step``/``mfu``: the FLOPs the model needs (encoder, context and predictors forward and
  backward, counted by FlopCounterMode, plus 1 + N dot products per prediction for the scores, forward and
  backward). This is the honest MFU.
- ``executed_gflop_per_step``/``executed_fraction_of_peak``: everything the step runs, including the scores
  of each prediction against the whole bank of B*F frames (CPCLoss gathers its N negative columns from that GEMM,
  which is faster than gathering the frames first, but does B*F/N times the scoring work).

``--precision bf16`` runs the step under torch.autocast(bfloat16) (the loss's logits stay float32); compare it with
the bf16 matmul rate, on CPUs that have avx512_bf16 or AMX. ``--malloc retain`` applies
jtm.allocator.retain_freed_memory first (benchmarks/allocator.py compares allocators side by side).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from jtm.allocator import retain_freed_memory
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder, CPCLoss, sample_negatives
from jtm.models.cpc_reference import naive_cpc_loss

CONFIGS = {
    # the reference default: SincNet encoder, 512 hidden, causal transformer context
    "default": dict(encoder="sinc", encoder_dim=512, context="transformer", context_dim=512),
    # CPC_audio-like small model: conv encoder, GRU context, 256 hidden
    "conv-gru-256": dict(encoder="conv", encoder_dim=256, context="gru", context_dim=256),
    # jtm demo's model (DemoConfig): Gabor filterbank, GRU context, 128 hidden, cosine score, spectral targets
    "demo": dict(encoder="gabor", encoder_dim=128, context="gru", context_dim=128, norm="batch", score="cosine",
                 target="frontend"),
    # for unit tests only
    "tiny": dict(encoder="conv", encoder_dim=16, context="gru", context_dim=16, predict_steps=3, negatives=8),
}


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> float:
    """Best of 3 trials: the machine's fp32 (or bf16) GEMM rate, the denominator of MFU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best / 1e9


def _step_fn(model: CPCEncoder, criterion: CPCLoss, optimizer, wave, negative_idx, naive: bool,
             precision: str = "32"):
    def step():
        optimizer.zero_grad(set_to_none=True)
        # what jtm pretrain's step runs: targets (z or spectral), contexts and the loss, all under the autocast
        # that Lightning's bf16-mixed puts around the training step
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            z, c = model.cpc_inputs(wave)
            if naive:
                out = naive_cpc_loss(criterion.weight, criterion.bias, c, z, negative_idx, criterion.config.reverse)
            else:
                out = criterion(c, z, negative_idx)
        out.loss.backward()
        optimizer.step()
        return out
    return step


def _time(step, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return times


def model_flops(model: CPCEncoder, config: CPCConfig, wave: torch.Tensor) -> float:
    """FLOPs a CPC step needs: encoder + context forward and backward (counted), then the K predictors and the
    1 + N scores of each of the B K T' predictions (forward 2 D each, backward twice that)."""
    with FlopCounterMode(display=False) as counter:
        z, c = model.cpc_inputs(wave)
        (z.sum() + c.sum()).backward()
    model.zero_grad(set_to_none=True)
    batch, frames = z.shape[:2]
    positions, k = frames - config.predict_steps, config.predict_steps
    predictors = 2 * batch * positions * config.context_dim * k * config.target_dim
    scores = 2 * batch * k * positions * (1 + config.negatives) * config.target_dim
    return counter.get_total_flops() + 3 * (predictors + scores)


def bf16_loss_difference(model: CPCEncoder, criterion: CPCLoss, wave, negative_idx) -> float:
    """|loss_bf16 - loss_fp32| / loss_fp32 on one batch with the same weights and negatives."""
    with torch.no_grad():
        fp32 = criterion(*reversed(model.cpc_inputs(wave)), negative_idx).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = criterion(*reversed(model.cpc_inputs(wave)), negative_idx).loss
    return abs(float(bf16) - float(fp32)) / float(fp32)


def run(config_name: str, steps: int = 10, warmup: int = 2, batch: int = 8, window: int = 20480,
        naive: bool = True, naive_steps: int = 3, seed: int = 0, matmul_size: int = 2048,
        precision: str = "32", malloc: str = "default") -> dict:
    """Benchmark one configuration in this process and return the result as a dict."""
    retained = retain_freed_memory() if malloc == "retain" else False
    torch.manual_seed(seed)
    config = CPCConfig(**CONFIGS[config_name])
    model, criterion = CPCEncoder(config), CPCLoss(config)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(criterion.parameters()), lr=2e-4)
    wave = torch.randn(batch, window)
    frames = window // 160
    negative_idx = sample_negatives(batch, frames, frames - config.predict_steps, config.negatives)
    step = _step_fn(model, criterion, optimizer, wave, negative_idx, naive=False, precision=precision)

    needed = model_flops(model, config, wave)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    peak = matmul_gflops(torch.float32, matmul_size)
    times = _time(step, steps, warmup)
    peak = max(peak, matmul_gflops(torch.float32, matmul_size))
    median = statistics.median(times)
    result = {
        "config": config_name, **CONFIGS[config_name], "batch": batch, "window": window,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": precision,
        "malloc": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else
                  ("glibc-retain" if retained else "glibc"),
        "ms_step_median": round(median, 1), "ms_step_min": round(min(times), 1), "ms_step_max": round(max(times), 1),
        "windows_per_s": round(batch / (median / 1000), 2),
        "model_gflop_per_step": round(needed / 1e9, 2),
        "executed_gflop_per_step": round(flops / 1e9, 2),
        "model_gflops": round(needed / 1e9 / (median / 1000), 1),
        "matmul_fp32_gflops": round(peak, 1),
        "matmul_bf16_gflops": round(matmul_gflops(torch.bfloat16, matmul_size, repeats=3), 1),
    }
    # MFU against the peak of the precision the matmuls run in
    peak_used = result["matmul_bf16_gflops"] if precision == "bf16" else peak
    result["mfu"] = round(needed / 1e9 / (median / 1000) / peak_used, 3)
    result["executed_fraction_of_peak"] = round(flops / 1e9 / (median / 1000) / peak_used, 3)
    if precision == "bf16":
        result["bf16_loss_rel_diff"] = float(f"{bf16_loss_difference(model, criterion, wave, negative_idx):.3g}")
    # peak RSS of the efficient step, read before the naive step (which needs GBs) can raise it
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if naive:
        naive_times = _time(_step_fn(model, criterion, optimizer, wave, negative_idx, naive=True), naive_steps, 1)
        result["naive_ms_step_median"] = round(statistics.median(naive_times), 1)
        result["naive_over_efficient"] = round(statistics.median(naive_times) / median, 2)
        result["naive_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["load_average_1min"] = round(os.getloadavg()[0], 2)  # other processes competing for the cores
    result["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "unset")  # moves small-op steps by a third
    return result


def run_subprocess(config_name: str, flags: list[str] = (), env: dict[str, str] | None = None) -> dict:
    """This benchmark on one configuration in a fresh process (its own peak RSS, allocator and precision); the result.

    ``flags``: more command-line flags (``--steps``, ``--malloc``, ...); ``env``: additions to the environment."""
    cmd = [sys.executable, __file__, "--config", config_name, *flags]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), help="run one configuration in this process")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=20480)
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmuls timed for the peak")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--malloc", choices=("default", "retain"), default="default",
                        help="retain: jtm.allocator.retain_freed_memory() before the model is built")
    args = parser.parse_args(argv)
    if args.config:
        print(json.dumps(run(args.config, args.steps, args.warmup, batch=args.batch, window=args.window,
                             naive=not args.no_naive, matmul_size=args.matmul_size, precision=args.precision,
                             malloc=args.malloc)), flush=True)
        return
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--precision", args.precision,
             "--malloc", args.malloc, *(["--no-naive"] if args.no_naive else [])]
    for name in ("default", "demo", "conv-gru-256"):
        print(json.dumps(run_subprocess(name, flags)), flush=True)


if __name__ == "__main__":
    main()

"""The speed settings keep their promises: glibc keeps freed pages, bf16 leaves the CPC loss as it was."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from jtm.allocator import retain_freed_memory
from jtm.hardware import BF16_FLAGS, cpu_flags, cpu_has_bf16
from jtm.models.config import CPCConfig
from jtm.models.cpc import CPCEncoder, CPCLoss, sample_negatives

# A "step" that allocates and frees 180 MB of activations of mixed sizes, ten times: the page faults of the
# last three steps (the first five or so find the heap's shape; it settles at about twice the peak).
_FAULTS = """
import resource, sys, torch
from jtm.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16 << 20); b = torch.ones(9 << 20); c = a[: 9 << 20] + b; del a; d = torch.ones(20 << 20)
    del b, c, d
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[7:]))
"""


def _refault(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_retained_memory_is_reused_without_page_faults():
    """Once warm, a step reuses the pages of the step before: ~0 faults instead of one per fresh 4 kB page."""
    applied, retained = _refault("retain")
    _, default = _refault("default")
    assert applied == "True"
    assert default > 3 * 50_000  # glibc as shipped: every step's large blocks are fresh pages again
    assert retained < default / 20


def test_jtm_malloc_default_turns_it_off(monkeypatch):
    monkeypatch.setenv("JTM_MALLOC", "default")
    assert retain_freed_memory() is False


def test_bf16_flags_come_from_cpuinfo():
    assert cpu_has_bf16() == any(flag in cpu_flags() for flag in BF16_FLAGS)


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_cpc_loss_under_bf16_autocast_matches_fp32(score):
    """bf16 autocast (jtm pretrain --precision bf16-mixed, the default where the CPU has bf16) keeps the loss and
    its gradients within bf16's rounding of the fp32 figures."""
    torch.manual_seed(0)
    cfg = CPCConfig(encoder="conv", encoder_dim=32, context="gru", context_dim=32, predict_steps=4, negatives=16,
                    score=score)
    model, criterion = CPCEncoder(cfg), CPCLoss(cfg)
    wave = torch.randn(4, 6400)
    idx = sample_negatives(4, 40, 36, 16, torch.Generator().manual_seed(0))

    def loss_and_grad(bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z, c = model(wave)
            loss = criterion(c, z, idx).loss
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.detach(), grad

    loss32, grad32 = loss_and_grad(False)
    loss16, grad16 = loss_and_grad(True)
    assert loss16.dtype == torch.float32  # the logits and their softmax are computed in fp32
    assert abs(float(loss16 - loss32)) / float(loss32) < 1e-2
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cosine > 0.98


def test_bf16_autocast_keeps_the_loss_within_bf16_rounding_and_the_dot_score_in_float32():
    """Under bf16 autocast (jtm pretrain's precision where the CPU has bf16) the cosine loss scores its negatives
    with a bf16 product, logits bounded by 1 / temperature; the loss, accuracy and gradients stay those of float32
    within bf16's rounding. The dot score's logits are unbounded, so it stays float32 throughout."""
    torch.manual_seed(0)
    c = torch.randn(4, 40, 32, requires_grad=True)
    z = torch.randn(4, 40, 64, requires_grad=True)
    idx = sample_negatives(4, 40, 36, 32, generator=torch.Generator().manual_seed(0))
    for score, tolerance, reverse in (("cosine", 1e-3, False), ("cosine", 1e-3, True), ("dot", 0.0, False)):
        criterion = CPCLoss(CPCConfig(encoder_dim=64, context_dim=32, predict_steps=4, negatives=32, score=score,
                                      reverse=reverse))
        exact = criterion(c, z, idx)
        exact_grads = torch.autograd.grad(exact.loss, [c, z, criterion.weight])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = criterion(c, z, idx)
        mixed_grads = torch.autograd.grad(mixed.loss, [c, z, criterion.weight])
        assert mixed.loss.dtype == torch.float32
        torch.testing.assert_close(mixed.loss_per_step, exact.loss_per_step, atol=tolerance, rtol=0)
        torch.testing.assert_close(mixed.acc_per_step, exact.acc_per_step, atol=0.02 if tolerance else 0.0, rtol=0)
        for a, b in zip(mixed_grads, exact_grads):
            assert (a - b).norm() <= (0.01 if tolerance else 0.0) * b.norm(), score


def test_study_and_demo_pin_mkl_rounding_before_torch_computes(tmp_path):
    """``jtm study`` and ``jtm demo`` set MKL_CBWR=AUTO,STRICT (alignment-independent results) unless the user set
    it, early enough for MKL to obey: checked in a fresh process through MKL's own query, after a matmul."""
    from jtm.hardware import REPRODUCIBLE_MKL

    probe = """
import ctypes, os, sys
from jtm.hardware import pin_mkl_rounding
if sys.argv[1] == "pin":
    pin_mkl_rounding()
import torch
torch.randn(64, 64) @ torch.randn(64, 64)
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
query = getattr(lib, "mkl_serv_cbwr_get", None)
print(os.environ.get("MKL_CBWR"), -1 if query is None else query(1))
"""
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    run = lambda *args, **kw: subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                                             check=True, **kw).stdout.split()
    pinned, plain = run("pin", env=env), run("no", env=env)
    assert pinned[0] == REPRODUCIBLE_MKL and plain[0] == "None"
    if pinned[1] == "-1":
        pytest.skip("this torch build does not expose MKL's mode query")
    assert pinned[1] == "2" and plain[1] != "2"  # MKL_CBWR_AUTO in force only when pinned
    assert run("pin", env={**env, "MKL_CBWR": "COMPATIBLE"})[0] == "COMPATIBLE"  # the user's choice wins


def test_openmp_threads_spin_only_on_a_quiet_machine(monkeypatch):
    """The CLI lets OpenMP threads spin (ACTIVE) only when its cores are free at start: with a busy process on
    every core they sleep between parallel regions (PASSIVE), and a user's OMP_WAIT_POLICY always wins."""
    from jtm.hardware import busy_cores, choose_openmp_wait_policy, usable_cpus

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert choose_openmp_wait_policy() == "ACTIVE"
    cpus = sorted(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
                for cpu in cpus]
    try:
        time.sleep(0.5)  # past the interpreters' start-up
        assert busy_cores(0.3) > 0.7 * usable_cpus()
        monkeypatch.delenv("OMP_WAIT_POLICY")
        assert choose_openmp_wait_policy() == "PASSIVE"
    finally:
        for p in spinners:
            p.kill()
            p.wait()

"""The efficient CPC loss equals CPC_audio's naive formulation, and CPC learns a simple task."""
from __future__ import annotations

import math

import pytest
import torch

from jtm.models import CPCConfig, CPCEncoder, CPCLoss, sample_negatives
from jtm.models.cpc_reference import naive_cpc_loss


@pytest.mark.parametrize("reverse", [False, True])
def test_efficient_loss_equals_naive_with_gradients(reverse):
    torch.manual_seed(0)
    config = CPCConfig(encoder_dim=12, context_dim=10, predict_steps=4, negatives=7, reverse=reverse)
    criterion = CPCLoss(config)
    c = torch.randn(3, 20, 10, requires_grad=True)
    z = torch.randn(3, 20, 12, requires_grad=True)
    idx = sample_negatives(3, 20, 16, 7, generator=torch.Generator().manual_seed(1))
    idx[0, 0, 0] = 0 * 20 + 0 + 1  # a negative that is the positive itself: both must count the tie the same way

    fast = criterion(c, z, idx)
    grads_fast = torch.autograd.grad(fast.loss, [c, z, criterion.weight, criterion.bias])
    slow = naive_cpc_loss(criterion.weight, criterion.bias, c, z, idx, reverse=reverse)
    grads_slow = torch.autograd.grad(slow.loss, [c, z, criterion.weight, criterion.bias])

    assert fast.loss_per_step.shape == fast.acc_per_step.shape == (4,)
    torch.testing.assert_close(fast.loss_per_step, slow.loss_per_step, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.acc_per_step, slow.acc_per_step, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.loss, slow.loss, atol=1e-5, rtol=0)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_random_features_give_chance_loss():
    config = CPCConfig(encoder_dim=8, context_dim=8, predict_steps=2, negatives=15)
    criterion = CPCLoss(config)
    with torch.no_grad():
        out = criterion(torch.zeros(2, 10, 8), torch.randn(2, 10, 8))
        criterion.bias.zero_()
        out = criterion(torch.zeros(2, 10, 8), torch.randn(2, 10, 8))
    torch.testing.assert_close(out.loss, torch.tensor(math.log(16.0)))  # all logits equal


def test_loss_rejects_bad_shapes():
    criterion = CPCLoss(CPCConfig(encoder_dim=8, context_dim=8, predict_steps=12))
    with pytest.raises(ValueError, match="need F > K"):
        criterion(torch.randn(1, 12, 8), torch.randn(1, 12, 8))
    with pytest.raises(ValueError, match="negative_idx"):
        criterion(torch.randn(1, 20, 8), torch.randn(1, 20, 8), torch.zeros(1, 5, 3, dtype=torch.long))


def test_cpc_learns_sinusoid_mixtures():
    """A tiny model on random 2-tone mixtures: k=1 accuracy must rise clearly above chance 1 / (1 + N).

    Uses batch norm: with per-frame channel norm this toy task (pure tones, 150 steps) stayed at chance.
    """
    torch.manual_seed(0)
    config = CPCConfig(encoder_dim=32, context_dim=32, predict_steps=2, negatives=16, norm="batch")
    model, criterion = CPCEncoder(config), CPCLoss(config)
    optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=3e-3)
    t = torch.arange(160 * 16) / 16000

    accuracy = []
    for step in range(150):
        # each window is a different, stationary mixture, so its future frames are predictable from its past
        freqs = 100 + 3000 * torch.rand(16, 2, 1)
        wave = torch.sin(2 * math.pi * freqs * t + 6.3 * torch.rand(16, 2, 1)).sum(1) * 0.5
        z, c = model(wave)
        out = criterion(c, z)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        accuracy.append(out.acc_per_step[0].item())
    chance = 1 / (1 + config.negatives)
    assert sum(accuracy[:10]) / 10 < 3 * chance
    assert sum(accuracy[-25:]) / 25 > 3 * chance

"""The efficient CPC loss equals CPC_audio's naive formulation, and CPC learns a simple task."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jtm.models import CPCConfig, CPCEncoder, CPCLoss, CPCOutput, sample_negatives
from jtm.models.cpc_reference import naive_cpc_loss


def positive_index(batch: int, frames: int, k_steps: int) -> torch.Tensor:
    """(B, K, T', 1) bank index b F + t + k of the positive of (b, t, k), as CPCLoss defines it."""
    positions = frames - k_steps
    b = torch.arange(batch).view(-1, 1, 1, 1)
    k = torch.arange(1, k_steps + 1).view(1, -1, 1, 1)
    t = torch.arange(positions).view(1, 1, -1, 1)
    return b * frames + t + k


def naive_loss_without_collisions(weight, bias, c, z, negative_idx, reverse=False,
                                  temperature: float | None = None) -> CPCOutput:
    """CPC_audio's loss row by row, each (b, t, k) scored only against its negatives that are not its positive.

    A python loop over every (b, k, t): slow, but the removal is literal (fewer candidates), not a mask.
    """
    k_steps = weight.shape[0]
    if reverse:
        c, z = c.flip(1), z.flip(1)
    batch, frames, de = z.shape
    positions = frames - k_steps
    bank = z.reshape(batch * frames, de)
    losses, accuracies = [], []
    for k in range(1, k_steps + 1):
        row_losses, row_hits = [], []
        for b in range(batch):
            for t in range(positions):
                positive = b * frames + t + k
                kept = [int(i) for i in negative_idx[b, t] if int(i) != positive]
                candidates = bank[[positive, *kept]]                                  # (1 + N', De)
                prediction = F.linear(c[b, t], weight[k - 1], bias[k - 1])           # (De,)
                if temperature is None:
                    logits = (candidates * prediction).mean(dim=1)                   # (1 + N',)
                else:
                    logits = F.cosine_similarity(candidates, prediction.unsqueeze(0), dim=1) / temperature
                row_losses.append(torch.logsumexp(logits, dim=0) - logits[0])
                row_hits.append(float(logits.argmax() == 0))
        losses.append(torch.stack(row_losses).mean())
        accuracies.append(torch.tensor(sum(row_hits) / len(row_hits)))
    loss_per_step = torch.stack(losses)
    return CPCOutput(loss_per_step.mean(), loss_per_step, torch.stack(accuracies))


def assert_same_loss_and_gradients(criterion, c, z, idx, reference) -> None:
    fast = criterion(c, z, idx)
    grads_fast = torch.autograd.grad(fast.loss, [c, z, criterion.weight, criterion.bias])
    slow = reference(criterion.weight, criterion.bias, c, z, idx, reverse=criterion.config.reverse)
    grads_slow = torch.autograd.grad(slow.loss, [c, z, criterion.weight, criterion.bias])
    assert fast.loss_per_step.shape == fast.acc_per_step.shape == (criterion.config.predict_steps,)
    torch.testing.assert_close(fast.loss_per_step, slow.loss_per_step, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.acc_per_step, slow.acc_per_step.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.loss, slow.loss, atol=1e-5, rtol=0)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_efficient_loss_equals_naive_with_gradients(reverse):
    """Without collisions the loss is exactly CPC_audio's (the reference in jtm.models.cpc_reference)."""
    torch.manual_seed(0)
    config = CPCConfig(encoder_dim=12, context_dim=10, predict_steps=4, negatives=7, reverse=reverse)
    criterion = CPCLoss(config)
    c = torch.randn(3, 20, 10, requires_grad=True)
    z = torch.randn(3, 20, 12, requires_grad=True)
    idx = sample_negatives(3, 20, 16, 7, generator=torch.Generator().manual_seed(1))
    # move every negative that is a positive for some k onto the query frame b F + t, which never is one
    collides = (idx.unsqueeze(1) == positive_index(3, 20, 4)).any(dim=1)
    query = (torch.arange(3).view(-1, 1, 1) * 20 + torch.arange(16).view(1, -1, 1)).expand_as(idx)
    idx = torch.where(collides, query, idx)
    assert_same_loss_and_gradients(criterion, c, z, idx, naive_cpc_loss)


@pytest.mark.parametrize("reverse", [False, True])
def test_negatives_equal_to_the_positive_are_left_out(reverse):
    torch.manual_seed(0)
    config = CPCConfig(encoder_dim=12, context_dim=10, predict_steps=4, negatives=7, reverse=reverse)
    criterion = CPCLoss(config)
    c = torch.randn(3, 20, 10, requires_grad=True)
    z = torch.randn(3, 20, 12, requires_grad=True)
    idx = sample_negatives(3, 20, 16, 7, generator=torch.Generator().manual_seed(1))
    # deliberate collisions: the positive of step k at several (b, t), once, twice, and in every slot
    for b, t, k, slots in [(0, 0, 1, [0]), (0, 5, 2, [1, 4]), (1, 3, 4, [2]), (2, 15, 3, list(range(7))),
                           (2, 0, 1, [6]), (1, 9, 1, [3, 5])]:
        idx[b, t, slots] = b * 20 + t + k
    assert_same_loss_and_gradients(criterion, c, z, idx, naive_loss_without_collisions)


def test_all_negatives_removed_leaves_zero_loss_and_finite_gradients():
    config = CPCConfig(encoder_dim=6, context_dim=5, predict_steps=1, negatives=4)
    criterion = CPCLoss(config)
    c = torch.randn(2, 9, 5, requires_grad=True)
    z = torch.randn(2, 9, 6, requires_grad=True)
    idx = positive_index(2, 9, 1)[:, 0].expand(2, 8, 4).clone()  # every negative is the positive itself
    out = criterion(c, z, idx)
    assert out.loss.item() == 0.0 and out.acc_per_step.item() == 1.0
    for grad in torch.autograd.grad(out.loss, [c, z, criterion.weight]):
        assert torch.isfinite(grad).all() and (grad == 0).all()


@pytest.mark.parametrize("negatives_from", ["batch", "window"])
def test_sample_negatives_sources(negatives_from):
    gen = torch.Generator().manual_seed(0)
    idx = sample_negatives(4, 50, 38, 64, generator=gen, negatives_from=negatives_from)
    assert idx.shape == (4, 38, 64) and idx.dtype == torch.long
    window = idx // 50
    if negatives_from == "window":
        assert (window == torch.arange(4).view(-1, 1, 1)).all()  # every index in b F .. b F + F - 1
        assert len(torch.unique(idx[2] % 50)) == 50  # and all of the window's frames are drawn
    else:
        assert idx.min() >= 0 and idx.max() < 200
        assert (window != torch.arange(4).view(-1, 1, 1)).any()  # draws cross windows
    with pytest.raises(ValueError, match="negatives_from"):
        sample_negatives(4, 50, 38, 64, negatives_from="track")


def test_loss_samples_negatives_from_the_configured_source():
    config = CPCConfig(encoder_dim=8, context_dim=8, predict_steps=2, negatives=5, negatives_from="window")
    out = CPCLoss(config)(torch.randn(2, 10, 8), torch.randn(2, 10, 8), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="negatives_from"):
        CPCConfig(negatives_from="track")
    legacy = {k: v for k, v in CPCConfig().to_dict().items() if k not in ("negatives_from", "gabor_filters",
                                                                        "gabor_kernel")}
    assert CPCConfig.from_dict(legacy).negatives_from == "batch"  # config.json from before the field


def test_random_features_give_chance_loss():
    config = CPCConfig(encoder_dim=8, context_dim=8, predict_steps=2, negatives=15)
    criterion = CPCLoss(config)
    idx = sample_negatives(2, 10, 8, 15, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = criterion(torch.zeros(2, 10, 8), torch.randn(2, 10, 8))
        criterion.bias.zero_()
        out = criterion(torch.zeros(2, 10, 8), torch.randn(2, 10, 8), idx)
    # all logits equal: log(1 + N) per (b, t, k), N counting only the negatives that are not the positive
    kept = (idx.unsqueeze(1) != positive_index(2, 10, 2)).sum(dim=3)  # (B, K, T')
    torch.testing.assert_close(out.loss, torch.log1p(kept.double()).mean().float())


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


def test_cosine_score_equals_naive_with_gradients():
    """score='cosine': every candidate scored by cos(prediction, z) / temperature, collisions still dropped."""
    torch.manual_seed(0)
    config = CPCConfig(encoder_dim=12, context_dim=10, predict_steps=3, negatives=6, score="cosine", temperature=0.2)
    criterion = CPCLoss(config)
    c = torch.randn(2, 15, 10, requires_grad=True)
    z = torch.randn(2, 15, 12, requires_grad=True)
    idx = sample_negatives(2, 15, 12, 6, generator=torch.Generator().manual_seed(3))
    idx[0, 0, 0] = 1  # the positive of (b=0, t=0, k=1): a collision
    reference = lambda *a, **kw: naive_loss_without_collisions(*a, **kw, temperature=0.2)  # noqa: E731
    assert_same_loss_and_gradients(criterion, c, z, idx, reference)

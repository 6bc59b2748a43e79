"""The CPC loss written the obvious way, following CPC_audio's ``CPCUnsupersivedCriterion`` step by step.

It materialises, for every step k, the candidates (B, 1 + N, T', D) (the positive then the N negatives),
and scores them by the mean over features of prediction * candidate. Memory and time grow with
B N T' D, which is why :class:`jtm.models.cpc.CPCLoss` does not do this; it exists to check that loss
(tests) and to measure how much faster it is (benchmarks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from jtm.models.cpc import CPCOutput


def naive_cpc_loss(weight: Tensor, bias: Tensor, c: Tensor, z: Tensor, negative_idx: Tensor,
                   reverse: bool = False) -> CPCOutput:
    """InfoNCE with per-step heads ``weight`` (K, De, Dc), ``bias`` (K, De) — e.g. a CPCLoss's parameters.

    c (B, F, Dc), z (B, F, De), negative_idx (B, T' = F - K, N) indices into the flattened (B F) frames.
    """
    k_steps = weight.shape[0]
    if reverse:
        c, z = c.flip(1), z.flip(1)
    batch, frames, de = z.shape
    positions = frames - k_steps
    n = negative_idx.shape[-1]
    # CPC_audio: negatives gathered once from the flattened batch, (B, N, T', De), shared by all k
    negatives = z.reshape(batch * frames, de)[negative_idx.reshape(-1)].view(batch, positions, n, de)
    negatives = negatives.permute(0, 2, 1, 3)
    context = c[:, :positions]
    losses, accuracies = [], []
    for k in range(1, k_steps + 1):
        positive = z[:, k : k + positions].unsqueeze(1)                         # (B, 1, T', De)
        candidates = torch.cat([positive, negatives], dim=1)                    # (B, 1 + N, T', De)
        prediction = F.linear(context, weight[k - 1], bias[k - 1]).unsqueeze(1)  # (B, 1, T', De)
        scores = (prediction * candidates).mean(dim=3)                          # (B, 1 + N, T')
        logits = scores.permute(0, 2, 1).reshape(-1, 1 + n)                     # (B T', 1 + N)
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        losses.append(F.cross_entropy(logits, labels))
        accuracies.append((logits.argmax(dim=1) == 0).float().mean().detach())
    loss_per_step = torch.stack(losses)
    return CPCOutput(loss_per_step.mean(), loss_per_step, torch.stack(accuracies))

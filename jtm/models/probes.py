"""Downstream probes on frozen (or fine-tuned) CPC features.

Frame-level (``pool=False``): (B, F, D) -> (B, F, n_out), e.g. transcription logits per 10 ms frame.
Clip-level (``pool=True``): mean over the F frames first, (B, F, D) -> (B, n_out), e.g. composer or
ensemble classification of a window. Mean pooling over time happens before the probe's layers, so a
pooled linear probe is a linear function of the average feature.
"""
from __future__ import annotations

from torch import Tensor, nn


class LinearProbe(nn.Module):
    """One linear layer: the standard measure of how linearly decodable a representation is."""

    def __init__(self, in_dim: int, n_out: int, pool: bool = False) -> None:
        super().__init__()
        if in_dim < 1 or n_out < 1:
            raise ValueError(f"in_dim and n_out must be positive, got {in_dim}, {n_out}")
        self.pool = pool
        self.linear = nn.Linear(in_dim, n_out)

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, D) -> (B, F, n_out), or (B, n_out) when ``pool``."""
        return self.linear(_pool(x) if self.pool else x)


class MLPProbe(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, dropout: float = 0.1, pool: bool = False) -> None:
        super().__init__()
        if in_dim < 1 or n_out < 1 or hidden < 1:
            raise ValueError(f"in_dim, n_out and hidden must be positive, got {in_dim}, {n_out}, {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.pool = pool
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, D) -> (B, F, n_out), or (B, n_out) when ``pool``."""
        return self.net(_pool(x) if self.pool else x)


def _pool(x: Tensor) -> Tensor:
    if x.dim() != 3:
        raise ValueError(f"pooled probes expect (B, F, D) features, got shape {tuple(x.shape)}")
    return x.mean(dim=1)


def build_probe(kind: str, in_dim: int, n_out: int, pool: bool = False, **kwargs) -> nn.Module:
    """'linear' -> LinearProbe, 'mlp' -> MLPProbe(hidden=512, dropout=0.1 unless given in kwargs)."""
    if kind == "linear":
        if kwargs:
            raise ValueError(f"a linear probe takes no options, got {sorted(kwargs)}")
        return LinearProbe(in_dim, n_out, pool=pool)
    if kind == "mlp":
        return MLPProbe(in_dim, n_out, pool=pool, **kwargs)
    raise ValueError(f"unknown probe kind {kind!r}: expected 'linear' or 'mlp'")

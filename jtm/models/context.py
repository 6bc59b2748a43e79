"""Autoregressive context networks: (B, F, D_in) encoded frames -> (B, F, D) contexts, causal in F.

Every context module has the same call: ``forward(x, state=None) -> (c, state)``. Recurrent networks
return their final hidden state so that long inputs can be processed in chunks exactly
(:meth:`jtm.models.cpc.CPCEncoder.embed`); the transformer has no carried state and returns None.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RECURRENT = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class RecurrentContext(nn.Module):
    """A batch-first GRU / LSTM / tanh-RNN, CPC_audio's context network (GRU by default)."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        if not rnn.batch_first:
            raise ValueError("RecurrentContext needs a batch_first recurrent network")
        self.rnn = rnn

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, object]:
        """x (B, F, D_in) -> c (B, F, hidden), and the final state (h, or (h, c) for an LSTM)."""
        return self.rnn(x, state)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> Tensor:
    """(length, dim) absolute position encodings of Vaswani et al.: defined for any length, nothing learned."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.to(dtype or torch.float32)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where frame t sees frames <= t (SDPA with ``is_causal=True``)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, D) -> (B, F, D)."""
        batch, frames, dim = x.shape
        # (B, F, 3, H, Dh) -> three (B, H, F, Dh)
        q, k, v = self.qkv(x).view(batch, frames, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, frames, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) (GPT-2 style, stable without warm-up tricks)."""

    def __init__(self, attention: CausalSelfAttention, mlp: nn.Module, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim), attention
        self.norm2, self.mlp = nn.LayerNorm(dim), mlp
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attention(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class CausalTransformer(nn.Module):
    """Input projection + sinusoidal positions + causal pre-norm blocks + final LayerNorm.

    Sinusoidal (not learned) positions so that any length works, e.g. long chunks in ``embed``.
    """

    def __init__(self, in_proj: nn.Module, blocks: nn.ModuleList, dim: int) -> None:
        super().__init__()
        self.in_proj, self.blocks, self.norm = in_proj, blocks, nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, None]:
        """x (B, F, D_in) -> c (B, F, dim); ``state`` is accepted for a uniform interface and ignored."""
        x = self.in_proj(x)
        x = x + sinusoidal_positions(x.shape[1], self.dim, x.device, x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), None


def causal_transformer(in_dim: int, dim: int, layers: int, heads: int, dropout: float = 0.0) -> CausalTransformer:
    blocks = nn.ModuleList(
        TransformerBlock(
            CausalSelfAttention(dim, heads, dropout),
            nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)),
            dim,
            dropout,
        )
        for _ in range(layers)
    )
    return CausalTransformer(nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity(), blocks, dim)


def recurrent_context(kind: str, in_dim: int, dim: int, layers: int, dropout: float = 0.0) -> RecurrentContext:
    if kind not in RECURRENT:
        raise ValueError(f"unknown recurrent context {kind!r}: expected one of {sorted(RECURRENT)}")
    # torch applies RNN dropout between layers only, and warns when there is a single layer
    return RecurrentContext(RECURRENT[kind](in_dim, dim, num_layers=layers, batch_first=True,
                                            dropout=dropout if layers > 1 else 0.0))


def build_context(config) -> nn.Module:
    """The context network a :class:`~jtm.models.config.CPCConfig` describes (input: encoder_dim)."""
    if config.context == "transformer":
        return causal_transformer(config.encoder_dim, config.context_dim, config.context_layers, config.heads,
                                  config.dropout)
    return recurrent_context(config.context, config.encoder_dim, config.context_dim, config.context_layers,
                             config.dropout)

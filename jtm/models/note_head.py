"""A note-aware transcription head in the manner of Onsets and Frames: onset and frame logits per pitch, with
temporal context over frames, on top of any frame features (CPC context or encoder, log-mel, ...).

``NoteHead.forward(x (B, T, D)) -> NoteLogits(onset (B, T, P), frame (B, T, P))``, P = 128 pitches.

- A shared per-frame linear projection D -> ``hidden``, with no nonlinearity after it: while the context
  networks' residual branches are small, the head is a (rank ``hidden``) linear probe, which a few hundred steps
  already train well; a standardisation of the inputs folds into this layer (:meth:`NoteHead.fold_standardisation`).
- Two branches, each a temporal context network over frames: ``conv`` (``layers`` residual 1-D convolutions of
  width ``kernel``, non-causal: frame t sees ``layers * (kernel - 1) / 2`` frames on each side) or ``gru`` (one
  bidirectional GRU layer, the whole window on both sides).
- The onset branch predicts where notes start; the frame branch predicts which pitches sound and is conditioned
  on the onset branch's probabilities (detached, as in Onsets and Frames: the frame loss does not train the
  onset detector).

Files: ``save_pretrained(dir, extra)`` writes ``model.safetensors`` and ``config.json`` =
``{"format": "jtm-note-head", "version": 1, "config": {"head": {in_dim, n_pitches, hidden, context, layers,
kernel, dropout}, ...extra}}``; ``from_pretrained(dir)`` reads them back (never pickle).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from jtm.configs import MAX_OUTPUTS, MAX_WIDTH

from jtm.errors import ModelFileError
from jtm.models.pretrained import (load_weights_into, read_pretrained_config, read_pretrained_weights,
                                   save_pretrained_files)

NOTE_HEAD_FORMAT = "jtm-note-head"
NOTE_HEAD_VERSION = 1
CONTEXTS = ("conv", "gru")


class NoteLogits(NamedTuple):
    """Logits of a :class:`NoteHead`: ``onset`` and ``frame``, each (B, T, n_pitches)."""

    onset: Tensor
    frame: Tensor


@torch.no_grad()
def note_probabilities(head: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Eval-mode sigmoid probabilities (onset, frame), each (B, T, n_pitches), of a note head (any module that
    returns :class:`NoteLogits`) for features x (B, T, in_dim); the head's train/eval mode is restored."""
    was_training = head.training
    head.eval()
    try:
        logits = head(x)
    finally:
        head.train(was_training)
    return torch.sigmoid(logits.onset), torch.sigmoid(logits.frame)


class _ConvContext(nn.Module):
    """Residual 1-D convolutions over time: (B, T, H) -> (B, T, H), same length (zero padding at the edges)."""

    def __init__(self, hidden: int, layers: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        y = h.transpose(1, 2)
        for conv in self.convs:
            y = y + self.dropout(torch.relu(conv(y)))
        return y.transpose(1, 2)


class _GRUContext(nn.Module):
    """One bidirectional GRU layer: (B, T, H) -> (B, T, H) (H // 2 units per direction)."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.dropout(self.gru(h)[0])


MAX_LAYERS = 64
MAX_KERNEL = 1025
"""Ceilings of the temporal context (frames): far beyond any useful head, far below a harmful allocation."""


class NoteHead(nn.Module):
    """Onset and frame logits from frame features, with temporal context (see the module docstring)."""

    def __init__(self, in_dim: int, n_pitches: int = 128, hidden: int = 128, context: str = "conv",
                 layers: int = 2, kernel: int = 5, dropout: float = 0.1) -> None:
        super().__init__()
        if in_dim < 1 or n_pitches < 1 or hidden < 2 or layers < 1:
            raise ValueError(f"in_dim, n_pitches, layers must be >= 1 and hidden >= 2, got {in_dim}, {n_pitches}, "
                             f"{layers}, {hidden}")
        # The same ceilings as every config (jtm.configs): a hostile config.json is refused before any allocation.
        if max(in_dim, hidden) > MAX_WIDTH or n_pitches > MAX_OUTPUTS or layers > MAX_LAYERS or kernel > MAX_KERNEL:
            raise ValueError(f"note head too large: in_dim {in_dim}, hidden {hidden} (at most {MAX_WIDTH}), n_pitches "
                             f"{n_pitches} (at most {MAX_OUTPUTS}), layers {layers} (at most {MAX_LAYERS}), kernel "
                             f"{kernel} (at most {MAX_KERNEL})")
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same-length convolutions), got {kernel}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if context == "gru" and hidden % 2:
            raise ValueError(f"a bidirectional GRU needs an even hidden size, got {hidden}")
        self.config = {"in_dim": int(in_dim), "n_pitches": int(n_pitches), "hidden": int(hidden),
                       "context": context, "layers": int(layers), "kernel": int(kernel), "dropout": float(dropout)}
        self.input = nn.Linear(in_dim, hidden)
        self.onset_context = self._context()
        self.onset_out = nn.Linear(hidden, n_pitches)
        self.frame_context = self._context()
        self.frame_out = nn.Linear(hidden + n_pitches, n_pitches)

    @property
    def receptive_field(self) -> int | None:
        """Frames each output sees on each side of its own (``layers * (kernel - 1) / 2`` for the conv context;
        None for the GRU, which sees the whole input)."""
        c = self.config
        return None if c["context"] == "gru" else c["layers"] * (c["kernel"] // 2)

    def _context(self) -> nn.Module:
        c = self.config
        if c["context"] == "gru":
            return _GRUContext(c["hidden"], c["dropout"])
        return _ConvContext(c["hidden"], c["layers"], c["kernel"], c["dropout"])

    def forward(self, x: Tensor) -> NoteLogits:
        """x (B, T, in_dim) -> NoteLogits(onset (B, T, n_pitches), frame (B, T, n_pitches))."""
        if x.dim() != 3 or x.shape[-1] != self.config["in_dim"]:
            raise ValueError(f"expected features (B, T, {self.config['in_dim']}), got shape {tuple(x.shape)}")
        h = self.input(x)
        onset = self.onset_out(self.onset_context(h))
        frame_in = torch.cat([self.frame_context(h), torch.sigmoid(onset).detach()], dim=-1)
        return NoteLogits(onset, self.frame_out(frame_in))

    probabilities = note_probabilities

    @torch.no_grad()
    def fold_standardisation(self, mean: Tensor, std: Tensor) -> "NoteHead":
        """A copy that takes raw features: standardising x as ``(x - mean) / std`` (each (in_dim,)) is folded
        into the input projection (``W' = W / std``, ``b' = b - W' mean``)."""
        folded = NoteHead(**self.config)
        folded.load_state_dict(self.state_dict())
        folded.input.weight.div_(std.to(folded.input.weight))
        folded.input.bias.sub_(folded.input.weight @ mean.to(folded.input.weight))
        return folded.eval()

    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (``{"head": architecture, **extra}``) atomically.
        ``extra`` (JSON values) records what the head needs around it: decoding thresholds, the front end."""
        extra = dict(extra or {})
        if "head" in extra:
            raise ValueError("'head' is the architecture's own key in config.json")
        return save_pretrained_files(directory, self, {"head": dict(self.config), **extra},
                                     format=NOTE_HEAD_FORMAT, version=NOTE_HEAD_VERSION)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> tuple["NoteHead", dict[str, Any]]:
        """The head saved in ``directory`` (eval mode) and its ``extra`` entries; bad files raise ModelFileError."""
        directory = Path(directory)
        config = read_pretrained_config(directory, format=NOTE_HEAD_FORMAT, version=NOTE_HEAD_VERSION)
        try:
            head = cls(**config["head"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{directory / 'config.json'}: invalid note head ({type(e).__name__}: {e})") from None
        load_weights_into(head, read_pretrained_weights(directory), directory / "model.safetensors")
        return head.eval(), {k: v for k, v in config.items() if k != "head"}

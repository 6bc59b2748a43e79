"""Training under a fixed step budget, with the model selected on validation: the study's protocol.

A label-efficiency comparison is fair only when the label fraction changes nothing but the labels. So every
run gets the same number of optimizer steps (:class:`Budget`), whatever the size of its label subset; the
model is scored on the validation recordings every ``eval_every`` steps, the best weights are kept, and the
run stops early once ``patience`` validations in a row brought no improvement (HEAR's and JukeMIR's recipe).

This is a plain loop, not Lightning, on purpose: the study trains hundreds of small probes on cached tensors,
where Lightning's per-run set-up (about a second) would cost more than the training itself, and where
resuming mid-run is not worth having (a cell takes seconds; finished cells are skipped on a re-run).
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Budget:
    """How long a run may train and how it is selected."""

    steps: int = 500
    """Optimizer steps, the same at every label fraction."""
    eval_every: int = 50
    """Validate every this many steps (and after the last one)."""
    patience: int = 4
    """Stop after this many validations without improvement (0: never stop early)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.patience < 0:
            raise ValueError(f"steps and eval_every must be >= 1 and patience >= 0, got {self}")


@dataclass
class Selected:
    """The outcome of one run: the weights at its best validation score, and how it got there."""

    state: dict[str, Tensor]
    best_step: int
    val_score: float
    steps: int
    """Optimizer steps actually taken (fewer than the budget when stopped early)."""
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation score) of every validation."""


def train_selected(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[Any],
                   loss_fn: Callable[[Any], Tensor], validate: Callable[[], float], budget: Budget) -> Selected:
    """Train ``model`` for at most ``budget.steps`` steps; return the weights that scored best on validation.

    ``batches`` must not run dry before the budget does (cycle epochs). ``loss_fn(batch)`` returns the scalar
    loss of a batch in training mode; ``validate()`` returns a score where higher is better (nan counts as
    the worst), computed in eval mode without gradients. Ties keep the earlier, cheaper model.
    """
    started = time.perf_counter()
    best_score, best_step, stale = -math.inf, 0, 0
    best_state = _snapshot(model)
    curve: list[tuple[int, float]] = []
    step = 0
    while step < budget.steps:
        model.train()
        loss = loss_fn(next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % budget.eval_every and step != budget.steps:
            continue
        model.eval()
        with torch.no_grad():
            score = float(validate())
        curve.append((step, score))
        if not math.isnan(score) and score > best_score:
            best_score, best_step, stale = score, step, 0
            best_state = _snapshot(model)
        else:
            stale += 1
            if budget.patience and stale >= budget.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return Selected(best_state, best_step, best_score if best_step else math.nan, step,
                    time.perf_counter() - started, curve)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})

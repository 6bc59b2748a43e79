"""The study's protocol (jtm.training.selection): a fixed step budget, the best validation weights kept,
early stopping after ``patience`` non-improving validations, NaN never selected."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from jtm.training.selection import Budget, train_selected


class Scripted:
    """A validate() that returns the next scripted score and records the weights it was shown."""

    def __init__(self, model: nn.Module, scores: list[float]) -> None:
        self.model, self.scores, self.calls = model, list(scores), 0
        self.weights: list[torch.Tensor] = []

    def __call__(self) -> float:
        self.weights.append(self.model.weight.detach().clone())
        score = self.scores[self.calls]
        self.calls += 1
        return score


def toy(scores: list[float], budget: Budget, lr: float = 0.1):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    initial = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batches = itertools.repeat((torch.ones(4, 3), torch.full((4, 1), 5.0)))
    steps = [0]

    def loss_fn(batch):
        steps[0] += 1
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    validate = Scripted(model, scores)
    selected = train_selected(model, optimizer, batches, loss_fn, validate, budget)
    return model, initial, selected, validate, steps[0]


def test_keeps_the_weights_of_the_best_validation() -> None:
    model, initial, selected, validate, n_loss = toy([0.1, 0.5, 0.3, 0.2], Budget(steps=4, eval_every=1, patience=0))
    assert selected.best_step == 2 and selected.val_score == 0.5 and selected.steps == 4 and n_loss == 4
    assert [s for s, _ in selected.curve] == [1, 2, 3, 4] and [v for _, v in selected.curve] == [0.1, 0.5, 0.3, 0.2]
    # Every step moved the weights, so "the best" is a distinct tensor from the last one and from the start.
    assert not torch.equal(validate.weights[1], validate.weights[3])
    assert not torch.equal(validate.weights[1], initial)
    assert torch.equal(model.weight, validate.weights[1])
    assert torch.equal(selected.state["weight"], validate.weights[1])
    assert not model.training


def test_validates_every_eval_every_steps_and_after_the_last() -> None:
    _, _, selected, validate, n_loss = toy([0.1, 0.2, 0.3], Budget(steps=5, eval_every=2, patience=0))
    assert [s for s, _ in selected.curve] == [2, 4, 5] and validate.calls == 3 and n_loss == 5
    assert selected.best_step == 5 and selected.steps == 5


def test_stops_after_patience_validations_without_improvement() -> None:
    scores = [0.1, 0.5, 0.3, 0.2, 0.1, 0.9]
    model, _, selected, validate, n_loss = toy(scores, Budget(steps=6, eval_every=1, patience=2))
    assert selected.steps == 4 and n_loss == 4 and validate.calls == 4  # 0.3 and 0.2 did not beat 0.5
    assert selected.best_step == 2 and selected.val_score == 0.5
    assert torch.equal(model.weight, validate.weights[1])
    # patience counts validations in a row: an improvement resets it.
    _, _, selected, _, n_loss = toy([0.1, 0.05, 0.2, 0.1, 0.15, 0.3], Budget(steps=6, eval_every=1, patience=2))
    assert n_loss == 5 and selected.best_step == 3
    # patience=0 never stops early.
    _, _, selected, _, n_loss = toy([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], Budget(steps=6, eval_every=1, patience=0))
    assert n_loss == 6 and selected.steps == 6 and selected.best_step == 1


def test_nan_never_wins() -> None:
    nan = float("nan")
    model, _, selected, validate, _ = toy([nan, 0.2, nan, 0.1], Budget(steps=4, eval_every=1, patience=0))
    assert selected.best_step == 2 and selected.val_score == 0.2
    assert torch.equal(model.weight, validate.weights[1])
    # NaN after a real score does not displace it, whatever its position.
    _, _, selected, _, _ = toy([0.3, nan, nan, nan], Budget(steps=4, eval_every=1, patience=0))
    assert selected.best_step == 1 and selected.val_score == 0.3


def test_all_nan_keeps_the_initial_weights_and_reports_nan() -> None:
    nan = float("nan")
    model, initial, selected, _, n_loss = toy([nan, nan, nan], Budget(steps=3, eval_every=1, patience=0))
    assert n_loss == 3 and selected.best_step == 0 and math.isnan(selected.val_score)
    assert torch.equal(model.weight, initial)


def test_ties_keep_the_earlier_model() -> None:
    model, _, selected, validate, _ = toy([0.4, 0.4, 0.4], Budget(steps=3, eval_every=1, patience=0))
    assert selected.best_step == 1 and torch.equal(model.weight, validate.weights[0])


@pytest.mark.parametrize("bad", [dict(steps=0), dict(eval_every=0), dict(patience=-1)])
def test_budget_rejects_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        Budget(**bad)

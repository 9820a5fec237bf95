"""Test metrics of a model on batches of (x, y): the error rate, extendable with more."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kwh.bayes.compute import output_positions


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable) -> dict:
    """Classification error of ``model`` (eval mode) over ``data``: {"error", "correct", "n"}.

    Each batch is (x, y) with integer labels y; the model returns logits (B, classes).
    The model's train/eval flags are restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    param = next(model.parameters(), None)
    device = None if param is None else param.device
    correct = n = 0
    try:
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("evaluate needs batches of (inputs, labels)")
            x, y = batch[0].to(device), batch[1].to(device)
            logits = model(x)  # (B, classes)
            correct += int((logits.argmax(dim=1) == y).sum())
            n += int(y.numel())
    finally:
        for m, mode in modes:
            m.training = mode
    if n == 0:
        raise ValueError("evaluate got no examples; the data loader is empty")
    return {"error": 1.0 - correct / n, "correct": correct, "n": n}


@torch.no_grad()
def nonzero_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiplications by nonzero weights of every Linear and Conv2d in ``model`` for one
    example (``example``: a batch of one): each layer's nonzero weights times the output
    positions each weight is used at (kwh.bayes.output_positions). The count a zero-skipping
    engine executes; kwh.energy counts the same from the summary."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    uses = output_positions(model, example, layers)
    return sum(int(torch.count_nonzero(m.weight)) * n for m, n in zip(layers, uses))

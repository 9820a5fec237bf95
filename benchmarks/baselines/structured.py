"""Structured magnitude pruning baseline with Torch-Pruning: remove units/filters by L1 norm.

Each candidate pruning ratio (fraction of the channels of every prunable layer removed, the
classifier's outputs kept) is applied to a copy of the dense net with
``torch_pruning.pruner.MagnitudePruner`` (L1 importance, layer-wise), fine-tuned briefly, and
tested. Candidates are tried from the most aggressive down; the first whose error is at most
the target (kwh's best error) is kept, else the one with the lowest error.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from benchmarks.baselines.common import Data, test_error, train_plain, weighted_layers

RATIOS = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def prune_channels(dense: nn.Module, ratio: float, input_shape: tuple[int, ...]) -> nn.Module:
    """A physically smaller copy of ``dense`` with ``ratio`` of each layer's channels removed."""
    model = copy.deepcopy(dense).eval()
    example = torch.zeros(1, *input_shape)
    last = weighted_layers(model)[-1]
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[last])
    pruner.step()
    return model


def search(dense: nn.Module, data: Data, target_error: float, finetune_epochs: float, lr: float,
           seed: int, ratios=RATIOS) -> tuple[nn.Module, float, list[dict]]:
    """(model, ratio, tried): the most aggressive ratio that reaches ``target_error``."""
    tried, best = [], None
    for r in ratios:
        model = prune_channels(dense, r, data.input_shape)
        train_plain(model, data, finetune_epochs, lr, seed, decay=True)
        err = test_error(model, data)
        model.cpu()
        tried.append({"ratio": r, "error": err})
        if best is None or err < best[2]:
            best = (model, r, err)
        if err <= target_error:
            return model, r, tried
    return best[0], best[1], tried

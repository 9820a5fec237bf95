"""Structured magnitude pruning baseline with Torch-Pruning: remove units/filters by L1 norm.

Each candidate pruning ratio (fraction of the channels of every prunable layer removed, the
classifier's outputs kept) is applied to a copy of the dense net with
``torch_pruning.pruner.MagnitudePruner`` (L1 importance, layer-wise), fine-tuned briefly, and
tested on the validation split. Candidates are tried from the most aggressive down; the first
whose validation error is at most the target (kwh's best validation error) is kept, else the
one with the lowest.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from benchmarks.baselines.common import fit, weighted_layers
from kwh.compress import evaluate
from kwh.data import batch_loader
from kwh.modules import SelfAttention
from kwh.train import TrainData

RATIOS = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def prune_channels(dense: nn.Module, ratio: float, input_shape: tuple[int, ...]) -> nn.Module:
    """A physically smaller copy of ``dense`` with ``ratio`` of each layer's channels removed.

    The classifier's outputs are kept, and so are the heads of every kwh.modules.SelfAttention:
    Torch-Pruning's dependency graph does not see that q, k and v are split into heads by a
    reshape inside the module, so their outputs are left whole (the MLP hidden units and the
    other layers are pruned)."""
    model = copy.deepcopy(dense).eval()
    example = torch.zeros(1, *input_shape)
    ignored = [weighted_layers(model)[-1]]
    for m in model.modules():
        if isinstance(m, SelfAttention):
            ignored += [m.q, m.k, m.v, m.out]
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return model


def search(net: str, dense: nn.Module, data: TrainData, target_error: float,
           finetune_epochs: float, out_dir, seed: int, ratios=RATIOS,
           **options) -> tuple[nn.Module, float, list[dict]]:
    """(model, ratio, tried): the most aggressive ratio whose validation error reaches
    ``target_error`` (a fraction), each candidate fine-tuned by kwh.train (resumable runs in
    ``out_dir/ratio<r>``); else the candidate with the lowest validation error."""
    tried, best = [], None
    val = batch_loader(data.validation if data.validation is not None else data.train, 1000)
    for r in ratios:
        model = prune_channels(dense, r, data.input_shape)
        model = fit(net, data, Path(out_dir) / f"ratio{r}", model=model,
                    pretrain_epochs=max(1, math.ceil(finetune_epochs)), seed=seed,
                    **options).model.cpu()
        err = evaluate(model, val)["error"]
        tried.append({"ratio": r, "validation_error": err})
        if best is None or err < best[2]:
            best = (model, r, err)
        if err <= target_error:
            return model, r, tried
    return best[0], best[1], tried

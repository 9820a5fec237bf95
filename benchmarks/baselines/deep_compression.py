"""Deep Compression baseline (Han, Mao, Dally 2016): prune + retrain, k-means sharing, Huffman.

1. Iterative magnitude pruning: ``rounds`` rounds of global L1 unstructured pruning
   (masks as torch.nn.utils.parametrize parametrizations) to a kept fraction that shrinks geometrically to ``keep``, each
   followed by retraining with the mask fixed.
2. Weight sharing: per layer, 1-D k-means (sklearn, linear initialisation as in the paper)
   of the kept weights into 2**bits centroids; conv layers get ``conv_bits``, fully connected
   ``fc_bits`` (Han et al.'s LeNet settings: 8 bits conv, 5-6 bits fc; we use 8 and 5).
   The shared centroids are not fine-tuned afterwards.
3. Huffman coding of the cluster indices and of the relative sparse indices (8-bit gaps for
   conv, 5-bit for fc, Han et al. sec. 3), written to a real file (sparse_file.py).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch import nn
from torch.nn.utils import parametrize

from benchmarks.baselines import sparse_file
from benchmarks.baselines.common import fit, weighted_layers
from kwh.train import TrainData

KMEANS_FIT_MAX = 20000  # weights used to fit the centroids of a big layer (all are assigned)


class _Mask(nn.Module):
    """A fixed 0/1 mask on a weight (a torch.nn.utils.parametrize parametrization)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _mask_to(model: nn.Module, kept: int) -> None:
    """Global L1 magnitude pruning: keep the ``kept`` largest |w| over all layers."""
    layers = weighted_layers(model)
    with torch.no_grad():
        mags = torch.cat([m.weight.abs().flatten() for m in layers])  # masked weights
        keep = torch.zeros_like(mags, dtype=torch.bool)
        keep[torch.topk(mags, kept, sorted=False).indices] = True
        at = 0
        for m in layers:
            n = m.weight.numel()
            mask = keep[at:at + n].reshape(m.weight.shape).to(m.weight.dtype)
            at += n
            if parametrize.is_parametrized(m, "weight"):
                m.parametrizations.weight[0].mask.copy_(mask)
            else:
                parametrize.register_parametrization(m, "weight", _Mask(mask))


def prune_retrain(net: str, dense: nn.Module, data: TrainData, keep: float, rounds: int,
                  epochs: int, out_dir, seed: int, **options) -> nn.Module:
    """Iterative global magnitude pruning to ``keep``, each round retrained by kwh.train with
    the mask fixed (a parametrization multiplies every weight by its mask); masks made
    permanent at the end.

    ``epochs`` of retraining in all, split over the rounds (at least one each); each round is
    a resumable plain run in ``out_dir/round<r>``.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep} must be the kept weight fraction in (0, 1]")
    model = copy.deepcopy(dense)
    total = sum(m.weight.numel() for m in weighted_layers(model))
    per_round = max(1, math.ceil(epochs / rounds))
    for r in range(1, rounds + 1):
        _mask_to(model, int(round(total * keep ** (r / rounds))))  # geometric schedule to keep
        model = fit(net, data, Path(out_dir) / f"round{r}", model=model,
                    pretrain_epochs=per_round, seed=seed + r, **options).model
    model.cpu()
    for m in weighted_layers(model):
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model.eval()


def share_weights(model: nn.Module, conv_bits: int, fc_bits: int, seed: int) -> list[dict]:
    """k-means each layer's nonzero weights in place; returns per-layer symbols and codebooks."""
    out = []
    for i, m in enumerate(weighted_layers(model)):
        conv = isinstance(m, nn.Conv2d)
        bits = conv_bits if conv else fc_bits
        w = m.weight.detach().numpy().reshape(-1)
        nz = np.flatnonzero(w)
        vals = w[nz].astype(np.float64).reshape(-1, 1)  # (nnz, 1)
        k = min(1 << bits, len(np.unique(vals))) if len(vals) else 0
        symbols = np.zeros(w.size, dtype=np.int64)
        codebook = np.zeros(0, dtype=np.float32)
        if k:
            fit = vals
            if len(vals) > KMEANS_FIT_MAX:
                pick = np.random.default_rng(seed + i).choice(len(vals), KMEANS_FIT_MAX, replace=False)
                fit = vals[pick]
            k = min(k, len(np.unique(fit)))  # a subsample may hold fewer distinct values
            init = np.linspace(vals.min(), vals.max(), k).reshape(-1, 1)  # linear init
            with warnings.catch_warnings():  # ties among float32 weights: fewer clusters is fine
                warnings.simplefilter("ignore", ConvergenceWarning)
                km = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed).fit(fit)
            codebook = km.cluster_centers_.reshape(-1).astype(np.float32)
            labels = km.predict(vals)
            symbols[nz] = labels + 1  # 0 stays "pruned"
            shared = np.zeros(w.size, dtype=np.float32)
            shared[nz] = codebook[labels]
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(shared).view_as(m.weight))
        out.append({"name": f"layer{i}", "shape": list(m.weight.shape), "symbols": symbols,
                    "codebook": codebook, "bits": bits, "index_bits": 8 if conv else 5,
                    "bias": None if m.bias is None else m.bias.detach().numpy()})
    return out


def write_file(path, layers: list[dict]) -> dict:
    """The real compressed file; returns its byte counts."""
    return sparse_file.write(path, [{k: v for k, v in d.items() if v is not None and k != "bits"}
                                    for d in layers])

"""kwh rows of the table: the pretrained net through kwh.train with a prior, then kwh.compress.

Training is kwh.train.run_training from the shared dense start with kwh's defaults (Adam,
batch 100, lr decayed linearly per step to 0, log-scale parameters at the larger step, the
KL weight warmed up over the first fifth of the epochs), a checkpoint each epoch.
"""

from __future__ import annotations

import torch
from torch import nn

import kwh
from kwh.bayes import bayes_layers
from kwh.compress import CompressConfig
from kwh.data import batch_loader
from kwh.train import TrainData

from benchmarks.baselines.common import fit


def log_alphas(model: nn.Module) -> list[dict]:
    """Final log alpha of every layer with its pruning threshold."""
    out = []
    with torch.no_grad():
        for name, layer in bayes_layers(model):
            t = layer.threshold if layer.threshold is not None else layer.prior.threshold
            out.append({"layer": name, "threshold": float(t),
                        "log_alpha": layer.prior.log_alpha().detach().reshape(-1).tolist()})
    return out


def train_bayes(net: str, dense: nn.Module, prior: str, data: TrainData, epochs: int, out_dir,
                seed: int, **options) -> tuple[nn.Module, list[dict]]:
    """Bayesian copy of ``dense`` trained by kwh.train with its defaults (resumable run in
    ``out_dir``); returns (model, per-epoch history from the run's log)."""
    res = fit(net, data, out_dir, model=dense, prior=prior, epochs=epochs, seed=seed, **options)
    hist = []
    for r in res.log:
        if r.get("event") == "epoch" and r.get("phase") == "bayes":
            hist.append({"epoch": len(hist) + 1, "alive": list(r["alive"].values()),
                         "architecture": r.get("architecture"), "error": r["test_error"] / 100,
                         "val_error": r.get("val_error"), "seconds": r.get("seconds")})
    return res.model.eval().cpu(), hist


def compress_and_save(model: nn.Module, data: TrainData, path,
                      bits_search: str = "fit") -> tuple[nn.Sequential, int]:
    """kwh.compress the trained model (bits guarded on the validation split, errors on the
    test set) and write the .kwh file; returns (small model, file bytes)."""
    guard = None if data.validation is None else batch_loader(data.validation, 1000)
    small = kwh.compress(model, CompressConfig(input_shape=data.input_shape,
                                               bits_search=bits_search),
                         eval_data=batch_loader(data.test, 1000), guard_data=guard)
    nbytes = kwh.save(small, path, input_shape=data.input_shape)
    return small, int(nbytes)

"""kwh rows of the table: bayesify_ a copy of the pretrained net, train the free energy, compress.

The loop is the paper's (Louizos et al. 2017, sec. 5): Adam, batch 100, every group's lr
decayed linearly per step to 0; log-variances at lr x kwh.bayes.param_groups' multiplier;
the KL weight warmed up from 0 to 1 over the first ``warmup`` fraction of the epochs
(kwh.bayes.KLWarmup; kwh.train's default 0 -> 0.2). kwh.train.run_training starts from
random or its own pretraining only, so the shared dense start needs this small loop.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.bayes import KLWarmup, bayes_layers, param_groups

from benchmarks.baselines.common import Data, batches, test_error


def alive_units(model: nn.Module) -> list[int]:
    """Per Bayesian layer: kept input units (Linear) or kept filters (Conv2d), eval mode."""
    out = []
    with torch.no_grad():
        for _, layer in bayes_layers(model):
            w, _ = layer.eval_weight_bias()
            nz = w != 0  # (out, in) or (F, C, kh, kw)
            if isinstance(layer, kwh.bayes.BayesConv2d):
                keep = nz.flatten(1).any(1)  # filters
            else:
                keep = nz.any(0)  # input units
            out.append(int(keep.sum()))
    return out


def log_alphas(model: nn.Module) -> list[dict]:
    """Final log alpha of every layer with its pruning threshold."""
    out = []
    with torch.no_grad():
        for name, layer in bayes_layers(model):
            t = layer.threshold if layer.threshold is not None else layer.prior.threshold
            out.append({"layer": name, "threshold": float(t),
                        "log_alpha": layer.prior.log_alpha().detach().reshape(-1).tolist()})
    return out


def train_bayes(dense: nn.Module, prior: str, data: Data, epochs: int, lr: float, seed: int,
                warmup: float = 0.2, batch_size: int = 100, log=print) -> tuple[nn.Module, list[dict]]:
    """Bayesian copy of ``dense`` trained on the free energy; returns (model, per-epoch history)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(dense)
    kwh.bayesify_(model, prior)
    model.to(data.x_train.device)
    groups = param_groups(model, lr)
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.Adam(groups)
    warm = KLWarmup(0.0, warmup * epochs)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    history = [{"epoch": 0, "alive": alive_units(model), "error": test_error(model, data)}]
    step = 0
    for e in range(epochs):
        model.train()
        loss_sum = 0.0
        for k, (x, y) in enumerate(batches(data, batch_size, gen)):
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * (1 - step / total)  # linear decay to 0
            beta = warm(e + k / steps_per_epoch)
            loss = kwh.free_energy(model, F.cross_entropy(model(x), y), n, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        model.eval()
        rec = {"epoch": e + 1, "alive": alive_units(model), "error": test_error(model, data),
               "loss": loss_sum / steps_per_epoch, "kl_weight": beta}
        history.append(rec)
        log(f"  {prior} epoch {e + 1}/{epochs}: loss {rec['loss']:.4f} test error "
            f"{100 * rec['error']:.2f}% alive {rec['alive']}")
    return model.eval().cpu(), history


def compress_and_save(model: nn.Module, data: Data, path) -> tuple[nn.Sequential, int]:
    """kwh.compress the trained model and write the .kwh file; returns (small model, file bytes)."""
    small = kwh.compress(model, input_shape=data.input_shape)
    save = getattr(kwh, "save", None)
    if save is None:  # kwh.save not exported at the top level yet: the codec's own save
        from kwh.compress.codec import save
    nbytes = save(small, path, input_shape=data.input_shape)
    return small, int(nbytes)

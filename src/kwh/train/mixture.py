"""The mixture prior of a method='sws' run in its checkpoint, and load_mixture_prior.

The prior's parameters are training state like the weights: a checkpoint of the soft
weight-sharing phase holds them as "sws/<name>" tensors (means, log_vars, mix_logits) and Adam's
moments for them among the optimizer's, so a resumed run retraces the uninterrupted one.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from kwh.errors import FormatError, KwhError
from kwh.sws import MixturePrior
from kwh.train.build import SWS, build_model, new_mixture_prior
from kwh.train.checkpoint import checkpoint_path, read_checkpoint
from kwh.train.config import TrainConfig
from kwh.train.state import load_model_tensors

PREFIX = "sws/"

__all__ = ["prior_tensors", "restore_prior", "load_mixture_prior"]


def prior_tensors(prior: MixturePrior) -> dict[str, torch.Tensor]:
    """The prior's parameters as independent CPU copies, keys prefixed 'sws/'."""
    return {PREFIX + k: v.detach().to("cpu", copy=True) for k, v in prior.state_dict().items()}


def restore_prior(model: nn.Module, config: TrainConfig, tensors: dict[str, torch.Tensor],
                  where: str) -> MixturePrior:
    """The prior of ``config`` over ``model`` (on its device) with the 'sws/' tensors loaded."""
    prior = new_mixture_prior(model, config)
    state = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    own = prior.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        n = config.sws_settings()["n_components"]
        raise FormatError(f"{where}: the mixture prior's tensors do not fit a mixture of {n} "
                          f"components (found {sorted(state)})")
    prior.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return prior


def load_mixture_prior(path: str | os.PathLike, device: str | torch.device = "cpu",
                       model: nn.Module | None = None) -> MixturePrior:
    """The trained kwh.sws.MixturePrior of a method='sws' run (checkpoint file or run folder),
    for ``kwh.sws.quantize_(load_checkpoint(path)[0], prior)``.

    ``model``: the plain model the run started from, when it trained a model of its own
    (config.model 'custom'), as for load_checkpoint.
    """
    path = checkpoint_path(path)
    tensors, meta = read_checkpoint(path)
    try:
        config = TrainConfig.from_dict(meta["config"])
        kind = meta["kind"]
    except (KeyError, TypeError, KwhError) as e:
        raise FormatError(f"{path}: malformed training metadata ({e})") from None
    if config.method != SWS:
        raise KwhError(f"{path} is not from a soft weight-sharing run (method={config.method!r}):"
                       f" it holds no mixture prior")
    if kind != SWS:
        raise KwhError(f"{path} was written during pretraining: the soft weight-sharing run "
                       f"holds no mixture prior yet; continue it with `kwh train --resume "
                       f"--out-dir {path.parent}`")
    net = build_model(config, SWS, model)
    load_model_tensors(net, tensors, str(path))
    return restore_prior(net, config, tensors, str(path)).to(device)

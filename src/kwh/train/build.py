"""Models and optimizers from a TrainConfig, and load_checkpoint, which rebuilds a trained model."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from kwh.bayes import SGLD as SGLDSampler
from kwh.bayes import bayesify_, scale_kl_by_compute_
from kwh.bayes.optim import param_groups
from kwh.binary import binarize_
from kwh.errors import FormatError, KwhError
from kwh.models import build
from kwh.sws import MixturePrior
from kwh.train.checkpoint import checkpoint_path, read_checkpoint, read_checkpoint_meta
from kwh.train.config import CUSTOM, TrainConfig
from kwh.train.state import derive_seed, load_model_tensors

# SGLD: the plain network whose weights kwh.bayes.SGLD samples in the second phase; SWS: the
# plain network retrained under soft weight-sharing's mixture prior.
PLAIN, BAYESIAN, BINARY, SGLD, SWS = "plain", "bayes", "binary", "sgld", "sws"
KINDS = (PLAIN, BAYESIAN, BINARY, SGLD, SWS)
SECOND = (BAYESIAN, BINARY, SGLD, SWS)  # the kinds of a second phase

__all__ = ["PLAIN", "BAYESIAN", "BINARY", "SGLD", "SWS", "build_model", "to_bayesian",
           "to_second_phase", "make_optimizer", "new_mixture_prior", "load_checkpoint",
           "load_plain_checkpoint", "is_plain_run"]


def to_bayesian(model: nn.Module, config: TrainConfig) -> nn.Module:
    """bayesify_ in place with the config's prior, its random initial variances seeded by config.

    A reference model trained by name that offers head groups (vit's ``kwh_head_groups``) gets
    them under a group prior (one scale per attention head of each out-projection, so the
    prior prunes whole heads), unless prior_options give group_sizes of their own; the
    log-uniform prior has no groups. With ``kl_compute_power`` > 0 each layer's KL is weighted
    by its compute (kwh.bayes.scale_kl_by_compute_ on a zero example of the input shape)."""
    torch.manual_seed(derive_seed(config.seed, "bayesify"))
    options = dict(config.prior_options)
    if config.model != CUSTOM and config.prior != "log-uniform" and \
            "group_sizes" not in options and hasattr(model, "kwh_head_groups"):
        options["group_sizes"] = model.kwh_head_groups()
    bayesify_(model, config.prior, **options)
    if config.kl_compute_power:
        # the output positions per weight do not depend on the input's values
        example = torch.zeros(1, *_input_shape(model, config))
        scale_kl_by_compute_(model, example, config.kl_compute_power)
    return model


def to_second_phase(model: nn.Module, config: TrainConfig) -> tuple[nn.Module, str]:
    """(model, kind) of the run's second phase: Bayesian (bayesify_), binary (binarize_), or
    the same plain model for SGLD to sample or soft weight-sharing to retrain."""
    if config.method == BINARY:
        binarize_(model, **config.binary_options)
        return model, BINARY
    if config.method in (SGLD, SWS):
        return model, config.method
    return to_bayesian(model, config), BAYESIAN


def new_mixture_prior(model: nn.Module, config: TrainConfig) -> MixturePrior:
    """The soft weight-sharing phase's prior over ``model``'s Linear and Conv weights, as
    config.sws_settings() says (its means spread over the weights' range, on their device)."""
    o = config.sws_settings()
    return MixturePrior(model, n_components=o["n_components"], zero_mix=o["zero_mix"],
                        init_std=o["init_std"], gamma=(o["gamma_shape"], o["gamma_rate"]),
                        zero_gamma=(o["zero_gamma_shape"], o["zero_gamma_rate"]))


def build_model(config: TrainConfig, kind: str, template: nn.Module | None = None) -> nn.Module:
    """The run's model on the CPU; Bayesian or binary if kind says so (plain for SGLD, SWS).

    From ``template`` (a plain model given to run_training: a copy of it, its weights the
    dense start) or else the config's reference model, freshly initialised from the seed.
    """
    if kind not in KINDS:
        raise FormatError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    if template is not None:
        model = copy.deepcopy(template).cpu()
    elif config.model == CUSTOM:
        raise KwhError("this run's model is 'custom': pass the same plain model again "
                       "(run_training(config, model=...) or load_checkpoint(path, model=...))")
    else:
        torch.manual_seed(derive_seed(config.seed, "init"))
        model = build(config.model)
    if kind == BINARY:
        binarize_(model, **config.binary_options)
        return model
    return to_bayesian(model, config) if kind == BAYESIAN else model


def make_optimizer(model: nn.Module, config: TrainConfig, kind: str, *,
                   n_data: int | None = None, generator: torch.Generator | None = None,
                   prior: MixturePrior | None = None) -> torch.optim.Optimizer:
    """Adam; Bayesian models put log-scale parameters in groups at lr * their multiplier.

    Every group remembers its ``base_lr``: the schedule sets lr = base_lr * factor each step.
    For kind SGLD: kwh.bayes.SGLD with the config's sgld_settings() over ``n_data`` training
    examples, its noise drawn from ``generator``; base_lr is its (constant) step size. For
    kind SWS: Adam over the network's parameters and ``prior``'s means, log-variances and
    mixing logits, four groups at sws_settings()' learning rates.
    """
    if kind == SGLD:
        if n_data is None:
            raise KwhError("an SGLD optimizer needs n_data, the training set's size")
        o = config.sgld_settings()
        opt = SGLDSampler([p for p in model.parameters() if p.requires_grad], lr=o["lr"],
                          n_data=n_data, prior_std=o["prior_std"], temperature=o["temperature"],
                          preconditioned=o["preconditioned"], alpha=o["alpha"], eps=o["eps"],
                          generator=generator)
        for g in opt.param_groups:
            g["base_lr"], g["name"] = g["lr"], "weights"
        return opt
    if kind == BAYESIAN:
        groups = param_groups(model, config.lr, config.variance_lr_mult)
    elif kind == SWS:
        if prior is None:
            raise KwhError("a soft weight-sharing optimizer needs the mixture prior")
        o = config.sws_settings()
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "lr": o["lr"], "name": "weights"},
                  {"params": [prior.means], "lr": o["lr_means"], "name": "mixture means"},
                  {"params": [prior.log_vars], "lr": o["lr_log_vars"],
                   "name": "mixture log-variances"},
                  {"params": [prior.mix_logits], "lr": o["lr_mix"], "name": "mixing logits"}]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "lr": config.lr, "name": "weights"}]
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.Adam(groups, lr=config.lr)


def _input_shape(model: nn.Module, config: TrainConfig) -> tuple[int, ...]:
    """One example's shape for the shrink plan: the model's own, else the data set's."""
    shape = getattr(model, "kwh_input_shape", None)
    if shape is not None:
        return tuple(shape)
    from kwh.train.data import load_train_data

    return load_train_data(config).input_shape


def _run_meta(path, meta: dict) -> tuple[TrainConfig, str, dict]:
    """(config, kind, position) of a checkpoint's metadata; FormatError when malformed."""
    try:
        return TrainConfig.from_dict(meta["config"]), meta["kind"], meta["position"]
    except (KeyError, TypeError, KwhError) as e:
        raise FormatError(f"{path}: malformed training metadata ({e})") from None


def is_plain_run(path: str | os.PathLike) -> bool:
    """Whether a checkpoint (file or run folder) is a plain run's (``epochs=0``: a dense net),
    from its header alone."""
    path = checkpoint_path(path)
    config, kind, _ = _run_meta(path, read_checkpoint_meta(path))
    return kind not in SECOND and config.epochs == 0


def load_plain_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                          model: nn.Module | None = None) -> tuple[nn.Module, TrainConfig]:
    """(dense model in eval mode, its TrainConfig) from the checkpoint of a finished plain run
    of `kwh train` (``epochs=0``): the dense start a Bayesian run, a baseline or a distilled
    fine-tuning starts from. ``model`` as in load_checkpoint."""
    path = checkpoint_path(path)
    tensors, meta = read_checkpoint(path)
    config, kind, pos = _run_meta(path, meta)
    if kind in SECOND or config.epochs != 0:
        raise KwhError(f"{path} is not a plain run's checkpoint (its run trains "
                       f"{config.epochs} Bayesian epochs); read it with load_checkpoint")
    if pos.get("epoch") != config.pretrain_epochs:
        raise KwhError(f"{path} was written at epoch {pos.get('epoch')} of "
                       f"{config.pretrain_epochs}: finish the run first (`kwh train --resume "
                       f"--out-dir {path.parent}`)")
    net = build_model(config, PLAIN, model)
    load_model_tensors(net, tensors, str(path))
    return net.to(device).eval(), config


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    model: nn.Module | None = None) -> tuple[nn.Module, TrainConfig]:
    """(trained model in eval mode, its TrainConfig) from a checkpoint file or run directory:
    the Bayesian model, the binary one of a method='binary' run, the plain one of a
    method='sgld' run at the chain's last state (its posterior samples: load_samples), or the
    plain one of a method='sws' run, not yet quantized (its prior: load_mixture_prior).

    ``model``: the plain model the run started from (its structure; the weights come from the
    checkpoint), needed when the run trained a model of its own (config.model 'custom').
    """
    path = checkpoint_path(path)
    tensors, meta = read_checkpoint(path)
    if meta.get("kind") == "sgld-samples":  # kwh.train.samples' file
        raise KwhError(f"{path} holds an SGLD run's weight samples (kwh.train.load_samples); "
                       f"its network is in {path.parent}'s checkpoint")
    config, kind, pos = _run_meta(path, meta)
    if kind not in SECOND and config.epochs == 0:
        raise KwhError(f"{path} is a plain run (--epochs 0): it holds a dense net, not a "
                       "Bayesian one; start a Bayesian run from it, or train with --epochs N "
                       "(load_plain_checkpoint reads its dense net)")
    if kind not in SECOND:
        raise KwhError(f"{path} was written during pretraining (epoch {pos.get('epoch')} of "
                       f"{config.pretrain_epochs} plain epochs): it holds no Bayesian model yet; "
                       f"continue the run with `kwh train --resume --out-dir {path.parent}`")
    bayes = build_model(config, kind, model)
    if meta.get("shrink") and kind == BAYESIAN:  # the run shrank its network: the same units go here first
        from kwh.compress.shrink import Shrinker

        Shrinker(bayes, _input_shape(bayes, config), config.shrink_patience
                 ).load_state(meta["shrink"])
    load_model_tensors(bayes, tensors, str(path))
    return bayes.to(device).eval(), config

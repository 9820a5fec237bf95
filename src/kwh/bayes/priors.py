"""Sparsity-inducing priors with their variational posteriors, one class each, one layer each.

Every prior owns the variational parameters of one layer's weight and answers the same
questions: ``kl()``, ``log_alpha()``, ``keep_mask()``, ``weight_moments()``, plus what the
layer needs for the local reparameterization: ``conditional()`` (mean and variance of the
weights given the group scale) and ``sample_scale(batch)`` (one group scale per example).

Groups: ``group_dim`` is 1 for a Linear weight (out, in) -- z scales input units -- and 0 for a
Conv2d weight (out, in, kh, kw) -- z scales output filters (Louizos et al. 2017, sec. 3).
``group_size`` consecutive units along ``group_dim`` share one z (default 1: one z per unit);
an attention's out-projection groups its inputs per head (group_size = head_dim), so a
pruned z removes a whole head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from kwh.bayes.kl import (
    LOG_ALPHA_CLIP,
    kl_log_uniform,
    kl_lognormal_gamma_half,
    kl_lognormal_invgamma_half,
    kl_std_normal,
)

_EPS = 1e-8
_GNJ_KL_CLIP = 30.0
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 4.0  # keeps exp() finite and log() away from zero


def _logvar(p: Tensor) -> Tensor:
    """A log-variance parameter as used: clamped so exp() neither overflows nor underflows to 0."""
    return p.clamp(_LOGVAR_MIN, _LOGVAR_MAX)


def expand_group(g: Tensor, shape: torch.Size, group_dim: int, group_size: int = 1) -> Tensor:
    """Broadcast a per-group vector (G,) against a weight of ``shape`` along ``group_dim``,
    each entry repeated over its ``group_size`` consecutive units (G * group_size of them)."""
    if group_size != 1:
        g = g.repeat_interleave(group_size, dim=-1)
    view = [1] * len(shape)
    view[group_dim] = -1
    return g.reshape(view)


def check_group_size(shape: torch.Size, group_dim: int, group_size: int) -> int:
    """The number of groups; ValueError unless ``group_size`` divides the units on group_dim."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    units = int(shape[group_dim])
    if units % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {units} units of the "
                         f"weight's dim {group_dim}; choose a divisor (e.g. an attention head's "
                         "size for its out-projection)")
    return units // group_size


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class LogUniformConfig:
    """Sparse VD (Molchanov et al. 2017): q(w) = N(theta, alpha theta^2), log-uniform prior."""

    threshold: float = 3.0  # prune when log alpha >= 3 (dropout rate > 0.95)
    init_log_sigma2: float = -10.0
    name: ClassVar[str] = "log-uniform"

    def __post_init__(self):
        if not -LOG_ALPHA_CLIP <= self.threshold <= LOG_ALPHA_CLIP:
            raise ValueError(f"threshold {self.threshold} outside the clip range [-8, 8]")


INIT_SCALES = ("one", "rms")


def _check_max_weight_var(value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and 0 < value < math.exp(_LOGVAR_MAX)):
        raise ValueError(f"max_weight_var must be None or a variance in (0, {math.exp(_LOGVAR_MAX):.1f}), "
                         f"got {value!r} (the reference code caps fc1 at 0.04)")


def _check_init_scale(value: str) -> None:
    if value not in INIT_SCALES:
        raise ValueError(f"Unknown init_scale {value!r}; choose one of: {', '.join(INIT_SCALES)} "
                         "('one': z starts at 1, w~ = w, as the reference code; 'rms': z starts "
                         "at each group's weight RMS, w~ of unit scale)")


@dataclass(frozen=True)
class GroupNJConfig:
    """BC-GNJ (Louizos et al. 2017): group normal-Jeffreys scale z per unit or filter."""

    threshold: float = -3.0  # prune group when log alpha_z >= -3 (reference tutorial)
    init_log_var: float = -9.0
    init_scale: str = "rms"  # where z starts: 1 (reference) or each group's weight RMS
    max_weight_var: float | None = None  # cap on the variance of w~ (reference: 0.04 on fc1)
    name: ClassVar[str] = "group-nj"

    def __post_init__(self):
        _check_init_scale(self.init_scale)
        _check_max_weight_var(self.max_weight_var)


@dataclass(frozen=True)
class GroupHorseshoeConfig:
    """BC-GHS (Louizos et al. 2017): non-centred group horseshoe, global scale tau0."""

    tau0: float = 1e-5
    threshold: float = -1.0  # prune group when log(Var z / E[z]^2) >= threshold (see GroupHorseshoe)
    init_log_var: float = -9.0
    init_scale: str = "rms"  # where z starts: 1 or each group's weight RMS
    max_weight_var: float | None = None  # cap on the variance of w~
    name: ClassVar[str] = "group-horseshoe"

    def __post_init__(self):
        _check_init_scale(self.init_scale)
        _check_max_weight_var(self.max_weight_var)
        if not self.tau0 > 0:
            raise ValueError(f"tau0 must be positive, got {self.tau0}")


PriorConfig = LogUniformConfig | GroupNJConfig | GroupHorseshoeConfig


# ----------------------------------------------------------------------------- base


class Prior(nn.Module):
    """Variational posterior and prior of one layer's weight (shape of the weight, groups on a dim)."""

    structured: ClassVar[bool] = True
    # Parameters that live on a log scale (log-variances, log-normal locations): Adam moves
    # each by about lr per step, so kwh.bayes.param_groups gives them a larger step.
    log_scale_parameters: ClassVar[tuple[str, ...]] = ()
    log_scale_lr_mult: ClassVar[float] = 10.0  # their lr multiplier (kwh.bayes.param_groups)
    # Layout, for physical shrinking (select_): parameters shaped like the weight, and
    # parameters with one entry per group (along group_dim of the weight).
    weight_parameters: ClassVar[tuple[str, ...]] = ()
    group_parameters: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config, weight: Tensor, group_dim: int, group_size: int = 1):
        super().__init__()
        if group_size != 1 and not self.structured:
            raise ValueError(f"the {config.name} prior has one scale per weight, not per group: "
                             f"group_size {group_size} does not apply to it; use group-nj or "
                             "group-horseshoe to share a scale over blocks of units")
        self.config = config
        self.group_dim = group_dim
        self.group_size = group_size
        self.weight_shape = weight.shape
        if self.structured:
            check_group_size(weight.shape, group_dim, group_size)

    def expand(self, g: Tensor) -> Tensor:
        """A per-group tensor (G,) broadcast against the weight (each group over its units)."""
        return expand_group(g, self.weight_shape, self.group_dim, self.group_size)

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def kl(self) -> Tensor:
        """KL(q || p) of this layer, summed, in nats."""
        raise NotImplementedError

    def log_alpha(self) -> Tensor:
        """Pruning statistic: per weight (unstructured) or per group (structured)."""
        raise NotImplementedError

    def keep_mask(self, threshold: float | None = None) -> Tensor:
        """True where the weight or group is kept: log alpha < threshold."""
        t = self.threshold if threshold is None else threshold
        return self.log_alpha() < t

    def weight_mask(self, threshold: float | None = None) -> Tensor:
        """keep_mask broadcast to the weight's shape (as float)."""
        m = self.keep_mask(threshold).to(self._dtype())
        if self.structured:
            return self.expand(m).expand(self.weight_shape)
        return m

    def conditional(self) -> tuple[Tensor, Tensor]:
        """Mean and variance of the weight given the group scale (the local reparameterization)."""
        raise NotImplementedError

    def sample_scale(self, batch: int) -> Tensor | None:
        """One draw of the group scale z per example, (B, G); None for unstructured priors."""
        return None

    def sample_unit_scale(self, batch: int) -> Tensor | None:
        """sample_scale repeated over each group's units: (B, units on group_dim); None for
        unstructured priors."""
        z = self.sample_scale(batch)
        if z is None or self.group_size == 1:
            return z
        return z.repeat_interleave(self.group_size, dim=1)

    def scale_moments(self) -> tuple[Tensor, Tensor] | None:
        """E[z] and Var[z] per group; None for unstructured priors."""
        return None

    def weight_moments(self) -> tuple[Tensor, Tensor]:
        """Mean and variance of the marginal posterior of each weight (shape of the weight).

        With w = z * w~: E[w] = E[z] mu; Var[w] = E[z]^2 s2 + Var[z] mu^2 + Var[z] s2.
        """
        mu, s2 = self.conditional()
        sm = self.scale_moments()
        if sm is None:
            return mu, s2
        ez, vz = (self.expand(t) for t in sm)
        return ez * mu, ez.pow(2) * s2 + vz * mu.pow(2) + vz * s2

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def select_(self, dim: int, index: Tensor) -> dict[str, tuple[int, Tensor]]:
        """Keep only the entries ``index`` (long) of the weight's dim 0 or 1, in place.

        Slices every weight-shaped parameter along ``dim`` and, where ``dim`` is the group
        dimension, every per-group parameter (with group_size > 1, ``index`` must keep whole
        groups: ValueError otherwise). Returns {parameter name: (dim it was sliced along,
        index)} so that an optimizer's state can follow.
        """
        grouped = self.structured and dim == self.group_dim
        groups = self._group_index(index) if grouped else None
        done = {}
        for name in self.weight_parameters:
            _replace(self, name, getattr(self, name).index_select(dim, index))
            done[name] = (dim, index)
        if grouped:
            for name in self.group_parameters:
                _replace(self, name, getattr(self, name).index_select(0, groups))
                done[name] = (0, groups)
            self.n_groups = int(groups.numel())
        shape = list(self.weight_shape)
        shape[dim] = int(index.numel())
        self.weight_shape = torch.Size(shape)
        return done

    def _group_index(self, index: Tensor) -> Tensor:
        """The groups a unit index keeps, when it keeps each of them whole."""
        gs = self.group_size
        if gs == 1:
            return index
        index = index.cpu()
        groups = index[::gs] // gs
        whole = groups.repeat_interleave(gs) * gs + torch.arange(gs).repeat(groups.numel())
        if index.numel() % gs or not torch.equal(whole, index):
            raise ValueError(f"cannot keep part of a group of {gs} units: the index must list "
                             "whole groups in order")
        return groups


def _replace(module: nn.Module, name: str, value: Tensor) -> None:
    """A new Parameter (same requires_grad) holding ``value`` in place of module.name."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))


# ----------------------------------------------------------------------------- Sparse VD


class LogUniform(Prior):
    """Sparse VD, per weight: additive reparameterization, theta and log sigma^2 trained.

    log alpha = log sigma^2 - log(theta^2 + 1e-8), clipped to [-8, 8];
    -KL ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 softplus(-log alpha) - k1 (Molchanov et al. 2017).
    """

    structured = False
    log_scale_parameters = ("log_sigma2",)
    weight_parameters = ("theta", "log_sigma2")
    # 1x: on LeNet-300 (30 epochs) 3.3% of the weights kept at 1x against 6.9% at 10x, same
    # error (benchmarks/results/ablations/lenet300_mnist_svd)
    log_scale_lr_mult = 1.0

    def __init__(self, config: LogUniformConfig, weight: Tensor, group_dim: int,
                 group_size: int = 1):
        super().__init__(config, weight, group_dim, group_size)  # group_size != 1: ValueError
        self.theta = nn.Parameter(weight.detach().clone())
        self.log_sigma2 = nn.Parameter(torch.full_like(weight, config.init_log_sigma2))

    def log_alpha(self) -> Tensor:
        la = _logvar(self.log_sigma2) - torch.log(self.theta.pow(2) + _EPS)
        return la.clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kl(self) -> Tensor:
        return kl_log_uniform(self.log_alpha()).sum()

    def conditional(self) -> tuple[Tensor, Tensor]:
        return self.theta, _logvar(self.log_sigma2).exp()


# ----------------------------------------------------------------------------- group priors


class _GroupPrior(Prior):
    """Shared part of the group priors: w~ ~ N(mu, s2) with KL against N(0, 1) per weight."""

    weight_parameters = ("weight_mu", "weight_log_var")

    def __init__(self, config, weight: Tensor, group_dim: int, group_size: int = 1):
        super().__init__(config, weight, group_dim, group_size)
        self.n_groups = weight.shape[group_dim] // group_size
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_log_var = nn.Parameter(
            torch.randn_like(weight) * 0.01 + config.init_log_var)

    def _initial_scale(self, weight: Tensor) -> Tensor:
        """Where E[z] starts per group, (G,): 1, or the group's weight RMS (config.init_scale)."""
        if self.config.init_scale == "one":
            return torch.ones(self.n_groups, dtype=weight.dtype)
        w = weight.detach().movedim(self.group_dim, 0).reshape(self.n_groups, -1)
        return w.pow(2).mean(dim=1).sqrt().clamp_min(1e-3)  # (G,)

    def _rescale_weights(self):
        """Divide the weight means by E[z] so that E[z] * mu reproduces the given weight."""
        with torch.no_grad():
            ez, _ = self.scale_moments()
            self.weight_mu.div_(self.expand(ez))

    def _weight_log_var(self) -> Tensor:
        """log s2 of w~ as used: clamped, and capped at log(max_weight_var) when set (the
        reference code clips fc1's weight variances at 0.04 after every step; a cap in the
        forward pass gives the same values, and no gradient pushes past it)."""
        lv = _logvar(self.weight_log_var)
        cap = self.config.max_weight_var
        return lv if cap is None else lv.clamp(max=math.log(cap))

    def conditional(self) -> tuple[Tensor, Tensor]:
        return self.weight_mu, self._weight_log_var().exp()

    def kl_weights(self) -> Tensor:
        """KL(N(z mu, z^2 s2) || N(0, z^2)) summed: independent of z (Louizos et al. 2017, eq. 9)."""
        return kl_std_normal(self.weight_mu, self._weight_log_var()).sum()


class GroupNJ(_GroupPrior):
    """BC-GNJ: p(z) ~ 1/|z|, q(z) = N(mu_z, mu_z^2 alpha); p(w|z) = N(0, z^2).

    Initialisation: mu_z at 1 (``init_scale="one"``, the reference's N(1, 0.01^2)) or at each
    group's weight RMS (``"rms"``), times 1 + N(0, 0.01^2); log alpha_z and the weight log
    variances ~ N(-9, 0.01^2) as in the reference; mu = w / mu_z.

    KL_z: the Sparse VD approximation on log alpha = log s2_z - log(mu_z^2 + 1e-8) (clip +-30);
    KL_W = sum 0.5 (-log s2 + s2 + mu^2 - 1).
    """

    log_scale_parameters = ("weight_log_var", "z_log_var")
    group_parameters = ("z_mu", "z_log_var")
    # 1x: on LeNet-300 (30 epochs from a dense start) 1.56% validation error at 29.5x against
    # 1.90% at 26.9x with 10x (benchmarks/results/ablations/lenet300_mnist_gnj)
    log_scale_lr_mult = 1.0

    def __init__(self, config: GroupNJConfig, weight: Tensor, group_dim: int,
                 group_size: int = 1):
        super().__init__(config, weight, group_dim, group_size)
        g = self.n_groups
        z0 = self._initial_scale(weight)
        self.z_mu = nn.Parameter(z0 * (1.0 + 0.01 * torch.randn(g, dtype=weight.dtype)))
        # log alpha_z starts at init_log_var, as the reference's does with mu_z = 1
        self.z_log_var = nn.Parameter(torch.randn(g, dtype=weight.dtype) * 0.01
                                      + config.init_log_var + 2.0 * z0.log())
        self._rescale_weights()

    def _raw_log_alpha(self) -> Tensor:
        return _logvar(self.z_log_var) - torch.log(self.z_mu.pow(2) + _EPS)

    def log_alpha(self) -> Tensor:
        return self._raw_log_alpha().clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kl(self) -> Tensor:
        # KL_z on log alpha clipped to [-30, 30], not Sparse VD's [-8, 8]: the reference init
        # (log alpha = -9) would otherwise sit where the KL has no gradient and z never moves.
        return kl_log_uniform(self._raw_log_alpha(), clip=_GNJ_KL_CLIP).sum() + self.kl_weights()

    def scale_moments(self) -> tuple[Tensor, Tensor]:
        return self.z_mu, _logvar(self.z_log_var).exp()

    def sample_scale(self, batch: int) -> Tensor:
        std = (0.5 * _logvar(self.z_log_var)).exp()
        eps = torch.randn(batch, self.n_groups, dtype=std.dtype, device=std.device)
        return self.z_mu + std * eps  # (B, G)


class GroupHorseshoe(_GroupPrior):
    """BC-GHS, non-centred: s ~ C+(0, tau0), z~_i ~ C+(0, 1), w~ ~ N(0, 1), w = w~ z~_i s.

    Each half-Cauchy C+(0, b) is sqrt(a * c) with a ~ Gamma(1/2, rate 1/b^2), c ~ InvGamma(1/2, 1)
    (convention: tau0 is the half-Cauchy scale, entering the Gamma as the rate 1/tau0^2).
    Log-normal posteriors for s_a, s_b, a_i, b_i give log z_i ~ N(m_i, v_i) with
    m_i = (mu_sa + mu_sb + mu_ai + mu_bi) / 2 and v_i = (var_sa + var_sb + var_ai + var_bi) / 4.

    Pruning rule (ours; none is published): z_i is log-normal, so Var[z_i] / E[z_i]^2 =
    exp(v_i) - 1, the exact counterpart of GNJ's alpha. log alpha_i = log(exp(v_i) - 1):
    a group the data needs has a sharp scale (v_i small); a group it does not need relaxes
    to the broad prior (v_i of order one). Prune when log alpha_i >= threshold.
    """

    # The log-normal locations are log scales too: they start near 2 ln(z0 / tau0) ~ 20.
    log_scale_parameters = ("weight_log_var", "sa_mu", "sa_log_var", "sb_mu", "sb_log_var",
                            "a_mu", "a_log_var", "b_mu", "b_log_var")
    group_parameters = ("a_mu", "a_log_var", "b_mu", "b_log_var")

    def __init__(self, config: GroupHorseshoeConfig, weight: Tensor, group_dim: int,
                 group_size: int = 1):
        super().__init__(config, weight, group_dim, group_size)
        g, dt = self.n_groups, weight.dtype
        lv = config.init_log_var
        ln_tau0 = math.log(config.tau0)
        z0 = self._initial_scale(weight)  # E[z_i] at the start (config.init_scale)
        # Global s: s_a near its prior scale tau0^2, s_b near 1, so s ~ tau0.
        self.sa_mu = nn.Parameter(torch.tensor(2.0 * ln_tau0, dtype=dt))
        self.sa_log_var = nn.Parameter(torch.tensor(lv, dtype=dt))
        self.sb_mu = nn.Parameter(torch.tensor(0.0, dtype=dt))
        self.sb_log_var = nn.Parameter(torch.tensor(lv, dtype=dt))
        # Local z~_i = z0_i / tau0, carried by the inverse-gamma factor (cheapest under the prior).
        self.a_mu = nn.Parameter(torch.zeros(g, dtype=dt))
        self.a_log_var = nn.Parameter(torch.randn(g, dtype=dt) * 0.01 + lv)
        self.b_mu = nn.Parameter(2.0 * (z0.log() - ln_tau0))
        self.b_log_var = nn.Parameter(torch.randn(g, dtype=dt) * 0.01 + lv)
        self._rescale_weights()

    def log_z_moments(self) -> tuple[Tensor, Tensor]:
        """Mean and variance of log z_i, (G,) each."""
        m = 0.5 * (self.sa_mu + self.sb_mu + self.a_mu + self.b_mu)
        v = 0.25 * (_logvar(self.sa_log_var).exp() + _logvar(self.sb_log_var).exp()
                    + _logvar(self.a_log_var).exp() + _logvar(self.b_log_var).exp())
        return m, v

    def scale_moments(self) -> tuple[Tensor, Tensor]:
        m, v = self.log_z_moments()
        ez = torch.exp(m + 0.5 * v)
        return ez, ez.pow(2) * torch.expm1(v)

    def log_alpha(self) -> Tensor:
        _, v = self.log_z_moments()
        return torch.log(torch.expm1(v) + _EPS).clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kl(self) -> Tensor:
        rate = 1.0 / self.config.tau0 ** 2
        kl_s = (kl_lognormal_gamma_half(self.sa_mu, _logvar(self.sa_log_var), rate)
                + kl_lognormal_invgamma_half(self.sb_mu, _logvar(self.sb_log_var)))
        kl_z = (kl_lognormal_gamma_half(self.a_mu, _logvar(self.a_log_var), 1.0)
                + kl_lognormal_invgamma_half(self.b_mu, _logvar(self.b_log_var))).sum()
        return kl_s + kl_z + self.kl_weights()

    def sample_scale(self, batch: int) -> Tensor:
        dt, dev = self.a_mu.dtype, self.a_mu.device
        # The global factor s is shared by all groups of one example; each group adds its own.
        m_s = 0.5 * (self.sa_mu + self.sb_mu)
        v_s = 0.25 * (_logvar(self.sa_log_var).exp() + _logvar(self.sb_log_var).exp())
        m_g = 0.5 * (self.a_mu + self.b_mu)
        v_g = 0.25 * (_logvar(self.a_log_var).exp() + _logvar(self.b_log_var).exp())
        eps_s = torch.randn(batch, 1, dtype=dt, device=dev)
        eps_g = torch.randn(batch, self.n_groups, dtype=dt, device=dev)
        return torch.exp(m_s + v_s.sqrt() * eps_s + m_g + v_g.sqrt() * eps_g)  # (B, G)


# ----------------------------------------------------------------------------- registry

PRIORS: dict[str, tuple[type, type[Prior]]] = {
    "log-uniform": (LogUniformConfig, LogUniform),
    "group-nj": (GroupNJConfig, GroupNJ),
    "group-horseshoe": (GroupHorseshoeConfig, GroupHorseshoe),
}
_ALIASES = {"sparse-vd": "log-uniform", "bc-gnj": "group-nj", "bc-ghs": "group-horseshoe"}


def prior_config(prior: str | PriorConfig, **options) -> PriorConfig:
    """A prior config from a name (with options) or a config instance."""
    if not isinstance(prior, str):
        if options:
            raise TypeError("pass options either in the config object or as keywords, not both")
        if type(prior) not in {c for c, _ in PRIORS.values()}:
            raise TypeError(f"not a prior config: {prior!r}")
        return prior
    key = _ALIASES.get(prior, prior)
    if key not in PRIORS:
        raise ValueError(f"Unknown prior {prior!r}; choose one of: {', '.join(PRIORS)}")
    cfg_cls = PRIORS[key][0]
    try:
        return cfg_cls(**options)
    except TypeError as e:
        raise ValueError(f"bad option for prior {key!r}: {e}") from None


def make_prior(config: PriorConfig, weight: Tensor, group_dim: int,
               group_size: int = 1) -> Prior:
    """Instantiate the prior module registered for ``config`` (``group_size`` consecutive
    units on ``group_dim`` sharing one scale; ValueError for log-uniform, per weight)."""
    for cfg_cls, prior_cls in PRIORS.values():
        if type(config) is cfg_cls:
            return prior_cls(config, weight, group_dim, group_size)
    raise TypeError(f"not a prior config: {config!r}")

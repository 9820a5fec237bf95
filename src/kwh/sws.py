"""Soft weight-sharing (Ullrich, Meeds and Welling 2017): a learned Gaussian-mixture prior that
prunes and quantizes the weights in one retraining, then :func:`quantize_` to a codebook.

    p(w) = prod_i sum_{j=0}^{J-1} pi_j N(w_i | mu_j, sigma_j^2),    mu_0 = 0, pi_0 fixed
    pi_j = (1 - pi_0) softmax(rho)_j  (j >= 1),   lambda_j = 1 / sigma_j^2 ~ Gamma(alpha_j, beta_j)
    -log p(w, lambda) = -sum_i logsumexp_j [log pi_j + log N(w_i | mu_j, sigma_j^2)]
                        - sum_j log Gamma(lambda_j | alpha_j, beta_j)
    training loss = mean NLL + tau * (-log p(w, lambda)) / N

Defaults (paper sec. 6 and the authors' public tutorial): J = 17 components (16 learned and the
zero one), pi_0 = 0.999, the 16 means spread linearly over [-max|w|, max|w|], every sigma_j
starting at 0.25, Gamma(250, 0.1) on the precision of each learned component and the far
stronger Gamma(5000, 2) on the zero component's (modes 2490 and 2499.5: sigma ~ 0.02), and
tau = 5e-3. The prior covers the ``weight`` of every Linear and Conv layer (biases stay free).

A leaf: imports only torch, math and kwh.errors, so any package may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from kwh.errors import KwhError, ModelError

__all__ = ["MixturePrior", "quantize_", "Quantized", "mixture_weights", "merge_components",
           "share_codebook_", "unshare_codebook_",
           "N_COMPONENTS", "ZERO_MIX", "INIT_STD", "GAMMA", "ZERO_GAMMA", "TAU", "MERGE_KL"]

N_COMPONENTS = 17  # the zero component and 16 learned ones (paper sec. 6)
ZERO_MIX = 0.999  # pi_0, fixed
INIT_STD = 0.25  # every component's initial sigma (the tutorial's)
GAMMA = (250.0, 0.1)  # (shape, rate) on each learned component's precision
ZERO_GAMMA = (5000.0, 2.0)  # (shape, rate) on the zero component's precision
TAU = 5e-3  # weight of the prior's negative log density per training example
# Components merge when both KL divergences between them are below this (nats): with equal
# variances, means closer than 0.14 sigma. Far below what separates two used clusters.
MERGE_KL = 1e-2
_LOG_2PI = math.log(2 * math.pi)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def mixture_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every Linear and Conv layer of ``model``: what the prior covers."""
    if not isinstance(model, nn.Module):
        raise KwhError(f"expected an nn.Module, got {type(model).__name__}")
    out = [(f"{name}.weight" if name else "weight", m.weight)
           for name, m in model.named_modules() if isinstance(m, (nn.Linear, *_CONV))]
    if not out:
        raise ModelError(f"{type(model).__name__} has no Linear or Conv layer whose weights a "
                         "mixture prior could share")
    return out


def _tensors(weights) -> list[torch.Tensor]:
    """A model's shared weights, one tensor, or an iterable of tensors, as a list."""
    if isinstance(weights, nn.Module):
        return [w for _, w in mixture_weights(weights)]
    if torch.is_tensor(weights):
        ws = [weights]
    elif isinstance(weights, Iterable):
        ws = list(weights)
    else:
        raise KwhError(f"weights must be a model, a tensor or tensors, got "
                       f"{type(weights).__name__}")
    if not ws or not all(torch.is_tensor(w) and w.is_floating_point() for w in ws):
        raise KwhError("weights must be one or more floating-point tensors")
    return ws


def _number(name: str, v, *, low: float = 0.0, high: float | None = None) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and v > low and (high is None or v < high)
    if not ok:
        bound = f"in ({low}, {high})" if high is not None else f"> {low}"
        raise KwhError(f"{name} must be a finite number {bound}, got {v!r}")
    return float(v)


def _gamma(name: str, v) -> tuple[float, float]:
    if not (isinstance(v, (tuple, list)) and len(v) == 2):
        raise KwhError(f"{name} must be (shape, rate) of a Gamma prior, got {v!r}")
    return _number(f"{name} shape", v[0]), _number(f"{name} rate", v[1])


def _log_normal(w: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(w_i | mu_j, exp(log_var_j)) for every weight and component."""
    w = w.reshape(-1, 1)  # (n, 1)
    return -0.5 * (_LOG_2PI + log_var + (w - mu) ** 2 * torch.exp(-log_var))  # (n, J)


_CHUNK = 8192  # weights per block of the fused negative log density (fits a core's cache)


class _MixtureNLL(torch.autograd.Function):
    """-sum_i logsumexp_j a_ij, a_ij = log pi_j - (log 2 pi + log v_j) / 2 - (w_i - mu_j)^2 / 2 v_j,
    and its gradients, in one pass over blocks of weights: no (n, J) tensor is kept for the
    backward pass. With the responsibilities r_ij = softmax_j a_ij and z_ij = (w_i - mu_j)^2 / v_j:
    d/dw_i = sum_j r_ij (w_i - mu_j) / v_j, d/dmu_j = -sum_i r_ij (w_i - mu_j) / v_j,
    d/dlog v_j = sum_i r_ij (1 - z_ij) / 2, d/dlog pi_j = -sum_i r_ij."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
                log_pi: torch.Tensor, chunk: int, want_grads: bool) -> torch.Tensor:
        flat = w.detach().reshape(-1)
        mu, log_var, log_pi = mu.detach(), log_var.detach(), log_pi.detach()
        prec = torch.exp(-log_var)
        const = log_pi - 0.5 * (_LOG_2PI + log_var)
        grads = want_grads and any(ctx.needs_input_grad[:4])
        total = flat.new_zeros(())
        if grads:
            g_w = torch.empty_like(flat)
            g_mu, g_lv, g_pi = (torch.zeros_like(mu) for _ in range(3))
        for start in range(0, flat.numel(), chunk):
            d = flat[start:start + chunk, None] - mu  # (c, J)
            dp = d * prec
            z = d.mul_(dp)  # (w - mu)^2 / v; d is not needed any more
            a = torch.add(const, z, alpha=-0.5)
            top = a.amax(dim=1, keepdim=True)
            e = a.sub_(top).exp_()
            norm = e.sum(dim=1, keepdim=True)
            total -= (top + torch.log(norm)).sum()
            if grads:
                r = e.div_(norm)  # responsibilities
                r_sum = r.sum(dim=0)
                g_lv += 0.5 * (r_sum - (r * z).sum(dim=0))
                g_pi -= r_sum
                rd = r.mul_(dp)
                g_w[start:start + chunk] = rd.sum(dim=1)
                g_mu -= rd.sum(dim=0)
        if grads:
            ctx.save_for_backward(g_w.view_as(w), g_mu, g_lv, g_pi)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g_w, g_mu, g_lv, g_pi = ctx.saved_tensors
        return grad * g_w, grad * g_mu, grad * g_lv, grad * g_pi, None, None


class MixturePrior(nn.Module):
    """Gaussian-mixture prior over weights, its parameters learned with them (module docstring).

    ``weights``: a model (its Linear and Conv weights), a tensor or tensors; they set the
    means' range, dtype and device. Parameters: ``means`` (J-1,) of the learned components,
    ``log_vars`` (J,) of all (log sigma^2, the zero component first), ``mix_logits`` (J-1,).
    """

    def __init__(self, weights, n_components: int = N_COMPONENTS, zero_mix: float = ZERO_MIX,
                 init_std: float = INIT_STD, gamma: tuple[float, float] = GAMMA,
                 zero_gamma: tuple[float, float] = ZERO_GAMMA):
        super().__init__()
        if not (isinstance(n_components, int) and not isinstance(n_components, bool)
                and n_components >= 2):
            raise KwhError(f"n_components must be an integer >= 2 (the zero component and at "
                           f"least one learned one), got {n_components!r}")
        self.zero_mix = _number("zero_mix", zero_mix, high=1.0)
        init_std = _number("init_std", init_std)
        self.gamma, self.zero_gamma = _gamma("gamma", gamma), _gamma("zero_gamma", zero_gamma)
        ws = _tensors(weights)
        with torch.no_grad():
            top = max((float(w.detach().abs().max()) for w in ws if w.numel()), default=0.0)
        if not (math.isfinite(top) and top > 0):
            raise KwhError(f"the weights' largest magnitude is {top}: the means need a finite, "
                           "nonzero range")
        like = dict(dtype=ws[0].dtype, device=ws[0].device)
        self.means = nn.Parameter(torch.linspace(-top, top, n_components - 1, **like))
        self.log_vars = nn.Parameter(torch.full((n_components,), 2 * math.log(init_std), **like))
        self.mix_logits = nn.Parameter(torch.zeros(n_components - 1, **like))

    @property
    def n_components(self) -> int:
        return self.log_vars.numel()

    def mixture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log pi, mu, log sigma^2), each (J,), the zero component first."""
        t = self.means
        log_pi = torch.cat([t.new_tensor([math.log(self.zero_mix)]),
                            math.log1p(-self.zero_mix) + torch.log_softmax(self.mix_logits, 0)])
        return log_pi, torch.cat([t.new_zeros(1), t]), self.log_vars

    def log_joint(self, w: torch.Tensor) -> torch.Tensor:
        """log pi_j + log N(w_i | mu_j, sigma_j^2), (n, J) for the n elements of ``w``."""
        log_pi, mu, log_var = self.mixture()
        return log_pi + _log_normal(w, mu, log_var)

    def log_density(self, w: torch.Tensor) -> torch.Tensor:
        """log p(w_i) of every element, shaped like ``w`` (log-sum-exp over components)."""
        return torch.logsumexp(self.log_joint(w), dim=1).view_as(w)

    def responsibilities(self, w: torch.Tensor) -> torch.Tensor:
        """p(component j | w_i), (n, J) for the n elements of ``w``."""
        return torch.softmax(self.log_joint(w), dim=1)

    def hyper_log_prob(self) -> torch.Tensor:
        """sum_j log Gamma(lambda_j | alpha_j, beta_j), lambda_j = exp(-log_vars_j)."""
        rest = self.n_components - 1
        shape = self.log_vars.new_tensor([self.zero_gamma[0]] + [self.gamma[0]] * rest)
        rate = self.log_vars.new_tensor([self.zero_gamma[1]] + [self.gamma[1]] * rest)
        log_lam = -self.log_vars
        return (shape * torch.log(rate) - torch.lgamma(shape) + (shape - 1) * log_lam
                - rate * torch.exp(log_lam)).sum()

    def neg_log_prob(self, weights) -> torch.Tensor:
        """-log p(w) - log p(lambda): the weights' negative log density under the mixture,
        summed over every weight, minus the Gamma hyper-priors' log densities. ``weights``: a
        model (its Linear and Conv weights), a tensor or tensors. Computed with its gradients
        in one pass over blocks of weights (memory: one gradient per weight, not per weight and
        component)."""
        log_pi, mu, log_var = self.mixture()
        grads = torch.is_grad_enabled()  # inside the Function's forward it always reads False
        nll = sum(_MixtureNLL.apply(w, mu, log_var, log_pi, _CHUNK, grads)
                  for w in _tensors(weights))
        return nll - self.hyper_log_prob()

    def forward(self, weights) -> torch.Tensor:
        """neg_log_prob(weights)."""
        return self.neg_log_prob(weights)

    def loss(self, weights, n_data: int, tau: float = TAU) -> torch.Tensor:
        """tau * neg_log_prob(weights) / n_data: the term added to the mean NLL."""
        return tau * self.neg_log_prob(weights) / n_data

    def extra_repr(self) -> str:
        return (f"n_components={self.n_components}, zero_mix={self.zero_mix}, "
                f"gamma={self.gamma}, zero_gamma={self.zero_gamma}")


@dataclass
class Quantized:
    """What :func:`quantize_` did. ``codes``: per weight name, the code of every weight (0:
    the zero component, pruned); ``codebook``: the value of each code (``codebook[0] == 0``);
    ``components``: the prior's components merged into each code; ``merged``: how many
    components merging removed."""

    codes: dict[str, torch.Tensor]
    codebook: torch.Tensor
    components: list[tuple[int, ...]] = field(default_factory=list)
    merged: int = 0

    @property
    def index_bits(self) -> int:
        """Bits to index one nonzero codebook entry (at least 1)."""
        return max(1, math.ceil(math.log2(max(2, len(self.codebook) - 1))))

    def density(self) -> float:
        """Fraction of the weights that are not zero."""
        n = sum(c.numel() for c in self.codes.values())
        return sum(int(torch.count_nonzero(c)) for c in self.codes.values()) / max(1, n)


def _kl(m1: float, v1: float, m2: float, v2: float) -> float:
    """KL(N(m1, v1) || N(m2, v2))."""
    return 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


@torch.no_grad()
def merge_components(prior: MixturePrior, merge_kl: float = MERGE_KL
                     ) -> tuple[list[tuple[int, ...]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge components whose KL divergences (both ways) are below ``merge_kl``, transitively.

    Returns (groups of component indices, log pi, mu, sigma^2) of the merged mixture (float64
    tensors, whatever the prior's dtype), the group of the zero component first: pi summed,
    mean and variance matched to the group's first two moments; the zero group's mean stays
    exactly 0.
    """
    if isinstance(merge_kl, bool) or not isinstance(merge_kl, (int, float)) \
            or not math.isfinite(merge_kl) or merge_kl < 0:
        raise KwhError(f"merge_kl must be a finite number >= 0 (0: never merge), got {merge_kl!r}")
    log_pi, mu, log_var = (t.detach().double().cpu() for t in prior.mixture())
    pi, m, v = log_pi.exp().tolist(), mu.tolist(), log_var.exp().tolist()
    n = len(pi)
    root = list(range(n))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if max(_kl(m[i], v[i], m[j], v[j]), _kl(m[j], v[j], m[i], v[i])) < merge_kl:
                a, b = find(i), find(j)
                root[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)  # the zero component's group is keyed 0
    out_groups, out_pi, out_mu, out_var = [], [], [], []
    for key, g in sorted(groups.items()):
        p = sum(pi[i] for i in g)
        mean = 0.0 if key == 0 else sum(pi[i] * m[i] for i in g) / p
        second = sum(pi[i] * (v[i] + m[i] ** 2) for i in g) / p
        out_groups.append(tuple(g))
        out_pi.append(p)
        out_mu.append(mean)
        out_var.append(max(second - mean ** 2, min(v[i] for i in g)))
    def t(xs: list[float]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.float64)

    return out_groups, t(out_pi).log(), t(out_mu), t(out_var)


@torch.no_grad()
def quantize_(model: nn.Module, prior: MixturePrior, merge_kl: float = MERGE_KL) -> Quantized:
    """Set every weight the prior covers to the mean of its most responsible component, in place.

    First components that coincide merge (:func:`merge_components`, ``merge_kl``); then each
    weight takes the code of the merged component with the largest pi_j N(w | mu_j, sigma_j^2):
    code 0 for the zero component (the weight becomes exactly 0), codes 1.. for the used
    nonzero components in increasing order of their means (unused ones get no code).
    """
    if not isinstance(prior, MixturePrior):
        raise KwhError(f"prior must be a kwh.sws.MixturePrior, got {type(prior).__name__}")
    named = mixture_weights(model)
    groups, log_pi, mu, var = merge_components(prior, merge_kl)
    picks = {}
    for name, w in named:
        if not torch.isfinite(w).all():
            raise KwhError(f"{name} holds non-finite weights: nothing to quantize")
        joint = log_pi + _log_normal(w.detach().double().cpu(), mu, var.log())  # (n, K)
        picks[name] = joint.argmax(dim=1)
    used = sorted({int(k) for p in picks.values() for k in p.unique()} - {0},
                  key=lambda k: float(mu[k]))
    code_of = torch.zeros(len(groups), dtype=torch.int64)
    if used:
        code_of[used] = torch.arange(1, len(used) + 1)
    codebook = torch.cat([torch.zeros(1, dtype=torch.float64), mu[used]])
    codes = {}
    for name, w in named:
        c = code_of[picks[name]].view(w.shape)
        w.copy_(codebook.to(w.dtype)[c].to(w.device))
        codes[name] = c
    return Quantized(codes, codebook.to(named[0][1].dtype),
                     [groups[0]] + [groups[k] for k in used], prior.n_components - len(groups))


# ------------------------------------------------------------------ shared codebook, trainable


class _Codebook(nn.Module):
    """The nonzero values of a quantized model's codebook, one trainable parameter."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = nn.Parameter(values.detach().clone())

    def table(self) -> torch.Tensor:
        """(K,) the whole codebook: 0 for code 0 (pruned, fixed), then the values."""
        return torch.cat([self.values.new_zeros(1), self.values])


class _Shared(nn.Module):
    """Parametrization: the weight is codebook[codes]. The first layer's parametrization owns
    the codebook (a submodule); the others hold it in a list, outside the module tree, so the
    model's parameters and state hold it once, and no container's forward() meets it."""

    def __init__(self, codes: torch.Tensor, book: _Codebook, owner: bool):
        super().__init__()
        self.register_buffer("codes", codes.detach().clone().to(torch.int64))
        if owner:
            self.book = book
        self._book = [book]

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self._book[0].table().to(original.dtype)[self.codes]


def _shared_layers(model: nn.Module) -> list[tuple[str, nn.Module, _Shared]]:
    out = []
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            for p in m.parametrizations.weight:
                if isinstance(p, _Shared):
                    out.append((name, m, p))
    return out


def share_codebook_(model: nn.Module, quantized: Quantized) -> nn.Module:
    """Make the weights of a model :func:`quantize_` quantized share its codebook as trainable
    values, in place: each weight the prior covers becomes ``codebook[code]`` (a
    torch.nn.utils.parametrize parametrization; code 0 stays exactly 0), and the nonzero values
    one parameter (of the first layer's parametrization), whose gradient is the sum of the
    gradients of the weights sharing each value: Deep Compression's centroid fine-tuning (Han
    et al. 2016) on the mixture's means. Train the model as usual (the biases stay free), then
    :func:`unshare_codebook_`. Returns ``model``."""
    if not isinstance(quantized, Quantized):
        raise KwhError(f"quantized must be what kwh.sws.quantize_ returned, got "
                       f"{type(quantized).__name__}")
    if _shared_layers(model):
        raise KwhError("this model already shares a codebook (share_codebook_ was applied); "
                       "unshare_codebook_ it first")
    named = mixture_weights(model)
    differ = sorted({n for n, _ in named} ^ set(quantized.codes))
    if differ:
        raise KwhError(f"the quantized codes do not match the model's weights (differ on: "
                       f"{', '.join(differ[:4])}); share the codebook of this model's own "
                       "quantize_")
    k = len(quantized.codebook)
    for name, w in named:
        c = quantized.codes[name]
        if tuple(c.shape) != tuple(w.shape) or \
                (c.numel() and (int(c.min()) < 0 or int(c.max()) >= k)):
            raise KwhError(f"{name}: its codes do not fit the weight ({tuple(c.shape)} codes "
                           f"for {tuple(w.shape)}, codebook of {k})")
    modules = dict(model.named_modules())
    first = named[0][1]
    book = _Codebook(quantized.codebook[1:].to(first.dtype).to(first.device))
    book.components, book.merged = list(quantized.components), quantized.merged
    for i, (name, w) in enumerate(named):
        layer = modules[name[:-len(".weight")] if name != "weight" else ""]
        parametrize.register_parametrization(
            layer, "weight", _Shared(quantized.codes[name].to(w.device), book, owner=i == 0))
        # the stored original weight takes no part in the forward pass: frozen, so that
        # optimizers and DistributedDataParallel see only parameters that get gradients
        layer.parametrizations.weight.original.requires_grad_(False)
    return model


@torch.no_grad()
def unshare_codebook_(model: nn.Module) -> Quantized:
    """Undo :func:`share_codebook_` in place: every shared weight becomes a plain parameter
    holding its (trained) codebook value. Returns the codes and the trained codebook."""
    shared = _shared_layers(model)
    if not shared:
        raise KwhError("this model shares no codebook (share_codebook_ was not applied)")
    book = shared[0][2]._book[0]
    codes = {}
    for name, m, p in shared:
        codes[f"{name}.weight" if name else "weight"] = p.codes.cpu()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        m.weight.requires_grad_(True)  # the frozen original's tensor, a plain weight again
    return Quantized(codes, book.table().detach().cpu(), list(book.components), book.merged)

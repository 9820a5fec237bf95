"""Stochastic gradient Langevin dynamics: posterior samples of a plain network's weights.

SGLD (Welling and Teh 2011, eq. 4) takes a noisy gradient step on the potential
U(theta) = -log p(theta) - sum_i log p(x_i | theta) and adds Gaussian noise whose variance is the
step size; with a small step the iterates are (approximately) draws from the posterior. pSGLD
(Li et al. 2016) scales both the step and the noise by an RMSprop preconditioner.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["SGLD"]


def _positive(name: str, value, *, zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``zero``), or a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _count(value) -> int:
    """n_data as a positive int, or a ValueError."""
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < 1:
        raise ValueError(f"n_data must be a positive integer (the training set's size), "
                         f"got {value!r}")
    return n


class SGLD(torch.optim.Optimizer):
    """SGLD / pSGLD on the gradients of the MEAN minibatch negative log-likelihood.

    With g the gradient of the mean NLL over a minibatch (``F.cross_entropy(model(x), y)
    .backward()``), N = ``n_data``, the prior N(0, prior_std^2 I) and T = ``temperature``::

        theta <- theta - (lr / 2) * G * (N * g + theta / prior_std^2) + sqrt(lr * T * G) * xi

    with xi ~ N(0, I), drawn per parameter in parameter-group order. ``lr`` is the step size
    epsilon of Welling and Teh's eq. 4, in which N * g is their (N / n) sum_i grad(-log
    p(x_i | theta)) and the injected noise is N(0, epsilon); the prior term is left out when
    ``prior_std`` is None (a flat prior). T = 1 samples the posterior, T < 1 a tempered
    ("cold") posterior proportional to exp(-U / T), U = N * NLL - log prior, and T = 0 is
    (preconditioned) gradient descent on U, i.e. to the MAP estimate. A decreasing step-size
    schedule is any ``torch.optim.lr_scheduler`` acting on ``lr``.

    G = 1 unless ``preconditioned``; then G = 1 / (eps + sqrt(V)) elementwise (pSGLD, Li et al.
    2016, Algorithm 1), where V <- alpha V + (1 - alpha) g * g tracks the squared mean-NLL
    gradient (the prior's gradient is not part of it) and starts at 0. The correction term
    Gamma(theta) of Li et al., sum_j d G_ij / d theta_j, is omitted, as in their experiments: it
    is small when V changes slowly (alpha near 1), and without it the sampler is exact only in
    the limit of a constant preconditioner. Where V follows theta, the samples are biased: on a
    one-dimensional Gaussian posterior with full-batch gradients and a weak prior (the mean
    likelihood gradient near 0 at the mode), the sample variance came out 10-60 % too large,
    more at smaller steps; with a strong prior (a likelihood gradient far from 0, so V nearly
    constant) it was within 1 % (tests/test_sgld.py checks that case, to 5 %).

    Parameters without a gradient are skipped. Every option may be set per parameter group;
    ``generator`` (a torch.Generator on the parameters' device, or the CPU) makes the noise
    reproducible. Its state is not part of ``state_dict()``.

    Example::

        opt = SGLD(model.parameters(), lr=1e-5, n_data=len(train_set), prior_std=1.0)
        store = SampleStore(burn_in=2000, thin=100, max_samples=50)
        for step, (x, y) in enumerate(batches, start=1):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            store.collect(model, step)
        pred = predict(model, x_test, samples=20, store=store)  # kwh.predict
    """

    def __init__(self, params: Iterable, lr: float, n_data: int, *, prior_std: float | None = None,
                 temperature: float = 1.0, preconditioned: bool = False, alpha: float = 0.99,
                 eps: float = 1e-5, generator: torch.Generator | None = None):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.generator = generator
        defaults = dict(lr=lr, n_data=n_data, prior_std=prior_std, temperature=temperature,
                        preconditioned=preconditioned, alpha=alpha, eps=eps)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["lr"] = _positive("lr", group["lr"])
        group["n_data"] = _count(group["n_data"])
        if group["prior_std"] is not None:
            group["prior_std"] = _positive("prior_std", group["prior_std"])
        group["temperature"] = _positive("temperature", group["temperature"], zero=True)
        if not isinstance(group["preconditioned"], bool):
            raise ValueError("preconditioned must be True or False, got "
                             f"{group['preconditioned']!r}")
        alpha = _positive("alpha", group["alpha"], zero=True)
        if alpha >= 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        group["alpha"] = alpha
        group["eps"] = _positive("eps", group["eps"])

    def _noise(self, p: Tensor) -> Tensor:
        """xi ~ N(0, I) shaped like ``p``, from the optimizer's generator when it has one."""
        if self.generator is None:
            return torch.randn_like(p)
        xi = torch.randn(p.shape, generator=self.generator, dtype=p.dtype,
                         device=self.generator.device)
        return xi.to(p.device)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One Langevin step for every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, n, t = group["lr"], group["n_data"], group["temperature"]
            prior_std = group["prior_std"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ValueError("SGLD does not take sparse gradients")
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                drift = g * n  # N * grad of the mean NLL: the full-data likelihood gradient
                if prior_std is not None:
                    drift = drift.add(p, alpha=1.0 / prior_std ** 2)  # grad of -log N(0, s^2)
                if group["preconditioned"]:
                    v = state.get("square_avg")
                    if v is None:
                        v = state["square_avg"] = torch.zeros_like(p)
                    v.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
                    precond = (v.sqrt() + group["eps"]).reciprocal()  # G, elementwise
                    drift = drift * precond
                p.add_(drift, alpha=-lr / 2)
                if t > 0:
                    xi = self._noise(p)
                    if group["preconditioned"]:
                        xi = xi * precond.sqrt()
                    p.add_(xi, alpha=math.sqrt(lr * t))
        return loss

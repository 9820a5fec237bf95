"""Per-layer KL weights from each layer's compute: prune where the multiplications are.

The free energy prices every weight alike (one KL term each), so a posterior trained on it
prunes by parameter count. A convolution's weight is used once per output position, though:
in a ResNet-20 on 28x28 inputs a first-stage weight costs 16x the multiplications of a
third-stage one, and the first stage holds most of the compressed net's nonzero MACs while
it holds few of its weights. scale_kl_by_compute_ weights each layer's KL by
``max(1, uses / reference uses) ** power``, uses = the output positions each weight
multiplies into (H_out * W_out for a convolution; the positions before the last dimension for
a Linear, 1 for a plain classifier layer), reference = the uses of the layer with the most
weights (which holds most of the file). That layer, and every layer whose weights are used as
little, keep the free energy's KL; a layer whose weights are used k times as often pays
k ** power for each weight it keeps (ResNet-20 at power 0.5: the third stage 1, the second 2,
the first 4). No layer pays less than the free energy. Bayesian Bits (van Baalen et al. 2020)
weights its gates' regularizer by their bit operations in the same spirit. power 0 gives the
free energy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kwh.bayes.layers import BayesConv2d, bayes_layers

__all__ = ["output_positions", "weight_uses", "scale_kl_by_compute_"]


@torch.no_grad()
def output_positions(model: nn.Module, example_input: Tensor,
                     layers: list[nn.Module]) -> list[int]:
    """For each of ``layers`` (modules of ``model``): the output positions each of its weights
    multiplies into for one example, summed over its calls (0: not reached), from one
    eval-mode forward pass of ``example_input`` (one example with its batch dimension of 1).
    A convolution's (nn.Conv2d, BayesConv2d) are its output pixels; any other layer's, the
    positions before the last dimension of its output (1 for a plain classifier layer, the
    tokens of a Linear on tokens). The model's train/eval modes are restored. ValueError when
    the input is not one example."""
    if not isinstance(example_input, Tensor) or example_input.dim() < 2 \
            or example_input.shape[0] != 1:
        shape = tuple(example_input.shape) if isinstance(example_input, Tensor) else None
        raise ValueError(f"example_input must be one example with a batch dimension of 1, "
                         f"got shape {shape}")
    uses = [0] * len(layers)

    def hook(i: int, conv: bool):
        def record(_module, _inputs, out: Tensor):
            uses[i] += out.numel() // (out.shape[1] if conv else out.shape[-1])
        return record

    handles = [m.register_forward_hook(hook(i, isinstance(m, (nn.Conv2d, BayesConv2d))))
               for i, m in enumerate(layers)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return uses


def weight_uses(model: nn.Module, example_input: Tensor) -> dict[str, int]:
    """{name: how many output positions each weight of the Bayesian layer multiplies into for
    one example} (:func:`output_positions`); a layer called twice counts both calls.
    ValueError when the model has no Bayesian layer, the input is not one example, or a layer
    is not reached."""
    layers = list(bayes_layers(model))
    if not layers:
        raise ValueError("model has no Bayesian layers; call kwh.bayesify_(model, prior) first")
    uses = dict(zip((name for name, _ in layers),
                    output_positions(model, example_input, [m for _, m in layers])))
    missing = [name for name, n in uses.items() if n == 0]
    if missing:
        raise ValueError(f"the example input does not reach the Bayesian layer(s) "
                         f"{', '.join(missing)}: their compute is unknown")
    return uses


def scale_kl_by_compute_(model: nn.Module, example_input: Tensor,
                         power: float = 0.5) -> dict[str, float]:
    """Set each Bayesian layer's ``kl_scale`` to ``max(1, uses / reference) ** power`` (see the
    module docstring; uses from :func:`weight_uses`, reference: the uses of the layer with the
    most weights, the fewest uses among those tied) and return {name: scale}. ``power`` 0 sets
    every scale to 1 (the free energy)."""
    if not (isinstance(power, (int, float)) and not isinstance(power, bool)
            and math.isfinite(power) and power >= 0):
        raise ValueError(f"power must be a finite number >= 0, got {power!r}")
    uses = weight_uses(model, example_input)
    sizes = {name: m.prior.weight_shape.numel() for name, m in bayes_layers(model)}
    reference = min(uses[name] for name in uses if sizes[name] == max(sizes.values()))
    scales = {name: max(1.0, n / reference) ** power for name, n in uses.items()}
    for name, m in bayes_layers(model):
        m.kl_scale = float(scales[name])
    return scales

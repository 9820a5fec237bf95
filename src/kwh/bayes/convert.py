"""bayesify_: swap a model's Linear and Conv2d layers for Bayesian ones, in place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from kwh.bayes.layers import BayesConv2d, BayesLayer, BayesLinear
from kwh.bayes.priors import PriorConfig, check_group_size, prior_config

log = logging.getLogger(__name__)


@dataclass
class ConversionReport:
    """Which layers bayesify_ converted and which it left as they were."""

    prior: str
    converted: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        left = ", ".join(self.left) if self.left else "none"
        return (f"bayesify_ ({self.prior}): converted {len(self.converted)} layers "
                f"[{', '.join(self.converted)}]; left unchanged: {left}")


def bayesify_(model: nn.Module, prior: str | PriorConfig = "group-horseshoe",
              group_sizes: Mapping[str, int] | None = None, **options) -> ConversionReport:
    """Replace every nn.Linear and nn.Conv2d of ``model`` by its Bayesian twin, in place.

    Trained weights become posterior means, so a pretrained net starts where it was.
    Other modules (BatchNorm, pooling, activations) are left alone. Returns a report.
    ``group_sizes``: {Linear layer's qualified name: consecutive input units sharing one
    scale z}, e.g. an attention's out-projection grouped per head (a model may offer the
    mapping, as kwh.models.vit's ``kwh_head_groups``). Group priors only; ValueError for the
    per-weight log-uniform prior, for a name that is not an nn.Linear of the model, and for a
    size that does not divide the layer's inputs.
    """
    config = prior_config(prior, **options)
    sizes = _check_group_sizes(model, config, group_sizes)
    report = ConversionReport(prior=config.name)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, BayesLayer):
                raise ValueError(f"layer {full!r} is already Bayesian; bayesify_ a plain model")
            if type(child) is nn.Linear:
                setattr(parent, child_name,
                        BayesLinear.from_module(child, config, sizes.get(full, 1)))
                report.converted.append(full)
            elif type(child) is nn.Conv2d:
                setattr(parent, child_name, BayesConv2d.from_module(child, config))
                report.converted.append(full)
            elif not any(True for _ in child.children()) and any(True for _ in child.parameters()):
                report.left.append(f"{full} ({type(child).__name__})")
    if not report.converted:
        raise ValueError("bayesify_ found no nn.Linear or nn.Conv2d layer to convert")
    log.info("%s", report)
    return report


def _check_group_sizes(model: nn.Module, config: PriorConfig,
                       group_sizes: Mapping[str, int] | None) -> dict[str, int]:
    """The group sizes by layer name, checked before anything is converted."""
    if not group_sizes:
        return {}
    if config.name == "log-uniform":
        raise ValueError("group_sizes needs a group prior (group-nj or group-horseshoe): the "
                         "log-uniform prior has one scale per weight, not per group")
    modules = dict(model.named_modules())
    for name, size in group_sizes.items():
        if type(modules.get(name)) is not nn.Linear:
            found = "no such module" if name not in modules else type(modules[name]).__name__
            raise ValueError(f"group_sizes names {name!r} ({found}); group sizes apply to the "
                             "input units of the model's nn.Linear layers")
        check_group_size(modules[name].weight.shape, 1, size)
    return dict(group_sizes)

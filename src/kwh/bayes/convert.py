"""bayesify_: swap a model's Linear and Conv2d layers for Bayesian ones, in place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from kwh.bayes.layers import BayesConv2d, BayesLayer, BayesLinear
from kwh.bayes.priors import PriorConfig, prior_config

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
              **options) -> ConversionReport:
    """Replace every nn.Linear and nn.Conv2d of ``model`` by its Bayesian twin, in place.

    Trained weights become posterior means, so a pretrained net starts where it was.
    Other modules (BatchNorm, pooling, activations) are left alone. Returns a report.
    """
    config = prior_config(prior, **options)
    report = ConversionReport(prior=config.name)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, BayesLayer):
                raise ValueError(f"layer {full!r} is already Bayesian; bayesify_ a plain model")
            if type(child) is nn.Linear:
                setattr(parent, child_name, BayesLinear.from_module(child, config))
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

"""The free-energy hammer: Bayesian layers, sparsity priors, the objective."""

from kwh.bayes.batchnorm import recalibrate_batchnorm
from kwh.bayes.compute import output_positions, scale_kl_by_compute_, weight_uses
from kwh.bayes.convert import ConversionReport, bayesify_
from kwh.bayes.layers import BayesConv2d, BayesLayer, BayesLinear, bayes_layers, sampling
from kwh.bayes.objective import KLWarmup, free_energy, kl_divergence, scaled_kl
from kwh.bayes.optim import param_groups
from kwh.bayes.priors import (
    PRIORS,
    GroupHorseshoe,
    GroupHorseshoeConfig,
    GroupNJ,
    GroupNJConfig,
    LogUniform,
    LogUniformConfig,
    Prior,
    prior_config,
)
from kwh.bayes.samples import SampleStore
from kwh.bayes.sgld import SGLD
from kwh.bayes.uncertainty import Prediction, evaluate_uncertainty, predict

__all__ = [
    "bayesify_", "ConversionReport",
    "BayesLayer", "BayesLinear", "BayesConv2d", "bayes_layers", "sampling",
    "free_energy", "kl_divergence", "scaled_kl", "KLWarmup", "param_groups",
    "scale_kl_by_compute_", "weight_uses", "output_positions",
    "Prior", "PRIORS", "prior_config",
    "LogUniform", "LogUniformConfig", "GroupNJ", "GroupNJConfig",
    "GroupHorseshoe", "GroupHorseshoeConfig",
    "predict", "Prediction", "evaluate_uncertainty",
    "SGLD", "SampleStore", "recalibrate_batchnorm",
]

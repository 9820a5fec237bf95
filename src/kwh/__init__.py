"""kwh: intelligence per kilowatt-hour.

Bayesian compression (sparsity priors that prune units and pick bits from the posterior) and
sigma-delta inference (no work where nothing changed), with the energy they save measured.
"""

from kwh.bayes import (
    KLWarmup,
    bayesify_,
    free_energy,
    kl_divergence,
    predict,
    sampling,
)
from kwh import compress  # a callable package: kwh.compress(model, config)
from kwh import models
from kwh.compress import CompressConfig, codec, format_summary
from kwh.compress.codec import load, save
from kwh.compress.format_onnx import export_onnx
from kwh.data import get_dataset, load_mnist, make_loaders, sequence_dataset

__version__ = "0.1.0"

__all__ = [
    # the free energy
    "bayesify_", "free_energy", "kl_divergence", "KLWarmup", "sampling",
    # uncertainty
    "predict",
    # data and reference models
    "models", "load_mnist", "get_dataset", "make_loaders", "sequence_dataset",
    # compression
    "compress", "CompressConfig", "format_summary",
    # the .kwh file
    "save", "load", "export_onnx", "codec",
]

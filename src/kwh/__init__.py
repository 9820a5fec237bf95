"""kwh: intelligence per kilowatt-hour.

Bayesian compression (sparsity priors that prune units and pick bits from the posterior) and
sigma-delta inference (no work where nothing changed), with the energy they save measured.
"""

__version__ = "0.1.0"  # first: modules imported below read it

from kwh.bayes import (
    SGLD,
    KLWarmup,
    SampleStore,
    bayesify_,
    free_energy,
    kl_divergence,
    predict,
    sampling,
)
from kwh import binary
from kwh.binary import BinarizeReport, binarize_
from kwh import compress  # the package of the core step; made the verb below
from kwh import models
from kwh import sws
from kwh.app.verb import CompressPackage
from kwh.compress import CompressConfig, format_summary
from kwh.data import get_dataset, load_mnist, make_loaders, sequence_dataset
from kwh.format import codec
from kwh.format.codec import load, save
from kwh.format.onnx import export_onnx

# kwh.compress(model, config) is kwh.app.compress: the core step, then the .kwh payload the
# codec measures; kwh.compress.CompressConfig and the package's other names stay attributes.
compress.__class__ = CompressPackage

__all__ = [
    # the free energy
    "bayesify_", "free_energy", "kl_divergence", "KLWarmup", "sampling",
    # uncertainty
    "predict", "SGLD", "SampleStore",
    # data and reference models
    "models", "load_mnist", "get_dataset", "make_loaders", "sequence_dataset",
    # binary networks
    "binarize_", "BinarizeReport", "binary",
    # soft weight-sharing (kwh.sws.MixturePrior, kwh.sws.quantize_)
    "sws",
    # compression
    "compress", "CompressConfig", "format_summary",
    # the .kwh file
    "save", "load", "export_onnx", "codec",
]

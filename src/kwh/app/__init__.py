"""The application layer: what the command line, the report and the benchmarks share.

Loading a model from wherever it is (a .kwh file, a run of `kwh train`, a state dict, a
reference name), evaluating it on a data set, pricing it with the data, and the public verb
``kwh.compress`` (the core step plus the payload the codec measures). It drives the core
packages (bayes, compress, spike, energy) with loaded models and tensors; they never import
it (tests/test_layering.py).
"""

from __future__ import annotations

from kwh.app.verb import compress, measure_payload
from kwh.app.energy import compare, model_accuracy, sigma_delta_run
from kwh.app.evaluate import (
    accuracy_on,
    error_on,
    evaluate_model_file,
    load_ood,
    load_test,
    sequences,
)
from kwh.app.load import KINDS, LoadedModel, load_model, read_state_dict

__all__ = [
    # loading
    "load_model", "LoadedModel", "KINDS", "read_state_dict",
    # evaluation on a data set
    "load_test", "error_on", "accuracy_on", "sequences", "load_ood", "evaluate_model_file",
    # pricing
    "compare", "model_accuracy", "sigma_delta_run",
    # the verb
    "compress", "measure_payload",
]

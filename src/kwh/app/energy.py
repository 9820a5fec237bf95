"""`kwh energy` and `kwh report` behind the command line: a loaded model priced with what the
data say about it (accuracy, real inputs, a sigma-delta run on video), by kwh.energy."""

from __future__ import annotations

from kwh import spike
from kwh.app.evaluate import accuracy_on, load_test, sequences
from kwh.app.load import LoadedModel
from kwh.energy.compare import Comparison, SigmaDeltaRun
from kwh.energy.compare import compare as compare_variants
from kwh.energy.config import EnergyConfig
from kwh.energy.sources import input_shape_for
from kwh.energy.table import EnergyTable

__all__ = ["compare", "model_accuracy", "sigma_delta_run"]

MEASURE_EXAMPLES = 256  # test inputs the measured energy runs on


def compare(loaded: LoadedModel, *, data: str | None = None, data_dir: str | None = None,
            limit: int | None = None, table: EnergyTable | None = None,
            config: EnergyConfig | None = None, dense: str | None = None,
            dense_accuracy: float | None = None, accuracy: float | None = None,
            measure: bool = True, window_s: float = 2.0, sigma_delta: bool = False,
            scale: float = 16.0, sequences: int = 20, frames: int = 10,
            dense_optional: bool = False, progress: bool = False) -> Comparison:
    """Modelled (and where possible measured) energy of ``loaded`` and its dense original,
    with its accuracy on ``data`` (first ``limit`` test examples) unless ``accuracy`` is
    given, and with ``sigma_delta`` its sigma-delta version on moving-digit video.

    ``dense_optional``: when the dense original cannot be recognised, leave it out with a note
    instead of raising.
    """
    model = loaded.model.eval()
    shape = input_shape_for(data or loaded.data, loaded.summary, model, loaded.label)
    inputs = None if data is None else load_test(data, data_dir, MEASURE_EXAMPLES)[0]
    acc, note = model_accuracy(loaded, data, data_dir, limit, accuracy)
    run = (sigma_delta_run(loaded, data or "mnist", data_dir, scale, sequences, frames)
           if sigma_delta else None)
    return compare_variants(model, loaded.summary, label=loaded.label, input_shape=shape,
                            accuracy=acc, accuracy_note=note, inputs=inputs, table=table,
                            config=config, dense=dense, dense_accuracy=dense_accuracy,
                            measure=measure, window_s=window_s, sigma_delta=run,
                            dense_optional=dense_optional, progress=progress)


def model_accuracy(loaded: LoadedModel, data: str | None, data_dir: str | None = None,
                   limit: int | None = None,
                   given: float | None = None) -> tuple[float | None, str]:
    """(accuracy or None, where it comes from): given, measured on ``data``, or why neither."""
    if given is not None:
        return given, "given (--accuracy)"
    if loaded.path is None:
        return None, ("not available: MODEL is an untrained reference architecture (give a "
                      "trained .kwh file or checkpoint, or --accuracy)")
    if data is None:
        return None, "not available: no --data given"
    acc, n = accuracy_on(loaded.model, data, data_dir, limit)
    return acc, f"measured on {n:,} {data} test images"


def sigma_delta_run(loaded: LoadedModel, data: str, data_dir: str | None, scale: float,
                    n: int, frames: int) -> SigmaDeltaRun:
    """The model as a sigma-delta network (scale k) on ``n`` moving-digit test sequences."""
    x, y = sequences(data, "test", "moving", n=n, frames=frames, root=data_dir)  # (T, S, ...)
    run = spike.convert(loaded.model, scale)(x)
    return SigmaDeltaRun(run, run.accuracy(y), f"per frame, {n} moving-{data} sequences x "
                                               f"{frames} frames, scale k = {scale:g}")

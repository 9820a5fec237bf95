"""Side by side: the dense original, the compressed model, its sigma-delta version.

Each variant gets its modelled energy (per inference, or per frame for sigma-delta), its
accuracy where it was measured honestly, and measured energy where the machine has a counter
(else the reasons it has none). Everything comes in loaded: the model, its accuracy, test
inputs, the sigma-delta run (kwh.app.energy reads them from files and data sets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import EnergyConfig
from .estimate import estimate_energy
from .measure import Measurement, Unavailable, measure_model
from .result import EnergyEstimate
from .sigma_delta import estimate_sigma_delta
from .sources import dense_reference
from .table import HOROWITZ_45NM, EnergyTable

__all__ = ["Variant", "Comparison", "SigmaDeltaRun", "compare"]


@dataclass
class Variant:
    """One version of the model: its estimate, accuracy provenance and measurement."""

    key: str                     # "dense", "compressed", "model" or "sigma-delta"
    label: str
    estimate: EnergyEstimate
    accuracy_note: str = ""
    measured: Measurement | Unavailable | None = None

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "estimate": self.estimate.to_dict(),
                "accuracy_note": self.accuracy_note,
                "measured": None if self.measured is None else self.measured.to_dict()}


@dataclass
class Comparison:
    """The variants, in order: dense first when present."""

    variants: list[Variant]
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)

    def get(self, key: str) -> Variant | None:
        return next((v for v in self.variants if v.key == key), None)

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "notes": list(self.notes),
                "variants": [v.to_dict() for v in self.variants]}


def _is_compressed(model: nn.Module, summary: dict | None) -> bool:
    return summary is not None or any(hasattr(m, "kwh_bits") for m in model.modules())


def _measure(model: nn.Module, shape: tuple[int, ...], window_s: float,
             batch: torch.Tensor | None) -> Measurement | Unavailable:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = batch if batch is not None else torch.zeros((256, *shape))
    return measure_model(model, x.to(device), window_s=window_s)


@dataclass
class SigmaDeltaRun:
    """The model run as a sigma-delta network (kwh.spike.convert(model, scale)(frames)), to
    price per frame: the run's op counts, its accuracy, and what it ran on."""

    run: object  # a kwh.spike.SpikeRun: ops, ops_nonzero (L, T, B), layer_names, op_kind
    accuracy: float | None
    note: str


def compare(model: nn.Module, summary: dict | None = None, *, label: str,
            input_shape: tuple[int, ...], accuracy: float | None = None,
            accuracy_note: str = "", inputs: Tensor | None = None,
            table: EnergyTable | None = None, config: EnergyConfig | None = None,
            dense: str | None = None, dense_accuracy: float | None = None,
            measure: bool = True, window_s: float = 2.0,
            sigma_delta: SigmaDeltaRun | None = None, dense_optional: bool = False,
            progress: bool = False) -> Comparison:
    """Modelled (and where possible measured) energy of ``model`` and its dense original.

    ``summary``: the model's compression summary (recognises the dense original); ``label``
    names the model; ``input_shape`` is one example's; ``accuracy`` and ``accuracy_note``
    say how well it does and where that number comes from; ``inputs`` (N, ...) are real
    examples to measure on (zeros otherwise); ``sigma_delta`` adds the sigma-delta variant.
    ``dense_optional``: when the dense original cannot be recognised, leave it out with a
    note instead of raising.
    """
    table, cfg = table or HOROWITZ_45NM, config or EnergyConfig()
    model = model.eval()
    shape = tuple(input_shape)
    compressed = _is_compressed(model, summary)
    steps = tqdm(total=2 + int(sigma_delta is not None), desc="kwh energy",
                 disable=not progress, leave=False)
    variants, notes = [], []

    ref = None
    if compressed or dense is not None:
        try:
            ref, ref_name = dense_reference(summary, dense, model)
        except ValueError as e:
            if not dense_optional:
                raise
            notes.append(f"dense original left out: {e}")
    if ref is not None:
        est = estimate_energy(ref, shape, table, cfg).with_accuracy(dense_accuracy)
        note = ("given (--dense-accuracy)" if dense_accuracy is not None else
                "not available: the dense original's trained weights are not in this file "
                "(give --dense-accuracy)")
        variants.append(Variant("dense", f"dense fp32 ({ref_name})", est, note,
                                _measure(ref, shape, window_s, inputs) if measure else None))
    steps.update()

    est = estimate_energy(model, shape, table, cfg)
    variants.append(Variant("compressed" if compressed else "model",
                            ("compressed" if compressed else "dense fp32") + f" ({label})",
                            est.with_accuracy(accuracy), accuracy_note,
                            _measure(model, shape, window_s, inputs) if measure else None))
    steps.update()

    if sigma_delta is not None:
        est = estimate_sigma_delta(model, sigma_delta.run, shape, table, cfg)
        variants.append(Variant(
            "sigma-delta", f"sigma-delta ({label})", est.with_accuracy(sigma_delta.accuracy),
            sigma_delta.note,
            Unavailable(["the sigma-delta run is a simulation of event-driven hardware; this "
                         "machine's energy for it would not be that hardware's"])))
        steps.update()
    steps.close()
    return Comparison(variants, shape, notes)

"""Side by side: the dense original, the compressed model, its sigma-delta version.

Each variant gets its modelled energy (per inference, or per frame for sigma-delta), its
accuracy where it can be measured honestly, and measured energy where the machine has a
counter (else the reasons it has none).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import EnergyConfig
from .estimate import estimate_energy
from .measure import Measurement, Unavailable, measure_model
from .result import EnergyEstimate
from .sigma_delta import estimate_sigma_delta
from .sources import LoadedModel, dense_reference, eval_accuracy, input_shape_for
from .table import HOROWITZ_45NM, EnergyTable

__all__ = ["Variant", "Comparison", "compare"]


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


def compare(loaded: LoadedModel, *, data: str | None = None, data_dir: str | None = None,
            limit: int | None = None, table: EnergyTable | None = None,
            config: EnergyConfig | None = None, dense: str | None = None,
            dense_accuracy: float | None = None, accuracy: float | None = None,
            measure: bool = True, window_s: float = 2.0, sigma_delta: bool = False,
            scale: float = 16.0, sequences: int = 20, frames: int = 10,
            dense_optional: bool = False, progress: bool = False) -> Comparison:
    """Modelled (and where possible measured) energy of ``loaded`` and its dense original.

    ``dense_optional``: when the dense original cannot be recognised, leave it out with a note
    instead of raising.
    """
    table, cfg = table or HOROWITZ_45NM, config or EnergyConfig()
    model, summary = loaded.model.eval(), loaded.summary
    shape = input_shape_for(data or loaded.data, summary, model, loaded.label)
    compressed = _is_compressed(model, summary)
    steps = tqdm(total=2 + int(sigma_delta), desc="kwh energy", disable=not progress,
                 leave=False)
    variants, notes = [], []
    batch = None
    if data is not None:
        from kwh.data import get_dataset
        batch = get_dataset(data, "test", data_dir, limit=256).tensors[0]

    ref = None
    if compressed or dense is not None:
        try:
            ref, ref_name = dense_reference(summary, dense)
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
                                _measure(ref, shape, window_s, batch) if measure else None))
    steps.update()

    est = estimate_energy(model, shape, table, cfg)
    if accuracy is not None:
        acc, note = accuracy, "given (--accuracy)"
    elif loaded.path is None:
        acc, note = None, ("not available: MODEL is an untrained reference architecture (give "
                           "a trained .kwh file or checkpoint, or --accuracy)")
    elif data is not None:
        acc, n = eval_accuracy(model, data, data_dir, limit)
        note = f"measured on {n:,} {data} test images"
    else:
        acc, note = None, "not available: no --data given"
    variants.append(Variant("compressed" if compressed else "model",
                            ("compressed" if compressed else "dense fp32") + f" ({loaded.label})",
                            est.with_accuracy(acc), note,
                            _measure(model, shape, window_s, batch) if measure else None))
    steps.update()

    if sigma_delta:
        variants.append(_sigma_delta(model, loaded.label, shape, data or "mnist", data_dir,
                                     table, cfg, scale, sequences, frames))
        steps.update()
    steps.close()
    return Comparison(variants, shape, notes)


def _sigma_delta(model: nn.Module, label: str, shape: tuple[int, ...], data: str,
                 data_dir: str | None, table: EnergyTable, cfg: EnergyConfig, scale: float,
                 sequences: int, frames: int) -> Variant:
    """Run the model as a sigma-delta network on moving-digit sequences and price a frame."""
    try:
        spike = importlib.import_module("kwh.spike")
    except ImportError:
        raise ValueError("--sigma-delta needs kwh.spike, which this installation does not "
                         "have") from None
    from kwh.data import sequence_dataset
    x, y = sequence_dataset(data, "test", "moving", root=data_dir, n_sequences=sequences,
                            n_frames=frames).tensors          # (S, T, C, H, W), (S,)
    x = x.transpose(0, 1)                                     # (T, S, C, H, W)
    run = spike.convert(model, scale)(x)
    est = estimate_sigma_delta(model, run, shape, table, cfg).with_accuracy(run.accuracy(y))
    note = (f"per frame, {sequences} moving-{data} sequences x {frames} frames, scale k = "
            f"{scale:g}")
    return Variant("sigma-delta", f"sigma-delta ({label})", est, note,
                   Unavailable(["the sigma-delta run is a simulation of event-driven hardware; "
                                "this machine's energy for it would not be that hardware's"]))

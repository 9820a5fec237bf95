"""Where the models to price come from: .kwh files, reference names, the dense original, data."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kwh.errors import KwhError, ModelError
from kwh.models import MODELS, build

__all__ = ["LoadedModel", "load_model", "dense_reference", "input_shape_for", "eval_accuracy",
           "DATA_SHAPES"]

DATA_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass
class LoadedModel:
    """A model to price, its compression summary (None for plain ones) and a display name."""

    model: nn.Module
    summary: dict | None
    label: str
    path: Path | None = None
    data: str | None = None  # the data set it was trained on, when known (checkpoints)


def _kwh_loader():
    """``kwh.load`` or the codec's ``load``; None when this installation has neither."""
    import kwh
    load = getattr(kwh, "load", None)
    if load is not None:
        return load
    try:
        return importlib.import_module("kwh.compress.codec").load
    except (ImportError, AttributeError):
        return None


def load_model(spec: str) -> LoadedModel:
    """A .kwh file, a training checkpoint (file or run folder), or a reference model name."""
    p = Path(spec)
    if p.suffix == ".kwh" or p.is_file() or p.is_dir():
        if p.is_dir() and (p / "checkpoint.safetensors").is_file():
            p = p / "checkpoint.safetensors"
        if not p.exists():
            raise FileNotFoundError(f"model file not found: {p}")
        if p.suffix == ".safetensors":
            return _load_checkpoint(p)
        load = _kwh_loader()
        if load is None:
            raise KwhError("reading .kwh files needs kwh.load (the .kwh codec), which this "
                           "installation does not have")
        model = load(p)
        return LoadedModel(model, getattr(model, "kwh_summary", None), p.name, p)
    if spec in MODELS:
        return LoadedModel(build(spec), None, spec)
    raise ValueError(f"MODEL {spec!r} is neither an existing file nor a reference model; give a "
                     f".kwh file, a checkpoint, or one of: {', '.join(MODELS)}")


def _load_checkpoint(p: Path) -> LoadedModel:
    try:
        load_checkpoint = importlib.import_module("kwh.train").load_checkpoint
    except (ImportError, AttributeError):
        raise KwhError("reading training checkpoints needs kwh.train.load_checkpoint, which "
                       "this installation does not have") from None
    model, config = load_checkpoint(p)
    model.eval()
    return LoadedModel(model, None, p.parent.name + "/" + p.name, p,
                       getattr(config, "data", None))


def _weight_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))]


def _candidates(summary: dict):
    classes = int(summary.get("num_classes", 10))
    shape = tuple(summary.get("input_shape") or (1, 28, 28))
    yield "lenet300", lambda: build("lenet300", in_features=int(torch.tensor(shape).prod()),
                                    num_classes=classes)
    yield "lenet5", lambda: build("lenet5", in_channels=shape[0], num_classes=classes)
    first = (summary.get("layers") or [{}])[0].get("shape_original")
    if first and len(first) == 4:
        width = first[0] / 64
        yield f"vgg (width {width:g})", lambda: build("vgg", width=width, num_classes=classes,
                                                      in_channels=shape[0])


def dense_reference(summary: dict | None, name: str | None = None) -> tuple[nn.Module, str]:
    """The dense original: ``name`` if given, else the reference model whose weight shapes
    equal the summary's original ones (``layers[i]['shape_original']``)."""
    if name is not None:
        kw = {}
        if summary and summary.get("num_classes"):
            kw["num_classes"] = int(summary["num_classes"])
        return build(name, **kw), name
    if not summary or not summary.get("layers"):
        raise ValueError("this model carries no compression summary, so its dense original is "
                         f"unknown; give --dense NAME (one of: {', '.join(MODELS)})")
    want = [tuple(d["shape_original"]) for d in summary["layers"]]
    for label, make in _candidates(summary):
        try:
            model = make()
        except ValueError:
            continue
        if _weight_shapes(model) == want:
            return model, label
    raise ModelError(f"the summary's original layer shapes {want} match no reference model; "
                     f"give --dense NAME (one of: {', '.join(MODELS)})")


def input_shape_for(data: str | None, summary: dict | None, model: nn.Module,
                    name: str = "") -> tuple[int, ...]:
    """One example's shape: from the data set, the summary, the model, or the model's name."""
    if data is not None:
        if data not in DATA_SHAPES:
            raise ValueError(f"Unknown data set {data!r}; choose one of: {', '.join(DATA_SHAPES)}")
        return DATA_SHAPES[data]
    for shape in (summary or {}).get("input_shape"), getattr(model, "kwh_input_shape", None):
        if shape:
            return tuple(int(d) for d in shape)
    if name.startswith("vgg"):
        return DATA_SHAPES["cifar10"]
    if name.startswith("lenet"):
        return DATA_SHAPES["mnist"]
    raise ValueError("cannot tell this model's input shape; give --data (one of: "
                     f"{', '.join(DATA_SHAPES)})")


@torch.no_grad()
def eval_accuracy(model: nn.Module, data: str, root: str | None = None,
                  limit: int | None = None, batch_size: int = 1000) -> tuple[float, int]:
    """Top-1 accuracy on the test split of ``data`` (first ``limit`` examples): (acc, n)."""
    from kwh.data import get_dataset
    ds = get_dataset(data, "test", root, limit=limit)
    x, y = ds.tensors
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(y), len(y)

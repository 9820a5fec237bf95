"""The models an energy comparison prices besides the given one: the dense original, and the
input shape one example has (the model itself comes loaded: kwh.app.load_model)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kwh.errors import ModelError
from kwh.modules import SelectInputs
from kwh.models import MODELS, build

__all__ = ["dense_reference", "dense_of_weights_mode", "dense_from_layers", "input_shape_for",
           "DATA_SHAPES"]

DATA_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


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


def _at_shape(m: nn.Linear | nn.Conv2d, shape: tuple[int, ...]) -> nn.Module:
    """A fresh Linear / Conv2d like ``m`` (kernel, stride, padding, dilation) at weight shape
    ``shape``, with a bias."""
    if isinstance(m, nn.Conv2d):
        o, i, *kernel = shape
        return nn.Conv2d(i, o, tuple(kernel), stride=m.stride, padding=m.padding,
                         dilation=m.dilation, bias=True)
    o, i = shape
    return nn.Linear(i, o, bias=True)


def dense_from_chain(model: nn.Module, summary: dict) -> nn.Module:
    """The dense original of a compressed chain: each Linear/Conv2d back at the summary's
    original shape (same kernel, stride, padding, dilation), the input selection removed,
    every other module as it is. Weights are random: it is priced by shape, not accuracy."""
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"the dense original can be rebuilt from a compressed chain only, "
                         f"got {type(model).__name__}")
    shapes = [tuple(int(d) for d in d["shape_original"]) for d in summary["layers"]]
    weighted = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    if len(weighted) != len(shapes) or any(
            len(s) != m.weight.dim() for s, m in zip(shapes, weighted)):
        raise ModelError("the summary's original layer shapes do not match this model's layers")
    out, k = [], 0
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for m in model:
            if isinstance(m, SelectInputs):
                continue
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                out.append(_at_shape(m, shapes[k]))
                k += 1
            else:
                out.append(copy.deepcopy(m))
    return nn.Sequential(*out).eval()


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def dense_from_layers(model: nn.Module, summary: dict) -> nn.Module:
    """The dense original of a compressed model of any wiring (a kwh.format.GraphNet loaded
    from a file, a traced graph): a copy with each Linear/Conv2d, in module order, back at the
    summary's original shape (same kernel, stride, padding, dilation) and input selections
    replaced by identities. Checked, else a ModelError: it runs on one example of the summary's
    input shape, and each rebuilt layer's multiplications equal the summary's
    ``macs_original`` for it. BatchNorm folded into a layer at compression stays folded (its
    per-channel scale and shift are not priced). Weights are random: priced by shape."""
    layers, shape = summary["layers"], summary.get("input_shape")
    if not shape:
        raise ModelError("the summary records no input shape to check the dense original on")
    dense = copy.deepcopy(model).eval()
    for name, m in list(dense.named_modules()):
        if isinstance(m, SelectInputs):
            _set_module(dense, name, nn.Identity())
    weighted = [(n, m) for n, m in dense.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if len(weighted) != len(layers):
        raise ModelError(f"the model has {len(weighted)} Linear/Conv2d layers, its summary "
                         f"{len(layers)}")
    rebuilt = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for (name, m), entry in zip(weighted, layers):
            original = tuple(int(d) for d in entry["shape_original"])
            if len(original) != m.weight.dim():
                raise ModelError(f"layer {entry.get('name', name)}: original shape "
                                 f"{list(original)} is not a {type(m).__name__} layer's")
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise ModelError(f"layer {entry.get('name', name)}: a grouped convolution's "
                                 "original cannot be rebuilt from its shape alone")
            new = _at_shape(m, original)
            _set_module(dense, name, new)
            rebuilt[new] = entry
    counted = {}

    def hook(module, args, out):
        per_output = module.weight[0].numel()
        counted[module] = out[0].numel() * per_output  # one example: out[0]

    handles = [m.register_forward_hook(hook) for m in rebuilt]
    try:
        with torch.no_grad():
            dense(torch.zeros(1, *(int(d) for d in shape)))
    except (RuntimeError, ValueError, IndexError) as err:
        raise ModelError(f"the model rebuilt at its summary's original shapes does not run "
                         f"({str(err).splitlines()[0][:200]})") from None
    finally:
        for h in handles:
            h.remove()
    for module, entry in rebuilt.items():
        want = entry.get("macs_original")
        if want is not None and counted.get(module) != want:
            raise ModelError(f"layer {entry.get('name', '?')} rebuilt at its original shape "
                             f"makes {counted.get(module)} multiplications, its summary "
                             f"{want}")
    return dense


def dense_of_weights_mode(model: nn.Module) -> nn.Module:
    """The dense original of a weight-only compression (its architecture unchanged): a copy
    without the kwh attributes, so every layer is priced as dense fp32."""
    dense = copy.deepcopy(model)
    for m in dense.modules():
        for attr in ("kwh_bits", "kwh_frac_bits", "kwh_summary"):
            if attr in m.__dict__:
                delattr(m, attr)
    return dense.eval()


def dense_reference(summary: dict | None, name: str | None = None,
                    model: nn.Module | None = None) -> tuple[nn.Module, str]:
    """The dense original: ``name`` if given; for a weight-only compression (summary mode
    "weights") with ``model`` given, the same architecture dense (dense_of_weights_mode);
    else the reference model whose weight shapes equal the summary's original ones
    (``layers[i]['shape_original']``), else (a compressed chain ``model`` given) that chain
    rebuilt at the original shapes (dense_from_chain)."""
    if name is not None:
        kw = {}
        if summary and summary.get("num_classes"):
            kw["num_classes"] = int(summary["num_classes"])
        return build(name, **kw), name
    if not summary or not summary.get("layers"):
        raise ValueError("this model carries no compression summary, so its dense original is "
                         f"unknown; give --dense NAME (one of: {', '.join(MODELS)})")
    if summary.get("mode") == "weights":
        if model is None:
            raise ValueError("a weight-only compression's dense original is its own "
                             "architecture: pass the model, or give --dense NAME (one of: "
                             f"{', '.join(MODELS)})")
        return dense_of_weights_mode(model), str(summary.get("model") or type(model).__name__)
    want = [tuple(d["shape_original"]) for d in summary["layers"]]
    for label, make in _candidates(summary):
        try:
            candidate = make()
        except ValueError:
            continue
        if _weight_shapes(candidate) == want:
            return candidate, label
    if model is not None and isinstance(model, nn.Sequential):
        return dense_from_chain(model, summary), "the file's dense original (its summary's shapes)"
    why = ""
    if model is not None:
        try:
            return (dense_from_layers(model, summary),
                    "the file's dense original (its summary's shapes, BatchNorm folded)")
        except ModelError as err:
            why = f" and the model cannot be rebuilt at them: {err}"
    raise ModelError(f"the summary's original layer shapes {want} match no reference model"
                     f"{why}; give --dense NAME (one of: {', '.join(MODELS)})")


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

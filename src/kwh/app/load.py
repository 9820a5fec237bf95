"""A model from wherever the user has it: a .kwh file, a run of `kwh train`, a state dict.

``load_model`` reads every source kwh knows and says what it read (``LoadedModel.kind``):

- ``"kwh"``: a .kwh file (kwh.format.codec.load), with its compression summary;
- ``"checkpoint"``: a Bayesian checkpoint of `kwh train`, its file or its run folder
  (kwh.train.load_checkpoint), with the data set it was trained on;
- ``"dense-checkpoint"``: the dense net of a finished plain run of `kwh train` (``--epochs
  0``; kwh.train.load_plain_checkpoint), with its data set;
- ``"state-dict"``: a reference model (kwh.models) with trained weights from a state dict,
  given as a mapping or as a .safetensors / .pt file (read with ``weights_only``);
- ``"reference"``: a reference model by name, untrained;
- ``"module"``: an nn.Module given in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from kwh.errors import FormatError, KwhError, ModelError
from kwh.format.codec import load as load_kwh
from kwh.models import MODELS, build
from kwh.train import checkpoint_path, is_plain_run, load_checkpoint, load_plain_checkpoint
from kwh.train.checkpoint import FILENAME

__all__ = ["LoadedModel", "load_model", "read_state_dict", "KINDS"]

KINDS = ("kwh", "checkpoint", "dense-checkpoint", "state-dict", "reference", "module")
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class LoadedModel:
    """A model ready to run, what its source says about it, and where it came from."""

    model: nn.Module
    summary: dict | None  # the compression summary (.kwh files and compressed modules)
    label: str  # a display name
    path: Path | None = None  # the file read; None for a reference architecture or a module
    data: str | None = None  # the data set it was trained on, when known (checkpoints)
    kind: str = "module"  # one of KINDS


def _sources() -> str:
    return ("give a .kwh file, a checkpoint or run folder of `kwh train`, a state dict "
            f"({', '.join(STATE_DICT_SUFFIXES)}) or a reference model: {', '.join(MODELS)}")


def load_model(source, weights=None) -> LoadedModel:
    """The model of ``source`` in eval mode: an nn.Module, a .kwh file, a checkpoint file or
    run folder of `kwh train`, a state dict (mapping or file) of a reference model, or a
    reference model name.

    ``weights``: a state dict (mapping or .safetensors / .pt file) for a reference model name
    or an nn.Module; without it a reference model is untrained (kind "reference").
    """
    if isinstance(source, nn.Module):
        return _with_weights(source, weights, type(source).__name__, "module")
    if isinstance(source, Mapping):
        if weights is not None:
            raise KwhError("give the weights once: as the source (a state dict) or as weights=")
        return _from_state_dict(source, "the state dict")
    if not isinstance(source, (str, os.PathLike)):
        raise KwhError(f"cannot load a model from a {type(source).__name__}; {_sources()}")
    spec = os.fspath(source)
    if spec in MODELS and not os.path.exists(spec):
        return _with_weights(build(spec), weights, spec, "reference")
    path = Path(spec)
    if weights is not None:
        raise KwhError(f"weights= goes with a reference model name ({', '.join(MODELS)}) or "
                       f"an nn.Module; {spec!r} is a file, which holds its own weights")
    if path.is_dir():
        if not (path / FILENAME).is_file():
            raise FileNotFoundError(f"{path} is a folder without {FILENAME}, so not a run "
                                    f"folder of `kwh train`; {_sources()}")
        return _from_checkpoint(path)
    if not path.is_file():
        kind = FileNotFoundError if path.suffix or os.sep in spec else KwhError
        raise kind(f"no such model: {spec!r} is neither a file nor a reference model; "
                   f"{_sources()}")
    if path.suffix == ".safetensors" and _is_checkpoint(path):
        return _from_checkpoint(path)
    if path.suffix in STATE_DICT_SUFFIXES:
        return _from_state_dict(read_state_dict(path), path.name, path)
    model = load_kwh(path)  # any other file must be a .kwh file; FormatError says what it is
    return LoadedModel(model, getattr(model, "kwh_summary", None), path.name, path, kind="kwh")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file: .safetensors, or .pt / .pth read with weights_only
    (nothing is unpickled but tensors and plain containers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state dict not found: {path}")
    if path.suffix == ".safetensors":
        if _is_checkpoint(path):
            raise KwhError(f"{path} is a checkpoint of `kwh train`, not a state dict; give it "
                           "(or its run folder) as the model itself")
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a state dict
        raise FormatError(f"{path}: not a state dict torch can read with weights_only "
                          f"({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise FormatError(f"{path}: holds a {type(state).__name__}, not a state dict (a "
                          "mapping of parameter names to tensors)")
    return dict(state)


def _is_checkpoint(path: Path) -> bool:
    """A .safetensors file written by `kwh train` (its metadata carries ``kwh``)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a malformed header
        raise FormatError(f"{path}: not a safetensors file ({str(e)[:200]})") from None
    return "kwh" in meta


def _from_checkpoint(path: Path) -> LoadedModel:
    path = checkpoint_path(path)
    if is_plain_run(path):  # a dense run (its header says so): its net
        (model, config), kind = load_plain_checkpoint(path), "dense-checkpoint"
    else:
        (model, config), kind = load_checkpoint(path), "checkpoint"
    return LoadedModel(model.eval(), None, f"{path.parent.name}/{path.name}", path,
                       config.data, kind)


def _with_weights(model: nn.Module, weights, label: str, kind: str) -> LoadedModel:
    path = None
    if weights is not None:
        if not isinstance(weights, Mapping):
            path = Path(weights)
            label = f"{label} ({path.name})"
            weights = read_state_dict(path)
        _load_state(model, weights, label)
        kind = "state-dict" if kind == "reference" else kind
    return LoadedModel(model.eval(), getattr(model, "kwh_summary", None), label, path,
                       kind=kind)


def _from_state_dict(state: Mapping, where: str, path: Path | None = None) -> LoadedModel:
    """The reference model (at its default size) whose parameter names and shapes are those
    of ``state``, with those weights."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in MODELS:
        model = build(name)
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            _load_state(model, state, name)
            return LoadedModel(model.eval(), None, f"{name} ({where})", path, kind="state-dict")
    raise ModelError(f"{where} fits no reference model at its default size "
                     f"({', '.join(MODELS)}); give the model with it: "
                     "load_model(NAME or module, weights=STATE_DICT)")


def _load_state(model: nn.Module, state: Mapping, label: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or mis-shaped parameters
        detail = " ".join(str(e).split())
        raise ModelError(f"the weights do not fit {label}: {detail[:400]}") from None

"""Model, optimizer and RNG state as (tensors, JSON) pairs, and back: what a checkpoint holds."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torch import nn

from kwh.errors import FormatError

__all__ = ["derive_seed", "seed_all", "model_tensors", "load_model_tensors", "optimizer_payload",
           "load_optimizer", "rng_payload", "restore_rng"]


def derive_seed(*parts) -> int:
    """A 63-bit seed from the run's seed and labels (rank, epoch, purpose), stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random from one 63-bit seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def hash_state(h, model: nn.Module):
    """Feed ``model``'s state dict (each name, then its tensor's bytes, in name order) into the
    hashlib object ``h``; returns ``h``."""
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as independent CPU copies, keys prefixed 'model/'."""
    return {f"model/{k}": v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load the 'model/' tensors into model; any missing, extra or misshapen key is a FormatError."""
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise FormatError(f"{where}: checkpoint does not fit the model: missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
    for k, v in state.items():
        if v.shape != own[k].shape or v.dtype != own[k].dtype:
            raise FormatError(f"{where}: {k} is {tuple(v.shape)} {v.dtype} in the checkpoint, "
                              f"the model needs {tuple(own[k].shape)} {own[k].dtype}")
    model.load_state_dict(state, strict=True)


def optimizer_payload(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state: tensors under 'optim/<param>/<key>', scalars and groups as JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim/{idx}/{key}"] = val.detach().to("cpu", copy=True)
            else:
                scalars.setdefault(str(idx), {})[key] = val
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                   where: str) -> None:
    """Inverse of optimizer_payload; a structure that does not fit is a FormatError."""
    try:
        groups = [dict(g) for g in meta["param_groups"]]
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        state: dict[int, dict] = {}
        for name, t in tensors.items():
            if name.startswith("optim/"):
                _, idx, key = name.split("/", 2)
                state.setdefault(int(idx), {})[key] = t
        for idx, sc in meta["scalars"].items():
            state.setdefault(int(idx), {}).update(sc)
        ours = opt.state_dict()["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in ours]:
            raise ValueError("parameter groups differ")
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{where}: optimizer state does not fit the model ({e})") from None


def rng_payload(rank: int, device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: torch (CPU, and CUDA when used), numpy, python."""
    tensors = {f"rng/torch/{rank}": torch.get_rng_state()}
    if device.type == "cuda":
        tensors[f"rng/cuda/{rank}"] = torch.cuda.get_rng_state(device)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict, rank: int,
                device: torch.device) -> bool:
    """Restore the RNG states saved for ``rank``; False when the checkpoint has none for it."""
    key = f"rng/torch/{rank}"
    if key not in tensors:
        return False
    try:
        torch.set_rng_state(tensors[key])
        if device.type == "cuda" and f"rng/cuda/{rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng/cuda/{rank}"], device)
        name, pos, has_gauss, gauss = meta["numpy"]
        keys = tensors["rng/numpy"].numpy().astype(np.uint32)
        np.random.set_state((name, keys, pos, has_gauss, gauss))
        version, internal, gauss_next = meta["python"]
        random.setstate((version, tuple(internal), gauss_next))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise FormatError(f"checkpoint RNG state is malformed ({e})") from None
    return True

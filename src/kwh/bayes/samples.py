"""A store of weight samples from a sampler's trajectory (SGLD): burn-in, thinning, a bound.

kwh.bayes.predict(model, x, samples=S, store=store) averages the softmax of the model over up
to S of the stored weights, spread evenly over the store (method "samples").
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterator
from copy import deepcopy

import torch
from torch import Tensor, nn

__all__ = ["SampleStore"]


def _int(name: str, value, lowest: int) -> int:
    """``value`` as an int >= ``lowest``, or a ValueError naming it."""
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    return n


def _layout(state: dict) -> dict[str, tuple]:
    """Name -> (shape, dtype) of each tensor of a state_dict; other entries by name only."""
    return {k: (v.shape, v.dtype) if isinstance(v, Tensor) else () for k, v in state.items()}


class SampleStore:
    """CPU copies of a model's state_dict taken along a sampler's trajectory.

    ``collect(model, step)`` keeps a copy when ``step >= burn_in`` and ``(step - burn_in) %
    thin == 0``. ``step`` counts what the chain has done so far in the unit you choose
    (optimizer steps, or epochs when called once per epoch); ``burn_in`` and ``thin`` are in
    the same unit, and ``step`` must increase from call to call. With ``max_samples`` = K only
    the last K kept samples stay (the oldest is dropped first); None keeps them all. Buffers
    (BatchNorm running statistics) are stored with the parameters, so each sample predicts
    with its own. Each sample is a full copy of the state_dict: K samples hold K models in
    CPU memory.
    """

    def __init__(self, burn_in: int = 0, thin: int = 1, max_samples: int | None = None):
        self.burn_in = _int("burn_in", burn_in, 0)
        self.thin = _int("thin", thin, 1)
        self.max_samples = None if max_samples is None else _int("max_samples", max_samples, 1)
        self._samples: deque[tuple[int, dict[str, Tensor]]] = deque(maxlen=self.max_samples)
        self._shapes: dict[str, tuple] | None = None
        self._last_step: int | None = None
        self.collected = 0  # samples kept so far, including those since dropped by max_samples

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return (s for _, s in self._samples)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self._samples[i][1]

    def __repr__(self) -> str:
        return (f"SampleStore({len(self)} samples, burn_in={self.burn_in}, thin={self.thin}, "
                f"max_samples={self.max_samples})")

    @property
    def steps(self) -> tuple[int, ...]:
        """The step of each stored sample, oldest first."""
        return tuple(t for t, _ in self._samples)

    def wants(self, step: int) -> bool:
        """Whether ``collect`` at ``step`` keeps a sample (burn-in and thinning only)."""
        return step >= self.burn_in and (step - self.burn_in) % self.thin == 0

    @torch.no_grad()
    def collect(self, model: nn.Module, step: int) -> bool:
        """Copy ``model``'s state_dict to the CPU if ``step`` is kept; returns whether it was."""
        step = _int("step", step, 0)
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step must increase between calls to collect: got {step} after "
                             f"{self._last_step}")
        self._last_step = step
        if not self.wants(step):
            return False
        state = model.state_dict()
        self.check(state)
        snapshot = {k: v.detach().to("cpu", copy=True) if isinstance(v, Tensor) else deepcopy(v)
                for k, v in state.items()}  # non-tensors: a module's extra state
        if self._shapes is None:
            self._shapes = _layout(snapshot)
        self._samples.append((step, snapshot))
        self.collected += 1
        return True

    def check(self, state: dict[str, Tensor]) -> None:
        """ValueError unless ``state`` has the names, shapes and dtypes of the stored samples."""
        if self._shapes is None:
            return
        have = _layout(state)
        if have != self._shapes:
            diff = sorted(set(have) ^ set(self._shapes)) or sorted(
                k for k in have if have[k] != self._shapes[k])
            raise ValueError("the model does not match the stored samples (different names, shapes "
                             f"or dtypes in its state_dict: {', '.join(diff[:5])})")

    def select(self, n: int) -> list[int]:
        """Indices of ``n`` samples spread evenly over the store, first and last included
        (the last alone for n = 1); every index when ``n >= len(self)``."""
        n = _int("n", n, 1)
        m = len(self)
        if n >= m:
            return list(range(m))
        if n == 1:
            return [m - 1]
        return [(2 * k * (m - 1) + n - 1) // (2 * (n - 1)) for k in range(n)]  # round(k(m-1)/(n-1))

    def payload(self, prefix: str = "samples/") -> tuple[dict[str, Tensor], dict]:
        """The store as (tensors, JSON-ready meta), for a safetensors file or a checkpoint.

        Sample i (oldest first) is the tensors ``f"{prefix}{i}/{name}"``, the stored tensors
        themselves (not copies); the meta holds the policy, the counters, each sample's step
        and the state_dict's names in order. ``from_payload`` is the inverse. A sample with
        non-tensor entries (a module's extra state) cannot be written: ValueError.
        """
        tensors: dict[str, Tensor] = {}
        for i, (_, state) in enumerate(self._samples):
            for name, v in state.items():
                if not isinstance(v, Tensor):
                    raise ValueError(f"sample {i} holds {name!r}, which is not a tensor (a "
                                     "module's extra state): the store cannot be written")
                tensors[f"{prefix}{i}/{name}"] = v
        names = list(self._samples[0][1]) if self._samples else []
        meta = {"burn_in": self.burn_in, "thin": self.thin, "max_samples": self.max_samples,
                "collected": self.collected, "last_step": self._last_step,
                "steps": list(self.steps), "names": names}
        return tensors, meta

    @classmethod
    def from_payload(cls, tensors: dict[str, Tensor], meta: dict,
                     prefix: str = "samples/") -> SampleStore:
        """The store written by ``payload``; ValueError when the two do not fit together.
        Tensors outside ``prefix`` are ignored; the samples are the given tensors (no copy)."""
        try:
            store = cls(meta["burn_in"], meta["thin"], meta["max_samples"])
            steps = [_int("step", t, 0) for t in meta["steps"]]
            names = [str(n) for n in meta["names"]]
            collected = _int("collected", meta["collected"], len(steps))
            last = meta["last_step"]
            last = None if last is None else _int("last_step", last, 0)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed sample store metadata ({e!r})") from None
        if any(b <= a for a, b in zip(steps, steps[1:])) or (
                steps and (last is None or steps[-1] > last)):
            raise ValueError(f"sample steps {steps} do not increase up to the last step {last}")
        if store.max_samples is not None and len(steps) > store.max_samples:
            raise ValueError(f"{len(steps)} samples exceed max_samples={store.max_samples}")
        if steps and (not names or len(set(names)) != len(names)):
            raise ValueError("the sample store's names are missing or repeated")
        want = {f"{prefix}{i}/{n}" for i in range(len(steps)) for n in names}
        have = {k for k in tensors if k.startswith(prefix)}
        if want != have:
            odd = sorted(want ^ have)
            raise ValueError(f"the sample tensors do not match their metadata: "
                             f"{', '.join(odd[:5])}")
        for i, t in enumerate(steps):
            state = {n: tensors[f"{prefix}{i}/{n}"] for n in names}
            if store._shapes is None:
                store._shapes = _layout(state)
            elif _layout(state) != store._shapes:
                raise ValueError(f"sample {i} differs from sample 0 in the shape or dtype of "
                                 "a tensor")
            store._samples.append((t, state))
        store._last_step, store.collected = last, collected
        return store

    def clear(self) -> None:
        """Drop every sample and start counting steps afresh."""
        self._samples.clear()
        self._shapes = None
        self._last_step = None
        self.collected = 0

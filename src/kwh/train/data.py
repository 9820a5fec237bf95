"""The data of a run: training examples, a validation split held out of them, the test set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from kwh.data import get_dataset
from kwh.errors import KwhError

__all__ = ["TrainData", "load_train_data", "split_validation", "validation_size"]


@dataclass
class TrainData:
    """Tensors of one run: ``train`` (what the free energy's N counts), ``validation`` (held
    out of the training examples: model choices such as the bit guard, never the test set),
    ``test`` (reported only)."""

    train: TensorDataset
    validation: TensorDataset | None
    test: TensorDataset
    name: str = "custom"  # the data set's name, for logs and configs

    def __post_init__(self):
        for name in ("train", "test"):
            if not isinstance(getattr(self, name), TensorDataset):
                raise KwhError(f"TrainData.{name} must be a TensorDataset of (inputs, labels), "
                               f"got {type(getattr(self, name)).__name__}")
        if self.validation is not None and not isinstance(self.validation, TensorDataset):
            raise KwhError("TrainData.validation must be a TensorDataset or None")
        shapes = {tuple(d.tensors[0].shape[1:]) for d in (self.train, self.validation, self.test)
                  if d is not None}
        if len(shapes) != 1:
            raise KwhError(f"train, validation and test examples differ in shape: {sorted(shapes)}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.tensors[0].shape[1:])


def validation_size(setting: int | None, n: int) -> int:
    """How many of ``n`` training examples to hold out: ``setting``, or n // 12 when None."""
    k = n // 12 if setting is None else setting
    if k >= n:
        raise KwhError(f"validation={k} leaves no training examples of {n}; hold out fewer "
                       "(--validation N, 0 for none)")
    return k


def split_validation(train: TensorDataset, k: int) -> tuple[TensorDataset, TensorDataset | None]:
    """The last ``k`` examples held out: (training part, validation part or None)."""
    if k == 0:
        return train, None
    x, y = train.tensors[:2]
    return TensorDataset(x[:-k], y[:-k]), TensorDataset(x[-k:], y[-k:])


def load_train_data(config) -> TrainData:
    """The data a TrainConfig names: its training set (limited), split, and its test set."""
    full = get_dataset(config.data, "train", config.data_dir, limit=config.limit_train)
    train, val = split_validation(full, validation_size(config.validation, len(full)))
    test = get_dataset(config.data, "test", config.data_dir, limit=config.limit_test)
    return TrainData(train, val, test, config.data)


def as_tensor_dataset(data, what: str) -> TensorDataset:
    """A TensorDataset from one, or from an (inputs, labels) pair of tensors."""
    if isinstance(data, TensorDataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data)
    raise KwhError(f"{what} must be a TensorDataset or an (inputs, labels) pair of tensors, "
                   f"got {type(data).__name__}")

"""Shared helpers of the paper-table benchmark: data, plain training, evaluation, MACs, timing."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from kwh.models import build
from kwh.train import TrainConfig, TrainData, TrainResult, run_training
from kwh.train.data import load_train_data

# Which data sets each net can read (LeNets take 1x28x28, the VGG-like net 3x32x32).
NET_DATA = {"lenet300": ("mnist", "fashion-mnist"), "lenet5": ("mnist", "fashion-mnist"),
            "vgg": ("cifar10",), "resnet20": ("mnist", "fashion-mnist"),
            "vit": ("mnist", "fashion-mnist")}
INPUT_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass
class Data:
    """Train and test tensors of one data set."""

    name: str
    x_train: torch.Tensor  # (N, C, H, W)
    y_train: torch.Tensor  # (N,)
    x_test: torch.Tensor  # (M, C, H, W)
    y_test: torch.Tensor  # (M,)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: str | torch.device) -> Data:
        """The same data on ``device`` (itself when already there)."""
        if self.x_train.device == torch.device(device):
            return self
        return Data(self.name, *(t.to(device) for t in (self.x_train, self.y_train,
                                                         self.x_test, self.y_test)))


def check_net_data(net: str, data: str) -> None:
    """Raise a clear ValueError when the net cannot read the data set."""
    if net not in NET_DATA:
        raise ValueError(f"unknown net {net!r}; choose one of: {', '.join(NET_DATA)}")
    if data not in NET_DATA[net]:
        raise ValueError(f"net {net!r} reads {' or '.join(NET_DATA[net])}, not {data!r}")


def load_data(name: str, root: str | None, limit_train: int | None, limit_test: int | None,
              validation: int | None = None) -> tuple[TrainData, Data]:
    """The data set split as kwh.train splits it (the last examples of the training set held
    out for validation), as a TrainData for training and as tensors for measuring."""
    cfg = TrainConfig(data=name, data_dir=root, limit_train=limit_train, limit_test=limit_test,
                      validation=validation)
    td = load_train_data(cfg)
    return td, Data(name, *td.train.tensors, *td.test.tensors)


def make_net(net: str, width: float = 1.0) -> nn.Sequential:
    """The reference net by name; ``width`` scales the VGG-like net and ResNet-20."""
    if net == "resnet20":  # --width scales its channels (16 at width 1)
        return build(net, width=max(1, int(round(16 * width))))
    return build("vgg", width=width) if net == "vgg" else build(net)


def fit(net: str, data: TrainData, out_dir, *, model: nn.Module | None = None,
        prior: str = "log-uniform", pretrain_epochs: int = 0, epochs: int = 0,
        seed: int = 0, **options) -> TrainResult:
    """One run of kwh.train (run_training, resumable: a finished run is returned as it is).

    Plain training is ``pretrain_epochs`` with ``epochs=0``; Bayesian training starts from
    ``model`` (the dense start) with ``pretrain_epochs=0``. ``options``: TrainConfig fields
    (lr, device, threads, variance_lr_mult, ...).
    """
    val = 0 if data.validation is None else len(data.validation)
    cfg = TrainConfig(model=net, data=data.name, prior=prior,
                      pretrain_epochs=pretrain_epochs, epochs=epochs, seed=seed,
                      validation=val, out_dir=str(out_dir), **options)
    return run_training(cfg, resume=True, progress=False, model=model, data=data)


@torch.no_grad()
def test_error(model: nn.Module, data: Data, batch_size: int = 1000) -> float:
    """Test error (fraction in [0, 1]) of ``model`` in eval mode."""
    model.eval().to(data.x_test.device)
    wrong = 0
    for i in range(0, len(data.y_test), batch_size):
        out = model(data.x_test[i:i + batch_size])
        wrong += int((out.argmax(1) != data.y_test[i:i + batch_size]).sum())
    return wrong / max(1, len(data.y_test))


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear and Conv2d layers of a model, in order."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs of the dense layers, MACs with nonzero weights) for one example."""
    totals = [0, 0]

    def hook(m, inp, out):
        # output pixels of a conv; tokens of a Linear applied to (B, T, D)
        positions = out[0, 0].numel() if isinstance(m, nn.Conv2d) else out[0].numel() // out.shape[-1]
        totals[0] += m.weight.numel() * positions
        totals[1] += int(torch.count_nonzero(m.weight)) * positions

    handles = [m.register_forward_hook(hook) for m in weighted_layers(model)]
    try:
        model.eval()
        model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return totals[0], totals[1]


@torch.no_grad()
def throughput(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Images per second on the CPU: median over ``repeats`` timed passes of the batch ``x``."""
    model.eval()
    model(x)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        rates.append(len(x) / (time.perf_counter() - t0))
    return statistics.median(rates)


class Clock:
    """Wall-clock seconds since construction."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0

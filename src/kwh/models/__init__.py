"""Reference networks: the Bayesian Compression paper's chains, and two that are not chains.

Louizos, Ullrich, Welling 2017, section 5: LeNet-300-100 (784-300-100-10), LeNet-5-Caffe
(conv 20 5x5, pool, conv 50 5x5, pool, fc 800-500, fc 500-10) and a VGG-like net with
BatchNorm for CIFAR-10, as plain ``nn.Sequential`` chains. ResNet-20 (:mod:`.resnet`) and a
small vision transformer (:mod:`.vit`) are ordinary modules with their own forward(), with
residual additions and attention, for 28x28 images: the models users bring.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .resnet import BasicBlock, ResNet
from .vit import Attention, TransformerBlock, VisionTransformer

__all__ = ["lenet300", "lenet5", "vgg_cifar", "resnet20", "vit_tiny", "build", "MODELS",
           "ResNet", "BasicBlock", "VisionTransformer", "TransformerBlock", "Attention"]


def _with_input(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Record one example's shape (``kwh_input_shape``): kwh.compress and the file use it."""
    model.kwh_input_shape = shape
    return model


def lenet300(in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100: 784-300-100-10 with ReLU (inputs: 1x28x28 images, or in_features)."""
    return _with_input(nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    ), (1, 28, 28) if in_features == 784 else (in_features,))


def lenet5(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5-Caffe: conv20(5x5) - pool2 - conv50(5x5) - pool2 - fc800-500 - fc500-10."""
    return _with_input(nn.Sequential(
        nn.Conv2d(in_channels, 20, 5), nn.ReLU(),  # (B, 20, 24, 24)
        nn.MaxPool2d(2),                           # (B, 20, 12, 12)
        nn.Conv2d(20, 50, 5), nn.ReLU(),           # (B, 50, 8, 8)
        nn.MaxPool2d(2),                           # (B, 50, 4, 4)
        nn.Flatten(),                              # (B, 800)
        nn.Linear(800, 500), nn.ReLU(),
        nn.Linear(500, num_classes),
    ), (in_channels, 28, 28))


# 13 conv layers and 2 fully connected: the 15-layer VGG-like net of the paper (CIFAR-10).
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg_cifar(width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """VGG-like net with BatchNorm for 32x32 inputs; ``width`` scales every layer."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    layers: list[nn.Module] = []
    c = in_channels
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = max(1, int(round(v * width)))
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        c = out
    hidden = max(1, int(round(512 * width)))
    layers += [nn.Flatten(), nn.Linear(c, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
               nn.Linear(hidden, num_classes)]
    return _with_input(nn.Sequential(*layers), (in_channels, 32, 32))


def resnet20(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-20 (He et al. 2016) for 28x28 inputs: stages of width, 2 width, 4 width channels."""
    return _with_input(ResNet(in_channels, num_classes, width, n=3), (in_channels, 28, 28))


def vit_tiny(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, patch: int = 7,
             dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128,
             fused_attention: bool = True) -> VisionTransformer:
    """A small vision transformer: (image_size / patch)^2 tokens of ``dim``, ``depth`` blocks.

    ``fused_attention`` (default): each attention is one kwh.modules.SelfAttention, whose heads
    kwh.compress removes (with ``group_sizes=model.kwh_head_groups()``); False: the attention
    is traced through (its layers pruned unit by unit, never a whole head). The same parameter
    names and outputs either way."""
    return _with_input(VisionTransformer(in_channels, num_classes, image_size, patch, dim,
                                         depth, heads, mlp, fused_attention),
                       (in_channels, image_size, image_size))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "vgg": vgg_cifar,
    "resnet20": resnet20,
    "vit": vit_tiny,
}


def build(name: str, **kwargs) -> nn.Module:
    """Build a reference model by name; unknown names list the valid ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
    return factory(**kwargs)

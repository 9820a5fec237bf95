"""ResNet-20 for 28x28 images (He et al. 2016, section 4.2: the CIFAR ResNets, 6n + 2 layers).

A 3x3 stem, three stages of three basic blocks at ``width``, 2 ``width`` and 4 ``width``
channels (the first block of stages 2 and 3 halves the resolution: 28 -> 14 -> 7), global
average pooling and one Linear layer. Written as ordinary modules with their own forward(),
the way users write residual networks: kwh reads it through its traced graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (the BatchNorm after it has one)."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or, where the block changes the resolution or the width, a
    1x1 convolution with the block's stride and a BatchNorm (He et al.'s option B).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, three stages of ``n`` BasicBlocks, global average pool, Linear.

    6 n + 2 weight layers besides the shortcuts' 1x1 convolutions: n = 3 is ResNet-20.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 n: int = 3):
        super().__init__()
        if width < 1 or n < 1:
            raise ValueError(f"width and n (blocks per stage) must be positive, got "
                             f"width={width}, n={n}")
        self.stem = nn.Sequential(_conv3x3(in_channels, width), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.layer1 = self._stage(width, width, n, stride=1)
        self.layer2 = self._stage(width, 2 * width, n, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    @staticmethod
    def _stage(c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
        """n blocks; the first one changes the width and the resolution."""
        return nn.Sequential(BasicBlock(c_in, c_out, stride),
                             *(BasicBlock(c_out, c_out) for _ in range(n - 1)))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, 28, 28) -> (B, num_classes)
        x = self.stem(x)                     # (B, w, 28, 28)
        x = self.layer1(x)                   # (B, w, 28, 28)
        x = self.layer2(x)                   # (B, 2w, 14, 14)
        x = self.layer3(x)                   # (B, 4w, 7, 7)
        x = torch.flatten(self.pool(x), 1)   # (B, 4w)
        return self.fc(x)

"""Models that are not a chain of layers, and a random posterior, shared by the tests of the
traced graph (test_graph.py), of graph compression (test_compress_dag.py) and of the
weight-only file layout (test_codec_weights.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kwh.bayes import GroupHorseshoe, GroupNJ, bayes_layers


class SkipSequential(nn.Sequential):
    """An nn.Sequential subclass whose forward adds a skip connection."""

    def forward(self, x):
        h = self[0](x)
        return self[2](self[1](h) + h)


class Branchy(nn.Module):
    """Data-dependent control flow."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > 0:
            h = F.relu(h)
        return self.fc2(h)


class Twice(nn.Module):
    """One module called twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(F.relu(self.fc(F.relu(self.fc(x)))))


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus the shortcut (identity, or a 1x1
    conv + BN projection when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem conv-BN-ReLU, an identity block, a projection block, global average pool, fc."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.block1 = Block(8, 8)
        self.block2 = Block(8, 12, stride=2)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseCat(nn.Module):
    """DenseNet-style joins: the stem and two branches concatenated along the channels, a 1x1
    mixer; and a head that concatenates two Linear branches."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.mix = nn.Conv2d(6 + 4 + 5, 8, 1)
        self.fa, self.fb = nn.Linear(8 * 4 * 4, 7), nn.Linear(8 * 4 * 4, 6)
        self.out = nn.Linear(7 + 6, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        x = F.max_pool2d(F.relu(self.mix(x)), 2).flatten(1)
        return self.out(torch.cat([F.relu(self.fa(x)), torch.tanh(self.fb(x))], 1))


class Opaque(nn.Module):
    """Operations no channel can be removed across: a LayerNorm over the channels (through a
    transpose) and a view with literal sizes; and a free conv before them."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.c3 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))  # c1's channels are free, c2's frozen
        h = self.norm(h.transpose(1, 3)).transpose(1, 3)
        return self.fc(F.relu(self.c3(h)).view(-1, 4 * 4 * 4))  # c3's channels frozen


@torch.no_grad()
def kill_(layer, groups) -> None:
    """Prune the given groups (filters of a conv, input units of a linear) of one Bayesian
    layer with a group prior, or every weight of those filters / units for log-uniform."""
    p = layer.prior
    if isinstance(p, GroupHorseshoe):
        p.a_log_var[groups] = 3.0
    elif isinstance(p, GroupNJ):
        p.z_log_var[groups] = 3.0
    elif layer.prior.group_dim == 0:
        p.log_sigma2[groups] = 5.0
    else:
        p.log_sigma2[:, groups] = 5.0


@torch.no_grad()
def random_posterior_(model: nn.Module, seed: int = 3) -> None:
    """Kill about 40% of the groups (units / filters), or 70% of the weights for log-uniform,
    and give the BatchNorm layers statistics other than their defaults."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in bayes_layers(model):
        p = layer.prior
        if isinstance(p, GroupHorseshoe):
            p.a_log_var[torch.rand(p.n_groups, generator=g) < 0.4] = 3.0
        elif isinstance(p, GroupNJ):
            p.z_log_var[torch.rand(p.n_groups, generator=g) < 0.4] = 3.0
        else:
            p.log_sigma2[torch.rand(p.theta.shape, generator=g) < 0.7] = 5.0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.num_batches_tracked.fill_(123)


def around_fc(forward) -> nn.Module:
    """A model with one Linear(4, 4), ``fc``, whose forward is ``forward(self, x)``."""
    class AroundFc(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
    AroundFc.forward = forward
    return AroundFc()

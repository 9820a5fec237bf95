"""Models that are not a chain of layers, and a random posterior, shared by the tests of the
traced graph (test_graph.py) and of the weight-only file layout (test_codec_weights.py)."""

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

"""Layers kwh's models and compressed models may contain beyond torch's own (below every kwh
package: torch only)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SelectInputs", "PositionEmbedding"]


class SelectInputs(nn.Module):
    """Keeps only the inputs the next layer reads: ``x[:, keep]`` along dim 1.

    A pruned input unit of the first layer (a pixel no weight reads, an unused input channel)
    is dropped before that layer, so its columns are neither stored nor multiplied. ``keep``
    (float 0/1, one per original input) is what a .kwh file stores (2 bits per input, packed);
    ``index`` is derived from it.
    """

    kwh_bits, kwh_frac_bits = 2, 0  # keep holds 0 and 1: a 2-bit two's complement integer

    def __init__(self, keep: Tensor):
        super().__init__()
        if keep.dim() != 1 or keep.numel() == 0:
            raise ValueError(f"keep must be a non-empty 1-D mask, got shape {tuple(keep.shape)}")
        self.register_buffer("keep", (keep != 0).to(torch.float32))
        self.register_buffer("index", torch.empty(0, dtype=torch.long), persistent=False)
        self.refresh()

    def refresh(self) -> None:
        """Recompute ``index`` from ``keep`` (after ``keep`` was replaced, e.g. by a loader)."""
        idx = self.keep.nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError("SelectInputs keeps no input; keep at least one")
        self.index = idx

    @property
    def in_features(self) -> int:
        return self.keep.numel()

    @property
    def out_features(self) -> int:
        return self.index.numel()

    def forward(self, x: Tensor) -> Tensor:  # (B, in, ...) -> (B, kept, ...)
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"{self.out_features} of {self.in_features} inputs"


class PositionEmbedding(nn.Module):
    """Adds a learned embedding to each token: ``x + weight``, x of shape (B, tokens, dim).

    A module of its own, so that a traced model calls it (kwh.graph keeps it a leaf) instead
    of reading a tensor attribute inside the user's forward(); the energy model prices it as
    one elementwise addition per activation, its table read as weights.
    """

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        if tokens < 1 or dim < 1:
            raise ValueError(f"tokens and dim must be positive, got tokens={tokens}, dim={dim}")
        self.weight = nn.Parameter(torch.zeros(tokens, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    @property
    def tokens(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: Tensor) -> Tensor:  # (B, tokens, dim) -> (B, tokens, dim)
        return x + self.weight

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, dim={self.dim}"

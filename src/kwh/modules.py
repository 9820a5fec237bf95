"""Layers kwh's models and compressed models may contain beyond torch's own (below every kwh
package: torch only)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SelectInputs", "PositionEmbedding", "SelfAttention"]


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


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens (B, T, dim) -> (B, T, out_dim), one unit for kwh.

    Per head h: softmax(q_h k_h^T / sqrt(head_dim)) v_h, the heads side by side, then ``out``.
    q, k and v are nn.Linear(dim, heads * head_dim) and out nn.Linear(heads * head_dim, dim),
    child modules (kwh.bayesify_ turns each into a Bayesian layer); the rows of q, k, v and
    the columns of out come in blocks of head_dim, one per head. kwh.graph keeps this module
    a leaf, so kwh.compress can remove a whole head (its rows of q, k, v, its columns of out)
    and run the attention with fewer heads: the scale stays 1/sqrt(head_dim) whatever their
    number. A compressed attention may read fewer inputs (``dim``) than it writes
    (``out_dim``).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool = True,
                 out_dim: int | None = None):
        super().__init__()
        if min(dim, heads, head_dim) < 1 or (out_dim is not None and out_dim < 1):
            raise ValueError(f"dim, heads, head_dim and out_dim must be positive, got dim={dim}, "
                             f"heads={heads}, head_dim={head_dim}, out_dim={out_dim}")
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.q, self.k, self.v = (nn.Linear(dim, inner, bias=bias) for _ in range(3))
        self.out = nn.Linear(inner, dim if out_dim is None else out_dim, bias=bias)

    @classmethod
    def of_layers(cls, q: nn.Module, k: nn.Module, v: nn.Module, out: nn.Module,
                  head_dim: int) -> SelfAttention:
        """An attention holding the given Linear layers (no new random initialisation): as many
        heads as out reads blocks of ``head_dim``. ValueError when the shapes do not fit."""
        inner, dim = out.in_features, q.in_features
        if head_dim < 1 or inner % head_dim or inner < 1 or \
                any(m.out_features != inner or m.in_features != dim for m in (q, k, v)):
            raise ValueError(f"q, k, v ({dim} -> {q.out_features}, {k.in_features} -> "
                             f"{k.out_features}, {v.in_features} -> {v.out_features}) and out "
                             f"({inner} inputs) do not make heads of {head_dim}: q, k and v "
                             "must read the same inputs and write out's inputs, a multiple of "
                             "head_dim")
        attn = cls.__new__(cls)
        nn.Module.__init__(attn)
        attn.heads, attn.head_dim = inner // head_dim, head_dim
        attn.q, attn.k, attn.v, attn.out = q, k, v, out
        return attn

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    def forward(self, x: Tensor) -> Tensor:  # (B, T, dim) -> (B, T, out_dim)
        b, t = x.shape[0], x.shape[1]
        h, hd = self.heads, self.head_dim
        q = self.q(x).view(b, t, h, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(x).view(b, t, h, hd).transpose(1, 2)
        v = self.v(x).view(b, t, h, hd).transpose(1, 2)
        att = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, H, T, T)
        y = (att @ v).transpose(1, 2).reshape(b, t, h * hd)  # heads side by side
        return self.out(y)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}"

"""A small vision transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Non-overlapping patches embedded by one strided convolution, a learned position embedding,
pre-norm blocks (x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x))), a final LayerNorm,
the mean over the tokens (no class token) and a Linear head. Attention is four nn.Linear
layers (q, k, v and the output projection) so that kwh.bayesify_ turns each into a Bayesian
layer, held by one kwh.modules.SelfAttention (by default) so that kwh.compress removes whole
heads; the position embedding is kwh.modules.PositionEmbedding, so the traced forward() calls
a module instead of reading a tensor attribute.
"""

from __future__ import annotations

from torch import Tensor, nn

from kwh.modules import PositionEmbedding, SelfAttention

__all__ = ["Attention", "TransformerBlock", "VisionTransformer"]


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(head_dim)) v per head, then ``out``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = self.v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        att = (q @ k.transpose(-2, -1)) * self.scale                          # (B, H, T, T)
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, D): heads side by side
        return self.out(y)


class TransformerBlock(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x)) with mlp Linear-GELU-Linear.

    ``fused_attention`` (default): the attention is kwh.modules.SelfAttention (one leaf
    module, whose heads kwh.compress can remove) instead of ``Attention`` (traced through);
    the same parameters and the same outputs either way.
    """

    def __init__(self, dim: int, heads: int, mlp: int, fused_attention: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dim // heads) if fused_attention \
            else Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, position embedding, ``depth`` blocks, LayerNorm, token mean, head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 patch: int = 7, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128,
                 fused_attention: bool = True):
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
        if min(dim, depth, heads, mlp) < 1:
            raise ValueError(f"dim, depth, heads and mlp must be positive, got dim={dim}, "
                             f"depth={depth}, heads={heads}, mlp={mlp}")
        tokens = (image_size // patch) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos = PositionEmbedding(tokens, dim)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp, fused_attention)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def kwh_head_groups(self) -> dict[str, int]:
        """{each attention's out-projection: head_dim}: kwh.bayesify_'s ``group_sizes`` that
        give every head one scale z (its block of the out-projection's inputs), so a group
        prior prunes whole heads: ``kwh.bayesify_(model, prior,
        group_sizes=model.kwh_head_groups())``."""
        return {f"{name}.out": m.head_dim for name, m in self.named_modules()
                if hasattr(m, "head_dim") and hasattr(m, "out")}

    def forward(self, x: Tensor) -> Tensor:  # (B, C, S, S) -> (B, num_classes)
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, T, D), T = (S / patch)^2
        x = self.blocks(self.pos(x))                  # (B, T, D)
        x = self.norm(x).mean(dim=1)                  # (B, D)
        return self.head(x)

"""Exact integer inference of binary layers: bit-packed XNOR and popcount.

Encode +1 as bit 0 and -1 as bit 1. For a, w in {-1, +1}^n a product a_i w_i is -1 exactly
where the bits differ, so

    a . w = (n - d) - d = n - 2 popcount(xor(a_bits, w_bits))

(d: the number of differing bits; XNOR-popcount counts the agreeing ones, n - d: the same
thing). Vectors are packed 8 signs to a uint8 word (the last word padded with 0 bits in both
operands, which never differ), xored with torch's bitwise ops and counted with a 256-entry
lookup table. The float forward of a binary layer on +-1 inputs sums integers below 2^24, so it
is exact in float32 and the two agree bit for bit.

Convolutions: unfold (im2col) gives the same dot products per output position. Zero padding
would add taps of value 0, neither +1 nor -1; this reference computes padding=0 only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kwh.errors import KwhError, ModelError

from .layers import BinaryConv2d, BinaryLayer, BinaryLinear, sign

__all__ = ["pack_signs", "popcount", "xnor_matmul", "xnor_linear", "xnor_conv2d"]

_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_PLACE = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int64)  # first sign: top bit
_CHUNK = 1 << 22  # xor words held at once (rows x outputs x words), bounding the memory used


def _check_signs(x: Tensor, what: str) -> None:
    if not bool(((x == 1) | (x == -1)).all()):
        raise KwhError(f"{what} must hold only +1 and -1 (binary values)")


def pack_signs(x: Tensor) -> Tensor:
    """(..., n) of +-1 -> (..., ceil(n / 8)) uint8 words, bit 1 for -1, zero-padded at the end."""
    _check_signs(x, "pack_signs input")
    n = x.shape[-1]
    bits = (x < 0).to(torch.int64)                                    # (..., n)
    bits = F.pad(bits, (0, -n % 8))                                   # (..., 8 * words)
    bits = bits.reshape(*x.shape[:-1], -1, 8)                         # (..., words, 8)
    return (bits * _PLACE.to(x.device)).sum(-1).to(torch.uint8)       # (..., words)


def popcount(words: Tensor) -> Tensor:
    """Set bits of each uint8 word, by table lookup (int64, same shape)."""
    return _POPCOUNT8.to(words.device)[words.to(torch.int64)]


def xnor_matmul(a: Tensor, w: Tensor) -> Tensor:
    """a @ w.T for a (N, n) and w (O, n) of +-1, as int64 from xor and popcount: (N, O)."""
    if a.dim() != 2 or w.dim() != 2 or a.shape[1] != w.shape[1]:
        raise KwhError(f"xnor_matmul needs (N, n) and (O, n) matrices, got {tuple(a.shape)} "
                       f"and {tuple(w.shape)}")
    n = a.shape[1]
    pa, pw = pack_signs(a), pack_signs(w)                             # (N, words), (O, words)
    rows = max(1, _CHUNK // max(1, pw.numel()))
    out = []
    for start in range(0, pa.shape[0], rows):
        diff = pa[start:start + rows, None, :] ^ pw[None, :, :]       # (rows, O, words)
        out.append(n - 2 * popcount(diff).sum(-1))                    # (rows, O)
    return torch.cat(out) if out else torch.zeros((0, w.shape[0]), dtype=torch.int64)


def _signs_in(layer: BinaryLayer, x: Tensor) -> Tensor:
    """The +-1 input the layer computes with: sign(x) for binary inputs; real inputs must
    already be +-1; ternary ones have zeros, which XNOR cannot express."""
    if layer.inputs == "ternary":
        raise KwhError("the XNOR reference needs binary inputs; this layer has ternary inputs "
                       "(0 is neither +1 nor -1)")
    if layer.inputs == "binary":
        return sign(x)
    _check_signs(x, "inputs of a layer with inputs='real'")
    return x


@torch.no_grad()
def xnor_linear(layer: BinaryLinear, x: Tensor) -> Tensor:
    """``layer(x)`` computed as integers (XNOR and popcount), then alpha and bias in float."""
    if not isinstance(layer, BinaryLinear):
        raise KwhError(f"xnor_linear needs a BinaryLinear, got {type(layer).__name__}")
    a = _signs_in(layer, x)
    dots = xnor_matmul(a.reshape(-1, layer.in_features), layer.binary_weight())  # (N, O)
    y = dots.to(x.dtype).reshape(*x.shape[:-1], layer.out_features)              # (B, *, O)
    return layer.finish(y, (-1,))


@torch.no_grad()
def xnor_conv2d(layer: BinaryConv2d, x: Tensor) -> Tensor:
    """``layer(x)`` for a BinaryConv2d with padding 0, via unfold and :func:`xnor_matmul`."""
    if not isinstance(layer, BinaryConv2d):
        raise KwhError(f"xnor_conv2d needs a BinaryConv2d, got {type(layer).__name__}")
    if layer.padding not in ((0, 0), "valid"):
        raise ModelError(f"the XNOR reference computes padding=0 only (got padding="
                         f"{layer.padding!r}): a zero-padding tap is neither +1 nor -1")
    a = _signs_in(layer, x)                                            # (B, C, H, W)
    B, _, H, W = a.shape
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    ho, wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    cols = F.unfold(a, layer.kernel_size, layer.dilation, 0, layer.stride)  # (B, C*kh*kw, L)
    w = layer.binary_weight().flatten(1)                               # (O, C/g*kh*kw)
    k, og = w.shape[1], layer.out_channels // layer.groups
    parts = []
    for g in range(layer.groups):
        cg = cols[:, g * k:(g + 1) * k, :].transpose(1, 2).reshape(-1, k)  # (B*L, k)
        dots = xnor_matmul(cg, w[g * og:(g + 1) * og])                 # (B*L, og)
        parts.append(dots.reshape(B, ho * wo, og).transpose(1, 2))      # (B, og, L)
    y = torch.cat(parts, 1).to(x.dtype).reshape(B, layer.out_channels, ho, wo)
    return layer.finish(y, (-1, 1, 1))

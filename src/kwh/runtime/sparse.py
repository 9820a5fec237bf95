"""Linear and Conv2d layers that multiply by a CSR weight, skipping the zeros unstructured pruning
leaves (Sparse VD keeps ~2% of LeNet's weights, scattered, so no unit can be removed)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SparseLinear", "SparseConv2d", "to_sparse", "sparse_unsupported", "csr"]


def csr(weight: Tensor) -> Tensor:
    """A 2-D dense weight as a CSR tensor with int32 indices (MKL's and torch's fast path)."""
    w = weight.detach().reshape(weight.shape[0], -1)  # (out, fan_in)
    with warnings.catch_warnings():  # torch marks CSR tensors beta on every construction
        warnings.filterwarnings("ignore", message=r".*Sparse CSR tensor support is in beta")
        full = w.to_sparse_csr()
        return torch.sparse_csr_tensor(full.crow_indices().to(torch.int32),
                                       full.col_indices().to(torch.int32), full.values(),
                                       tuple(w.shape), check_invariants=True)


class _CSRWeight(nn.Module):
    """Keeps the CSR parts as buffers (so copy, state_dict and .to work; a CSR tensor itself
    cannot be deep-copied) and the CSR tensor built from them as ``weight``."""

    def _store(self, weight: Tensor, bias: Tensor | None) -> None:
        w = csr(weight)
        self.register_buffer("crow", w.crow_indices())
        self.register_buffer("col", w.col_indices())
        self.register_buffer("values", w.values())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_shape = tuple(w.shape)
        self.density = w.values().numel() / max(1, weight.numel())
        self._csr, self._key = w, self._parts_key()

    def _parts_key(self) -> tuple[int, int, int]:
        return self.crow.data_ptr(), self.col.data_ptr(), self.values.data_ptr()

    @property
    def weight(self) -> Tensor:
        """The weight as a CSR tensor (out, fan_in), rebuilt when the buffers moved."""
        if self._csr is None or self._key != self._parts_key():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*Sparse CSR tensor support is in beta")
                self._csr = torch.sparse_csr_tensor(self.crow, self.col, self.values,
                                                    self.weight_shape, check_invariants=True)
            self._key = self._parts_key()
        return self._csr

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_csr"] = None  # rebuilt from the buffers on first use
        return state

    def weight_bytes(self) -> int:
        """Bytes of the CSR weight (values and both index arrays) and the bias."""
        parts = [self.crow, self.col, self.values] + ([] if self.bias is None else [self.bias])
        return sum(t.numel() * t.element_size() for t in parts)


class SparseLinear(_CSRWeight):
    """``nn.Linear`` with its weight in CSR: y = (W x^T)^T + b, multiplying only the nonzeros."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._store(linear.weight, linear.bias)  # weight: (out, in), CSR

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)  # (N, in)
        y = torch.sparse.mm(self.weight, flat.t()).t()  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"density={self.density:.4f}")


class SparseConv2d(_CSRWeight):
    """``nn.Conv2d`` (groups=1, zero padding) as a CSR matmul over its unfolded input."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        reason = sparse_unsupported(conv)
        if reason:
            raise ValueError(f"SparseConv2d cannot run this Conv2d: {reason}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self._store(conv.weight, conv.bias)  # weight: (out, in * kh * kw), CSR

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, out, OH, OW)
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, CK, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (CK, B*L)
        y = torch.sparse.mm(self.weight, cols)  # (out, B*L)
        y = y.reshape(self.out_channels, b, oh * ow).transpose(0, 1)  # (B, out, L)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(b, self.out_channels, oh, ow)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"density={self.density:.4f}")


def sparse_unsupported(layer: nn.Module) -> str | None:
    """Why ``layer`` has no sparse form here (None when it has one)."""
    if isinstance(layer, nn.Linear):
        return None
    if not isinstance(layer, nn.Conv2d):
        return f"{type(layer).__name__} is neither Linear nor Conv2d"
    if layer.groups != 1:
        return f"groups={layer.groups} (only groups=1)"
    if layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r} (only 'zeros')"
    if isinstance(layer.padding, str):
        return f"padding={layer.padding!r} (only explicit sizes)"
    return None


def to_sparse(layer: nn.Module) -> nn.Module:
    """The CSR form of a Linear or Conv2d (same outputs up to float rounding)."""
    reason = sparse_unsupported(layer)
    if reason:
        raise ValueError(f"no sparse form: {reason}")
    return SparseLinear(layer) if isinstance(layer, nn.Linear) else SparseConv2d(layer)

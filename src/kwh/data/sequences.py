"""Temporal sequences built from real images, for sigma-delta (event-driven) inference.

Sigma-delta networks (O'Connor & Welling 2016, arXiv 1611.02024) save work where consecutive
frames agree, so these streams have slow motion and exactly repeated ("held") frames.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .errors import DataError
from .mnist import load_idx_arrays, normalization, to_unit_float

__all__ = ["moving_digits", "temporal_mnist", "sequence_dataset", "SEQUENCE_KINDS"]

SEQUENCE_KINDS = ("moving", "temporal")
_CHUNK = 256  # sequences rendered per grid_sample call


def _images(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Check images are (N, H, W) or (N, 1, H, W); return them as (N, H, W), not copied."""
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or len(images) == 0:
        raise DataError(f"images must have shape (N, H, W) or (N, 1, H, W), got "
                        f"{tuple(images.shape)}")
    return images


def _pick(images: np.ndarray | torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """Rows `index` of uint8 or [0, 1] float images (N, H, W) as new float32 (K, H, W)."""
    if isinstance(images, np.ndarray):
        rows = images[index]
        return to_unit_float(rows) if rows.dtype == np.uint8 else torch.tensor(rows).float()
    rows = images[torch.from_numpy(index)]
    return rows.float().div(255) if rows.dtype == torch.uint8 else rows.float()


def _labels(labels: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        y = labels.to(torch.int64)  # (N,)
    else:
        y = torch.from_numpy(np.array(labels, dtype=np.int64))  # (N,), a writable copy
    if y.shape != (n,):
        raise DataError(f"labels must have shape ({n},) to match the images, got {tuple(y.shape)}")
    return y


def _trajectory(rng: np.random.Generator, n_frames: int, max_shift: float, speed: float,
                hold: float, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (dx, dy, scale) (T, 3) and held flags (T,): segments of 2-6 frames that
    either move (heading drifts, walls reflect) or hold still."""
    params = np.empty((n_frames, 3))
    held = np.zeros(n_frames, dtype=bool)
    pos = rng.uniform(-max_shift, max_shift, 2)
    scale = 1.0 + rng.uniform(-zoom, zoom)
    heading, t = rng.uniform(0, 2 * math.pi), 1
    params[0] = (*pos, scale)
    while t < n_frames:
        length, still = int(rng.integers(2, 7)), bool(rng.random() < hold)
        heading += rng.normal(0, math.pi / 4)
        dscale = rng.uniform(-zoom, zoom) / 6
        end = min(t + length, n_frames)
        while t < end:  # this segment's frames
            if not still:
                step = speed * np.array([math.cos(heading), math.sin(heading)])
                if abs(pos[0] + step[0]) > max_shift:  # bounce off a side wall
                    heading, step[0] = math.pi - heading, -step[0]
                if abs(pos[1] + step[1]) > max_shift:  # bounce off the top or bottom
                    heading, step[1] = -heading, -step[1]
                pos = np.clip(pos + step, -max_shift, max_shift)
                if abs(scale + dscale - 1) > zoom:
                    dscale = -dscale
                scale += dscale
            params[t], held[t] = (*pos, scale), still
            t += 1
    return params, held


def _render(digits: torch.Tensor, params: np.ndarray, canvas: int) -> torch.Tensor:
    """Bilinear warp of each digit (S, H, W) by per-frame (dx, dy, scale) (S, T, 3) onto the
    canvas -> (S, T, 1, canvas, canvas)."""
    s, h, w = digits.shape
    t = params.shape[1]
    top, left = (canvas - h) // 2, (canvas - w) // 2
    padded = F.pad(digits, (left, canvas - w - left, top, canvas - h - top))  # (S, C, C)
    p = torch.from_numpy(params).to(torch.float32).reshape(s * t, 3)  # (S*T, 3)
    theta = torch.zeros(s * t, 2, 3)
    # output point u (normalised to [-1, 1]) samples the source at (u - shift) / scale
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / p[:, 2]
    theta[:, 0, 2] = -2 * p[:, 0] / canvas / p[:, 2]
    theta[:, 1, 2] = -2 * p[:, 1] / canvas / p[:, 2]
    src = padded[:, None, None].expand(s, t, 1, canvas, canvas).reshape(s * t, 1, canvas, canvas)
    grid = F.affine_grid(theta, [s * t, 1, canvas, canvas], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(s, t, 1, canvas, canvas)


def moving_digits(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  n_sequences: int, n_frames: int, canvas: int = 28, seed: int = 0, *,
                  hold: float = 0.3, zoom: float = 0.0, noise: float = 0.0, speed: float = 0.5,
                  max_shift: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of one digit drifting on a canvas: frames float32 (S, T, 1, canvas, canvas)
    in [0, 1] and labels int64 (S,).

    Motion is sub-pixel (bilinear), `speed` pixels per frame, within `max_shift` pixels of the
    centre (default (canvas - 20) / 2, keeping MNIST's 20x20 digit box inside); a fraction
    `hold` of the segments hold still, and a held frame is an exact copy of the one before
    (noise included). `zoom` lets the scale drift within 1 +- zoom; `noise` is the std of
    Gaussian pixel noise (clipped to [0, 1]) drawn afresh for every frame that moves.
    """
    images = _images(images)  # (N, H, W)
    y = _labels(labels, len(images))
    max_shift = (canvas - 20) / 2 if max_shift is None else max_shift
    checks = {"n_sequences": n_sequences >= 1, "n_frames": n_frames >= 1,
              "canvas": canvas >= max(images.shape[1:]), "hold": 0 <= hold <= 1,
              "zoom": 0 <= zoom < 1, "noise": noise >= 0,
              "speed": speed > 0, "max_shift": max_shift >= 0}
    if bad := [k for k, ok in checks.items() if not ok]:
        raise DataError(f"moving_digits: invalid {', '.join(bad)} (n_sequences, n_frames >= 1; "
                        f"canvas >= image size; 0 <= hold <= 1; 0 <= zoom < 1; noise >= 0; "
                        f"speed > 0; max_shift >= 0)")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), size=n_sequences, replace=n_sequences > len(images))
    x = _pick(images, idx)  # (S, H, W)
    trajectories = [_trajectory(rng, n_frames, max_shift, speed, hold, zoom)
                    for _ in range(n_sequences)]
    params = np.stack([p for p, _ in trajectories])  # (S, T, 3)
    held = torch.from_numpy(np.stack([h for _, h in trajectories]))  # (S, T)
    frames = torch.cat([_render(x[i:i + _CHUNK], params[i:i + _CHUNK], canvas)
                        for i in range(0, n_sequences, _CHUNK)])  # (S, T, 1, C, C)
    if noise > 0:
        frames += noise * torch.from_numpy(rng.standard_normal(tuple(frames.shape), np.float32))
        frames.clamp_(0, 1)
    for t in range(1, n_frames):
        frames[held[:, t], t] = frames[held[:, t], t - 1]
    return frames, y[torch.from_numpy(idx)]


def temporal_mnist(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                   n_frames: int, seed: int = 0, buffer: int = 256, *,
                   return_index: bool = False):
    """Temporal MNIST (O'Connor & Welling 2016): frames float32 (T, 1, H, W), labels (T,).

    Start from a random image; each next frame is the candidate with the smallest L1 distance
    (on 8-bit pixel levels, so ties break the same everywhere) to the current frame among a
    random buffer of `buffer` not-yet-used images (the chosen one is replaced by the next
    unused image of a random order), so no image appears twice.
    With return_index, also return the source indices (T,).
    """
    images = _images(images)  # (N, H, W)
    y = _labels(labels, len(images))
    n = len(images)
    if not 1 <= n_frames <= n or buffer < 1:
        raise DataError(f"temporal_mnist: need 1 <= n_frames <= {n} (images available) and "
                        f"buffer >= 1, got n_frames={n_frames}, buffer={buffer}")
    # The walk starts at order[0] and takes new candidates in this order, one per frame, so
    # only the first n_frames + buffer images of it can ever be reached.
    order = np.random.default_rng(seed).permutation(n)[:n_frames + buffer]  # (K,)
    x = _pick(images, order)  # (K, H, W)
    levels = torch.round(x.reshape(len(x), -1) * 255).to(torch.int32)  # (K, H*W)
    chosen = [0]  # positions in order
    pool = torch.arange(1, min(1 + buffer, len(x)))  # (B,) candidate positions
    alive = torch.ones(len(pool), dtype=torch.bool)
    cursor = 1 + len(pool)
    for _ in range(1, n_frames):
        dist = (levels[pool] - levels[chosen[-1]]).abs().sum(1)  # (B,)
        j = int(torch.where(alive, dist, torch.iinfo(torch.int32).max).argmin())
        chosen.append(int(pool[j]))
        if cursor < len(x):
            pool[j], cursor = cursor, cursor + 1
        else:
            alive[j] = False
    frames = x[chosen, None]  # (T, 1, H, W), a copy
    index = torch.from_numpy(order[chosen])  # (T,)
    return (frames, y[index], index) if return_index else (frames, y[index])


def sequence_dataset(name: str = "mnist", split: str = "test", kind: str = "moving", *,
                     root: str | os.PathLike | None = None, n_sequences: int = 100,
                     n_frames: int = 20, seed: int = 0, normalize: bool = True,
                     download: bool = True, **options) -> TensorDataset:
    """Sequences from one split of mnist/fashion-mnist, normalised like load_mnist.

    kind="moving": TensorDataset(frames (S, T, 1, H, W), labels (S,)), options go to
    moving_digits; kind="temporal": one stream TensorDataset(frames (T, 1, 28, 28), labels (T,)),
    options go to temporal_mnist (n_sequences is unused).
    """
    if kind not in SEQUENCE_KINDS:
        raise DataError(f"Unknown sequence kind {kind!r}; choose one of: "
                        f"{', '.join(SEQUENCE_KINDS)}")
    images, labels = load_idx_arrays(name, split, root, download)
    if kind == "moving":
        frames, y = moving_digits(images, labels, n_sequences, n_frames, seed=seed, **options)
    else:
        frames, y = temporal_mnist(images, labels, n_frames, seed=seed, **options)
    if normalize:  # affine, so held frames stay exactly equal
        mean, std = normalization(name)
        frames.sub_(mean).div_(std)
    return TensorDataset(frames, y)

"""kwh.data.sequences: moving digits and Temporal MNIST, deterministic and checked by oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kwh.data import DataError, load_mnist, moving_digits, sequence_dataset, temporal_mnist
from kwh.data.mnist import normalization


def blobs(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 28x28 images with random strokes inside the central 20x20 box, labels 0..n-1."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = rng.integers(0, 256, (n, 20, 20)) * (rng.random((n, 20, 20)) < 0.3)
    return images, np.arange(n)


def centre_of_mass(frames: torch.Tensor) -> torch.Tensor:
    """(..., 1, H, W) -> (..., 2) as (x, y) in pixels."""
    h, w = frames.shape[-2:]
    mass = frames.sum((-1, -2, -3)).double()
    ys = (frames.sum((-1, -3)).double() * torch.arange(h)).sum(-1) / mass
    xs = (frames.sum((-2, -3)).double() * torch.arange(w)).sum(-1) / mass
    return torch.stack([xs, ys], -1)


def same_as_previous(frames: torch.Tensor) -> torch.Tensor:
    """(S, T, ...) -> (S, T-1) bool: frame t is bit-for-bit frame t-1."""
    return (frames[:, 1:] == frames[:, :-1]).flatten(2).all(2)


def test_moving_digits_shapes_labels_and_seed():
    images, labels = blobs()
    frames, y = moving_digits(images, labels, 5, 9, seed=1)
    assert frames.shape == (5, 9, 1, 28, 28) and frames.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.int64
    assert torch.equal(frames, moving_digits(images, labels, 5, 9, seed=1)[0])
    assert not torch.equal(frames, moving_digits(images, labels, 5, 9, seed=2)[0])
    # Standing still at the centre, every frame is the source image itself, so the labels
    # can be read back from the pixels (up to float rounding of the sampling grid).
    still, y = moving_digits(images, labels, 6, 3, seed=1, hold=1.0, max_shift=0)
    torch.testing.assert_close(still[:, 0, 0], torch.from_numpy(images[y.numpy()]) / 255,
                               rtol=0, atol=1e-5)
    assert same_as_previous(still).all()


def test_moving_frames_translate_by_speed_and_held_frames_are_identical():
    images, labels = blobs()
    # canvas 48: the 20x20 box never leaves the canvas, so bilinear translation keeps the
    # total intensity and moves the centre of mass by exactly the shift.
    frames, y = moving_digits(images, labels, 8, 30, canvas=48, seed=3, hold=0.4, speed=0.7)
    held = same_as_previous(frames)
    assert 0.1 < held.float().mean() < 0.7
    mass = frames.sum((-1, -2, -3))  # (S, T)
    torch.testing.assert_close(mass, mass[:, :1].expand_as(mass), rtol=1e-5, atol=0)
    step = (centre_of_mass(frames[:, 1:]) - centre_of_mass(frames[:, :-1])).norm(dim=-1)
    torch.testing.assert_close(step[~held], torch.full_like(step[~held], 0.7), rtol=0,
                               atol=1e-3)
    assert (step[held] == 0).all()
    always = moving_digits(images, labels, 8, 30, canvas=48, seed=3, hold=0.0)[0]
    assert not same_as_previous(always).any()


def test_noise_and_zoom_keep_held_frames_identical():
    images, labels = blobs()
    clean = moving_digits(images, labels, 6, 20, seed=4, hold=0.5)[0]
    noisy = moving_digits(images, labels, 6, 20, seed=4, hold=0.5, noise=0.1)[0]
    assert torch.equal(same_as_previous(noisy), same_as_previous(clean))
    assert 0 <= float(noisy.min()) and float(noisy.max()) <= 1
    assert (noisy[:, 0] != clean[:, 0]).float().mean() > 0.5  # noise reaches the background
    zoomed = moving_digits(images, labels, 6, 20, canvas=40, seed=4, zoom=0.3, hold=0.3)[0]
    assert zoomed.shape == (6, 20, 1, 40, 40)
    mass = zoomed.sum((-1, -2, -3))  # grows and shrinks with the square of the scale
    assert float((mass / mass[:, :1]).min()) > 0.7 ** 2 - 0.05
    assert float((mass / mass[:, :1]).max()) < 1.3 ** 2 / 0.7 ** 2 + 0.05
    assert float((mass / mass[:, :1] - 1).abs().max()) > 0.01  # the scale did change


@pytest.mark.parametrize("kwargs, bad", [
    (dict(hold=1.5), "hold"), (dict(canvas=20), "canvas"), (dict(speed=0), "speed"),
    (dict(noise=-1), "noise"), (dict(zoom=1.0), "zoom"),
])
def test_moving_digits_rejects_bad_options(kwargs, bad):
    images, labels = blobs()
    with pytest.raises(DataError, match=f"moving_digits: invalid {bad}"):
        moving_digits(images, labels, 2, 3, **kwargs)


def test_temporal_mnist_is_greedy_nearest_neighbour_without_reuse():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)  # no ties in L1 distance
    labels = rng.integers(0, 10, 40)
    frames, y, index = temporal_mnist(images, labels, 40, seed=5, buffer=100,
                                      return_index=True)
    assert frames.shape == (40, 1, 28, 28) and y.shape == (40,)
    assert sorted(index.tolist()) == list(range(40))  # every image once, none twice
    assert torch.equal(frames[:, 0], torch.from_numpy(images[index.numpy()]) / 255)
    assert y.tolist() == labels[index.numpy()].tolist()
    # Buffer larger than the set: each step must pick the nearest unused image (brute force).
    flat, used = images.reshape(40, -1).astype(np.int64), {int(index[0])}
    for t in range(1, 40):
        rest = [i for i in range(40) if i not in used]
        best = rest[int(np.argmin(np.abs(flat[rest] - flat[index[t - 1]]).sum(1)))]
        assert int(index[t]) == best
        used.add(best)
    again = temporal_mnist(images, labels, 40, seed=5, buffer=100, return_index=True)[2]
    assert torch.equal(index, again)


def test_temporal_mnist_small_buffer_never_reuses_and_checks_arguments():
    images, labels = blobs(30)
    index = temporal_mnist(images, labels, 30, seed=1, buffer=4, return_index=True)[2]
    assert sorted(index.tolist()) == list(range(30))
    with pytest.raises(DataError, match="need 1 <= n_frames <= 30"):
        temporal_mnist(images, labels, 31)
    with pytest.raises(DataError, match=r"labels must have shape \(30,\)"):
        temporal_mnist(images, labels[:5], 3)


def test_sequence_dataset_on_real_digits(data_root):
    ds = sequence_dataset("mnist", "test", "moving", root=data_root, n_sequences=4,
                          n_frames=6, seed=0)
    frames, y = ds.tensors
    assert frames.shape == (4, 6, 1, 28, 28) and y.shape == (4,)
    mean, std = normalization("mnist")
    assert float(frames.min()) == pytest.approx(-mean / std, abs=1e-6)  # background pixel
    test_labels = load_mnist("test", data_root).tensors[1]
    assert set(y.tolist()) <= set(test_labels.tolist())
    stream = sequence_dataset("mnist", "train", "temporal", root=data_root, n_frames=200,
                              seed=0, buffer=64, normalize=False).tensors
    assert stream[0].shape == (200, 1, 28, 28) and stream[1].shape == (200,)
    x = stream[0].flatten(1)
    neighbours = (x[1:] - x[:-1]).abs().sum(1).mean()
    strangers = (x[1:] - x[torch.randperm(199)]).abs().sum(1).mean()
    assert neighbours < 0.8 * strangers  # consecutive frames look alike: the point of it
    with pytest.raises(DataError, match="Unknown sequence kind 'video'; choose one of: "
                                        "moving, temporal"):
        sequence_dataset("mnist", "test", "video", root=data_root)

"""kwh.data.cifar on small files in the CIFAR-10 binary format, written here."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from kwh.data import DataError, get_dataset, load_cifar10, read_cifar_bin
from kwh.data import cifar, locate

NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """n random records: images (n, 3, 32, 32), labels (n,) and their file bytes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)  # (n, 3073)
    return images, labels, records.tobytes()


def write_batches(folder: Path, n: int = 7) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(NAMES):
        images, labels, data = batch(n, i)
        (folder / name).write_bytes(data)
        out[name] = images, labels
    return out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    calls: list[str] = []

    def closed(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("network closed in tests")

    monkeypatch.delenv("KWH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", ())
    monkeypatch.setattr(urllib.request, "urlopen", closed)
    return calls


def test_record_layout_is_label_then_red_green_blue_planes(tmp_path):
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 + 2 * 1024 + 3 * 32 + 5] = 200  # blue plane, row 3, column 5
    (tmp_path / "one.bin").write_bytes(record.tobytes())
    images, labels = read_cifar_bin(tmp_path / "one.bin")
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [7]
    assert images[0, 2, 3, 5] == 200 and int(images.sum()) == 200


@pytest.mark.parametrize("size, message", [
    (0, "0 bytes is not a CIFAR-10 batch"),
    (3073 * 2 + 1, "need a positive multiple of 3073 bytes"),
    (3073 * 10001, "at most 10000 records"),
])
def test_bad_lengths_are_refused(tmp_path, size, message):
    path = tmp_path / "b.bin"
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: no 30 MB written
    with pytest.raises(DataError, match=message):
        read_cifar_bin(path)


def test_label_out_of_range_is_refused(tmp_path):
    (tmp_path / "b.bin").write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(DataError, match="label 10 out of range 0..9"):
        read_cifar_bin(tmp_path / "b.bin")


@pytest.mark.parametrize("layout", ["parent", "direct"])
def test_load_joins_batches_and_normalises_per_channel(offline, tmp_path, layout):
    written = write_batches(tmp_path / "d" / "cifar-10-batches-bin")
    root = tmp_path / "d" if layout == "parent" else tmp_path / "d" / "cifar-10-batches-bin"
    x, y = load_cifar10("train", root, normalize=False).tensors
    assert x.shape == (35, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    want = np.concatenate([written[n][0] for n in NAMES[:5]])
    assert torch.equal(x, torch.from_numpy(want).float() / 255)
    assert y.tolist() == np.concatenate([written[n][1] for n in NAMES[:5]]).tolist()
    z, yt = load_cifar10("test", root, limit=4).tensors
    raw = torch.from_numpy(written["test_batch.bin"][0][:4]).float() / 255
    mean, std = torch.tensor(cifar.MEAN).view(3, 1, 1), torch.tensor(cifar.STD).view(3, 1, 1)
    torch.testing.assert_close(z, (raw - mean) / std, rtol=0, atol=1e-6)
    assert torch.equal(get_dataset("cifar10", "test", root, limit=4).tensors[0], z)
    assert offline == []


def test_kwh_data_is_searched(offline, monkeypatch, tmp_path):
    write_batches(tmp_path / "cifar-10-batches-bin", n=2)
    monkeypatch.setenv("KWH_DATA", str(tmp_path))
    assert load_cifar10("test").tensors[0].shape == (2, 3, 32, 32)


def test_missing_files_with_network_closed(offline, monkeypatch, tmp_path):
    folder = tmp_path / "d" / "cifar-10-batches-bin"
    write_batches(folder)
    (folder / "data_batch_4.bin").unlink()
    monkeypatch.setenv("KWH_DATA", str(tmp_path / "d"))
    with pytest.raises(DataError) as e:
        load_cifar10("train")
    msg = str(e.value)
    assert "cifar10 train set: missing data_batch_4.bin" in msg and "data_batch_3" not in msg
    assert cifar.URL in msg and "network closed in tests" in msg
    assert f"Looked in: {folder}, {tmp_path / 'd'}," in msg
    assert f"Put the files in {tmp_path / 'cache' / 'kwh' / 'cifar-10-batches-bin'}" in msg
    assert offline == [cifar.URL]
    assert load_cifar10("test").tensors[1].shape == (7,)  # test split intact


def tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_checks_md5_and_unpacks_only_batch_files(offline, monkeypatch, tmp_path):
    members = {f"cifar-10-batches-bin/{n}": batch(3, i)[2] for i, n in enumerate(NAMES)}
    members["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    members["elsewhere/test_batch.bin"] = b"\x00" * 3073  # outside the folder: ignored
    served = tarball(members)
    calls: list[str] = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(served)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="MD5 [0-9a-f]{32} does not match " + cifar.MD5):
        load_cifar10("test")
    cache = tmp_path / "cache" / "kwh"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing kept from a bad download
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(served).hexdigest())
    x, y = load_cifar10("test", normalize=False).tensors
    assert torch.equal(x, torch.from_numpy(batch(3, 5)[0]).float() / 255)
    assert sorted(p.name for p in (cache / "cifar-10-batches-bin").iterdir()) == sorted(NAMES)
    assert [p.name for p in cache.iterdir()] == ["cifar-10-batches-bin"]  # tarball removed
    assert calls == [cifar.URL, cifar.URL]


def test_an_explicit_root_is_used_alone(offline, monkeypatch, tmp_path):
    write_batches(tmp_path / "full" / "cifar-10-batches-bin", n=2)
    monkeypatch.setenv("KWH_DATA", str(tmp_path / "full"))  # complete, but not asked for
    folder = tmp_path / "d" / "cifar-10-batches-bin"
    write_batches(folder)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError) as e:
        load_cifar10("test", tmp_path / "d")
    msg = str(e.value)
    assert msg.startswith(f"cifar10 test set: the data folder {tmp_path / 'd'} lacks "
                          f"test_batch.bin (expected test_batch.bin in {folder} or "
                          f"{tmp_path / 'd'})")
    assert offline == []  # nothing downloaded for an explicit folder
    assert load_cifar10("test").tensors[1].shape == (2,)  # without it: $KWH_DATA

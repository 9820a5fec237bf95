"""kwh.data: IDX format, checksums, search order, downloads, MNIST tensors and loaders."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from kwh.data import DataError, decode_idx, get_dataset, load_idx_arrays, load_mnist
from kwh.data import make_loaders, read_idx
from kwh.data import locate, mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """Encode an array as IDX (big-endian) the way the MNIST files are written."""
    big = array.astype(array.dtype.newbyteorder(">"))
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + big.tobytes()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No KWH_DATA, no system folders, a fresh cache, and a closed network."""
    calls: list[str] = []

    def closed(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("network closed in tests")

    monkeypatch.delenv("KWH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", ())
    monkeypatch.setattr(urllib.request, "urlopen", closed)
    return calls


def copy_t10k(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in T10K:
        shutil.copyfile(src / name, dest / name)
    return dest


# ---------------------------------------------------------------- IDX format


def test_idx_round_trip_raw_and_gzip(tmp_path):
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([-5, 0, 70000], dtype=np.int32)
    (tmp_path / "a").write_bytes(idx_bytes(images, 0x08))
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(ints, 0x0C)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)
    got = read_idx(tmp_path / "b.gz")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, ints)


@pytest.mark.parametrize("data, message", [
    (b"\x01\x00\x08\x01" + b"\x00" * 8, "not an IDX file"),
    (b"", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX dtype code 0x07"),
    (b"\x00\x00\x08\x05" + b"\x00" * 20, "5 dimensions"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x0a" + b"\x01" * 5, "truncated IDX file"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02" + b"\x01" * 3, "1 unexpected bytes"),
])
def test_idx_rejects_malformed_bytes(data, message):
    with pytest.raises(DataError, match=message):
        decode_idx(data, "some.idx")


def test_idx_truncated_gzip_and_size_bounds(tmp_path):
    packed = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8), 0x08))
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: compressed data ends early"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "big.gz").write_bytes(packed)  # 39 KB of content, mostly zeros
    with pytest.raises(DataError, match="decompresses to more than 1000 bytes"):
        read_idx(tmp_path / "big.gz", max_bytes=1000)
    (tmp_path / "raw").write_bytes(b"\x00" * 2000)
    with pytest.raises(DataError, match="larger than the limit 1000"):
        read_idx(tmp_path / "raw", max_bytes=1000)
    with pytest.raises(DataError, match="cannot read file"):
        read_idx(tmp_path / "absent")


# ---------------------------------------------------------------- real data


def test_real_mnist_train_matches_published_figures(data_root):
    images, labels = load_idx_arrays("mnist", "train", data_root)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == TRAIN_COUNTS
    counts = np.bincount(images.ravel(), minlength=256)  # exact moments from the histogram
    mean = counts @ np.arange(256) / counts.sum()
    std = np.sqrt(counts @ (np.arange(256) - mean) ** 2 / counts.sum())
    assert abs(mean - 33.318) < 1e-3 and abs(std - 78.567) < 1e-3  # README's figures
    x, y = load_mnist("train", root=data_root, normalize=False).tensors
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels).long())
    assert torch.equal(x[::997, 0] * 255, torch.from_numpy(images[::997]).float())
    z = load_mnist("train", root=data_root).tensors[0]  # normalised: about 0 and 1
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 1e-3


def test_real_test_split_and_fashion_statistics(data_root):
    x, y = load_mnist("test", root=data_root).tensors
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    images, labels = load_idx_arrays("fashion-mnist", "train", data_root)
    assert np.bincount(labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    counts = np.bincount(images.ravel(), minlength=256)
    mean = counts @ np.arange(256) / counts.sum()
    std = np.sqrt(counts @ (np.arange(256) - mean) ** 2 / counts.sum())
    want = mnist.normalization("fashion-mnist")  # the registry's figures are these, rounded
    assert abs(mean / 255 - want[0]) < 1e-4 and abs(std / 255 - want[1]) < 1e-4


def test_limit_takes_the_first_examples_and_is_checked(data_root):
    small = load_mnist("test", root=data_root, limit=100).tensors
    full = load_mnist("test", root=data_root).tensors
    assert torch.equal(small[0], full[0][:100]) and torch.equal(small[1], full[1][:100])
    for bad in (0, 10001, True, 2.5):
        with pytest.raises(DataError, match=r"limit=.* use an integer from 1 to 10000"):
            load_mnist("test", root=data_root, limit=bad)


def test_verified_arrays_are_cached_per_process(data_root):
    first = load_idx_arrays("mnist", "test", data_root)
    again = load_idx_arrays("mnist", "test", data_root)
    assert first[0] is again[0] and first[1] is again[1]
    assert not first[0].flags.writeable  # callers cannot spoil the cache


# ---------------------------------------------------------------- where files are found


@pytest.mark.parametrize("layout", ["parent", "direct"])
def test_kwh_data_parent_and_direct_layouts(offline, monkeypatch, data_root, layout):
    monkeypatch.setenv("KWH_DATA", str(data_root if layout == "parent" else data_root / "mnist"))
    x, y = load_mnist("test", download=False).tensors
    assert x.shape == (10000, 1, 28, 28)
    assert offline == []  # nothing downloaded


def test_root_argument_comes_first_and_accepts_both_layouts(offline, monkeypatch, data_root):
    monkeypatch.setenv("KWH_DATA", "/nonexistent")
    parent = load_mnist("test", root=data_root, name="fashion-mnist", limit=5).tensors[1]
    direct = load_mnist("test", root=data_root / "fashion-mnist", name="fashion-mnist",
                        limit=5).tensors[1]
    assert torch.equal(direct, parent) and direct.tolist() == [9, 2, 1, 1, 6]


def test_files_of_another_data_set_are_not_taken(offline, monkeypatch, data_root):
    """MNIST and Fashion-MNIST share file names: only the digests tell them apart."""
    monkeypatch.setenv("KWH_DATA", str(data_root / "mnist"))
    load_mnist("test", limit=1)  # the same files, verified and cached as MNIST first
    with pytest.raises(DataError, match="checksum mismatch.*belongs to another data set"):
        load_mnist("test", name="fashion-mnist")
    assert offline == []  # a wrong file is reported, not silently replaced by a download


def test_uncompressed_and_recompressed_files_pass(offline, tmp_path, data_root):
    for name in T10K:
        content = gzip.decompress((data_root / "mnist" / name).read_bytes())
        (tmp_path / "raw" / name[:-3]).parent.mkdir(exist_ok=True)
        (tmp_path / "raw" / name[:-3]).write_bytes(content)
        (tmp_path / "re").mkdir(exist_ok=True)
        (tmp_path / "re" / name).write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
    ref = load_mnist("test", root=data_root).tensors
    for folder in ("raw", "re"):
        got = load_mnist("test", root=tmp_path / folder, download=False).tensors
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


# ---------------------------------------------------------------- damaged and missing files


def test_checksum_mismatch_names_file_and_digests(offline, tmp_path, data_root):
    copy_t10k(data_root / "mnist", tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one label changed: still valid IDX
    labels.unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))
    with pytest.raises(DataError) as e:
        load_mnist("test", root=tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte: checksum mismatch" in msg and str(tmp_path) in msg
    assert "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2" in msg
    assert "delete or replace it" in msg and offline == []


def test_flipped_byte_in_gzip_is_refused(offline, tmp_path, data_root):
    copy_t10k(data_root / "mnist", tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: (corrupt gzip|checksum)"):
        load_mnist("test", root=tmp_path)


def test_truncated_file_is_refused(offline, tmp_path, data_root):
    copy_t10k(data_root / "mnist", tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: compressed data ends "
                                        r"early \(file truncated\?\)"):
        load_mnist("test", root=tmp_path)


def test_wrong_magic_is_refused(offline, tmp_path, data_root):
    copy_t10k(data_root / "mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 20)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: not an IDX file"):
        load_mnist("test", root=tmp_path)


def test_a_bad_copy_is_passed_over_for_a_good_one(offline, monkeypatch, tmp_path, data_root):
    bad = copy_t10k(data_root / "mnist", tmp_path / "bad")
    (bad / "t10k-labels-idx1-ubyte.gz").unlink()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b junk")
    good = copy_t10k(data_root / "mnist", tmp_path / "system" / "mnist")
    (good / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("KWH_DATA", str(bad))  # searched first, then the system folder
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", (str(tmp_path / "system"),))
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz") as e:
        load_mnist("test", download=False)  # images found in good: not reported
    assert "junk" not in str(e.value) and "corrupt" not in str(e.value)
    shutil.copyfile(data_root / "mnist" / T10K[1], good / T10K[1])
    assert load_mnist("test", limit=3).tensors[1].tolist() == [7, 2, 1]


def test_missing_file_says_where_it_looked_and_where_to_put_it(offline, monkeypatch, tmp_path,
                                                              data_root):
    copy_t10k(data_root / "mnist", tmp_path / "d")
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv("KWH_DATA", str(tmp_path / "d"))
    with pytest.raises(DataError) as e:
        load_mnist("test", download=False)
    msg = str(e.value)
    assert "mnist test set: missing t10k-images-idx3-ubyte.gz (downloads are off)" in msg
    assert "labels" not in msg.split("Looked in")[0]  # only the missing one is named
    assert f"Looked in: {tmp_path / 'd' / 'mnist'}, {tmp_path / 'd'}, " in msg
    assert f"Put the files in {tmp_path / 'cache' / 'kwh' / 'mnist'}" in msg
    assert "KWH_DATA=DIR" in msg and "--data-dir" in msg
    assert offline == []


def test_an_explicit_root_is_used_alone(offline, monkeypatch, tmp_path, data_root):
    """root (CLI --data-dir) lacking a file is an error naming it: no $KWH_DATA, no download."""
    monkeypatch.setenv("KWH_DATA", str(data_root))  # holds every file: must not be used
    (tmp_path / "cache" / "kwh").mkdir(parents=True)
    shutil.copytree(data_root / "mnist", tmp_path / "cache" / "kwh" / "mnist")  # nor this
    partial = copy_t10k(data_root / "mnist", tmp_path / "partial")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        load_mnist("test", root=partial)  # downloads on: still none tried
    msg = str(e.value)
    assert msg.startswith(f"mnist test set: the data folder {partial} lacks "
                          "t10k-labels-idx1-ubyte.gz (expected t10k-labels-idx1-ubyte.gz in "
                          f"{partial / 'mnist'} or {partial})")
    assert "\n" not in msg and "images" not in msg and offline == []
    with pytest.raises(DataError) as e:
        load_mnist("test", root=tmp_path / "typo")
    assert str(e.value).startswith(
        f"mnist test set: the data folder {tmp_path / 'typo'} does not exist (expected "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in ")
    assert offline == []
    assert load_mnist("test", limit=2).tensors[1].tolist() == [7, 2]  # no root: $KWH_DATA


def test_unknown_name_and_split_list_the_choices(offline):
    with pytest.raises(DataError, match="Unknown IDX data set 'kmnist'; choose one of: mnist, "
                                        "fashion-mnist"):
        load_mnist("test", name="kmnist")
    with pytest.raises(DataError, match="Unknown split 'val'; choose one of: train, test"):
        load_mnist("val")
    with pytest.raises(DataError, match="choose one of: mnist, fashion-mnist, cifar10"):
        get_dataset("svhn", "test")


# ---------------------------------------------------------------- downloads


def serve(files: dict[str, bytes], calls: list[str]):
    """A stand-in for urlopen that serves files by the last part of the URL."""
    def urlopen(url, timeout=None):
        calls.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return io.BytesIO(files[name])
    return urlopen


def test_network_closed_names_missing_files_and_places(offline, tmp_path):
    with pytest.raises(DataError) as e:
        load_mnist("test")
    msg = str(e.value)
    assert "missing t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in msg
    assert "network closed in tests" in msg and "/usr/share" not in msg  # system roots patched
    assert f"Put the files in {tmp_path / 'cache' / 'kwh' / 'mnist'}" in msg
    assert offline[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz"
    assert offline[1] == "http://yann.lecun.com/exdb/mnist/t10k-images-idx3-ubyte.gz"
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_download_verifies_and_places_files_atomically(offline, monkeypatch, tmp_path,
                                                       data_root):
    calls: list[str] = []
    files = {n: (data_root / "mnist" / n).read_bytes() for n in T10K}
    monkeypatch.setattr(urllib.request, "urlopen", serve(files, calls))
    got = load_mnist("test", limit=10).tensors
    assert torch.equal(got[1], load_mnist("test", root=data_root, limit=10).tensors[1])
    cache = tmp_path / "cache" / "kwh" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(T10K)  # no .part files left
    assert all((cache / n).read_bytes() == files[n] for n in T10K)
    assert all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for u in calls)
    monkeypatch.setattr(urllib.request, "urlopen", serve({}, calls))  # now offline
    assert load_mnist("test", limit=10).tensors[0].shape == (10, 1, 28, 28)


def test_download_with_wrong_content_places_nothing(offline, monkeypatch, tmp_path, data_root):
    calls: list[str] = []
    files = {n: (data_root / "fashion-mnist" / n).read_bytes() for n in T10K}  # not MNIST
    monkeypatch.setattr(urllib.request, "urlopen", serve(files, calls))
    with pytest.raises(DataError) as e:
        load_mnist("test")
    assert str(e.value).count("checksum mismatch") == 2  # both mirrors tried and refused
    assert len(calls) == 2
    cache = tmp_path / "cache" / "kwh" / "mnist"
    assert not cache.exists() or not any(cache.iterdir())


def test_download_size_is_bounded(offline, monkeypatch, tmp_path):
    monkeypatch.setattr(mnist, "MAX_DOWNLOAD", 1000)
    files = {n: b"\x00" * 5000 for n in T10K}
    monkeypatch.setattr(urllib.request, "urlopen", serve(files, []))
    with pytest.raises(DataError, match="larger than 1000 bytes"):
        load_mnist("test")


# ---------------------------------------------------------------- data sets and loaders


def test_get_dataset_dispatches_by_name(data_root):
    a = get_dataset("fashion-mnist", "test", data_root, limit=20).tensors
    b = load_mnist("test", data_root, "fashion-mnist", limit=20).tensors
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_make_loaders_are_seeded_and_cover_each_example_once(data_root):
    def first_epoch(seed):
        train, test = make_loaders("mnist", 32, data_root, limit_train=200, limit_test=100,
                                   seed=seed)
        batches = list(train)
        return batches, list(test)

    batches, test = first_epoch(3)
    assert [len(b[1]) for b in batches] == [32] * 6 + [8]
    assert batches[0][0].shape == (32, 1, 28, 28) and batches[0][0].dtype == torch.float32
    x, y = load_mnist("train", data_root, limit=200).tensors
    order = torch.cat([b[1] for b in batches])
    assert sorted(order.tolist()) == sorted(y.tolist())
    assert torch.equal(order, torch.cat([b[1] for b in first_epoch(3)[0]]))
    assert not torch.equal(order, torch.cat([b[1] for b in first_epoch(4)[0]]))
    assert torch.equal(torch.cat([b[1] for b in test]), load_mnist("test", data_root,
                                                                   limit=100).tensors[1])
    with pytest.raises(DataError, match="batch_size=0 is invalid"):
        make_loaders("mnist", 0, data_root, limit_train=10, limit_test=10)

"""The arithmetic-coded encodings (kwh.format.arith): exact round trips, a code length that
matches an independent model of its probabilities, and hostile streams refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kwh
from kwh.errors import FormatError
from kwh.format import arith, bitpack
from kwh.format import tensors as ft


def _skewed(rng: np.random.Generator, n: int, bits: int, density: float) -> np.ndarray:
    """Integers as a compressed model's weights are: mostly small magnitudes, scattered."""
    lo, hi = bitpack.int_range(bits)
    mags = np.minimum(rng.geometric(0.4, n), hi)
    q = np.where(rng.random(n) < 0.5, -mags, mags).clip(lo, hi)
    q[rng.random(n) >= density] = 0
    return q.astype(np.int64)


@settings(max_examples=300, deadline=None)
@given(bits=st.integers(1, 25), n=st.integers(0, 400), density=st.floats(0, 1),
       seed=st.integers(0, 10**6), uniform=st.booleans())
def test_every_stream_decodes_to_its_integers(bits, n, density, seed, uniform):
    rng = np.random.default_rng(seed)
    lo, hi = bitpack.int_range(bits)
    if uniform:  # extremes included: the most negative value has magnitude 2**(bits-1)
        q = rng.integers(lo, hi + 1, n)
        q[rng.random(n) >= density] = 0
    else:
        q = _skewed(rng, n, bits, density)
    blob = arith.encode_ints(q, bits)
    out = arith.decode_ints(blob, n, int(np.count_nonzero(q)), bits, "t")
    assert np.array_equal(out, q)


def _gamma_cost(probs: dict, key: str, value: int, max_len: int) -> float:
    """Ideal bits of one Elias-gamma value under the documented adaptive model."""
    def code(ctx, bit):
        p0 = probs.setdefault(ctx, 1024)
        p = p0 if bit == 0 else 2048 - p0
        probs[ctx] = p0 + ((2048 - p0) >> 5) if bit == 0 else p0 - (p0 >> 5)
        return -math.log2(p / 2048)
    n = value.bit_length()
    cost = sum(code((key, "len", j), 1) for j in range(n - 1))
    if n < max_len:
        cost += code((key, "len", n - 1), 0)
    for k, j in enumerate(range(n - 2, -1, -1)):
        cost += code((key, "bit", n, k), (value >> j) & 1) if k < 2 else 1.0
    return cost


@pytest.mark.parametrize("bits, density, n", [(5, 0.1, 3000), (7, 0.4, 2000), (3, 0.9, 500),
                                              (13, 1.0, 64)])
def test_the_code_is_as_long_as_its_model_says(bits, density, n):
    """Oracle: the ideal code length (sum of -log2 p) of the binarization the module documents,
    with probabilities updated by 1/32 of their error; a range coder stays within a few bytes
    of it."""
    q = _skewed(np.random.default_rng(bits), n, bits, density)
    probs: dict = {}
    ideal, pos = 0.0, -1
    for i in np.flatnonzero(q).tolist():
        ideal += _gamma_cost(probs, "gap", i - pos, max(1, n.bit_length()))
        pos = i
        p0 = probs.setdefault("sign", 1024)
        neg = int(q[i] < 0)
        ideal += -math.log2((p0 if not neg else 2048 - p0) / 2048)
        probs["sign"] = p0 + ((2048 - p0) >> 5) if not neg else p0 - (p0 >> 5)
        ideal += _gamma_cost(probs, "mag", abs(int(q[i])), bits)
    size = len(arith.encode_ints(q, bits))
    assert ideal / 8 - 1 <= size <= ideal / 8 + 5


def test_skewed_sparse_weights_take_fewer_bytes_than_any_packed_layout():
    q = _skewed(np.random.default_rng(0), 4608, 5, 0.08)  # a pruned 3x3 conv of 16 x 32
    packed, _ = ft.encode_quantized("w", q.shape, q, 5, coded=False)
    meta, blob = ft.encode_quantized("w", q.shape, q, 5)
    assert meta["encoding"] == "arith"
    packed_bytes = ft.raw_size(ft.check_meta(packed, "w", q.shape, True, "t", bits=5), 5)
    assert len(blob) < 0.85 * packed_bytes
    assert meta["bytes"] == len(blob) and meta["nnz"] == int(np.count_nonzero(q))


def test_an_all_zero_tensor_is_an_empty_stream():
    assert arith.encode_ints(np.zeros(50, np.int64), 4) == b""
    assert not arith.decode_ints(b"", 50, 0, 4, "t").any()
    with pytest.raises(FormatError, match="no arithmetic-coded bytes"):
        arith.decode_ints(b"\x01", 50, 0, 4, "t")


def test_left_over_and_missing_bytes_are_refused():
    q = _skewed(np.random.default_rng(1), 300, 6, 0.5)
    blob = arith.encode_ints(q, 6)
    nnz = int(np.count_nonzero(q))
    with pytest.raises(FormatError, match="left over"):
        arith.decode_ints(blob + b"\x00" * 6, 300, nnz, 6, "t")
    with pytest.raises(FormatError):  # ends early, or decodes to something impossible
        arith.decode_ints(blob[:len(blob) // 2], 300, nnz, 6, "t")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), n=st.integers(1, 200), bits=st.integers(1, 12),
       frac=st.floats(0, 1))
def test_hostile_streams_decode_in_range_or_are_refused(data, n, bits, frac):
    nnz = int(frac * n)
    try:
        out = arith.decode_ints(data, n, nnz, bits, "t")
    except FormatError:
        return
    lo, hi = bitpack.int_range(bits)
    assert out.shape == (n,) and int(np.count_nonzero(out)) == nnz
    assert out.min(initial=0) >= lo and out.max(initial=0) <= hi


def test_descriptions_that_would_cost_unbounded_time_or_memory_are_refused():
    meta = {"name": "weight", "shape": [100, 100], "encoding": "arith", "nnz": 5000, "bytes": 10}
    with pytest.raises(FormatError, match="non-zeros a byte"):
        ft.check_meta(meta, "weight", (100, 100), True, "t", bits=4)
    meta.update(nnz=10, bytes=5001)  # more than the 5,000 bytes of the dense layout
    with pytest.raises(FormatError, match="bytes"):
        ft.check_meta(meta, "weight", (100, 100), True, "t", bits=4)
    meta.update(bytes=50)
    assert ft.check_meta(meta, "weight", (100, 100), True, "t", bits=4)["bytes"] == 50
    bias = {"name": "bias", "shape": [8], "encoding": "fixed-arith", "bits": 13,
            "frac_bits": 11, "nnz": 9, "bytes": 4}
    with pytest.raises(FormatError, match="nnz"):
        ft.check_meta(bias, "bias", (8,), False, "t", plain=ft.FLOAT_ENCODINGS)


def test_a_saved_model_with_coded_tensors_loads_to_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            q = _skewed(rng, layer.weight.numel(), 6, 0.2).reshape(layer.weight.shape)
            layer.weight.copy_(torch.from_numpy(q).float() / 16)
            layer.kwh_bits, layer.kwh_frac_bits = 6, 4
    path = tmp_path / "m.kwh"
    kwh.save(model, path, input_shape=(64,))
    report = kwh.format.file_report(path)
    assert [s["tensors"][0]["encoding"] for s in report["sections"]] == ["arith", "arith"]
    loaded = kwh.load(path)
    x = torch.randn(7, 64)
    assert torch.equal(loaded(x), model(x))


def _coded_file() -> bytes:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    q = _skewed(np.random.default_rng(3), 64 * 32, 6, 0.2).reshape(32, 64)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(q).float() / 16)
        model[0].bias.fill_(0.1)  # float32 (0.1 is on no grid), repeated: zstd shrinks it
    model[0].kwh_bits, model[0].kwh_frac_bits = 6, 4
    return kwh.format.codec.encode(model, input_shape=(64,))


def test_a_coded_section_is_stored_raw_and_a_compressed_one_is_refused():
    """zstd would let a few stored bytes expand into a long stream of cheap decisions (4 MiB
    of zeros: ~145 bytes), so the decoding time would no longer be bounded by the file."""
    import zlib

    import zstandard
    from test_fuzz import reseal, section_entries, split, version_of

    data = _coded_file()
    header, sections = split(data)
    entry = section_entries(header)[0]
    assert entry["tensors"][0]["encoding"] == "arith" and entry["codec"] == "raw"
    assert kwh.format.codec.decode(data) is not None
    packed = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(sections[0])
    assert len(packed) < len(sections[0])  # a smaller, valid zstd frame of the same bytes
    entry.update(codec="zstd", stored_bytes=len(packed), crc32=zlib.crc32(packed))
    with pytest.raises(FormatError, match="stored raw"):
        kwh.format.codec.decode(reseal(header, [packed], version_of(data)))


def test_more_non_zeros_than_a_coded_tensor_may_hold_are_refused():
    n = arith.MAX_CODED_NNZ + 1
    meta = {"name": "weight", "shape": [n], "encoding": "arith", "nnz": n, "bytes": n}
    with pytest.raises(FormatError, match="at most"):
        ft.check_meta(meta, "weight", (n,), True, "t", bits=8)


def test_the_file_report_gives_a_coded_bias_its_own_bits(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 300))
    with torch.no_grad():
        model[0].weight.zero_()
        bias = torch.zeros(300)
        bias[::7] = torch.arange(43.0) - 21
        bias[0] = 1000.0  # 11 magnitude bits for all; the others are small: coding pays
        model[0].bias.copy_(bias / 64)
    model[0].kwh_bits, model[0].kwh_frac_bits = 4, 0
    path = tmp_path / "b.kwh"
    kwh.save(model, path, input_shape=(4,))
    row = kwh.format.file_report(path)["sections"][0]["tensors"][1]
    assert row["encoding"] == "fixed-arith"
    assert (row["bits"], row["frac_bits"]) == (11, 6)


def test_the_resave_benchmark_reports_sizes_and_equal_outputs(tmp_path):
    from benchmarks import resave

    folder = tmp_path / "models"
    folder.mkdir()
    old = _coded_file()
    (folder / "a.kwh").write_bytes(old)
    state = torch.nn.Sequential(torch.nn.Linear(3, 2))
    kwh.save(state, folder / "b.kwh", layout="state")  # needs its class: skipped
    assert resave.main([str(folder), "--out", str(tmp_path / "r")]) == 0
    rows = {r["file"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["a.kwh"]["same_outputs"] is True and "skipped" in rows["b.kwh"]
    assert rows["a.kwh"]["file_bytes"] == len(old) == rows["a.kwh"]["file_bytes_again"]
    assert "| a.kwh |" in (tmp_path / "r.md").read_text()

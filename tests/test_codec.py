"""The .kwh format: exact round trips (property-based), every allowed layer, sizes, atomic save."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import kwh
from kwh.errors import FormatError, ModelError
from kwh.format import arith, bitpack, codec
from kwh.format import tensors as ft
from kwh.format.modules import SPECS
from kwh.modules import PositionEmbedding, SelectInputs
from kwh.models import lenet5, lenet300


def quantize_(layer: nn.Module, bits: int, frac_bits: int, sparsity: float,
              gen: torch.Generator, structured: bool = False) -> None:
    """Give a layer random ``bits``-bit integers * 2**-frac_bits, a fraction ``sparsity`` zero."""
    lo, hi = bitpack.int_range(bits)
    w = layer.weight
    q = torch.randint(lo, hi + 1, w.shape, generator=gen, dtype=torch.int64)
    if structured:  # whole output units / filters pruned
        keep = torch.rand(w.shape[0], generator=gen) >= sparsity
        q[~keep] = 0
    else:
        q[torch.rand(w.shape, generator=gen) < sparsity] = 0
    with torch.no_grad():
        w.copy_(q.to(torch.float64) * 2.0**-frac_bits)
    layer.kwh_bits, layer.kwh_frac_bits = bits, frac_bits


def lenet5_compressed(seed: int = 0) -> nn.Sequential:
    """LeNet-5-Caffe with 8-bit weights and 90% of each layer's units pruned (zeroed)."""
    gen = torch.Generator().manual_seed(seed)
    model = lenet5().eval()
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            quantize_(layer, 8, 7, 0.9, gen, structured=True)
    model.kwh_summary = {"input_shape": [1, 28, 28], "arch": "lenet5", "bits": [8, 8, 8, 8]}
    return model


def assert_same_model(a: nn.Sequential, b: nn.Sequential, x: torch.Tensor) -> None:
    """Same layer types, same tensors bit for bit, same kwh attributes, same outputs exactly."""
    assert type(b) is nn.Sequential and not b.training
    assert [type(m) for m in a] == [type(m) for m in b]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for ma, mb in zip(a, b):
        for attr in ("kwh_bits", "kwh_frac_bits"):
            assert getattr(ma, attr, "absent") == getattr(mb, attr, "absent")
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b(x))


# ------------------------------------------------------------------ property-based round trips

ACTS = [nn.ReLU, nn.Tanh, lambda: nn.LeakyReLU(0.125), nn.Identity, lambda: nn.Dropout(0.3)]


@st.composite
def mlps(draw):
    n_in = draw(st.integers(1, 12))
    widths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    layers, prev = [nn.Flatten()], n_in
    for w in widths:
        layers += [nn.Linear(prev, w, bias=draw(st.booleans())), draw(st.sampled_from(ACTS))()]
        prev = w
    return nn.Sequential(*layers), (n_in,)


@st.composite
def cnns(draw):
    c, size = draw(st.integers(1, 3)), draw(st.integers(4, 11))
    layers, hw, shape = [], size, (c, size, size)
    for _ in range(draw(st.integers(1, 2))):
        k, s, p, d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2)),
                      draw(st.integers(1, 2)))
        out = (hw + 2 * p - d * (k - 1) - 1) // s + 1
        if out < 1:
            continue
        oc = draw(st.integers(1, 4))
        layers += [nn.Conv2d(c, oc, k, stride=s, padding=p, dilation=d,
                             bias=draw(st.booleans())), nn.ReLU()]
        c, hw = oc, out
        if hw >= 2 and draw(st.booleans()):
            layers.append(draw(st.sampled_from([nn.MaxPool2d, nn.AvgPool2d]))(2))
            hw //= 2
    layers += [nn.Flatten(), nn.Linear(c * hw * hw, draw(st.integers(1, 5)))]
    return nn.Sequential(*layers), shape


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.one_of(mlps(), cnns()), data=st.data())
def test_round_trip_is_exact_for_random_architectures(arch, data):
    """Random MLPs / small CNNs, 1..25 bits, 0..100% sparsity: weights and outputs bit-exact."""
    model, shape = arch
    seed = data.draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and data.draw(st.integers(0, 4)) > 0:
            quantize_(layer, data.draw(st.integers(1, 25)), data.draw(st.integers(0, 23)),
                      data.draw(st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0])), gen,
                      structured=data.draw(st.booleans()))
    model.eval()
    blob = codec.encode(model, input_shape=shape)
    loaded = codec.decode(blob)
    assert loaded.kwh_input_shape == tuple(shape)
    assert_same_model(model, loaded, torch.randn(3, *shape, generator=gen))


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 25), n=st.integers(0, 300), density=st.floats(0, 1),
       seed=st.integers(0, 999))
def test_encodings_decode_to_the_same_integers_and_pick_the_smallest(bits, n, density, seed):
    rng = np.random.default_rng(seed)
    lo, hi = bitpack.int_range(bits)
    q = rng.integers(lo, hi + 1, n)
    q[rng.random(n) >= density] = 0
    meta, blob = ft.encode_quantized("weight", (n,), q, bits)
    checked = ft.check_meta(meta, "weight", (n,), True, "t", bits=bits)
    assert ft.raw_size(checked, bits) == len(blob)
    out = ft.decode(checked, memoryview(blob), (bits, 0), "t")
    assert torch.equal(out, torch.from_numpy(q.astype(np.float32)))
    # oracle: brute-force sizes of the three packed layouts (rindex with every run width),
    # and the arithmetic code where it is smaller
    nnz = int((q != 0).sum())
    gaps = np.diff(np.flatnonzero(q), prepend=-1) - 1
    rindex = min(bitpack.packed_size(m, k) + bitpack.packed_size(m, bits)
                 for k in range(1, 17) for m in [nnz + int(sum(g // 2**k for g in gaps))])
    best = min(bitpack.packed_size(n, bits),
               bitpack.packed_size(n, 1) + bitpack.packed_size(nnz, bits), rindex)
    coded = len(arith.encode_ints(q, bits)) + ft.ARITH_HEADER_BYTES
    assert len(blob) == (coded - ft.ARITH_HEADER_BYTES if coded < best else best)
    assert (meta["encoding"] == "arith") == (coded < best)


def test_relative_index_fillers_match_a_brute_force_decoder():
    q = np.zeros(1000, dtype=np.int64)
    q[[0, 3, 40, 41, 999]] = [5, -1, 7, 2, -8]
    meta, blob = ft.encode_quantized("w", (1000,), q, 4, coded=False)
    assert meta["encoding"] == "rindex"
    k, m = meta["index_bits"], meta["entries"]
    runs = bitpack.unpack_uint(blob[:bitpack.packed_size(m, k)], m, k)
    vals = bitpack.from_twos(bitpack.unpack_uint(blob[bitpack.packed_size(m, k):], m, 4), 4)
    pos, dense = -1, np.zeros(1000, dtype=np.int64)
    for r, v in zip(runs, vals):  # the loop the format describes, one entry at a time
        pos += int(r) + 1
        dense[pos] = v
    assert np.array_equal(dense, q)
    assert m > 5  # the 958-zero gap needed fillers at this run width


def test_bit_order_is_little_endian_within_values_and_bytes():
    assert bitpack.pack_uint(np.array([1, 0, 3]), 2) == bytes([0b00110001])
    assert bitpack.pack_uint(np.array([0x1FF]), 9) == bytes([0xFF, 0x01])
    for bits in range(1, 33):
        v = np.random.default_rng(bits).integers(0, 2**bits, 77, dtype=np.uint64)
        assert np.array_equal(bitpack.unpack_uint(bitpack.pack_uint(v, bits), 77, bits), v)
    with pytest.raises(ValueError, match="padding"):
        bitpack.unpack_uint(bytes([0b1000]), 1, 3)


# ------------------------------------------------------------------ every allowed layer

def registry_examples() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """One instance with non-default arguments of every allowed layer, and an input shape."""
    ex = {
        "Linear": (nn.Linear(6, 4, bias=False), (3, 6)),
        "Conv2d": (nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                             groups=2), (4, 9, 8)),
        "BatchNorm1d": (nn.BatchNorm1d(5, eps=1e-3, momentum=None), (5, 7)),
        "BatchNorm2d": (nn.BatchNorm2d(3, affine=False), (3, 4, 4)),
        "MaxPool2d": (nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True), (2, 7, 7)),
        "AvgPool2d": (nn.AvgPool2d((3, 2), stride=1, padding=(1, 0), ceil_mode=True,
                                   count_include_pad=False, divisor_override=5), (2, 6, 5)),
        "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d((2, 3)), (2, 6, 7)),
        "Flatten": (nn.Flatten(2, 3), (2, 3, 4, 5)),
        "Dropout": (nn.Dropout(0.25), (7,)),
        "Dropout2d": (nn.Dropout2d(0.5), (2, 3, 3)),
        "GELU": (nn.GELU(approximate="tanh"), (5,)),
        "LeakyReLU": (nn.LeakyReLU(0.3), (5,)),
        "ELU": (nn.ELU(0.7), (5,)),
        "Hardtanh": (nn.Hardtanh(-0.5, 2.0), (5,)),
        "Softplus": (nn.Softplus(beta=2.0, threshold=10.0), (5,)),
        "Softmax": (nn.Softmax(dim=-1), (5,)),
        "LogSoftmax": (nn.LogSoftmax(dim=1), (5,)),
        "SelectInputs": (SelectInputs(torch.tensor([1.0, 0, 1, 1, 0, 1, 0])), (7, 3)),
        "LayerNorm": (nn.LayerNorm((3, 4), eps=1e-3, bias=False), (2, 3, 4)),
        "PositionEmbedding": (PositionEmbedding(3, 4), (3, 4)),
    }
    for name in SPECS:
        if name not in ex:  # argument-free layers
            ex[name] = (SPECS[name].cls(), (5,))
    return ex


@pytest.mark.parametrize("name", list(SPECS))
def test_every_allowed_layer_round_trips_with_its_arguments(name):
    module, shape = registry_examples()[name]
    with torch.no_grad():
        for p in (*module.parameters(), *module.buffers()):
            if p.is_floating_point() and not isinstance(module, SelectInputs):  # keep: 0/1
                p.copy_(torch.rand(p.shape) + 0.5)  # positive: valid running variances too
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.track_running_stats:
        module.num_batches_tracked.fill_(17)
    model = nn.Sequential(module).eval()
    loaded = codec.decode(codec.encode(model, input_shape=shape))
    assert SPECS[name].read(loaded[0]) == SPECS[name].read(module)  # same (normalised) args
    assert_same_model(model, loaded, torch.randn(2, *shape))


def test_lenet5_file_round_trip_summary_and_report(tmp_path):
    model = lenet5_compressed()
    path = tmp_path / "lenet5.kwh"
    size = kwh.save(model, path)
    assert size == os.path.getsize(path) == len(codec.encode(model))
    loaded = kwh.load(path)
    assert loaded.kwh_summary == model.kwh_summary and loaded.kwh_input_shape == (1, 28, 28)
    assert loaded[0].kwh_bits == 8 and loaded[0].kwh_frac_bits == 7
    assert_same_model(model, loaded, torch.randn(4, 1, 28, 28))
    rep = codec.file_report(path)
    assert rep["file_bytes"] == size == (rep["preamble_bytes"] + rep["header_bytes"]
                                         + rep["payload_bytes"] + rep["trailer_bytes"])
    assert rep["payload_bytes"] == codec.payload_bytes(model) == sum(
        s["stored_bytes"] for s in rep["sections"])
    assert rep["elements"] == sum(p.numel() for p in model.parameters())
    assert rep["nonzero"] == sum(int(p.count_nonzero()) for p in model.parameters())
    assert [s["bits"] for s in rep["sections"]] == [8, 8, 8, 8]
    # 90% of 8-bit units zeroed: the structure is exploited far below 1 byte per weight
    assert rep["ratio_vs_fp32"] > 25
    assert codec.encode(model) == codec.encode(model)  # deterministic bytes


def test_plain_float_model_is_stored_as_marked_float32(tmp_path):
    model = lenet300().eval()
    model[1].kwh_bits, model[1].kwh_frac_bits = 32, None  # kwh.compress's float32 marker
    kwh.save(model, tmp_path / "m.kwh")
    loaded = kwh.load(tmp_path / "m.kwh")
    assert not hasattr(loaded, "kwh_summary")
    assert tuple(loaded.kwh_input_shape) == (1, 28, 28)  # recorded by the reference net
    assert (loaded[1].kwh_bits, loaded[1].kwh_frac_bits) == (32, None)
    assert not hasattr(loaded[3], "kwh_bits")
    assert_same_model(model, loaded, torch.randn(2, 784))
    header = codec.read_header(tmp_path / "m.kwh")
    encodings = [t["encoding"] for m in header["modules"] if m["section"]
                 for t in m["section"]["tensors"]]
    assert set(encodings) <= {"float32", "fixed"}  # float tensors in their smallest exact form
    assert [s["bits"] for s in codec.file_report(tmp_path / "m.kwh")["sections"]] == [32] * 3


# ------------------------------------------------------------------ what save refuses

class Custom(nn.ReLU):
    pass


@pytest.mark.parametrize("model, match", [
    (nn.Linear(2, 2), "plain nn.Sequential"),
    (nn.Sequential(Custom()), "Custom cannot be stored.*allowed layers: Linear"),
    (nn.Sequential(nn.Sequential(nn.ReLU())), "Sequential cannot be stored"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)), "expects 5 input features.*gives 3"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect")), "padding_mode"),
    (nn.Sequential(nn.MaxPool2d(2, return_indices=True)), "return_indices"),
    (nn.Sequential(nn.Flatten(0)), "start_dim"),
])
def test_save_refuses_what_it_cannot_store(model, match):
    with pytest.raises(ModelError, match=match):
        codec.encode(model)


@pytest.mark.parametrize("bits, frac, value, match", [
    (8, 2, 0.3, "not an integer multiple of 2\\*\\*-2"),
    (4, 0, 8.0, "needs more than kwh_bits=4"),
    (0, 0, 0.0, "kwh_bits=0 is invalid"),
    (26, 0, 0.0, "kwh_bits=26 is invalid"),
    (True, 0, 0.0, "kwh_bits=True is invalid"),
    (8, None, 0.0, "kwh_frac_bits=None is invalid"),
    (8, 2.0, 0.0, "kwh_frac_bits=2.0 is invalid"),
    (8, 2, float("nan"), "not an integer multiple"),
])
def test_save_refuses_weights_off_their_fixed_point(bits, frac, value, match):
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(value)
    layer.kwh_bits, layer.kwh_frac_bits = bits, frac
    with pytest.raises(ModelError, match=match):
        codec.encode(nn.Sequential(layer))


def test_save_refuses_bad_summaries_and_shapes():
    model = nn.Sequential(nn.Linear(3, 2))
    model.kwh_summary = {"x": object()}
    with pytest.raises(ModelError, match="JSON-serialisable"):
        codec.encode(model)
    model.kwh_summary = {"x": float("inf")}
    with pytest.raises(ModelError, match="JSON-serialisable"):
        codec.encode(model)
    model.kwh_summary = {"x": np.float32(0.5), "input_shape": (3,)}  # numpy scalars are fine
    assert codec.decode(codec.encode(model)).kwh_summary == {"x": 0.5, "input_shape": [3]}
    with pytest.raises(ModelError, match="input_shape"):
        codec.encode(model, input_shape=(0, 3))
    with pytest.raises(ModelError, match="expects 3 input features"):
        codec.encode(model, input_shape=(4,))
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        codec.encode(model)


# ------------------------------------------------------------------ atomic save and bad files

def test_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.kwh"
    kwh.save(lenet5_compressed(), path)
    before = path.read_bytes()
    from kwh.format import io as format_io

    def broken_fsync(*args):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(format_io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        kwh.save(lenet5_compressed(seed=1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.kwh"]
    with pytest.raises(OSError, match="disk full"):  # no file existed: none is left behind
        monkeypatch.setattr(format_io.os, "replace", broken_fsync)
        kwh.save(lenet5_compressed(), tmp_path / "new.kwh")
    assert sorted(os.listdir(tmp_path)) == ["m.kwh"]
    with pytest.raises(ModelError):  # a model that can't be stored never touches the file
        kwh.save(nn.Sequential(Custom()), path)
    assert path.read_bytes() == before


def test_load_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError):
        kwh.load(tmp_path / "missing.kwh")
    with pytest.raises(FormatError, match="folder"):
        kwh.load(tmp_path)
    (tmp_path / "ckpt.pt").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(FormatError, match="PyTorch checkpoint"):
        kwh.load(tmp_path / "ckpt.pt")
    (tmp_path / "p.kwh").write_bytes(b"\x80\x04" + bytes(100))
    with pytest.raises(FormatError, match="never unpickles"):
        kwh.load(tmp_path / "p.kwh")
    good = codec.encode(lenet5_compressed())
    newer = good[:8] + struct.pack("<H", codec.VERSION + 1) + good[10:]
    with pytest.raises(FormatError, match=f"version {codec.VERSION + 1}.*upgrade kwh"):
        codec.decode(newer)
    assert good[8:10] == struct.pack("<H", codec.CHAIN_VERSION) == b"\x01\x00"  # chains: v1
    with pytest.raises(FormatError, match="limit of 1000"):
        codec.decode(good, max_elements=1000)
    header = codec.read_header
    (tmp_path / "ok.kwh").write_bytes(good)
    assert json.dumps(header(tmp_path / "ok.kwh")["summary"]) == json.dumps(
        lenet5_compressed().kwh_summary, sort_keys=True)


# ------------------------------------------------------------------ decoders refuse bad blobs

def _rindex(runs: list[int], values: list[int], k: int, bits: int) -> bytes:
    return (bitpack.pack_uint(np.array(runs), k)
            + bitpack.pack_uint(bitpack.to_twos(np.array(values), bits), bits))


@pytest.mark.parametrize("meta, blob, match", [
    ({"encoding": "rindex", "nnz": 2, "entries": 2, "index_bits": 3},
     _rindex([5, 7], [1, 1], 3, 4), "past the tensor's 12 elements"),
    ({"encoding": "rindex", "nnz": 1, "entries": 2, "index_bits": 3},
     _rindex([2, 1], [0, 1], 3, 4), "not a filler"),
    ({"encoding": "rindex", "nnz": 1, "entries": 2, "index_bits": 3},
     _rindex([1, 7], [1, 0], 3, 4), "not a filler"),
    ({"encoding": "rindex", "nnz": 1, "entries": 2, "index_bits": 3},
     _rindex([1, 1], [1, 1], 3, 4), "2 non-zero entries, header says nnz=1"),
    ({"encoding": "bitmap", "nnz": 2},
     bitpack.pack_uint(np.array([1, 1, 1] + [0] * 9), 1) + bitpack.pack_uint(np.array([1, 2]), 4),
     "marks 3 non-zeros"),
    ({"encoding": "bitmap", "nnz": 2},
     bitpack.pack_uint(np.array([1, 1] + [0] * 10), 1) + bitpack.pack_uint(np.array([1, 0]), 4),
     "value is zero"),
    ({"encoding": "bitmap", "nnz": 1}, bytes([1, 0b10000]) + bytes([1]), "padding bits"),
])
def test_decoders_refuse_bad_blobs(meta, blob, match):
    meta = ft.check_meta({"name": "weight", "shape": [3, 4], **meta}, "weight", (3, 4), True, "t")
    assert ft.raw_size(meta, 4) == len(blob)
    with pytest.raises(FormatError, match=match):
        ft.decode(meta, memoryview(blob), (4, 0), "t")
    dense = ft.check_meta({"name": "w", "shape": [3, 4], "encoding": "dense"}, "w", (3, 4),
                          True, "t")
    with pytest.raises(FormatError, match="padding bits"):  # 12 values x 3 bits = 4.5 bytes
        ft.decode(dense, memoryview(bytes(4) + bytes([0x10])), (3, 0), "t")
    with pytest.raises(FormatError, match="NaN"):
        ft.decode({"name": "bias", "shape": (2,), "encoding": "float32"},
                  memoryview(np.array([1.0, np.nan], "<f4").tobytes()), None, "t")

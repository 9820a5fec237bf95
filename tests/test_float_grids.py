"""Biases, norms and embeddings on fixed-point grids (kwh.compress.floats) and the codec's exact
``fixed`` encoding of float tensors (kwh.format.tensors): oracles, the guard, hostile input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import kwh
from kwh.compress import floats
from kwh.errors import FormatError
from kwh.format import bitpack, codec, file_report
from kwh.format import tensors as ft


# ------------------------------------------------------------------ the codec's exact form

@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2**20, 2**20), min_size=1, max_size=40), st.integers(0, 40))
def test_values_on_a_grid_are_stored_exactly_in_few_bits(q, t):
    values = torch.tensor(q, dtype=torch.float64).mul(2.0**-t).to(torch.float32)
    meta, blob = ft.encode_float("bias", values, "test")
    assert meta["encoding"] in ("fixed", "fixed-arith")
    bits, frac = meta["bits"], meta["frac_bits"]
    if meta["encoding"] == "fixed-arith":  # chosen only when smaller than the packed integers
        assert len(blob) < bitpack.packed_size(len(q), bits)
    # the oracle: the fewest two's-complement bits of the integers on the finest grid needed
    ints = [int(v) for v in (values.double() * 2.0**frac).tolist()]
    assert all(float(i) == v * 2.0**frac for i, v in zip(ints, values.double().tolist()))
    need = max(1, *(max(i.bit_length() + 1, 1) if i >= 0 else (-i - 1).bit_length() + 1
                    for i in ints))
    assert bits == need
    assert frac == 0 or any(i % 2 for i in ints)  # no coarser grid holds them all
    checked = ft.check_meta(meta, "bias", tuple(values.shape), False, "test",
                            plain=ft.FLOAT_ENCODINGS)
    back = ft.decode(checked, memoryview(blob), None, "test")
    assert torch.equal(back, values) and len(blob) == ft.raw_size(checked, None)


def test_float32_is_kept_where_no_small_grid_is_exact():
    assert ft.exact_grid(np.array([-0.0, 1.0], np.float32)) is None  # an integer has no -0
    assert ft.exact_grid(np.array([1e-5, 0.035], np.float32)) is None  # 37 bits needed
    assert ft.exact_grid(np.array([0.0, 0.0], np.float32)) == (1, 0)
    assert ft.exact_grid(np.array([3.0, -4.0], np.float32)) == (3, 0)
    meta, blob = ft.encode_float("b", torch.tensor([1e-5, 0.035]), "t")
    assert meta["encoding"] == "float32" and len(blob) == 8
    meta, _ = ft.encode_float("b", torch.tensor([-0.0, 1.0]), "t")
    assert meta["encoding"] == "float32"


@pytest.mark.parametrize("change, message", [
    ({"bits": 0}, "bits"), ({"bits": 26}, "bits"), ({"frac_bits": -1}, "frac_bits"),
    ({"frac_bits": 65}, "frac_bits"), ({"bits": "3"}, "bits"), ({"nnz": 2}, "nnz"),
])
def test_hostile_fixed_descriptions_are_refused(change, message):
    meta = {"name": "b", "shape": [2], "encoding": "fixed", "bits": 3, "frac_bits": 1, **change}
    with pytest.raises(FormatError, match=message):
        ft.check_meta(meta, "b", (2,), False, "t", plain=ft.FLOAT_ENCODINGS)
    without = {"name": "b", "shape": [2], "encoding": "fixed", "bits": 3}
    with pytest.raises(FormatError, match="frac_bits"):
        ft.check_meta(without, "b", (2,), False, "t", plain=ft.FLOAT_ENCODINGS)


def test_a_fixed_blob_of_the_wrong_length_is_refused():
    meta = ft.check_meta({"name": "b", "shape": [5], "encoding": "fixed", "bits": 3,
                          "frac_bits": 1}, "b", (5,), False, "t", plain=ft.FLOAT_ENCODINGS)
    with pytest.raises(FormatError, match="b"):
        ft.decode(meta, memoryview(bytes(3)), None, "t")  # 15 bits need 2 bytes


# ------------------------------------------------------------------ snapping

def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.3, 0.3)
        m[3].bias.zero_()
    m[3].kwh_bits, m[3].kwh_frac_bits = 25, 20  # a quantized layer: its weight is not touched
    with torch.no_grad():
        m[3].weight.copy_(torch.round(m[3].weight * 2**20) / 2**20)
    return m


def test_snap_moves_each_value_at_most_half_a_step_of_its_own_grid():
    m = _mlp()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    grids = floats.snap_floats_(m, 8)
    assert set(grids) == {"0.weight", "0.bias", "1.weight", "1.bias"}  # 3.bias is all zero
    for name, t in grids.items():
        p, p0 = dict(m.named_parameters())[name].detach(), before[name]
        top = float(p0.abs().max())
        assert 2 ** 7 <= top * 2**t < 2**8  # the largest value takes 8 magnitude bits
        assert float((p - p0).abs().max()) <= 2.0 ** -(t + 1)
        q = p.double() * 2.0**t
        assert torch.equal(q, q.round())
        assert not bool((torch.signbit(p) & (p == 0)).any())
    assert torch.equal(m[3].weight, before["3.weight"])  # the quantized weight
    assert torch.equal(m[3].bias, before["3.bias"])


def test_snap_refuses_bad_bits():
    for bad in (0, 25, 2.0, True):
        with pytest.raises(ValueError, match="float_bits"):
            floats.snap_floats_(_mlp(), bad)
    with pytest.raises(ValueError, match="float_bits"):
        kwh.compress.CompressConfig(float_bits=30)


def _classifier() -> nn.Sequential:
    m = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        m[0].bias.copy_(torch.tensor([0.3, 0.0]))  # boundary at x = -0.15
    return m


def _boundary_data():
    x = torch.tensor([[-0.14], [-0.13], [0.5], [-0.5]])  # 1 bit moves the boundary to -0.125
    y = _classifier()(x).argmax(1)
    return [(x, y)]


def test_the_guard_backs_off_where_the_grid_costs_accuracy(monkeypatch):
    data = _boundary_data()
    m = _classifier()
    report = floats.snap_floats_guarded_(m, 1, lambda: kwh.compress.evaluate(m, data)["error"],
                                         0.0)
    assert report["bits"] == 16 and report["error_before"] == report["error_after"] == 0.0
    monkeypatch.setattr(floats, "_BACKOFF", ())
    m = _classifier()
    report = floats.snap_floats_guarded_(m, 1, lambda: kwh.compress.evaluate(m, data)["error"],
                                         0.0)
    assert report["bits"] is None and report["tried"] == [1]
    assert torch.equal(m[0].bias, _classifier()[0].bias)  # restored


def test_compress_stores_its_biases_and_norms_on_grids(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    kwh.bayesify_(model, prior="log-uniform")
    x = torch.randn(64, 12)
    small = kwh.compress(model, input_shape=(12,))
    plain = kwh.compress(model, input_shape=(12,), float_bits=None)
    assert small.kwh_summary["float_grids"]["bits"] == 12
    assert "float_grids" not in plain.kwh_summary
    lin = [m for m in small.modules() if isinstance(m, nn.Linear)]
    lin0 = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    for a, b in zip(lin, lin0):
        assert torch.equal(a.weight, b.weight)  # the weights' grids are the bits' business
        t = floats.grid_of(b.bias, 12)
        assert float((a.bias - b.bias).detach().abs().max()) <= 2.0 ** -(t + 1)
    with torch.no_grad():
        ref = plain(x)
        assert float((small(x) - ref).abs().max()) <= 1e-3 * float(ref.abs().max() + 1)
    kwh.save(small, tmp_path / "a.kwh")
    kwh.save(plain, tmp_path / "b.kwh")
    rep = file_report(tmp_path / "a.kwh")
    biases = [t for sec in rep["sections"] for t in sec["tensors"] if t["name"] == "bias"]
    assert biases and all(t["encoding"] == "fixed" and t["bits"] <= 13 for t in biases)
    assert rep["payload_bytes"] < file_report(tmp_path / "b.kwh")["payload_bytes"]
    assert small.kwh_summary["payload_bytes"] == rep["payload_bytes"]
    assert torch.equal(kwh.load(tmp_path / "a.kwh")(x), small(x))  # the file is exact
    assert "biases and norms: 13 bits" in str(small.kwh_summary)


def test_a_graph_keeps_its_layernorm_and_embedding_on_grids(tmp_path):
    from kwh.models import vit_tiny
    torch.manual_seed(0)
    vit = vit_tiny()
    kwh.bayesify_(vit, prior="group-horseshoe")
    x = torch.randn(2, 1, 28, 28)
    small = kwh.compress(vit, example_inputs=x)
    named = dict(floats.float_parameters(small))
    norms = [n for n in named if "norm" in n]
    assert norms
    for n in norms:
        p = named[n].detach()
        t = floats.grid_of(p, 12)
        assert t is None or torch.equal(p.double() * 2.0**t, (p.double() * 2.0**t).round())
    kwh.save(small, tmp_path / "v.kwh")
    encs = [t["encoding"] for sec in file_report(tmp_path / "v.kwh")["sections"]
            for t in sec["tensors"]]
    assert "float32" not in encs
    assert torch.equal(kwh.load(tmp_path / "v.kwh")(x), small(x))
    with torch.no_grad():
        assert math.isfinite(float(small(x).sum()))


def test_stored_bits_follows_the_codec():
    from kwh.fixedpoint import stored_bits
    on_grid = torch.arange(-32, 32, dtype=torch.float32) / 8  # 6 bits (-32..31), t = 3
    assert stored_bits(on_grid) == 64 * 6
    meta, blob = ft.encode_float("b", on_grid, "t")
    assert 8 * len(blob) == stored_bits(on_grid)
    assert stored_bits(torch.tensor([0.1, 1e-5, 0.035])) == 3 * 32  # off every small grid
    assert stored_bits(torch.tensor([0.1])) == 32  # 25 bits: not smaller than float32 in bytes
    assert stored_bits(None) == 0
    with pytest.raises(ValueError, match="float32"):
        ft.exact_grid(np.array([0.1]))  # float64: refused, not described after rounding


def test_the_energy_model_prices_biases_and_norms_as_stored():
    from kwh.energy import count_model, estimate_energy
    from kwh.fixedpoint import stored_bits
    from kwh.models import vit_tiny
    torch.manual_seed(0)
    vit = vit_tiny()
    kwh.bayesify_(vit, prior="group-horseshoe")
    x = torch.randn(2, 1, 28, 28)
    on, off = (kwh.compress(vit, example_inputs=x, float_bits=b) for b in (12, None))
    blocks_on, blocks_off = count_model(on, (1, 28, 28)), count_model(off, (1, 28, 28))
    named = dict(on.named_modules())
    for c in blocks_on:
        if c.weight_bits is not None:
            assert c.param_bits >= stored_bits(getattr(named.get(c.name), "bias", None))
    assert sum(c.param_bits for c in blocks_on) < 0.5 * sum(c.param_bits for c in blocks_off)
    assert sum(c.param_bits for c in blocks_off) <= 32 * sum(  # fresh norms (1, 0) are exact
        c.n_bias + c.n_extra_params for c in blocks_off if c.weight_bits is not None)
    e_on, e_off = estimate_energy(on, (1, 28, 28)), estimate_energy(off, (1, 28, 28))
    assert e_on.total_j < e_off.total_j


def test_a_quantized_weight_shared_with_a_plain_module_is_never_snapped():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight  # the plain module comes first in module order
    with torch.no_grad():
        first.weight.copy_(torch.round(torch.randn(4, 4) * 2**20) / 2**20)
    second.kwh_bits, second.kwh_frac_bits = 25, 20
    marked = nn.Linear(4, 4)
    marked.kwh_bits, marked.kwh_frac_bits = 32, None  # kept float32 on purpose
    model = nn.Sequential(first, second, marked)
    before = [first.weight.detach().clone(), marked.weight.detach().clone()]
    grids = floats.snap_floats_(model, 2)
    assert "0.weight" not in grids and "2.weight" not in grids
    assert torch.equal(first.weight, before[0]) and torch.equal(marked.weight, before[1])

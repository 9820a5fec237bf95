"""The energy model against hand computations from the Horowitz table, and its table files."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kwh.energy import (HOROWITZ_45NM, LANDAUER_J_PER_BIT, EnergyConfig, EnergyTable,
                        estimate_energy, load_table)
from kwh.energy.sigma_delta import estimate_sigma_delta
from kwh.models import lenet5

PJ = 1e-12
SRAM_1MB_BIT = 100 * PJ / 64   # Horowitz: 100 pJ per 64-bit read of a 1 MB SRAM
DRAM_BIT = 640 * PJ / 32       # Han et al. 2015: 640 pJ per 32-bit DRAM read


def quantize_(layer: nn.Module, bits: int, frac: int) -> nn.Module:
    """Round weights to int * 2**-frac and mark the layer as kwh-compressed."""
    with torch.no_grad():
        layer.weight.copy_(torch.floor(layer.weight * 2**frac + 0.5) / 2**frac)
    layer.kwh_bits, layer.kwh_frac_bits = bits, frac
    return layer


def hand_compressed_lenet5() -> nn.Sequential:
    """LeNet-5 pruned by hand to the BC-GHS architecture 5-10-76-16 and quantized."""
    torch.manual_seed(0)
    fc1 = nn.Linear(160, 16)
    with torch.no_grad():
        fc1.weight[:, 76:] = 0.0  # 76 kept input units of the 160 flattened ones
    m = nn.Sequential(nn.Conv2d(1, 5, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 10, 5),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), fc1, nn.ReLU(), nn.Linear(16, 10))
    for layer, bits in zip([m[0], m[3], m[7], m[9]], [10, 10, 14, 13]):
        quantize_(layer, bits, bits - 3)
    return m


# ----------------------------------------------------------------------------- the table


def test_table_entries_exact_and_scaling_between():
    t = HOROWITZ_45NM
    assert t.mult_j(8) == pytest.approx(0.2 * PJ) and t.mult_j(32) == pytest.approx(3.1 * PJ)
    assert t.add_j(16) == pytest.approx(0.05 * PJ)
    assert t.mult_j(32, kind="fp") == pytest.approx(3.7 * PJ)
    assert t.add_j(16, kind="fp") == pytest.approx(0.4 * PJ)
    # 8 -> 16 multiplies: the table's 0.2 -> 0.8 is exactly quadratic, so 12 bits = 0.2 (12/8)^2
    assert t.mult_j(12) == pytest.approx(0.2 * (12 / 8) ** 2 * PJ)
    # outside the table: Horowitz's rules (quadratic multiplier, linear adder)
    assert t.mult_j(4) == pytest.approx(0.2 * (4 / 8) ** 2 * PJ)
    assert t.add_j(64) == pytest.approx(0.1 * 2 * PJ)
    # a w x a multiplier is priced at width sqrt(w a): 8 x 32 = 16 x 16
    assert t.mult_j(8, 32) == pytest.approx(t.mult_j(16))
    prices = [t.add_j(b) for b in range(2, 40)] + [t.mult_j(b) for b in range(2, 40)]
    assert all(a < b for a, b in zip(prices[:37], prices[1:38]))  # adds monotone in width
    assert all(a < b for a, b in zip(prices[38:-1], prices[39:]))  # mults too
    assert t.sram_j_per_bit(1024) == pytest.approx(SRAM_1MB_BIT)
    assert t.sram_j_per_bit(4096) == pytest.approx(SRAM_1MB_BIT * 2)  # sqrt(size) beyond
    assert t.dram_j_per_bit() == pytest.approx(DRAM_BIT)
    with pytest.raises(ValueError, match="fp_mult_pj"):
        t.mult_j(64, kind="fp")


def test_landauer_constant():
    assert LANDAUER_J_PER_BIT == pytest.approx(2.87e-21, rel=2e-3)


# ----------------------------------------------------------------------------- tiny networks


def test_tiny_fp32_network_equals_hand_computation():
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin, nn.ReLU())
    e = estimate_energy(model, (4,))
    (l,) = e.layers
    # 12 MACs + 3 bias adds in fp32; 3 ReLU comparisons priced as 32-bit integer compares
    compute = 12 * 3.7 * PJ + (12 + 3) * 0.9 * PJ + 3 * 0.1 * PJ
    # weights + biases (15 x 32 bits) and activations (4 in + 3 out, 32 bits) in a 1 MB SRAM
    memory = 15 * 32 * SRAM_1MB_BIT + 7 * 32 * SRAM_1MB_BIT
    assert l.compute_j == pytest.approx(compute, rel=1e-12)
    assert l.memory_j == pytest.approx(memory, rel=1e-12)
    assert e.total_j == pytest.approx(compute + memory, rel=1e-12)
    assert e.landauer_j == pytest.approx((12 * 32 + 15 * 32 + 3 * 32) * LANDAUER_J_PER_BIT)


def test_tiny_compressed_network_equals_hand_computation():
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, 0.0, -0.25, 0.0],
                                       [0.0, 0.0, 0.0, 0.0],
                                       [1.0, 0.75, 0.0, -0.5]]))
    lin.kwh_bits, lin.kwh_frac_bits = 4, 2
    cfg = EnergyConfig(act_bits=8, weight_format="dense")
    (l,) = estimate_energy(nn.Sequential(lin), (4,), config=cfg).layers
    acc = 4 + 8 + 2  # w + a + ceil(log2(3 nonzero in the fullest row))
    assert l.arith == f"int 4x8 -> {acc}"
    assert (l.mults, l.adds) == (5, 5)  # only the 5 nonzero weights
    mult = 0.2 * (math.sqrt(32) / 8) ** 2 * PJ  # width sqrt(4 x 8), quadratic rule below 8
    add = 0.05 * (14 / 16) ** (math.log(0.05 / 0.03) / math.log(2)) * PJ  # 8 -> 16 power law
    assert l.compute_j == pytest.approx(5 * mult + 5 * add, rel=1e-9)
    assert l.weight_bits == 12 * 4                    # dense packed at 4 bits
    assert l.memory_j == pytest.approx((12 * 4 + (4 + 3) * 8) * SRAM_1MB_BIT, rel=1e-12)


def test_sparse_storage_is_chosen_when_smaller():
    lin = nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 5] = 1.0
    lin.kwh_bits, lin.kwh_frac_bits = 8, 4
    (l,) = estimate_energy(nn.Sequential(lin), (64,)).layers
    # CSR: 1 nonzero x (8 value + 6 index bits) + 3 row pointers x 1 bit
    assert l.weight_bits == 1 * (8 + 6) + 3 * 1
    (d,) = estimate_energy(nn.Sequential(lin), (64,),
                           config=EnergyConfig(weight_format="dense")).layers
    assert d.weight_bits == 128 * 8


def test_unquantized_kwh_layer_is_sparse_float():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight[0] = 0.0
    lin.kwh_bits, lin.kwh_frac_bits = 32, None  # kwh.compress without quantization
    (l,) = estimate_energy(nn.Sequential(lin), (4,)).layers
    assert l.arith == "fp32 sparse" and l.mults == 4
    assert l.e_mult == pytest.approx(4 * 3.7 * PJ)


def test_weights_stream_from_dram_when_sram_too_small():
    model = nn.Sequential(nn.Linear(100, 100, bias=False))
    big = estimate_energy(model, (100,), config=EnergyConfig(sram_kb=1024))
    small = estimate_energy(model, (100,), config=EnergyConfig(sram_kb=8))  # 40 KB of weights
    assert big.layers[0].weight_mem.startswith("SRAM") and small.layers[0].weight_mem == "DRAM"
    assert small.layers[0].e_weight_mem == pytest.approx(100 * 100 * 32 * DRAM_BIT)
    assert small.layers[0].e_act_mem == pytest.approx(200 * 32 * 10 * PJ / 64)  # 8 KB SRAM
    batched = estimate_energy(model, (100,), config=EnergyConfig(sram_kb=8, batch_size=10))
    assert batched.layers[0].e_weight_mem == pytest.approx(small.layers[0].e_weight_mem / 10)


def test_compressed_lenet5_costs_far_less_than_dense():
    dense = estimate_energy(lenet5(), (1, 28, 28))
    small = estimate_energy(hand_compressed_lenet5(), (1, 28, 28))
    assert small.compute_j < dense.compute_j / 10
    assert small.memory_j < dense.memory_j / 100
    assert dense.layers[0].weight_mem == "DRAM"        # 1.7 MB of fp32 weights
    assert small.layers[0].weight_mem.startswith("SRAM")
    m = hand_compressed_lenet5()
    nnz = [int((m[i].weight != 0).sum()) for i in (0, 3, 7, 9)]
    assert small.mults == nnz[0] * 24 * 24 + nnz[1] * 8 * 8 + nnz[2] + nnz[3]
    assert nnz[2] <= 76 * 16
    e = small.with_accuracy(0.99)
    assert e.per_correct_j == pytest.approx(e.total_j / 0.99)
    assert e.correct_per_kwh == pytest.approx(3.6e6 / e.per_correct_j)
    with pytest.raises(ValueError, match="accuracy"):
        small.with_accuracy(99.0)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="act_bits"):
        EnergyConfig(act_bits=0)
    with pytest.raises(ValueError, match="weight_format.*auto, dense, sparse"):
        EnergyConfig(weight_format="csr")
    with pytest.raises(ValueError, match="sram_kb"):
        EnergyConfig(sram_kb=-1)


# ----------------------------------------------------------------------------- table files


def test_custom_table_file_is_used(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"name": "double fp32", "fp_mult_pj": {"16": 2.2, "32": 7.4}}))
    t = load_table(p)
    assert t.name == "double fp32" and t.fp_add_pj == HOROWITZ_45NM.fp_add_pj
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    base = estimate_energy(model, (4,))
    custom = estimate_energy(model, (4,), table=t)
    assert custom.table == "double fp32"
    assert custom.compute_j - base.compute_j == pytest.approx(12 * 3.7 * PJ)
    toml = tmp_path / "t.toml"
    toml.write_text('dram_pj_per_64bit = 2600\n[int_mult_pj]\n8 = 0.25\n')
    t2 = load_table(toml)
    assert t2.dram_pj_per_64bit == 2600 and t2.int_mult_pj == {8: 0.25}
    assert t2.name == "custom (t.toml)"


@pytest.mark.parametrize("text,suffix,match", [
    ("{not json", ".json", "not valid JSON"),
    ('{"fp_mul_pj": {"32": 1}}', ".json", "unknown energy table key.*fp_mult_pj"),
    ('{"int_add_pj": {"8": -0.03}}', ".json", r"int_add_pj'\[8\] must be a positive"),
    ('{"int_add_pj": {"eight": 0.03}}', ".json", "key 'eight' must be an integer"),
    ('{"int_add_pj": {}}', ".json", "at least one entry"),
    ('{"dram_pj_per_64bit": "lots"}', ".json", "dram_pj_per_64bit.*positive number"),
    ('{"int_add_pj": 0.03}', ".json", "must map bit widths"),
    ('[1, 2]', ".json", "must be a mapping"),
    ("a = = 1", ".toml", "not valid TOML"),
    ("{}", ".yaml", "use .json or .toml"),
])
def test_malformed_tables_rejected(tmp_path, text, suffix, match):
    p = tmp_path / f"bad{suffix}"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_table(p)


def test_missing_table_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_table(tmp_path / "nope.json")


def test_table_round_trips_through_json(tmp_path):
    p = tmp_path / "h.json"
    p.write_text(json.dumps(HOROWITZ_45NM.to_dict()))
    assert load_table(p) == HOROWITZ_45NM
    assert isinstance(load_table(p), EnergyTable)


# ----------------------------------------------------------------------------- sigma-delta


def test_sigma_delta_energy_from_spike_counts():
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin, nn.ReLU())
    T = 4
    ops = torch.tensor([[[6.0, 2.0], [0.0, 0.0], [3.0, 1.0], [0.0, 4.0]]])  # (L=1, T, B)
    run = SimpleNamespace(ops=ops, ops_nonzero=ops, layer_names=["0:Linear"], op_kind="add")
    e = estimate_sigma_delta(model, run, (4,))
    (l,) = e.layers
    adds = 2.0 + 2 * 4 + 3 / T  # mean spike adds + quantizer (2 per input) + bias once per T
    assert e.unit == "frame" and l.mults == 0
    assert l.adds == pytest.approx(adds)
    assert l.compute_j == pytest.approx(adds * 0.9 * PJ + 3 * 0.1 * PJ)
    state = 4 * 4 * 32 + 2 * 3 * 32   # quantizer prev/phi r+w, sigma r+w
    assert l.act_bits == 4 * 32 + 3 * 32 + state
    with pytest.raises(ValueError, match="1 weight layers but the model has 2"):
        estimate_sigma_delta(nn.Sequential(lin, nn.Linear(3, 2)), run, (4,))


def test_sigma_delta_with_kwh_spike():
    from kwh import spike
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(1, 2, 1, 4, 4).repeat(6, 1, 1, 1, 1)  # (T, B, 1, 4, 4) static frames
    run = spike.convert(model, 8.0)(x)
    e = estimate_sigma_delta(model, run, (1, 4, 4))
    dense = estimate_energy(model, (1, 4, 4))
    assert e.compute_j < dense.compute_j  # static input: no spikes after the first frame
    assert e.layers[0].adds >= float(run.ops[0].mean())

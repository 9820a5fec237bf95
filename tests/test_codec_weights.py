"""The state layout of the .kwh file: any model compressed with mode="weights", saved as its
named tensors and loaded back into a model the caller builds.

Oracle: the in-memory compressed model. A file loaded into a freshly built model of the same
class gives the same tensors bit for bit, the same kwh attributes and summary, and the same
outputs exactly (torch.equal).
"""

from __future__ import annotations

import copy
import json
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kwh
from kwh.compress.weights import WeightsSummary
from kwh.errors import FormatError, ModelError
from kwh.format import codec
from kwh.format import tensors as ft
from kwh_files import reseal, split_header

from any_models import Branchy, SkipSequential, Twice, random_posterior_


class ResNetLike(nn.Module):
    """A stem (conv-BN-ReLU), a residual block with its own BatchNorm, pooling, a head."""

    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.c1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c2(F.relu(self.bn1(self.c1(x)))))  # the residual addition
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def skip_sequential() -> SkipSequential:
    return SkipSequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


def compressed(factory=ResNetLike, prior: str = "group-nj", **kwargs) -> nn.Module:
    torch.manual_seed(5)
    model = factory()
    kwh.bayesify_(model, prior)
    random_posterior_(model)
    return kwh.compress(model.eval(), mode="weights", **kwargs)


@pytest.fixture(scope="module")
def small() -> nn.Module:
    return compressed()


def x_for(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    shape = {ResNetLike: (5, 1, 8, 8), Mixed: (5, 4)}.get(type(model), (5, 6))
    return torch.randn(*shape, generator=gen)


def assert_same(a: nn.Module, b: nn.Module) -> None:
    """Same class, same tensors bit for bit, same kwh attributes, same outputs exactly."""
    assert type(a) is type(b) and not b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    ma, mb = dict(a.named_modules()), dict(b.named_modules())
    for name, m in ma.items():
        for attr in ("kwh_bits", "kwh_frac_bits"):
            assert getattr(m, attr, "absent") == getattr(mb[name], attr, "absent"), name
    x = x_for(a)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b(x))


def fp32_state_bytes(model: nn.Module) -> int:
    return sum(4 * t.numel() for t in model.state_dict().values())


# ------------------------------------------------------------------ round trips

def test_resnet_round_trip_into_a_fresh_model(small, tmp_path):
    path = tmp_path / "resnet.kwh"
    size = kwh.save(small, path)
    data = path.read_bytes()
    assert size == len(data) == len(codec.encode(small))
    assert struct.unpack_from("<H", data, 8)[0] == codec.STATE_VERSION == 2
    header = codec.read_header(path)
    assert header["layout"] == "state" and header["model_class"] == "ResNetLike"
    names = [t["name"] for sec in header["sections"] for t in sec["tensors"]]
    assert names == list(small.state_dict())  # every tensor, in state_dict order
    skeleton = ResNetLike()
    loaded = kwh.load(path, model=skeleton)
    assert loaded is skeleton
    assert_same(small, loaded)
    quantized = {n: (m.kwh_bits, m.kwh_frac_bits) for n, m in loaded.named_modules()
                 if hasattr(m, "kwh_bits")}
    assert set(quantized) == {"stem.0", "c1", "c2", "head"}
    assert all(bits < 32 for bits, _ in quantized.values())
    assert isinstance(loaded.kwh_summary, WeightsSummary)
    assert json.dumps(loaded.kwh_summary, sort_keys=True) == json.dumps(small.kwh_summary,
                                                                        sort_keys=True)
    assert str(loaded.kwh_summary) == str(small.kwh_summary)
    assert loaded.stem[1].num_batches_tracked.item() == 123
    # pruned groups are stored as zeros, quantized weights packed at their bits
    assert size < fp32_state_bytes(small)
    assert codec.encode(small) == codec.encode(small)  # deterministic bytes


@pytest.mark.parametrize("prior", ["group-horseshoe", "log-uniform"])
@pytest.mark.parametrize("factory", [Twice, Branchy, skip_sequential])
def test_other_models_round_trip(factory, prior):
    small = compressed(factory, prior)
    loaded = codec.decode(codec.encode(small), model=factory())
    assert_same(small, loaded)


def test_unquantized_weights_round_trip_as_marked_float32():
    small = compressed(quantize=False)
    data = codec.encode(small)
    loaded = codec.decode(data, model=ResNetLike())
    assert_same(small, loaded)
    assert (loaded.c1.kwh_bits, loaded.c1.kwh_frac_bits) == (32, None)
    s = small.kwh_summary  # nothing to measure: float32 weights
    assert s["payload_bytes"] is None and s["rates"]["max_compression"] is None
    assert s["rates"]["max_compression_source"].startswith("not measured")


def test_a_model_built_on_the_meta_device_is_filled(small):
    with torch.device("meta"):
        skeleton = ResNetLike()
    loaded = codec.decode(codec.encode(small), model=skeleton)
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert all(isinstance(p, nn.Parameter) for p in loaded.parameters())
    assert_same(small, loaded)


def test_payload_and_max_compression_are_measured(small, tmp_path):
    path = tmp_path / "m.kwh"
    size = kwh.save(small, path)
    rep = codec.file_report(path)
    s = small.kwh_summary
    assert rep["layout"] == "state" and rep["model_class"] == "ResNetLike"
    assert rep["file_bytes"] == size == (rep["preamble_bytes"] + rep["header_bytes"]
                                         + rep["payload_bytes"] + rep["trailer_bytes"])
    assert rep["payload_bytes"] == codec.payload_bytes(small) == s["payload_bytes"] == sum(
        sec["stored_bytes"] for sec in rep["sections"])
    state = small.state_dict()
    assert rep["elements"] == sum(t.numel() for t in state.values())
    assert rep["nonzero"] == sum(int(t.count_nonzero()) for t in state.values())
    assert rep["dense_fp32_bytes"] == fp32_state_bytes(small)
    by_module = {sec["module"]: sec for sec in rep["sections"]}
    assert set(by_module) == {"stem.0", "stem.1", "c1", "bn1", "c2", "head"}
    for layer in s["layers"]:
        sec = by_module[layer["name"]]
        assert (sec["bits"], sec["frac_bits"]) == (layer["bits"], layer["frac_bits"])
        assert sec["tensors"][0]["encoding"] in ("dense", "bitmap", "rindex", "arith")
        assert sec["tensors"][0]["nonzero"] == layer["nonzero"]
    bn = by_module["stem.1"]["tensors"]
    assert [t["encoding"] in ft.FLOAT_ENCODINGS for t in bn] == [True] * 4 + [False]
    assert bn[-1]["encoding"] == "int64"
    rates = s["rates"]
    assert rates["max_compression"] == 32 * s["weights_original"] / (8 * s["payload_bytes"])
    assert "state_dict" in rates["max_compression_source"]
    assert "weights_original" in rates["max_compression_source"]


# ------------------------------------------------------------------ the model= argument

def test_a_state_file_needs_the_model(small, tmp_path):
    path = tmp_path / "m.kwh"
    kwh.save(small, path)
    with pytest.raises(ModelError, match=r"holds the weights of a ResNetLike.*pass "
                                         r"model=ResNetLike\(\.\.\.\) to kwh\.load"):
        kwh.load(path)
    with pytest.raises(TypeError, match=r"not its class: pass model=ResNetLike\(\.\.\.\)"):
        kwh.load(path, model=ResNetLike)
    with pytest.raises(TypeError, match="nn.Module instance"):
        kwh.load(path, model={"stem.0.weight": torch.zeros(1)})


def test_a_chain_file_takes_no_model(tmp_path):
    chain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    path = tmp_path / "chain.kwh"
    kwh.save(chain, path)
    assert path.read_bytes()[8:10] == struct.pack("<H", codec.CHAIN_VERSION)
    assert "layout" not in codec.read_header(path)
    with pytest.raises(ModelError, match=r"whole nn.Sequential chain.*without model="):
        kwh.load(path, model=nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    assert type(kwh.load(path)) is nn.Sequential


def _untouched(model: nn.Module):
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def check():
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    return check


class Extra(ResNetLike):
    def __init__(self):
        super().__init__()
        self.extra = nn.Linear(2, 2)


class NoHeadBias(ResNetLike):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 4, bias=False)


def bayesified() -> ResNetLike:
    model = ResNetLike()
    kwh.bayesify_(model, "group-nj")
    return model


@pytest.mark.parametrize("skeleton, match", [
    (lambda: ResNetLike(width=6), r"do not fit the ResNetLike given: different: "
                                  r"stem\.0\.weight \(file \[8, 1, 3, 3\], model \[6, 1, 3, 3\]\)"),
    (lambda: ResNetLike(classes=5), r"different: head\.weight \(file \[4, 8\], model \[5, 8\]\)"),
    (Extra, r"missing from the file: extra\.weight, extra\.bias"),
    (NoHeadBias, r"not in the NoHeadBias: head\.bias"),
    (lambda: bayesified(), r"missing from the file: .*prior.*not in the ResNetLike: "
                           r"stem\.0\.weight"),
])
def test_a_model_that_does_not_fit_is_refused_and_left_as_it_was(small, skeleton, match):
    model = skeleton()
    check = _untouched(model)
    with pytest.raises(ModelError, match=match):
        codec.decode(codec.encode(small), model=model)
    check()
    assert not hasattr(model, "kwh_summary")


def test_tensor_kinds_and_ranges_must_fit():
    class Buffers(nn.Module):
        def __init__(self, flag_dtype=torch.bool):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("flags", torch.tensor([True, False, True], dtype=flag_dtype))

        def forward(self, x):
            return self.fc(x * self.flags)

    src = Buffers(torch.int64)
    src.flags.copy_(torch.tensor([1, 2, 0]))
    src.fc.kwh_bits, src.fc.kwh_frac_bits = 32, None
    with pytest.raises(ModelError, match=r"different: flags \(file values do not fit the "
                                         r"model's torch\.bool\)"):
        codec.decode(codec.encode(src), model=Buffers())
    src.flags.copy_(torch.tensor([1, 0, 1]))
    loaded = codec.decode(codec.encode(src), model=Buffers())
    assert loaded.flags.dtype == torch.bool and loaded.flags.tolist() == [True, False, True]
    src.flags = torch.tensor([0.5, 1.0, 0.0])
    with pytest.raises(ModelError, match=r"flags \(file float32, model torch\.bool\)"):
        codec.decode(codec.encode(src), model=Buffers())


# ------------------------------------------------------------------ what save stores

class Mixed(nn.Module):
    """Quantized, marked-float32 and plain layers; integer, bool, half and double buffers;
    one module registered under two names."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 2)
        self.alias = self.a
        self.register_buffer("count", torch.tensor(7, dtype=torch.int32))
        self.register_buffer("mask", torch.tensor([True, False, True, True]))
        self.register_buffer("scale16", torch.tensor([0.5, -1.25], dtype=torch.float16))
        self.register_buffer("shift64", torch.tensor([0.25, 3.0], dtype=torch.float64))

    def forward(self, x):
        h = F.relu(self.b(self.alias(x * self.mask)))
        return self.c(h) * self.scale16.float().sum() + self.shift64.float().sum()


def mixed() -> Mixed:
    torch.manual_seed(1)
    m = Mixed()
    with torch.no_grad():
        m.a.weight.copy_(torch.randint(-8, 8, (4, 4)) / 4)
        m.a.weight[0] = 0
    m.a.kwh_bits, m.a.kwh_frac_bits = 5, 2
    m.b.kwh_bits, m.b.kwh_frac_bits = 32, None
    return m.eval()


def test_every_tensor_kind_round_trips_exactly():
    src = mixed()
    header = split_header(codec.encode(src))
    metas = {t["name"]: t for sec in header["sections"] for t in sec["tensors"]}
    assert metas["a.weight"]["quant"] == {"bits": 5, "frac_bits": 2}
    assert metas["alias.weight"]["quant"] == {"bits": 5, "frac_bits": 2}
    assert metas["b.weight"]["quant"] == {"bits": 32, "frac_bits": None}
    assert metas["b.weight"]["encoding"] in ("float32", "fixed")  # marked float: stored exactly
    assert metas["c.weight"]["quant"] is None
    assert metas["count"]["encoding"] == "int64" and metas["count"]["shape"] == []
    assert metas["mask"]["encoding"] == "int64"
    assert {metas["scale16"]["encoding"], metas["shift64"]["encoding"]} <= {"float32", "fixed"}
    skeleton = Mixed()
    skeleton.c.kwh_bits, skeleton.c.kwh_frac_bits = 4, 0  # stale: the file says plain
    skeleton.kwh_summary = {"stale": True}
    loaded = codec.decode(codec.encode(src), model=skeleton)
    assert_same(src, loaded)
    assert loaded.alias is loaded.a and not hasattr(loaded.c, "kwh_bits")
    assert not hasattr(loaded, "kwh_summary")
    assert loaded.count.dtype == torch.int32 and loaded.scale16.dtype == torch.float16


def test_layout_is_chosen_from_the_model():
    chain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    chain[0].kwh_bits, chain[0].kwh_frac_bits = 32, None
    assert codec.encode(chain)[8] == codec.CHAIN_VERSION  # a chain stays a chain
    assert codec.encode(chain, layout="state")[8] == codec.STATE_VERSION
    chain.kwh_summary = {"mode": "weights"}  # what kwh.compress(..., mode="weights") returns
    assert codec.encode(chain)[8] == codec.STATE_VERSION
    assert codec.encode(mixed())[8] == codec.STATE_VERSION  # quantized layers, not a chain
    with pytest.raises(ModelError, match="plain nn.Sequential.*layout='state'"):
        codec.encode(Twice())  # nothing kwh-quantized: no reason to pick the state layout
    with pytest.raises(ModelError, match="plain nn.Sequential"):
        codec.encode(mixed(), layout="chain")
    with pytest.raises(ValueError, match="layout='tree' is invalid"):
        codec.encode(chain, layout="tree")
    # the same tensors in the same groups: the two layouts' payloads are equal
    assert codec.payload_bytes(chain, layout="chain") == codec.payload_bytes(chain)


def test_save_refuses_what_the_state_layout_cannot_hold():
    m = mixed()
    m.shift64 = torch.tensor([0.1], dtype=torch.float64)  # 0.1 is not a float32
    with pytest.raises(ModelError, match=r"'shift64' \(torch.float64\) holds values float32 "
                                         r"cannot represent exactly"):
        codec.encode(m)
    m = mixed()
    m.shift64 = torch.tensor([1 + 2j])
    with pytest.raises(ModelError, match="dtype torch.complex64"):
        codec.encode(m)
    m = mixed()
    with torch.no_grad():
        m.a.weight[1, 1] = 0.3
    with pytest.raises(ModelError, match=r"'a.weight'.*not an integer multiple of 2\*\*-2"):
        codec.encode(m)
    m = mixed()
    m.c.bias.data[0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        codec.encode(m)

    class WithExtraState(Mixed):
        def get_extra_state(self):
            return {"anything": 1}

        def set_extra_state(self, state):
            pass
    with pytest.raises(ModelError, match="_extra_state' is a dict, not a tensor"):
        codec.encode(WithExtraState(), layout="state")


# ------------------------------------------------------------------ bad files



def test_every_corrupt_byte_raises_format_error(small):
    data = codec.encode(small)
    for pos in range(0, len(data), 3):
        bad = bytearray(data)
        bad[pos] ^= 1 << (pos % 8)
        for model in (None, ResNetLike()):
            with pytest.raises(FormatError):
                codec.decode(bytes(bad), model=model)
    for n in range(0, len(data), 97):
        with pytest.raises(FormatError, match="truncated|magic"):
            codec.decode(data[:n], model=ResNetLike())


def _edit(data: bytes, edit) -> bytes:
    header = split_header(data)
    edit(header)
    return reseal(data, header, codec.STATE_VERSION)


def _tensor(header: dict, name: str) -> dict:
    return next(t for sec in header["sections"] for t in sec["tensors"] if t["name"] == name)


@pytest.mark.parametrize("edit, match", [
    (lambda h: h.update(layout="chain"), r"layout='chain' is not one of \['state'\]"),
    (lambda h: h.pop("model_class"), r"lacks the field\(s\) \['model_class'\]"),
    (lambda h: h.update(model_class="A\nB"), "model_class must be a printable string"),
    (lambda h: _tensor(h, "stem.0.bias").update(name="stem.0.weight"), "appears twice"),
    (lambda h: _tensor(h, "stem.0.bias").update(name="x" * 513), "printable string of 1..512"),
    (lambda h: _tensor(h, "stem.0.bias").update(quant={"bits": 32, "frac_bits": None}),
     "only the weight of a Linear / Conv2d"),
    (lambda h: _tensor(h, "head.weight").update(encoding="int64"), "encoding='int64' is not one"),
    (lambda h: _tensor(h, "stem.1.num_batches_tracked").update(shape=[1] * 9),
     "list of at most 8 sizes"),
    (lambda h: _tensor(h, "head.bias").update(shape=[100000, 100000]),
     r"claims at least 10000\d{6} tensor elements, more than the limit"),
    (lambda h: h["sections"][0].update(tensors=[]), "a section holds at least one tensor"),
    (lambda h: h["sections"][0].update(raw_bytes=10**6), "but its tensors take"),
])
def test_hostile_state_headers_are_refused(small, edit, match):
    with pytest.raises(FormatError, match=match):
        codec.decode(_edit(codec.encode(small), edit), model=ResNetLike())


def test_headers_are_read_by_the_version_they_come_with(small):
    state = codec.encode(small)
    chain = codec.encode(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(FormatError, match=r"lacks the field\(s\) \['modules'\]"):
        codec.decode(reseal(state, split_header(state), codec.CHAIN_VERSION))
    with pytest.raises(FormatError, match=r"lacks the field\(s\) \['layout', 'model_class'"):
        codec.decode(reseal(chain, split_header(chain), codec.STATE_VERSION))
    again = reseal(state, split_header(state), codec.STATE_VERSION)
    assert codec.decode(again, model=ResNetLike()) is not None
    bad = copy.deepcopy(split_header(state))
    weight = _tensor(bad, "c2.weight")
    if weight["encoding"] == "arith":  # the section no longer adds up
        weight["bytes"] += 1
    else:
        weight["quant"]["bits"] += 1
    # the raw size the tensors imply no longer matches the section's bytes
    with pytest.raises(FormatError, match="header says|its header describes"):
        codec.decode(reseal(state, bad, codec.STATE_VERSION), model=ResNetLike())


def test_kwh_inspect_reads_a_state_file(small, tmp_path, capsys):
    from cli_run import run_main
    path = tmp_path / "resnet.kwh"
    kwh.save(small, path)
    code, out, err = run_main(["inspect", str(path)], capsys)
    assert code == 0, err
    assert "architecture unchanged" in out and "take" in out and "x larger" in out
    code, out, err = run_main(["inspect", str(path), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["summary"]["mode"] == "weights"

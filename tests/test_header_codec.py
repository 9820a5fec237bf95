"""The compact header: header codec 2 (zstd with the preset dictionary) and sections that leave
out what the loader can infer (raw_bytes, a raw section's stored_bytes, crc32).

Oracles: the dictionary's SHA-256 as docs/format.md states it, an independent zstd decoder
(the zstandard module given the dictionary bytes), files written in the older, explicit form
(every section with all four fields) and the loader's messages for hand-broken headers.
"""

from __future__ import annotations

import copy
import hashlib
import pathlib
import re
import zlib

import pytest
import torch
import zstandard
from torch import nn

from kwh.errors import FormatError
from kwh.format import codec
from kwh.format.header_dict import HEADER_DICTIONARY, HEADER_DICTIONARY_SHA256
from kwh_files import reseal, split_header

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "format.md"


def _quantized(layer: nn.Module, bits: int, frac_bits: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-(2 ** (bits - 1)) + 1, 2 ** (bits - 1), layer.weight.shape, generator=gen)
    q[torch.rand(layer.weight.shape, generator=gen) < 0.8] = 0
    with torch.no_grad():
        layer.weight.copy_(q * 2.0 ** -frac_bits)
    layer.kwh_bits, layer.kwh_frac_bits = bits, frac_bits
    return layer


@pytest.fixture(scope="module")
def chain() -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
              nn.Flatten(), nn.Linear(8 * 6 * 6, 10)]
    for i, layer in enumerate(layers):
        if hasattr(layer, "weight"):
            _quantized(layer, 6, 4, i)
    return nn.Sequential(*layers).eval()


def _sections(header: dict) -> list[dict]:
    return [m["section"] for m in header["modules"] if m["section"]]


def test_the_dictionary_is_the_documented_one():
    assert hashlib.sha256(HEADER_DICTIONARY).hexdigest() == HEADER_DICTIONARY_SHA256
    doc = DOC.read_text()
    assert HEADER_DICTIONARY_SHA256 in doc
    assert re.search(rf"the {len(HEADER_DICTIONARY):,} ASCII bytes", doc)


def test_a_header_is_stored_with_the_dictionary_and_read_back(chain):
    data = codec.encode(chain, input_shape=(1, 6, 6))
    _, version, hcodec, _, hstored, hraw, _ = codec.PREAMBLE.unpack_from(data)
    assert (version, hcodec) == (codec.CHAIN_VERSION, codec.HEADER_DICT_CODEC)
    frame = data[codec.PREAMBLE.size:codec.PREAMBLE.size + hstored]
    preset = zstandard.ZstdCompressionDict(HEADER_DICTIONARY,
                                           dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    raw = zstandard.ZstdDecompressor(dict_data=preset).decompress(frame)
    assert len(raw) == hraw
    plain = zstandard.ZstdCompressor(level=codec.DEFAULT_LEVEL).compress(raw)
    assert hstored < len(plain)  # the dictionary pays
    with pytest.raises(zstandard.ZstdError):  # and is needed
        zstandard.ZstdDecompressor().decompress(frame)
    x = torch.randn(3, 1, 6, 6)
    assert torch.equal(codec.decode(data)(x), chain(x))


def test_sections_leave_out_what_the_loader_infers(chain):
    data = codec.encode(chain, input_shape=(1, 6, 6))
    for sec in _sections(split_header(data)):
        assert "crc32" not in sec and "raw_bytes" not in sec
        assert ("stored_bytes" in sec) == (sec["codec"] == "zstd")


def _explicit(data: bytes) -> tuple[dict, list[dict]]:
    """The header of ``data`` with every section's four fields stated, as older files have them."""
    header = split_header(data)
    hstored = codec.PREAMBLE.unpack_from(data)[4]
    pos = codec.PREAMBLE.size + hstored
    plan = codec._check_header(copy.deepcopy(header), 1 << 40)
    for sec, (_, layer) in zip(_sections(header), codec._stored_sections(plan)):
        stored = data[pos:pos + layer.stored_bytes]
        pos += layer.stored_bytes
        sec.update(raw_bytes=layer.raw_bytes, stored_bytes=layer.stored_bytes,
                   crc32=zlib.crc32(stored))
    return header, _sections(header)


def test_files_with_every_field_stated_load_and_their_fields_are_checked(chain):
    data = codec.encode(chain, input_shape=(1, 6, 6))
    x = torch.randn(2, 1, 6, 6)
    header, secs = _explicit(data)
    assert torch.equal(codec.decode(reseal(data, header, codec.CHAIN_VERSION))(x), chain(x))
    for field, value, match in [("crc32", None, "fails its CRC-32"),
                                ("raw_bytes", 1, "but its tensors take"),
                                ("stored_bytes", 1, "stores its .* bytes as they are")]:
        bad = copy.deepcopy(header)
        sec = _sections(bad)[0]
        sec[field] = (sec[field] ^ 1) if value is None else sec[field] + value
        with pytest.raises(FormatError, match=match):
            codec.decode(reseal(data, bad, codec.CHAIN_VERSION))


def test_a_zstd_section_must_state_its_stored_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64).repeat(64, 1))  # repeated rows: zstd pays
    data = codec.encode(model, input_shape=(64,))
    header = split_header(data)
    sec = header["modules"][0]["section"]
    assert sec["codec"] == "zstd" and "stored_bytes" in sec
    assert torch.equal(codec.decode(data)[0].weight, model[0].weight)
    del sec["stored_bytes"]
    with pytest.raises(FormatError, match="a zstd section states its stored_bytes"):
        codec.decode(reseal(data, header, codec.CHAIN_VERSION))


def test_a_header_codec_must_match_its_frame(chain):
    data = bytearray(codec.encode(chain, input_shape=(1, 6, 6)))
    data[10] = 1  # a frame made with the dictionary, declared as plain zstd
    body = bytes(data[:-codec.TRAILER_BYTES])
    with pytest.raises(FormatError, match="zstd data is corrupt"):
        codec.decode(body + hashlib.sha256(body).digest())
    data[10] = 3
    body = bytes(data[:-codec.TRAILER_BYTES])
    with pytest.raises(FormatError, match=r"unknown header codec 3 .*\(upgrade kwh\)"):
        codec.decode(body + hashlib.sha256(body).digest())


def test_a_layers_tensor_names_and_shapes_are_implied_and_checked_when_stated(chain):
    data = codec.encode(chain, input_shape=(1, 6, 6))
    header = split_header(data)
    metas = [t for sec in _sections(header) for t in sec["tensors"]]
    assert metas and all("name" not in t and "shape" not in t for t in metas)
    x = torch.randn(2, 1, 6, 6)
    stated = copy.deepcopy(header)  # as older files state them
    for m in stated["modules"]:
        if m["section"]:
            conv = nn.Conv2d(m["args"]["in_channels"], m["args"]["out_channels"], 3) \
                if m["type"] == "Conv2d" else nn.Linear(m["args"]["in_features"],
                                                        m["args"]["out_features"])
            for t, name in zip(m["section"]["tensors"], ("weight", "bias")):
                t.update(name=name, shape=list(getattr(conv, name).shape))
    assert torch.equal(codec.decode(reseal(data, stated, codec.CHAIN_VERSION))(x), chain(x))
    for field, value, match in [("name", "bias", "expected 'weight'"),
                                ("shape", [8, 1, 3, 4], "shape does not match")]:
        bad = copy.deepcopy(header)
        _sections(bad)[0]["tensors"][0][field] = value
        with pytest.raises(FormatError, match=match):
            codec.decode(reseal(data, bad, codec.CHAIN_VERSION))


class _Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x


def test_a_graph_node_without_inputs_reads_the_node_before():
    torch.manual_seed(0)
    model = _Skip().eval()
    data = codec.encode(model, input_shape=(4,), layout="graph")
    header = split_header(data)
    stated = [n.get("inputs") for n in header["nodes"]]
    assert stated[:3] == [None, None, None] and stated[-1] is not None  # a, relu, b; add
    x = torch.randn(3, 4)
    assert torch.equal(codec.decode(data)(x), model(x))
    explicit = copy.deepcopy(header)
    for i, n in enumerate(explicit["nodes"]):
        n.setdefault("inputs", [i - 1])
    assert torch.equal(codec.decode(reseal(data, explicit, codec.GRAPH_VERSION))(x), model(x))
    rewired = copy.deepcopy(header)
    rewired["nodes"][-1]["inputs"] = [2, 2]  # b(...) + b(...): another network, not refused
    assert not torch.equal(codec.decode(reseal(data, rewired, codec.GRAPH_VERSION))(x), model(x))

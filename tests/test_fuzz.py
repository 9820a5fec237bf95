"""Hostile .kwh files: every flipped byte, every truncation, extensions, huge claims, and fuzzing.

The fuzzer knows the format: besides blind byte damage (caught by the checksums) it edits the
JSON header, the decompressed section blobs and the zstd frames and then re-seals the file
with valid checksums, as an attacker would, so that the parser and every field check are
exercised, not only the checksums. Its seeds are files of all three layouts: chains (version
1), state files (version 2, any model's named tensors) and graphs (version 3, layers and
functions wired as a DAG). Oracle: ``decode`` either returns a model that runs (a chain or a
graph on the input shape it declares; a state file in the model built for it), or raises
FormatError with one of its own messages (never the "unexpected" safety net,
never another exception type), within a per-case time bound. The one other outcome is for a
state file that passed every check of the file but whose tensors do not fit the model built
for its seed (a renamed or reshaped tensor): a ModelError saying so.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import json
import math
import random
import resource
import signal
import time
import tracemalloc
import zlib

import pytest
import torch
import torch.nn.functional as F
import zstandard
from torch import fx, nn

from kwh.errors import FormatError, ModelError
from kwh.format import GraphNet, bitpack, codec
from kwh.format import modules as fm
from kwh.format import ops
from kwh.format.header_dict import HEADER_DICTIONARY
from kwh_files import split_header

PRE = codec.PREAMBLE
PRESET = zstandard.ZstdCompressionDict(HEADER_DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
CASE_SECONDS = 5.0  # a case slower than this counts as a hang
MAX_FORWARD_ELEMENTS = 10**6  # run a loaded model only when its activations are this small


# ------------------------------------------------------------------ seed files

def _quantize(layer: nn.Module, bits: int, frac_bits: int, sparsity: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = bitpack.int_range(bits)
    q = torch.randint(lo, hi + 1, layer.weight.shape, generator=gen)
    q[torch.rand(layer.weight.shape, generator=gen) < sparsity] = 0
    with torch.no_grad():
        layer.weight.copy_(q * 2.0**-frac_bits)
    layer.kwh_bits, layer.kwh_frac_bits = bits, frac_bits


def mlp_seed() -> bytes:
    """Bitmap, relative-index and marked-float32 weights; LeakyReLU; a summary."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8),
                      nn.LeakyReLU(0.1), nn.Linear(8, 3))
    _quantize(m[1], 6, 4, 0.5, 1)
    _quantize(m[3], 4, 3, 0.97, 2)
    m[5].kwh_bits, m[5].kwh_frac_bits = 32, None
    m.kwh_summary = {"input_shape": [12], "arch": "12-16-8-3", "rates": [1.5, 2.0]}
    return codec.encode(m.eval())


def cnn_seed() -> bytes:
    """Dense low-bit conv, BatchNorm, max-pool, a second conv, Flatten, Linear, Softmax."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(3, 4, 2, bias=False), nn.Flatten(),
                      nn.Linear(4, 5), nn.Softmax(dim=1))
    _quantize(m[0], 5, 3, 0.0, 3)
    _quantize(m[4], 3, 2, 0.3, 4)
    _quantize(m[6], 2, 1, 0.0, 5)
    return codec.encode(m.eval(), input_shape=(1, 10, 10))


def sparse_seed() -> bytes:
    """A relative-index layer whose last non-zero is near the end, and an all-zero layer."""
    m = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    q = torch.zeros(16 * 64)
    q[[0, 5, 100, 101, 500, 777, 900, 1000, 1020]] = torch.tensor(
        [3.0, -4, 15, -16, 1, 2, -1, 7, 9])
    with torch.no_grad():
        m[0].weight.copy_(q.reshape(16, 64) / 4)
        m[2].weight.zero_()
    m[0].kwh_bits, m[0].kwh_frac_bits = 5, 2
    m[2].kwh_bits, m[2].kwh_frac_bits = 2, 0
    return codec.encode(m.eval(), input_shape=(64,))


class TinyRes(nn.Module):
    """A residual block with BatchNorm: a model only the state layout can hold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.mix = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.head((h + self.mix(h)).mean((2, 3)))


class Shared(nn.Module):
    """One sparse layer registered twice and called twice, a float32 layer, a bool buffer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.alias = self.fc
        self.out = nn.Linear(8, 3)
        self.register_buffer("mask", torch.tensor([True, True, False, True] * 2))

    def forward(self, x):
        return self.out(F.relu(self.alias(F.relu(self.fc(x * self.mask)))))


def res_seed() -> bytes:
    """Bitmap and dense conv weights, BatchNorm statistics and its int64 counter, a summary."""
    torch.manual_seed(0)
    m = TinyRes()
    _quantize(m.conv, 5, 3, 0.4, 6)
    _quantize(m.mix, 3, 1, 0.0, 7)
    _quantize(m.head, 4, 2, 0.5, 8)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.num_batches_tracked.fill_(9)
    m.kwh_summary = {"mode": "weights", "model": "TinyRes", "nonzero": 20}
    return codec.encode(m.eval())


def shared_seed() -> bytes:
    """A relative-index weight stored under two names, marked float32, a bool buffer."""
    m = Shared()
    q = torch.zeros(64)
    q[[3, 40, 63]] = torch.tensor([1.0, -2, 3])
    with torch.no_grad():
        m.fc.weight.copy_(q.reshape(8, 8) / 2)
    m.fc.kwh_bits, m.fc.kwh_frac_bits = 3, 1
    m.out.kwh_bits, m.out.kwh_frac_bits = 32, None
    return codec.encode(m.eval())


class Branches(nn.Module):
    """A residual addition, a concatenation of two branches, pooling and means: a graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.mix = nn.Conv2d(2, 2, 1, bias=False)
        self.side = nn.Conv2d(2, 1, 3, stride=2, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = h + self.mix(h)
        h = torch.cat([F.max_pool2d(h, 2), self.side(h)], 1)
        return self.head(torch.cat([h.mean((2, 3)), F.adaptive_avg_pool2d(h, 1).flatten(1)], 1))


def graph_seed() -> bytes:
    """A traced residual, branching CNN: dense, bitmap and marked-float32 layers, BatchNorm,
    add, cat, max and average pooling, mean, flatten, an input normalization."""
    torch.manual_seed(0)
    m = Branches()
    _quantize(m.conv, 4, 2, 0.0, 9)
    _quantize(m.mix, 3, 1, 0.5, 10)
    m.side.kwh_bits, m.side.kwh_frac_bits = 32, None
    _quantize(m.head, 5, 3, 0.3, 11)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    return codec.encode(fx.symbolic_trace(m.eval()), input_shape=(1, 4, 4),
                        input_normalization={"mean": [0.1], "std": [0.3]})


def chain_graph_seed() -> bytes:
    """A chain stored as a graph: an MLP with a relative-index layer and a summary."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    _quantize(m[1], 6, 4, 0.9, 12)
    _quantize(m[3], 2, 0, 0.0, 13)
    m.kwh_summary = {"arch": "6-8-2"}
    return codec.encode(m.eval(), input_shape=(2, 3), layout="graph")


def vit_seed() -> bytes:
    """A one-block vision transformer as a graph: LayerNorm, PositionEmbedding, reshape,
    transpose, matmul, mul_scalar, Softmax, GELU, flatten(2, 3), mean; low-bit Linears."""
    from kwh.models import vit_tiny
    torch.manual_seed(0)
    m = vit_tiny(num_classes=3, image_size=4, patch=2, dim=4, depth=1, heads=2, mlp=4)
    for k, layer in enumerate(x for x in m.modules() if isinstance(x, nn.Linear)):
        _quantize(layer, 3, 2, 0.3, 20 + k)
    return codec.encode(m.eval())


def arith_seed() -> bytes:
    """A graph whose weights and a bias are arithmetic-coded (arith, fixed-arith): small,
    skewed integers, as a compressed model's are."""
    torch.manual_seed(14)  # the geometric samples
    gen = torch.Generator().manual_seed(14)
    m = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))
    with torch.no_grad():
        for layer, keep in ((m[0], 0.3), (m[2], 0.6)):
            q = torch.distributions.Geometric(torch.tensor(0.5)).sample(layer.weight.shape) + 1
            q = q.clamp(max=31) * (torch.rand(layer.weight.shape, generator=gen) * 2 - 1).sign()
            q[torch.rand(layer.weight.shape, generator=gen) >= keep] = 0
            layer.weight.copy_(q / 8)
            layer.kwh_bits, layer.kwh_frac_bits = 6, 3
        bias = torch.randint(-3, 4, (24,), generator=gen).float()
        bias[0] = 2000.0  # 12 magnitude bits for all: the packed integers waste most of them
        m[0].bias.copy_(bias / 256)
    return codec.encode(m.eval(), input_shape=(32,), layout="graph")


SEEDS = {"mlp": mlp_seed(), "cnn": cnn_seed(), "sparse": sparse_seed(), "res": res_seed(),
         "shared": shared_seed(), "graph": graph_seed(), "graph_mlp": chain_graph_seed(),
         "graph_vit": vit_seed(), "graph_arith": arith_seed()}
STATE_MODELS = {"res": (TinyRes, (1, 5, 5)), "shared": (Shared, (8,))}  # class, input shape
LAYOUT_OF = {codec.CHAIN_VERSION: "chain", codec.STATE_VERSION: "state",
             codec.GRAPH_VERSION: "graph"}


# ------------------------------------------------------------------ taking files apart, re-sealing

def section_entries(header: dict) -> list[dict]:
    """The section descriptions of a chain, state or graph header, in file order."""
    if header.get("layout") == "graph":
        return [node["section"] for node in header["nodes"] if node["section"]]
    if "layout" in header:
        return header["sections"]
    return [entry["section"] for entry in header["modules"] if entry["section"]]


def version_of(data: bytes) -> int:
    return PRE.unpack_from(data)[1]


def split(data: bytes) -> tuple[dict, list[bytes]]:
    """A valid file -> its JSON header and its stored sections (their sizes as the loader
    reads them: a raw section's is implied by its tensors)."""
    _, _, _, _, hstored, _, _ = PRE.unpack_from(data)
    header = split_header(data)
    check = {codec.CHAIN_VERSION: codec._check_header, codec.STATE_VERSION:
             codec._check_state_header, codec.GRAPH_VERSION: codec._check_graph_header}
    sections, pos = [], PRE.size + hstored
    for raw_bytes, stored_bytes in section_sizes(data, header):
        sections.append(data[pos:pos + stored_bytes])
        pos += stored_bytes
    return header, sections


def section_sizes(data: bytes, header: dict | None = None) -> list[tuple[int, int]]:
    """(raw, stored) bytes of a valid file's sections, as the loader reads them."""
    check = {codec.CHAIN_VERSION: codec._check_header, codec.STATE_VERSION:
             codec._check_state_header, codec.GRAPH_VERSION: codec._check_graph_header}
    plan = check[version_of(data)](copy.deepcopy(header or split_header(data)), 1 << 62)
    return [(sec.raw_bytes, sec.stored_bytes) for _, sec in codec._stored_sections(plan)]


def seal(header_raw: bytes, sections: list[bytes], compress_header: bool = True,
         version: int = codec.CHAIN_VERSION) -> bytes:
    """A file with valid header CRC and whole-file SHA-256 around any header and sections;
    a compressed header is, for half the headers (by their hash), compressed with the preset
    dictionary (header codec 2)."""
    stored, hcodec = header_raw, 0
    if compress_header:
        with_dict = hashlib.sha256(header_raw).digest()[0] & 1
        packed = zstandard.ZstdCompressor(level=3, dict_data=PRESET if with_dict else None,
                                          write_dict_id=False).compress(header_raw)
        if len(packed) < len(header_raw):
            stored, hcodec = packed, 2 if with_dict else 1
    body = PRE.pack(codec.MAGIC, version, hcodec, 0, len(stored), len(header_raw),
                    zlib.crc32(stored)) + stored + b"".join(sections)
    return body + hashlib.sha256(body).digest()


def reseal(header: object, sections: list[bytes], version: int = codec.CHAIN_VERSION) -> bytes:
    return seal(json.dumps(header).encode(), sections, version=version)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


POOL = [None, True, False, 0, 1, -1, 2, 3, 7, 8, 16, 17, 23, 24, 25, 26, 31, 32, 33, 64, 65, 255,
        2**16, 2**16 + 1, 2**31 - 1, 2**31, 2**32, 2**53, 2**63, 10**12, -2**31, 0.5, -0.0,
        1e308, 1e-308, "", "zstd", "raw", "dense", "bitmap", "rindex", "float32", "fixed", "Linear",
        "Conv2d", "BatchNorm2d", "ReLU", "weight", "bias", "running_mean", "same", "valid",
        [], [1], [1, 1], [0, 0], [2, 2], [2**31, 1], [1, 28, 28], [12], {},
        {"bits": 8, "frac_bits": 2}, {"bits": 32, "frac_bits": None}, "x" * 300,
        "int64", "state", "chain", "conv.weight", "head.bias", "bn.num_batches_tracked",
        "fc.weight", "alias.weight", "mask", "TinyRes", "a\nb", [2, 1, 3, 3], [8, 8], [3],
        "graph", "add", "cat", "mean", "flatten", "MaxPool2d", "AdaptiveAvgPool2d", [-1],
        [0, 0], [0, 1], [1, 0], [-1, -1], [2, 3], [3, 2], {"dim": 1}, {"dim": 2},
        {"dims": [2, 3], "keepdim": False}, {"dims": [1], "keepdim": True},
        {"mean": [0.5], "std": [0.0]}, {"mean": [0.5, 0.5], "std": [1, 1]},
        "transpose", "permute", "reshape", "matmul", "mul_scalar", "div_scalar", "LayerNorm",
        "PositionEmbedding", "GELU", "Softmax", {"dims": [1, 2]}, {"dims": [2, 1]},
        {"shape": [4, 2, 2]}, {"shape": [2, 8]}, {"scalar": 0.5}, {"scalar": 0},
        {"start_dim": 2, "end_dim": 3}, [4, 4], [4, 2, 2], 1e30, 1e31, -1e-30]


def mutate_json(header: dict, rng: random.Random) -> object:
    """One random edit anywhere in the header tree."""
    header = copy.deepcopy(header)
    path = rng.choice(list(_paths(header)))
    if not path:
        return rng.choice(POOL)
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    key, value = path[-1], parent[path[-1]]
    op = rng.random()
    if op < 0.45:
        parent[key] = rng.choice(POOL)
    elif op < 0.7 and type(value) is int:
        parent[key] = rng.choice([value + 1, value - 1, value * 2, -value, value // 2,
                                  value + 8, value * 1000])
    elif op < 0.8:
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif op < 0.9 and isinstance(parent, dict):
        parent[rng.choice(["extra", "pickle", "__class__"])] = rng.choice(POOL)
    elif isinstance(parent, list) and len(parent) > 1:
        i, j = rng.randrange(len(parent)), rng.randrange(len(parent))
        parent[i], parent[j] = parent[j], parent[i]
    else:
        parent[key] = copy.deepcopy(rng.choice(POOL))
    return header


def _damage(blob: bytes, rng: random.Random) -> bytes:
    data = bytearray(blob)
    op = rng.random()
    if op < 0.5 and data:
        for _ in range(rng.randint(1, 3)):  # skewed to the front, where the packed weights are
            data[int(len(data) * rng.random() ** 3)] ^= 1 << rng.randrange(8)
    elif op < 0.7 and data:
        del data[rng.randrange(len(data)):]
    elif op < 0.85:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        data[rng.randrange(len(data) + 1):] = bytes([0xFF]) * rng.randint(0, 8)
    return bytes(data)


def mutate_section(data: bytes, rng: random.Random, recount: bool) -> bytes:
    """Damage one section's decompressed blob, re-compress it and fix its sizes and CRC."""
    header, sections = split(data)
    carriers = section_entries(header)
    k = rng.randrange(len(carriers))
    sec = carriers[k]
    raw = sections[k]
    if sec["codec"] == "zstd":
        raw = zstandard.ZstdDecompressor().decompress(raw)
    raw = _damage(raw, rng)
    stored = zstandard.ZstdCompressor(level=1).compress(raw) if raw else raw
    codec_name = "zstd" if len(stored) < len(raw) else "raw"
    stored = stored if codec_name == "zstd" else raw
    if recount:  # keep the header consistent with the new blob, so only the decoder can object
        sec["raw_bytes"] = len(raw)
    sec.update(codec=codec_name, stored_bytes=len(stored), crc32=zlib.crc32(stored))
    sections[k] = stored
    return reseal(header, sections, version_of(data))


def mutate_stored(data: bytes, rng: random.Random) -> bytes:
    """Damage one section's stored (zstd) bytes and fix its CRC: hostile input for zstd."""
    header, sections = split(data)
    carriers = section_entries(header)
    k = rng.randrange(len(carriers))
    stored = _damage(sections[k], rng)
    carriers[k].update(stored_bytes=len(stored), crc32=zlib.crc32(stored))
    sections[k] = stored
    return reseal(header, sections, version_of(data))


def mutate(rng: random.Random) -> tuple[str, bytes]:
    """One hostile file derived from a seed (or from nothing), and the seed's name."""
    name = rng.choice(sorted(SEEDS))
    data = SEEDS[name]
    version = version_of(data)
    kind = rng.random()
    if kind < 0.1:
        return name, _damage(data, rng)
    if kind < 0.15:
        n = rng.randint(0, 600)
        prefix = data[:rng.choice([0, 8, 10, PRE.size])]
        return name, prefix + bytes(rng.randrange(256) for _ in range(n))
    if kind < 0.55:
        header, sections = split(data)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            header = mutate_json(header, rng) if isinstance(header, dict) else header
        if rng.random() < 0.05:  # a header read under another layout's version
            version = rng.choice([v for v in LAYOUT_OF if v != version])
        return name, reseal(header, sections, version)
    if kind < 0.8:
        return name, mutate_section(data, rng, recount=rng.random() < 0.8)
    if kind < 0.9:
        return name, mutate_stored(data, rng)
    header, _ = split(data)  # one seed's header over another seed's sections
    other = SEEDS[rng.choice([n for n in sorted(SEEDS) if n != name])]
    return name, reseal(header, split(other)[1], version)


# ------------------------------------------------------------------ the oracle

class CaseTimeout(Exception):
    """A single case ran past CASE_SECONDS."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran past {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _activation_peak(model: nn.Module, shape: tuple[int, ...]) -> int:
    """The largest activation, in elements per example, of a loaded chain or graph."""
    if not isinstance(model, GraphNet):
        peak = math.prod(shape)
        for i, m in enumerate(model):
            _, spec = fm.spec_for(m, str(i))
            shape = spec.shape(fm.module_args(m, spec, str(i))[1], shape, str(i))
            peak = max(peak, math.prod(shape))
        return peak
    shapes = []
    for i, step in enumerate(model.steps):
        ins = [shape if j == -1 else shapes[j] for j in step.inputs]
        if step.op in ops.OPS:
            shapes.append(ops.OPS[step.op].shape(step.args, ins, str(i)))
        else:
            _, spec = fm.spec_for(model.layer(i), str(i))
            args = fm.module_args(model.layer(i), spec, str(i))[1]
            shapes.append(spec.shape(args, ins[0], str(i)))
    return max(math.prod(s) for s in [shape, *shapes])


def check_case(data: bytes, name: str) -> str:
    """Decode hostile bytes derived from seed ``name`` (a state seed's into a freshly built
    model of its class); returns 'refused', 'loaded' or 'misfit', failing the test on
    anything else."""
    state = STATE_MODELS.get(name)
    with time_limit(CASE_SECONDS):
        try:
            model = codec.decode(data, max_elements=10**6,
                                 model=None if state is None else state[0]())
        except FormatError as err:
            assert "unexpected" not in str(err), str(err)
            return "refused"
        except ModelError as err:  # a valid file whose tensors are not the model's
            assert state is not None and "do not fit" in str(err), str(err)
            return "misfit"
        shape = state[1] if state else getattr(model, "kwh_input_shape", None)
        if state or (shape and _activation_peak(model, shape) <= MAX_FORWARD_ELEMENTS):
            with torch.no_grad():  # any error from here on fails
                model(torch.randn(2, *shape))  # a model the loader accepts must run
    return "loaded"


def run_fuzz(cases: int, seed: int) -> dict[str, int]:
    """Outcome counts, overall and per layout of the seed ('chain:refused', 'state:loaded')."""
    rng = random.Random(seed)
    counts = collections.Counter()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    slowest = 0.0
    for _ in range(cases):
        name, data = mutate(rng)
        start = time.perf_counter()
        outcome = check_case(data, name)
        counts[outcome] += 1
        counts[f"{LAYOUT_OF[version_of(SEEDS[name])]}:{outcome}"] += 1
        counts[f"{name}:{outcome}"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown < 256 * 1024, f"peak memory grew by {grown} KiB during the fuzz run"
    assert slowest < CASE_SECONDS
    return counts


# ------------------------------------------------------------------ the tests

@pytest.fixture
def one_thread():
    """Tiny forward passes run ~10x faster on one thread than with a contended pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_load_and_the_resealer_makes_valid_files(name):
    assert len(SEEDS[name]) < (1500 if name == "graph_vit" else 1000)  # 30 operations
    layout = "state" if name in STATE_MODELS else "graph" if name.startswith("graph") \
        else "chain"
    assert LAYOUT_OF[version_of(SEEDS[name])] == layout
    assert check_case(SEEDS[name], name) == "loaded"
    header, sections = split(SEEDS[name])
    assert check_case(reseal(header, sections, version_of(SEEDS[name])), name) == "loaded"
    if name == "graph_arith":  # the seed exercises both arithmetic-coded encodings
        encodings = {t["encoding"] for entry in section_entries(header) for t in entry["tensors"]}
        assert {"arith", "fixed-arith"} <= encodings


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_flipped_byte_is_refused(name):
    data = SEEDS[name]
    for pos in range(len(data)):
        for mask in (1 << (pos % 8), 0xFF):
            bad = bytearray(data)
            bad[pos] ^= mask
            with pytest.raises(FormatError):
                codec.decode(bytes(bad))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_truncation_and_extension_is_refused(name):
    data = SEEDS[name]
    for n in range(len(data)):
        with pytest.raises(FormatError, match="truncated|too short|magic|header"):
            codec.decode(data[:n])
    for tail in (b"\x00", b"\x00" * 31, b"\xff" * 32, b"\x00" * 33, data, bytes(range(256))):
        with pytest.raises(FormatError, match="extra bytes|SHA-256"):
            codec.decode(data + tail)


def _huge(header: dict) -> dict:
    """The MLP seed's header claiming a 10^6 x 10^6 Linear layer (10^12 weights)."""
    header = copy.deepcopy(header)
    header["input_shape"] = None
    first, second = header["modules"][1], header["modules"][3]
    first["args"].update(in_features=10**6, out_features=10**6)
    first["section"]["tensors"][0]["shape"] = [10**6, 10**6]
    first["section"]["tensors"][1]["shape"] = [10**6]
    second["args"]["in_features"] = 10**6
    second["section"]["tensors"][0]["shape"] = [8, 10**6]
    return header


def test_a_huge_tensor_claim_is_refused_before_allocation():
    header, sections = split(SEEDS["mlp"])
    data = reseal(_huge(header), sections)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(FormatError, match=r"claims at least 1000000000000 tensor elements.*limit"):
        codec.decode(data)  # the default limit, 2**28 elements
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 2**20  # refused from the header alone: < 1 MiB traced
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024


def test_a_huge_state_claim_and_a_bomb_are_refused_before_allocation():
    header, sections = split(SEEDS["res"])
    huge = copy.deepcopy(header)
    first = huge["sections"][0]["tensors"][0]
    assert first["name"] == "conv.weight"
    first["shape"] = [10**6, 10**6, 1, 1]
    claim = reseal(huge, sections, codec.STATE_VERSION)
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(2**16))  # 64 KiB in 19 bytes
    sec = header["sections"][1]  # the BatchNorm's tensors
    raw = section_sizes(SEEDS["res"])[1][0]
    assert sec["tensors"][0]["name"] == "bn.weight" and len(bomb) < raw
    sec.update(codec="zstd", stored_bytes=len(bomb), crc32=zlib.crc32(bomb))
    bombed = reseal(header, sections[:1] + [bomb] + sections[2:], codec.STATE_VERSION)
    model = TinyRes()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    with pytest.raises(FormatError, match=r"claims at least 1000000000000 tensor elements"):
        codec.decode(claim, model=model)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20  # refused from the header alone: < 1 MiB traced
    with pytest.raises(FormatError, match=f"zstd frame declares 65536 bytes, header says {raw}"):
        codec.decode(bombed, model=model)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 2 * 1024


def test_decompression_bombs_and_oversized_claims_are_refused():
    header, sections = split(SEEDS["mlp"])
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(2**22))  # 4 MiB of zeros
    bad = copy.deepcopy(header)
    sec = bad["modules"][1]["section"]  # a 157-byte section, in a 145-byte frame
    raw = section_sizes(SEEDS["mlp"])[0][0]  # its first section
    assert raw == 157 and len(bomb) < raw
    sec.update(codec="zstd", stored_bytes=len(bomb), crc32=zlib.crc32(bomb))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FormatError, match="zstd frame declares 4194304 bytes, header says 157"):
        codec.decode(reseal(bad, [bomb] + sections[1:]))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 2 * 1024
    unsized = zstandard.ZstdCompressor(level=1, write_content_size=False)
    chunker = unsized.compressobj()
    frame = chunker.compress(bytes(raw)) + chunker.flush()
    sec.update(stored_bytes=len(frame), crc32=zlib.crc32(frame))
    with pytest.raises(FormatError, match="zstd frame does not declare its size"):
        codec.decode(reseal(bad, [frame] + sections[1:]))
    huge_header = PRE.pack(codec.MAGIC, codec.VERSION, 1, 0, 10, 2**32 - 1, 0) + bytes(200)
    with pytest.raises(FormatError, match="header of 4294967295 bytes"):
        codec.decode(huge_header)
    deep = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's recursion limit
    with pytest.raises(FormatError, match="not valid UTF-8 JSON"):
        codec.decode(seal(deep, []))
    with pytest.raises(FormatError, match="repeats the key"):
        codec.decode(seal(b'{"modules": [], "modules": []}', []))
    with pytest.raises(FormatError, match="NaN"):
        codec.decode(seal(b'{"summary": NaN}', []))


def test_fuzz_1000_hostile_files(one_thread):
    """1,000 structure-aware mutations (the full 10,000 run is test_fuzz_10000_hostile_files)."""
    counts = run_fuzz(1000, seed=1)
    assert counts["refused"] > 500 and counts["loaded"] > 10  # both paths are exercised
    assert counts["state:refused"] > 150 and counts["state:loaded"] > 5  # in all layouts
    assert counts["graph:refused"] > 150 and counts["graph:loaded"] > 5
    assert counts["graph_vit:refused"] > 50 and counts["graph_vit:loaded"] > 5
    assert counts["graph_arith:refused"] > 50  # a damaged arithmetic code rarely decodes


@pytest.mark.slow
def test_fuzz_10000_hostile_files(one_thread):
    """Slow: 10,000 further mutated / truncated / random files (about a minute on 2 cores)."""
    counts = run_fuzz(10_000, seed=2)
    assert counts["refused"] > 5000 and counts["loaded"] > 100
    assert counts["state:refused"] > 1500 and counts["state:loaded"] > 50
    assert counts["graph:refused"] > 1500 and counts["graph:loaded"] > 50
    assert counts["graph_vit:refused"] > 500 and counts["graph_vit:loaded"] > 10
    assert counts["graph_arith:refused"] > 500

"""Checkpoint files: round trip, and refusal of every kind of damage with FormatError."""

from __future__ import annotations

import json
import random
import struct

import pytest
import torch

from kwh.errors import FormatError
from kwh.format.io import atomic_write_bytes
from kwh.train.checkpoint import (
    MAX_HEADER,
    parse_checkpoint,
    read_checkpoint,
    read_checkpoint_meta,
    write_checkpoint,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"model/0.weight": torch.randn(4, 3, generator=g),
            "model/0.bias": torch.randn(4, generator=g),
            "optim/0/step": torch.tensor(5.0),
            "rng/torch/0": torch.get_rng_state(),
            "rng/numpy": torch.arange(7, dtype=torch.int64)}


@pytest.fixture()
def ckpt(tmp_path):
    path = tmp_path / "c.safetensors"
    write_checkpoint(path, _tensors(), {"config": {"seed": 3}, "log": [{"x": 1.5}]})
    return path


def test_round_trip_is_exact(ckpt):
    tensors, meta = read_checkpoint(ckpt)
    want = _tensors()
    assert set(tensors) == set(want)
    for k in want:
        assert tensors[k].dtype == want[k].dtype and torch.equal(tensors[k], want[k]), k
    assert meta["config"] == {"seed": 3} and meta["log"] == [{"x": 1.5}]
    assert read_checkpoint_meta(ckpt)["digest"] == meta["digest"]


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1, -100])
def test_truncated_file_is_refused(ckpt, keep):
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(FormatError):
        read_checkpoint(ckpt)


def test_appended_bytes_are_refused(ckpt):
    ckpt.write_bytes(ckpt.read_bytes() + b"\0" * 4)
    with pytest.raises(FormatError, match="truncated or padded"):
        read_checkpoint(ckpt)


def test_every_bit_flip_in_prefix_and_header_is_refused(ckpt):
    """All 8 bits of every byte of the length prefix and the JSON header (exhaustive)."""
    data = ckpt.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    accepted = []
    for pos in range(8 + n):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            try:
                parse_checkpoint(bytes(flipped))
                accepted.append((pos, bit))
            except FormatError:
                pass
    assert not accepted, f"bit flips accepted at (byte, bit): {accepted[:10]}"


def test_bit_flips_in_tensor_data_are_refused(ckpt):
    data = ckpt.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(0)
    positions = list(range(8 + n, len(data)))
    for pos in rng.sample(positions, 200) + [positions[0], positions[-1]]:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(FormatError, match="checksum"):
            parse_checkpoint(bytes(flipped))


def test_oversized_header_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER + 1) + b"{}")
    with pytest.raises(FormatError, match="exceeds the limit"):
        read_checkpoint(path)
    with pytest.raises(FormatError, match="exceeds the limit"):
        read_checkpoint_meta(path)
    path.write_bytes(struct.pack("<Q", 2 ** 64 - 1))
    with pytest.raises(FormatError):
        read_checkpoint(path)


def _rewrite_meta(path, edit) -> None:
    """Edit our JSON inside a valid file and re-sign it, as a careful forger would."""
    import hashlib

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["kwh"])
    edit(meta, header)
    text = json.dumps(meta)
    header["__metadata__"] = {"kwh": text, "kwh_sha256": hashlib.sha256(text.encode()).hexdigest()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


@pytest.mark.parametrize("edit, match", [
    (lambda m, h: m.update(version=99), "version 99"),
    (lambda m, h: m.update(format="other"), "not a kwh checkpoint"),
    (lambda m, h: m["tensors"].pop("model/0.bias"), "manifest"),
    (lambda m, h: h["model/0.weight"].update(dtype="I32"), "manifest"),
    (lambda m, h: m.update(digest="0" * 64), "checksum"),
])
def test_consistent_but_wrong_metadata_is_refused(ckpt, edit, match):
    _rewrite_meta(ckpt, edit)
    with pytest.raises(FormatError, match=match):
        read_checkpoint(ckpt)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(FormatError, match="not a kwh checkpoint"):
        read_checkpoint(path)


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind

"""Byte surgery on .kwh files for the hostile-file tests: read a file's header, and write the
same sections under another header with every checksum valid."""

from __future__ import annotations

import hashlib
import json
import zlib

import zstandard

from kwh.format import codec
from kwh.format.header_dict import HEADER_DICTIONARY


def split_header(data: bytes) -> dict:
    """The parsed JSON header of the file bytes ``data``."""
    _, _, hcodec, _, hstored, _, _ = codec.PREAMBLE.unpack_from(data)
    raw = data[codec.PREAMBLE.size:codec.PREAMBLE.size + hstored]
    if hcodec == 0:
        return json.loads(raw)
    preset = zstandard.ZstdCompressionDict(HEADER_DICTIONARY,
                                           dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return json.loads(zstandard.ZstdDecompressor(
        dict_data=preset if hcodec == 2 else None).decompress(raw))


def reseal(data: bytes, header: dict | bytes, version: int) -> bytes:
    """``data`` with another header (a dict, or raw JSON bytes) and the same sections, at
    preamble ``version``, every checksum valid."""
    _, _, _, _, hstored, _, _ = codec.PREAMBLE.unpack_from(data)
    sections = data[codec.PREAMBLE.size + hstored:-codec.TRAILER_BYTES]
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = codec.PREAMBLE.pack(codec.MAGIC, version, 0, 0, len(raw), len(raw),
                               zlib.crc32(raw)) + raw + sections
    return body + hashlib.sha256(body).digest()

"""Strict JSON parsing and field checks for the .kwh header; every failure is a FormatError."""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Iterable
from typing import Any

from kwh.errors import FormatError

__all__ = ["parse_json", "fields", "get_int", "get_bool", "get_float", "get_str",
           "get_choice", "get_pair", "get_list", "get_dict", "INT_MAX"]

INT_MAX = 2**31 - 1  # largest size-like integer any header field may hold


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"header JSON repeats the key {key!r}")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"header JSON holds a non-finite number {text[:40]!r}")
    return value


def _no_constant(text: str) -> None:
    raise FormatError(f"header JSON holds {text}, which is not valid JSON")


def parse_json(raw: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON strictly: no NaN/Infinity, no duplicate keys, an object at the top."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite_float,
                           parse_constant=_no_constant)
    except FormatError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as err:
        raise FormatError(f"header is not valid UTF-8 JSON: {str(err)[:200]}") from None
    if not isinstance(value, dict):
        raise FormatError(f"header must be a JSON object, got {type(value).__name__}")
    return value


def fields(obj: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    """Check that ``obj`` is an object with exactly the required keys (plus optional ones)."""
    if not isinstance(obj, dict):
        raise FormatError(f"{where} must be a JSON object, got {type(obj).__name__}")
    required = set(required)
    missing = required - obj.keys()
    if missing:
        raise FormatError(f"{where} lacks the field(s) {sorted(missing)}")
    unknown = obj.keys() - required - set(optional)
    if unknown:
        raise FormatError(f"{where} has unknown field(s) {sorted(unknown)[:5]}; "
                          f"valid: {sorted(required | set(optional))}")
    return obj


def get_int(obj: dict, key: str, where: str, lo: int, hi: int) -> int:
    """An integer field (not a bool) within [lo, hi]."""
    value = obj[key]
    if type(value) is not int:
        raise FormatError(f"{where}.{key} must be an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise FormatError(f"{where}.{key}={_show(value)} is out of range [{lo}, {hi}]")
    return value


def get_bool(obj: dict, key: str, where: str) -> bool:
    """A true/false field."""
    value = obj[key]
    if type(value) is not bool:
        raise FormatError(f"{where}.{key} must be true or false, got {_show(value)}")
    return value


def get_float(obj: dict, key: str, where: str, lo: float = -math.inf, hi: float = math.inf,
              nullable: bool = False) -> float | None:
    """A finite number field within [lo, hi] (integers are accepted as numbers)."""
    value = obj[key]
    if value is None and nullable:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise FormatError(f"{where}.{key} must be a finite number, got {_show(value)}")
    if not lo <= value <= hi:
        raise FormatError(f"{where}.{key}={_show(value)} is out of range [{lo}, {hi}]")
    return float(value)


def get_str(obj: dict, key: str, where: str, max_len: int = 200) -> str:
    """A short string field."""
    value = obj[key]
    if not isinstance(value, str) or len(value) > max_len:
        raise FormatError(f"{where}.{key} must be a string of at most {max_len} characters")
    return value


def get_choice(obj: dict, key: str, where: str, choices: Iterable[Any]) -> Any:
    """A field whose value must be one of ``choices`` (compared by type and value)."""
    value = obj[key]
    choices = list(choices)
    if not any(type(value) is type(c) and value == c for c in choices):
        raise FormatError(f"{where}.{key}={_show(value)} is not one of {choices}")
    return value


def get_list(obj: dict, key: str, where: str, max_len: int) -> list:
    """A list field of at most ``max_len`` items."""
    value = obj[key]
    if not isinstance(value, list):
        raise FormatError(f"{where}.{key} must be a list, got {_show(value)}")
    if len(value) > max_len:
        raise FormatError(f"{where}.{key} has {len(value)} items, more than the limit {max_len}")
    return value


def get_dict(obj: dict, key: str, where: str, nullable: bool = False) -> dict | None:
    """An object field (or null when ``nullable``)."""
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise FormatError(f"{where}.{key} must be a JSON object, got {_show(value)}")
    return value


def get_pair(obj: dict, key: str, where: str, lo: int, hi: int) -> tuple[int, int]:
    """A list of two integers, each within [lo, hi]."""
    value = obj[key]
    if not (isinstance(value, list) and len(value) == 2):
        raise FormatError(f"{where}.{key} must be a list of two integers, got {_show(value)}")
    holder = {"0": value[0], "1": value[1]}
    return (get_int(holder, "0", f"{where}.{key}", lo, hi),
            get_int(holder, "1", f"{where}.{key}", lo, hi))


def _show(value: Any) -> str:
    text = reprlib.repr(value)  # bounded in depth and length, whatever the header holds
    return text if len(text) <= 60 else text[:57] + "..."

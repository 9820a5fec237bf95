"""The one exception type for every data problem: kwh's DataError (a KwhError, a ValueError)."""

from __future__ import annotations

from kwh.errors import DataError

__all__ = ["DataError"]

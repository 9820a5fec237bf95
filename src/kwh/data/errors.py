"""The one exception type for every data problem (missing, corrupt, malformed, bad argument)."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A data set could not be found, read or verified; the message says what to do."""

"""The exception types kwh raises for bad input; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class KwhError(ValueError):
    """Base of every error kwh raises for bad input (a ValueError, so plain callers catch it too)."""


class DataError(KwhError):
    """A data set is missing, truncated, corrupt or in the wrong format."""


class FormatError(KwhError):
    """A .kwh or checkpoint file is malformed, truncated, tampered with or of an unknown version."""


class ModelError(KwhError):
    """A model has a layer or shape kwh cannot handle."""

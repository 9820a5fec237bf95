"""The exception types kwh raises for bad input; the CLI turns each into one line and exit code 2."""

from __future__ import annotations

import errno
import os

__all__ = ["KwhError", "DataError", "FormatError", "ModelError", "write_error"]


class KwhError(ValueError):
    """Base of every error kwh raises for bad input (a ValueError, so plain callers catch it too)."""


class DataError(KwhError):
    """A data set is missing, truncated, corrupt or in the wrong format."""


class FormatError(KwhError):
    """A .kwh or checkpoint file is malformed, truncated, tampered with or of an unknown version."""


class ModelError(KwhError):
    """A model has a layer or shape kwh cannot handle."""


def write_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc``, raised while writing ``path`` (through a temp file beside it), remade to name
    ``path`` as the caller gave it, not the temp file, and the fix; same type and errno."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    denied = f"no permission to write in {folder}; choose another folder or change its rights"
    hints = {
        errno.ENOENT: None if os.path.isdir(folder) else
        f"the folder {folder} does not exist; create it first (mkdir -p {folder})",
        errno.ENOTDIR: f"{folder} is not a folder (part of it is a file); choose another path",
        errno.EACCES: denied,
        errno.EPERM: denied,
        errno.EISDIR: f"{path} is a folder; give a file name",
        errno.EROFS: f"{folder} is on a read-only file system; choose another folder",
        errno.ENOSPC: f"no space left on the device of {folder}; free some or write elsewhere",
    }
    hint = hints.get(exc.errno) or exc.strerror or str(exc)
    kind = type(exc) if type(exc).__module__ == "builtins" else OSError
    new = kind(f"cannot write {path}: {hint}")
    new.errno = exc.errno
    return new

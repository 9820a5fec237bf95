"""Atomic file writing: a temp file in the same folder, fsync, os.replace, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile

from kwh.errors import write_error

__all__ = ["atomic_write_bytes", "check_destination"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    On any error the temp file is removed and an existing file at ``path`` is left untouched;
    an OSError names ``path`` as given (not the temp file) and the fix (kwh.errors.write_error).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    except OSError as e:
        raise write_error(e, path) from e
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path) from e
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dirfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def check_destination(path: str | os.PathLike) -> None:
    """Raise now the error atomic_write_bytes(path, ...) would raise for a missing, unwritable
    or wrong folder, so that long work (training) does not end in it. Writes nothing."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise write_error(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)), path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise write_error(e, path) from e
    os.close(fd)
    os.unlink(tmp)

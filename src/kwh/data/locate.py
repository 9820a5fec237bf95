"""Where data files live: search order, the user cache, and verified atomic downloads."""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from kwh.errors import write_error

from .errors import DataError

__all__ = ["search_dirs", "cache_root", "atomic_write", "fetch", "missing_error",
           "missing_in_root_error", "SYSTEM_ROOTS", "TIMEOUT_S"]

SYSTEM_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)  # Debian's dataset-* packages
TIMEOUT_S = 15.0  # per network operation
_CHUNK = 1 << 20


def cache_root() -> Path:
    """The user cache, `$XDG_CACHE_HOME/kwh` or `~/.cache/kwh`; downloads go here."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "kwh"


def search_dirs(folder: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders to search, in order. An explicit root is used alone (root/folder, then root);
    without one: $KWH_DATA (as parent, then direct), the system folders, then the cache."""
    if root is not None:
        base = Path(root).expanduser()
        return [base / folder, base]
    dirs: list[Path] = []
    if env := os.environ.get("KWH_DATA"):
        base = Path(env).expanduser()
        dirs += [base / folder, base]
    dirs += [Path(r) / folder for r in SYSTEM_ROOTS]
    dirs.append(cache_root() / folder)
    return list(dict.fromkeys(dirs))


def atomic_write(dest: Path, fill: Callable[[BinaryIO], None],
                 check: Callable[[Path], object] | None = None) -> None:
    """Write dest via a temp file in the same folder: fill it, fsync, check it, os.replace.

    Errors of the file system name dest, not the temp file; fill's own errors pass unchanged.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise write_error(e, dest) from e
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        if check is not None:
            check(Path(tmp))
        try:
            os.replace(tmp, dest)
        except OSError as e:
            raise write_error(e, dest) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(url: str, out: BinaryIO, max_bytes: int) -> None:
    """Copy the body of url into out, refusing more than max_bytes."""
    print(f"kwh: downloading {url}", file=sys.stderr)
    total = 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        while chunk := response.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise DataError(f"{url}: response is larger than {max_bytes} bytes; refusing it")
            out.write(chunk)


def fetch(urls: Iterable[str], dest: Path, check: Callable[[Path], object], max_bytes: int) -> None:
    """Download the first mirror whose file passes check into dest; DataError if none does."""
    failures = []
    for url in urls:
        try:
            atomic_write(dest, lambda out, url=url: _download(url, out, max_bytes), check)
            return
        except (OSError, ValueError, http.client.HTTPException) as e:  # DataError is a ValueError
            failures.append(f"{url}: {e}")
    raise DataError("download failed: " + "; ".join(failures))


def missing_error(what: str, missing: Iterable[str], dirs: Iterable[Path], folder: str,
                  reason: str = "") -> DataError:
    """A DataError naming the missing files, where we looked and where to put them."""
    looked = ", ".join(str(d) for d in dirs)
    reason = f" ({reason})" if reason else ""
    return DataError(
        f"{what}: missing {', '.join(missing)}{reason}. Looked in: {looked}. "
        f"Put the files in {cache_root() / folder}, or in DIR/{folder} and pass "
        f"root=DIR (CLI: --data-dir DIR) or set KWH_DATA=DIR.")


def missing_in_root_error(what: str, missing: Iterable[str], root: str | os.PathLike,
                          folder: str) -> DataError:
    """A one-line DataError for an explicit data folder that lacks files (nothing else is
    searched and nothing is downloaded when the caller names the folder)."""
    base = Path(root).expanduser()
    files = ", ".join(missing)
    where = (f"the data folder {base} does not exist" if not base.is_dir()
             else f"the data folder {base} lacks {files}")
    return DataError(
        f"{what}: {where} (expected {files} in {base / folder} or {base}). Put the files "
        f"there, or give no data folder (no --data-dir) to search $KWH_DATA, the system "
        f"folders and the cache {cache_root() / folder}, downloading what is missing.")

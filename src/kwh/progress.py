"""Progress of long commands on stderr: a tqdm bar on a terminal, plain lines in a log file.

The library reports progress through a callback ``progress(done, total)`` (cumulative counts,
called after each finished chunk of work) and never imports this module; the command line
passes a :class:`Progress` as that callback.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """``progress(done, total)`` shown as ``DESC: done/total UNIT``.

    On a terminal: a tqdm bar that disappears when closed. Elsewhere (a pipe, a log file): one
    plain line each time another tenth of the total is done, so a log shows at most ~10.
    """

    def __init__(self, desc: str, unit: str, *, file: TextIO | None = None,
                 enabled: bool = True, bar: bool | None = None, parts: int = 10) -> None:
        self.desc, self.unit, self.enabled, self.parts = desc, unit, enabled, parts
        self.file = sys.stderr if file is None else file
        self.bar = _isatty(self.file) if bar is None else bar
        self._tqdm: tqdm | None = None
        self._done = 0
        self._next = 0  # plain lines: the count at which the next line is due
        self._printed = 0  # plain lines: the count of the last line written

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < 1:
            return
        if self.bar:
            if self._tqdm is None:
                fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} " + self.unit + " [{elapsed}<{remaining}]"
                self._tqdm = tqdm(total=total, desc=self.desc, bar_format=fmt, file=self.file,
                                  leave=False, dynamic_ncols=True)
            self._tqdm.total = total
            self._tqdm.update(done - self._done)
        else:
            if self._next == 0:
                self._next = math.ceil(total / self.parts)
            if done > self._printed and (done >= self._next or done >= total):
                self._printed = done
                print(f"{self.desc}: {done:,}/{total:,} {self.unit}", file=self.file,
                      flush=True)
                step = math.ceil(total / self.parts)
                self._next = (done // step + 1) * step
        self._done = done

    def close(self) -> None:
        """Remove the bar (plain lines stay as written)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False

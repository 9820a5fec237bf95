"""The run's JSON-lines log: records kept in memory (and in checkpoints) and mirrored to a file."""

from __future__ import annotations

import json
from pathlib import Path

from kwh.format.io import atomic_write_bytes

__all__ = ["RunLog"]


class RunLog:
    """Records (dicts with an 'event' key) appended to ``path`` as they happen.

    The checkpoint carries the records too; on resume or rollback the file is rewritten from
    them, so it never shows an epoch the checkpoint does not know about.
    """

    def __init__(self, path: Path | None, records: list[dict] | None = None):
        self.path = path  # None on ranks that do not write
        self.records = list(records or [])

    def reset(self, records: list[dict]) -> None:
        """Replace the records (from a checkpoint) and rewrite the file to match."""
        self.records = list(records)
        if self.path is not None:
            text = "".join(json.dumps(r) + "\n" for r in self.records)
            atomic_write_bytes(self.path, text.encode())

    def append(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def epochs(self) -> list[dict]:
        """The per-epoch records: the run's history."""
        return [r for r in self.records if r.get("event") == "epoch"]

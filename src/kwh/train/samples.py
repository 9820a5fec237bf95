"""The weight samples of a method='sgld' run: written to the run folder, read back as a store.

A run folder's ``samples.safetensors`` is written at the end of the run, in the checkpoint
format (safetensors, JSON metadata, checksums, atomic replace): the tensors of
kwh.bayes.SampleStore.payload ("samples/<i>/<name>", oldest sample first) and a small meta
(the run's config, the store's policy, counters and steps). The checkpoint holds the same
samples while the run goes on, so a run that has not finished can be read too.
"""

from __future__ import annotations

import os
from pathlib import Path

import kwh
from kwh.bayes import SampleStore
from kwh.errors import FormatError, KwhError
from kwh.train.build import SGLD
from kwh.train.checkpoint import FILENAME, read_checkpoint, write_checkpoint
from kwh.train.config import TrainConfig

SAMPLES_FILENAME = "samples.safetensors"
SAMPLES_KIND = "sgld-samples"
PREFIX = "samples/"

__all__ = ["SAMPLES_FILENAME", "write_samples", "load_samples"]


def write_samples(path: str | os.PathLike, store: SampleStore, config: TrainConfig) -> None:
    """Write ``store`` (the samples of the run ``config``) to ``path``, atomically."""
    tensors, meta = store.payload(PREFIX)
    write_checkpoint(path, tensors, {"kind": SAMPLES_KIND, "samples": meta,
                                     "config": config.to_dict(),
                                     "kwh_version": kwh.__version__})


def load_samples(path: str | os.PathLike, model=None) -> SampleStore:
    """The SampleStore of a method='sgld' run, for ``kwh.predict(model, x, store=...)``.

    ``path``: the run folder (its samples.safetensors; while the run has not finished, the
    samples in its checkpoint so far), or either file. ``model``: when given, checked to
    have the names, shapes and dtypes of the samples (load_checkpoint's model has them).
    The samples stay on the CPU; predict loads them into the model wherever it is.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SAMPLES_FILENAME if (p / SAMPLES_FILENAME).is_file() else p / FILENAME
    tensors, meta = read_checkpoint(p)
    kind = meta.get("kind")
    if kind not in (SAMPLES_KIND, SGLD):
        if kind == "plain" and (meta.get("config") or {}).get("method") == SGLD:
            raise KwhError(f"{p} was written during pretraining: the SGLD run holds no samples "
                           f"yet; continue it with `kwh train --resume --out-dir {p.parent}`")
        raise KwhError(f"{p} is not from an SGLD run (method='sgld'): it holds no weight "
                       "samples")
    try:
        store = SampleStore.from_payload(tensors, meta["samples"], PREFIX)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{p}: malformed weight samples ({e})") from None
    if model is not None:
        try:
            store.check(model.state_dict())
        except ValueError as e:
            raise KwhError(f"{p}: {e}") from None
    return store

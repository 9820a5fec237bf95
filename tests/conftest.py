"""Shared fixtures: fixed seeds, and the real data sets when they are at hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    for cand in (os.environ.get("KWH_DATA"), _ROOT.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist").is_dir():
            return Path(cand)
    return None


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding mnist/ and fashion-mnist/; tests needing real data skip without it."""
    root = _data_root()
    if root is None:
        pytest.skip("real MNIST not found: set KWH_DATA to a folder with mnist/ (see README)")
    return root


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread avoids oversubscription on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

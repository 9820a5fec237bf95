"""Every Python block of the README and docs/ runs as written (on a slice of MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kwh.data.loaders as loaders

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks():
    for doc in DOCS:
        for i, code in enumerate(BLOCK.findall(doc.read_text(encoding="utf-8"))):
            yield pytest.param(code, id=f"{doc.name}-{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_python_block_runs_as_written(code, tmp_path, data_root, monkeypatch):
    # The code is run unchanged; only the data are cut to 2,000 training and 1,000 test images
    # so that the suite stays fast (the full-data run is what the README describes).
    real = loaders.get_dataset

    def sliced(name, split="train", root=None, **kw):
        kw["limit"] = kw.get("limit") or (2000 if split == "train" else 1000)
        return real(name, split, root, **kw)

    monkeypatch.setattr(loaders, "get_dataset", sliced)
    monkeypatch.setenv("KWH_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "<doc block>", "exec"), namespace)  # noqa: S102
    for name in ("small", "m", "model"):
        if name in namespace and hasattr(namespace[name], "kwh_summary"):
            assert str(namespace[name].kwh_summary).startswith("input (")
    assert any(p.suffix == ".kwh" for p in tmp_path.iterdir())

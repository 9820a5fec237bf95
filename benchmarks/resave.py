"""Committed .kwh files saved again by this kwh: bytes before and after, outputs unchanged.

The file format gained encodings (``arith``, ``fixed-arith``: arithmetic-coded integers) after
most committed models were written. This benchmark loads each file of a folder, saves it again
(same model, same summary), and records the file and payload bytes of both, checking that the
saved-again file loads to a model whose outputs equal the original file's exactly on a batch
of random inputs of its input shape. Files that need their class to load (the state layout)
are listed as skipped.

    python -m benchmarks.resave benchmarks/results/models --out benchmarks/results/resave
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import kwh
from benchmarks.machine import machine_info
from kwh.errors import KwhError
from kwh.format import atomic_write_bytes, file_report


def resave(path: Path, work: Path, summary: bool = True) -> dict:
    """One file: its sizes before and after saving it again, and whether outputs agree."""
    try:
        model = kwh.load(path)
    except KwhError as err:  # a state-layout file needs its model class
        return {"file": path.name, "skipped": str(err)[:120]}
    shape = getattr(model, "kwh_input_shape", None)
    out = work / path.name
    kwh.save(model, out, input_shape=shape, summary=summary)
    again = kwh.load(out)
    before, after = file_report(path), file_report(out)
    same = None
    if shape is not None:
        x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = bool(torch.equal(model.eval()(x), again.eval()(x)))
    encodings = sorted({t["encoding"] for s in after["sections"] for t in s["tensors"]})
    return {"file": path.name, "file_bytes": before["file_bytes"],
            "file_bytes_again": after["file_bytes"], "payload_bytes": before["payload_bytes"],
            "payload_bytes_again": after["payload_bytes"],
            "fp32_bytes": before["dense_fp32_bytes"], "same_outputs": same,
            "encodings_again": encodings}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a folder of .kwh files")
    p.add_argument("--out", required=True, help="output stem: OUT.md and OUT.json")
    a = p.parse_args(argv)
    files = sorted(Path(a.folder).glob("*.kwh"))
    if not files:
        raise SystemExit(f"{a.folder}: no .kwh files")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [resave(f, Path(tmp)) for f in files]
    done = [r for r in rows if "skipped" not in r]
    total = (sum(r["file_bytes"] for r in done), sum(r["file_bytes_again"] for r in done))
    info = machine_info()
    md = ["# Committed .kwh files saved again", "",
          f"Command: `python -m benchmarks.resave {a.folder} --out {a.out}` (commit "
          f"{info['commit']}, torch {info['torch']}). Each file loaded and saved again by this "
          "kwh (same model and summary); outputs compared exactly on 16 random inputs of the "
          "file's input shape.", "",
          "| file | file bytes | saved again | change | payload bytes | saved again | same outputs | encodings now |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            md.append(f"| {r['file']} | skipped: {r['skipped']} | | | | | | |")
            continue
        change = 100 * (r["file_bytes_again"] / r["file_bytes"] - 1)
        md.append(f"| {r['file']} | {r['file_bytes']:,} | {r['file_bytes_again']:,} | "
                  f"{change:+.1f} % | {r['payload_bytes']:,} | {r['payload_bytes_again']:,} | "
                  f"{r['same_outputs']} | {', '.join(r['encodings_again'])} |")
    md += ["", f"All {len(done)} files: {total[0]:,} -> {total[1]:,} bytes "
           f"({100 * (total[1] / total[0] - 1):+.1f} %)." if done else ""]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(f"{out}.md"), ("\n".join(md) + "\n").encode())
    atomic_write_bytes(Path(f"{out}.json"),
                       json.dumps({"machine": info, "rows": rows}, indent=1).encode())
    print("\n".join(md))
    bad = [r["file"] for r in done if r["same_outputs"] is False]
    if bad:
        print(f"outputs changed: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

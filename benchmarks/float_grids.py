"""What the biases' and norms' grids (kwh.compress.floats) change in compressed .kwh files.

    python -m benchmarks.float_grids --data mnist FILE.kwh ... --out benchmarks/results/float_grids

For each file (a model compressed before its float tensors went on grids), and each of the
given magnitude bits: the file is loaded, every float parameter that is not a quantized weight
is put on its grid (kwh.compress.floats.snap_floats_, the step kwh.compress and fine-tuning
now end with), the model is saved again and its test error, payload and file bytes are set
beside the original's. Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import kwh
from benchmarks.machine import git_commit
from kwh.compress import evaluate
from kwh.compress.floats import snap_floats_
from kwh.data import batch_loader, get_dataset
from kwh.format import file_report


def measure(path: Path, data: str, bits: list[int]) -> list[dict]:
    test = batch_loader(get_dataset(data, "test"), 1000)
    base = file_report(path)
    model = kwh.load(path)
    summary = model.kwh_summary
    w_orig, dense = summary["weights_original"], summary["size_fp32_original_bytes"]
    rows = [{"file": path.name, "float_bits": None, "error_pct": 100 * evaluate(model, test)["error"],
             "payload_bytes": base["payload_bytes"], "file_bytes": base["file_bytes"]}]
    with tempfile.TemporaryDirectory() as tmp:
        for b in bits:
            model = kwh.load(path)
            snap_floats_(model, b)
            out = Path(tmp) / "m.kwh"
            kwh.save(model, out)
            rep = file_report(out)
            rows.append({"file": path.name, "float_bits": b,
                         "error_pct": 100 * evaluate(model, test)["error"],
                         "payload_bytes": rep["payload_bytes"], "file_bytes": rep["file_bytes"]})
    for r in rows:
        r["max_compression"] = 32 * w_orig / (8 * r["payload_bytes"])
        r["file_vs_dense_fp32"] = dense / r["file_bytes"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--data", required=True)
    p.add_argument("--bits", type=int, nargs="+", default=[12, 10, 8])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    rows = [r for f in a.files for r in measure(f, a.data, a.bits)]
    cmd = "python -m benchmarks.float_grids " + " ".join(
        [f"--data {a.data}", "--bits " + " ".join(map(str, a.bits)), *map(str, a.files),
         f"--out {a.out}"])
    lines = [f"# Biases and norms on grids: compressed files saved again ({git_commit()})", "",
             f"Command: `{cmd}`", "",
             "Rows without bits: the file as committed (float32 biases and norms). Max. compr. = "
             "32 x dense weights / payload bits; file vs dense = the original model's float32 "
             "parameters' bytes / file bytes.", "",
             "| file | float bits | test error % | payload B | max compr. | file B | file vs dense |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mc = f"{r['max_compression']:.1f}x"
        lines.append(f"| {r['file']} | {r['float_bits'] or 'float32'} | {r['error_pct']:.2f} | "
                     f"{r['payload_bytes']:,} | {mc} | {r['file_bytes']:,} | "
                     f"{r['file_vs_dense_fp32']:.1f}x |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Render benchmarks/results/uncertainty_lenet5.csv (+ _meta.json) as a markdown table.

    python benchmarks/uncertainty_table.py [PREFIX]   # prints the table section to stdout
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLS = [("model", "model"), ("method", "predictive"), ("samples", "S"), ("epochs", "epochs"),
        ("test_error", "test error %"), ("nll", "NLL"), ("brier", "Brier"), ("ece", "ECE %"),
        ("auroc_entropy", "AUROC H"), ("auroc_mi", "AUROC MI"), ("mean_mi_test", "MI test"),
        ("mean_mi_ood", "MI OOD"), ("temperature", "T"), ("kept", "kept / arch, bits")]
PERCENT = {"test_error", "ece"}


def cell(key: str, v: str) -> str:
    if v == "":
        return "-"
    if key in PERCENT:
        return f"{100 * float(v):.2f}"
    if key in {"nll", "brier", "auroc_entropy", "auroc_mi", "temperature"}:
        return f"{float(v):.4f}"
    if key in {"mean_mi_test", "mean_mi_ood"}:
        return f"{float(v):.4f}"
    return v


def main(prefix: str) -> int:
    rows = list(csv.DictReader(open(f"{prefix}.csv")))
    meta = json.loads(Path(f"{prefix}_meta.json").read_text())
    pairs = dict.fromkeys((r["train_data"], r["ood_data"]) for r in rows)
    for train, ood in pairs:
        print(f"\n### Trained on {train}, OOD = {ood} test images\n")
        print("| " + " | ".join(h for _, h in COLS) + " |")
        print("|" + "---|" * len(COLS))
        for r in rows:
            if (r["train_data"], r["ood_data"]) == (train, ood):
                print("| " + " | ".join(cell(k, r[k]) for k, _ in COLS) + " |")
    print(f"\nWall time {meta['wall_s']:.0f} s; load average at start {meta['load_avg_start']}, "
          f"at end {meta['load_avg_end']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "benchmarks/results/uncertainty_lenet5")))

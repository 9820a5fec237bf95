"""What shrinking while training saved: the Bayesian phase's CPU time of paper-table runs.

    python -m benchmarks.shrink_cost benchmarks/results/paper_table_lenet5_mnist_runs/seed0

For each Bayesian run in the folder (a kwh.train run with ``shrink_patience``), reads its
log: the CPU seconds of every Bayesian epoch (training and the epoch's evaluations, this
process), the step time, the alive units, and the shrink events. Without shrinking every
epoch costs what the epochs before the first removal cost (the tensors keep their shapes), so
the run's cost without shrinking is the median of those epochs times the number of epochs;
the table says how many epochs that median rests on. Writes <out>.md and <out>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def analyse(run: Path) -> dict | None:
    """Cost figures of one run folder, or None when it is not a shrinking Bayesian run."""
    log = run / "log.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    epochs = [r for r in records if r.get("event") == "epoch" and r.get("phase") == "bayes"]
    shrinks = [r for r in records if r.get("event") == "shrink"]
    if not epochs:
        return None
    first = shrinks[0]["epoch"] if shrinks else len(epochs)
    whole = [r["cpu_seconds"] for r in epochs if r["epoch"] <= first]
    with_shrink = sum(r["cpu_seconds"] for r in epochs)
    without = statistics.median(whole) * len(epochs)
    return {
        "run": run.name, "epochs": len(epochs), "first_removal_after_epoch": first if shrinks else None,
        "unshrunk_epochs_measured": len(whole), "cpu_s_with_shrinking": with_shrink,
        "cpu_s_without_shrinking": without, "ratio": with_shrink / without,
        "step_ms_first": epochs[0].get("step_ms"), "step_ms_last": epochs[-1].get("step_ms"),
        "architecture_first": epochs[0].get("architecture"),
        "architecture_last": epochs[-1].get("architecture"),
        "test_error_last": epochs[-1].get("test_error"), "removals": len(shrinks),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shrink_cost",
                                description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a folder of run folders (a paper-table seed folder)")
    p.add_argument("--out", default=None, help="output stem (default: benchmarks/results/"
                                               "shrink_cost_<folder's parent name>)")
    a = p.parse_args(argv)
    folder = Path(a.folder)
    if not folder.is_dir():
        p.error(f"no such folder: {folder}")
    rows = [r for r in (analyse(d) for d in sorted(folder.iterdir()) if d.is_dir()) if r]
    if not rows:
        p.error(f"{folder} holds no Bayesian run with a log")
    stem = Path(a.out or f"benchmarks/results/shrink_cost_{folder.parent.name.replace('_runs', '')}")
    command = "python -m benchmarks.shrink_cost " + " ".join(sys.argv[1:] if argv is None else argv)
    md = [f"# Shrinking while training: CPU time of the Bayesian phase ({folder})", "",
          f"Command: `{command}`", "",
          "CPU seconds of this process per Bayesian epoch (training steps and the epoch's test "
          "and validation passes), summed over the run. Without shrinking: the median epoch "
          "before the first removal (same tensor shapes every epoch) times the epochs.", "",
          "| run | epochs | first removal after epoch | CPU s with shrinking | CPU s without "
          "(median of n unshrunk epochs x epochs) | with / without | step ms first -> last "
          "| units first -> last | test error % last |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['run']} | {r['epochs']} | {r['first_removal_after_epoch']} | "
                  f"{r['cpu_s_with_shrinking']:.0f} | {r['cpu_s_without_shrinking']:.0f} "
                  f"(n={r['unshrunk_epochs_measured']}) | {r['ratio']:.2f} | "
                  f"{r['step_ms_first']} -> {r['step_ms_last']} | {r['architecture_first']} -> "
                  f"{r['architecture_last']} | {r['test_error_last']} |")
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text("\n".join(md) + "\n")
    Path(f"{stem}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`kwh report MODEL --out report.html`: one self-contained HTML page about a (compressed) model."""

from __future__ import annotations

import argparse
import sys

from kwh.cli.energy import add_energy_options, energy_settings

__all__ = ["register", "run"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `report` subcommand."""
    p = subparsers.add_parser(
        "report", help="one self-contained HTML report about MODEL: architecture, bits, "
                       "rates, energy, comparison with its dense original, calibration",
        description="Write one HTML file (images inlined, no external resources) about MODEL "
                    "against its dense original: kept units per layer, bits, what shrank "
                    "(weights, weights' bits, MACs, bytes), modelled energy per layer and how "
                    "it rests on where the weights live, test error against compression and "
                    "MACs. Options add what the file does not hold: --checkpoint the "
                    "posterior's log-alpha histograms, --data the test error and reliability "
                    "diagrams, --compare results of other methods on the same network.")
    p.add_argument("model", metavar="MODEL", help="a .kwh file, a training checkpoint, or a "
                   "reference model name")
    p.add_argument("--out", default="report.html", help="the HTML file to write "
                   "(default report.html)")
    p.add_argument("--checkpoint", default=None, metavar="RUN", help="Bayesian checkpoint or "
                   "run folder: log-alpha histograms and the Bayesian reliability diagram")
    p.add_argument("--log", default=None, help="training log.jsonl (default: the checkpoint's)")
    p.add_argument("--compare", default=None, metavar="CSV", help="results to plot beside "
                   "MODEL (e.g. a paper table): only the rows of MODEL's network and of one "
                   "data set (--data, else the only one in the file)")
    p.add_argument("--samples", type=int, default=10, help="posterior samples for the "
                   "Bayesian reliability diagram (default 10)")
    p.add_argument("--reliability-examples", type=int, default=1000, help="test examples for "
                   "the reliability diagrams (default 1000)")
    p.add_argument("--measure", action="store_true", help="also measure energy (RAPL/NVML)")
    add_energy_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build and write the report; returns the exit code."""
    from kwh.app import load_model
    from kwh.report import write_report
    table, config = energy_settings(args)
    for name in ("samples", "reliability_examples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, "
                             f"got {getattr(args, name)}")
    n = write_report(args.out, load_model(args.model), checkpoint=args.checkpoint, log=args.log,
                     compare_csv=args.compare, data=args.data, data_dir=args.data_dir,
                     limit=args.limit, table=table, config=config, dense=args.dense,
                     dense_accuracy=args.dense_accuracy, accuracy=args.accuracy,
                     measure=args.measure, samples=args.samples,
                     reliability_examples=args.reliability_examples,
                     progress=sys.stderr.isatty())
    print(f"wrote {args.out} ({n:,} bytes)")
    return 0

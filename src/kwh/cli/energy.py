"""`kwh energy MODEL`: modelled and measured energy per layer: dense, compressed, sigma-delta."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run", "add_energy_options", "energy_settings"]


def add_energy_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `kwh energy` and `kwh report`: data, price table, hardware model."""
    p.add_argument("--data", default=None, help="test data set for accuracy and input shape "
                   "(mnist, fashion-mnist, cifar10)")
    p.add_argument("--data-dir", default=None, help="folder with the data sets, searched "
                   "alone (default: $KWH_DATA, standard places, then the cache)")
    p.add_argument("--limit", type=int, default=None, help="test examples for the accuracy "
                   "(default: the whole test split)")
    p.add_argument("--table", default=None, help="energy table .json/.toml (default: Horowitz "
                   "2014, 45 nm)")
    p.add_argument("--sram-kb", type=float, default=1024.0, help="on-chip SRAM size in KB "
                   "(default 1024); weights that do not fit (with the activations) are read "
                   "from DRAM")
    p.add_argument("--act-bits", type=int, default=16, help="fixed-point activation bits of "
                   "compressed layers (default 16)")
    p.add_argument("--acc-bits", type=int, default=None, help="accumulator bits (default: the "
                   "exact width w + a + ceil(log2 fan-in))")
    p.add_argument("--batch-size", type=int, default=1, help="inferences sharing one read of "
                   "the weights (default 1)")
    p.add_argument("--weight-format", default="auto", choices=["auto", "dense", "sparse"],
                   help="storage of compressed weights (default: the smaller)")
    p.add_argument("--dense", default=None, metavar="NAME", help="dense original to compare "
                   "with (default: recognised from the file's summary)")
    p.add_argument("--dense-accuracy", type=float, default=None, help="test accuracy (0-1) of "
                   "the dense original, for its energy per correct prediction")
    p.add_argument("--accuracy", type=float, default=None, help="accuracy (0-1) of MODEL, "
                   "instead of measuring it on --data")


def energy_settings(args: argparse.Namespace):
    """(table, config) from parsed options."""
    from kwh.energy import EnergyConfig, HOROWITZ_45NM, load_table
    table = load_table(args.table) if args.table else HOROWITZ_45NM
    config = EnergyConfig(act_bits=args.act_bits, acc_bits=args.acc_bits, sram_kb=args.sram_kb,
                          batch_size=args.batch_size, weight_format=args.weight_format)
    for name in ("dense_accuracy", "accuracy"):
        v = getattr(args, name)
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be a fraction in [0, 1], got {v}")
    return table, config


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `energy` subcommand."""
    p = subparsers.add_parser(
        "energy", help="energy per inference and per correct prediction, modelled and measured",
        description="Per-layer modelled energy (ops and memory traffic x pJ per op, Horowitz "
                    "2014 by default) of MODEL and its dense original side by side, the "
                    "sigma-delta version with --sigma-delta, and measured energy where the "
                    "machine has counters (RAPL, NVML). The dense / compressed ratio is "
                    "printed as modelled and with both models' weights in DRAM, and in SRAM, "
                    "since much of it can rest on where the weights are assumed to live.")
    p.add_argument("model", metavar="MODEL", help="a .kwh file, a training checkpoint, or a "
                   "reference model name (lenet300, lenet5, vgg, resnet20, vit)")
    add_energy_options(p)
    p.add_argument("--sigma-delta", action="store_true", help="also price the sigma-delta "
                   "version per frame on moving-digit sequences (uses kwh.spike)")
    p.add_argument("--scale", type=float, default=16.0, help="sigma-delta quantizer scale k")
    p.add_argument("--sequences", type=int, default=20, help="sigma-delta sequences")
    p.add_argument("--frames", type=int, default=10, help="frames per sigma-delta sequence")
    p.add_argument("--no-measure", action="store_true", help="skip measured energy")
    p.add_argument("--window", type=float, default=2.0, help="seconds per measurement window "
                   "(idle window the same length)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the comparison; returns the exit code."""
    from kwh.app import compare, load_model
    from kwh.energy.format import format_comparison
    from kwh.energy.sensitivity import weight_memory_sensitivity
    table, config = energy_settings(args)
    comp = compare(load_model(args.model), data=args.data, data_dir=args.data_dir,
                   limit=args.limit, table=table, config=config, dense=args.dense,
                   dense_accuracy=args.dense_accuracy, accuracy=args.accuracy,
                   measure=not args.no_measure, window_s=args.window,
                   sigma_delta=args.sigma_delta, scale=args.scale, sequences=args.sequences,
                   frames=args.frames, progress=sys.stderr.isatty())
    sensitivity = weight_memory_sensitivity(comp, table, config)
    print(format_comparison(comp, sensitivity))
    if args.json:
        from kwh.format.io import atomic_write_bytes
        d = comp.to_dict()
        d["weight_memory_sensitivity"] = None if sensitivity is None else sensitivity.to_dict()
        atomic_write_bytes(args.json, (json.dumps(d, indent=1) + "\n").encode())
    return 0

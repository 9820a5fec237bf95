"""`kwh evaluate FILE --data D`: test error of a saved .kwh model.

Other evaluations (e.g. uncertainty) add their options in ``register`` and their branch at the
top of ``run``; the library side is kwh.app (``error_on``, ``evaluate_model_file``).
"""

from __future__ import annotations

import argparse

from kwh.cli.args import int_at_least

__all__ = ["register", "run", "add_arguments"]



def add_arguments(p: argparse.ArgumentParser) -> None:
    """FILE and the test-set options every evaluation shares."""
    from kwh.data import DATASETS

    p.add_argument("file", help="the model to evaluate: a .kwh file, or a checkpoint or run "
                   "folder from 'kwh train' (with --uncertainty its posterior is sampled)")
    p.add_argument("--data", choices=list(DATASETS), default="mnist",
                   help="test set (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder holding the data set files, "
                   "searched alone (default: $KWH_DATA, standard places, then download)")
    p.add_argument("--limit-test", type=int_at_least(1), default=None,
                   help="use only the first N test examples")
    p.add_argument("--batch-size", type=int_at_least(1), default=1000,
                   help="examples per forward pass (default: %(default)s)")


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate", help="test error of a .kwh model",
        description="Load a .kwh file (or a checkpoint of kwh train) and print its error on "
                    "the test set.")
    add_arguments(p)
    p.add_argument("--uncertainty", action="store_true",
                   help="also NLL, Brier, ECE (15 bins) and, with --ood, OOD detection AUROC")
    p.add_argument("--ood", default=None, help="out-of-distribution test set, e.g. fashion-mnist")
    p.add_argument("--samples", type=int_at_least(1), default=20,
                   help="posterior samples per input for Bayesian checkpoints (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the test error of the model in args.file."""
    from kwh.app import error_on, evaluate_model_file, load_model
    from kwh.app.evaluate import normalization_note

    if args.uncertainty or args.ood:
        from kwh.bayes.uncertainty import format_uncertainty
        from kwh.progress import Progress

        talk = not getattr(args, "quiet", False)  # progress on stderr unless -q
        with Progress("kwh evaluate", "examples", enabled=talk) as bar:
            result = evaluate_model_file(args.file, args.data, args.ood, args.samples,
                                         data_dir=args.data_dir, limit_test=args.limit_test,
                                         progress=bar)
        print(format_uncertainty(result))
        return 0
    loaded = load_model(args.file)
    if loaded.kind == "reference":
        raise ValueError(f"{args.file!r} names an untrained reference model; give a .kwh file "
                         "or a checkpoint or run folder of 'kwh train'")
    result = error_on(loaded.model, args.data, args.data_dir, args.limit_test, args.batch_size)
    print(f"test error {100 * result['error']:.2f}% ({result['n'] - result['correct']:,} of "
          f"{result['n']:,} {args.data} test examples wrong) -- {args.file}")
    note = normalization_note(loaded.model, args.data)
    if note:
        print(f"note: {note}")
    return 0

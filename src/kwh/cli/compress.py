"""`kwh compress`: train (or load a `kwh train` checkpoint), compress, save a .kwh, print it."""

from __future__ import annotations

import argparse
import sys

from kwh.cli.args import int_in, number, positive_float
from kwh.errors import KwhError

__all__ = ["register", "run"]




def register(subparsers) -> None:
    """Add the ``compress`` subcommand."""
    from kwh.cli.train import add_training_arguments
    from kwh.compress.config import FLOAT_BITS, MAX_TOTAL_BITS, MIN_TOTAL_BITS

    p = subparsers.add_parser(
        "compress", help="train with a sparsity prior and compress to a .kwh file",
        description="Train a reference net on the free energy (the options of `kwh train`), or "
                    "load a `kwh train` checkpoint with --checkpoint, then prune, fold and "
                    "quantize it (kwh.compress), evaluate it on the test set before and after "
                    "quantization, save it as a .kwh file (with the training data's input "
                    "normalization) and print the summary.")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="compress this checkpoint (file or run folder of `kwh train`) instead of "
                        "training; its data set is used for the test error")
    add_training_arguments(p)
    p.add_argument("--threshold", type=number, default=None,
                   help="log-alpha pruning threshold for every layer (default: each prior's)")
    p.add_argument("--max-bits", type=int_in(MIN_TOTAL_BITS, MAX_TOTAL_BITS), default=None,
                   help="cap on the bits per weight of any layer (1 sign + magnitude bits)")
    p.add_argument("--bits-search", choices=["fit", "raise", "off"], default="fit",
                   help="accuracy guard of the posterior's bits on the run's validation split: "
                        "raise bits where quantization costs more than --bits-tolerance, then "
                        "lower them where it costs no more (fit, the default); only raise; or "
                        "off (the posterior rule alone)")
    p.add_argument("--bits-tolerance", type=number, default=0.05, metavar="POINTS",
                   help="error (percentage points) quantization may cost on the validation "
                        "split (default: %(default)s)")
    p.add_argument("--prune-search", choices=["off", "fit", "fit-macs"], default="off",
                   help="per-layer pruning thresholds searched on the run's validation split "
                        "from the posterior's, the cuts that leave the fewest nonzero weights "
                        "(fit) or nonzero multiplications (fit-macs) while the error stays "
                        "within --prune-tolerance; off (default): the posterior's thresholds")
    p.add_argument("--prune-tolerance", type=number, default=0.1, metavar="POINTS",
                   help="error (percentage points) the threshold search may cost on the "
                        "validation split (default: %(default)s)")
    p.add_argument("--float-bits", type=int_in(0, 24), default=FLOAT_BITS, metavar="BITS",
                   help="magnitude bits of the biases and norms, each tensor on its own "
                        "fixed-point grid (guarded like the weights' bits); 0 keeps them float32 "
                        "(default: %(default)s)")
    p.add_argument("--finetune-epochs", type=int_in(0, 10000), default=0, metavar="N",
                   help="after compressing, train the kept weights N epochs on their fixed-point "
                        "grids, pruned weights held at zero: same architecture, bits and "
                        "sparsity (default 0: no fine-tuning)")
    p.add_argument("--finetune-lr", type=positive_float, default=None, metavar="LR",
                   help="Adam learning rate of the fine-tuning, decayed linearly to 0 "
                        "(default: 0.001)")
    p.add_argument("--finetune-teacher", default=None, metavar="MODEL",
                   help="distil the fine-tuning from this model's outputs (weight 0.9, "
                        "temperature 4): the dense start the run began from, as the folder of "
                        "a plain run (`kwh train --epochs 0`; a run that pretrains itself keeps "
                        "no separate dense net), a state dict or a .kwh file")
    p.add_argument("--finetune-dir", default=None, metavar="DIR",
                   help="run folder of the fine-tuning, resumed when it is there "
                        "(default: the output file's name + '-finetune')")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the .kwh file to write (default: MODEL-DATA-PRIOR.kwh)")
    p.add_argument("--deploy-copy", default=None, metavar="FILE",
                   help="also write FILE: the same model without the compression summary (a "
                        "deployment copy, smaller by the summary's compressed size; it loads "
                        "and runs the same, but inspect, energy and report know nothing of the "
                        "dense original)")
    p.add_argument("--test-batch-size", type=int_in(1, 1 << 20), default=1000,
                   help="batch size of the test-set evaluation (default: %(default)s)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar while training (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train or load, compress, save; prints the summary and the file written."""
    import kwh
    from kwh.compress import CompressConfig, format_summary
    from kwh.format.io import check_destination
    from kwh.compress.summary import format_file_line
    from kwh.data import batch_loader, get_dataset, input_normalization

    from kwh.bayes.batchnorm import batchnorm_layers
    from kwh.train.data import load_train_data
    from kwh.train.evaluate import BN_CALIBRATION, recalibrate_from_inputs

    if args.out is not None:
        check_destination(args.out)  # a missing folder fails now, not after the training
    if not args.finetune_epochs and (args.finetune_lr is not None or args.finetune_dir
                                     or args.finetune_teacher):
        raise KwhError("--finetune-lr, --finetune-dir and --finetune-teacher set the "
                       "fine-tuning: give --finetune-epochs N (N >= 1) too")
    teacher = _teacher(args.finetune_teacher) if args.finetune_teacher else None
    model, tconfig, records = _bayesian_model(args)
    data_dir = args.data_dir if args.data_dir is not None else tconfig.data_dir
    limit = args.limit_test if args.limit_test is not None else tconfig.limit_test
    test = get_dataset(tconfig.data, "test", data_dir, limit=limit)
    loader = batch_loader(test, args.test_batch_size)
    config = CompressConfig(threshold=args.threshold, max_bits=args.max_bits,
                            input_shape=tuple(test.tensors[0].shape[1:]),
                            bits_search=args.bits_search, bits_tolerance=args.bits_tolerance,
                            prune_search=args.prune_search,
                            prune_tolerance=args.prune_tolerance,
                            float_bits=args.float_bits or None)
    guard = None
    tdata = None
    has_bn = bool(batchnorm_layers(model))
    searches = args.bits_search != "off" or args.prune_search != "off"
    if searches or args.finetune_epochs or has_bn:
        from dataclasses import replace

        tdata = load_train_data(replace(tconfig, data_dir=data_dir))
    if teacher is not None:  # before any work: a teacher of another task fails now
        from kwh.train.distill import check_teacher

        if teacher.data is not None and teacher.data != tconfig.data:
            raise KwhError(f"--finetune-teacher {args.finetune_teacher} was trained on "
                           f"{teacher.data}, this run on {tconfig.data}: give the dense start "
                           "of this run's data")
        check_teacher(teacher.model, model, tdata.train.tensors[0][:2])
        teacher = teacher.model
    if has_bn:  # the statistics of the network eval mode runs (kwh.train's do the same)
        x = tdata.train.tensors[0]
        n = recalibrate_from_inputs(model.cpu(), x, 500)
        print(f"kwh: BatchNorm statistics of {n} layers re-estimated on "
              f"{min(len(x), BN_CALIBRATION):,} training "
              "images with the posterior means (kwh.bayes.recalibrate_batchnorm)", file=sys.stderr)
    if searches:
        val = tdata.validation
        if val is None:
            print("kwh: the run held out no validation examples (--validation 0): the bits "
                  "and thresholds are the posterior's, unguarded", file=sys.stderr)
        else:
            guard = batch_loader(val, args.test_batch_size)
    small = kwh.compress(model.cpu(), config, eval_data=loader, guard_data=guard)
    out = args.out or f"{tconfig.model}-{tconfig.data}-{tconfig.prior}.kwh"
    if args.finetune_epochs:
        small = _finetune(small, tdata, args, out, loader, teacher)
    small.kwh_input_normalization = input_normalization(tconfig.data)  # recorded in the file
    size = kwh.save(small, out)
    print(format_summary(small.kwh_summary))
    print(format_file_line(small.kwh_summary, size, f"written to {out}"))
    if args.deploy_copy:
        bare = kwh.save(small, args.deploy_copy, summary=False)
        print(format_file_line(small.kwh_summary, bare,
                               f"deployment copy (no summary) written to {args.deploy_copy}"))
    dense = _dense_start_error(args, records)
    if dense is not None and small.kwh_summary.get("eval"):
        ev = small.kwh_summary["eval"]
        err = 100 * ev.get("error_after_finetune", ev["error_after_quantization"])
        print(f"vs dense start {dense[0]:.2f}% test error after {dense[1]} plain epochs: "
              f"{err - dense[0]:+.2f} points")
    return 0


def _teacher(spec: str):
    """The fine-tuning's teacher as kwh.app.load_model reads it; an untrained reference model
    is refused (it would distil noise)."""
    from kwh.app import load_model

    loaded = load_model(spec)
    if loaded.kind == "reference":
        raise KwhError(f"--finetune-teacher {spec}: an untrained reference model; give the "
                       "trained dense start (a plain `kwh train --epochs 0` run folder, a state "
                       "dict or a .kwh file)")
    return loaded


def _finetune(small, tdata, args, out: str, test_loader, teacher=None):
    """The compressed model fine-tuned on its grids (kwh.app.finetune); its test error after
    goes into the summary's eval (error_after_finetune) and both errors are printed."""
    from kwh.app.finetune import finetune

    run_dir = args.finetune_dir or f"{out}-finetune"
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    lr = 1e-3 if args.finetune_lr is None else args.finetune_lr
    tuned = finetune(small, tdata, args.finetune_epochs, run_dir, lr=lr,
                     batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                     device=args.device, progress=progress, eval_data=test_loader,
                     teacher=teacher)
    s = tuned.kwh_summary
    if s.get("eval"):
        before = s["eval"]["error_after_quantization"]
        n = args.finetune_epochs
        print(f"fine-tuned {n} epoch{'s' if n != 1 else ''} on the fixed-point grids ({run_dir}): "
              f"test error {100 * before:.2f}% -> {100 * s['eval']['error_after_finetune']:.2f}%")
    return tuned


def _dense_start_error(args, records: list[dict]) -> tuple[float, int] | None:
    """(test error %, plain epochs) of the run's last plain epoch, when it pretrained."""
    plain = [r for r in records if r.get("event") == "epoch" and r.get("phase") == "pretrain"]
    return (plain[-1]["test_error"], plain[-1]["epoch"]) if plain else None


_OTHER_METHODS = {
    "binary": "a binary run's weights are already 1 bit (kwh.train.load_checkpoint gives the "
              "network; kwh.energy prices it)",
    "sgld": "an SGLD run holds weight samples for kwh.predict (kwh.train.load_samples), not a "
            "posterior to prune",
    "sws": "quantize a soft weight-sharing run with kwh.sws.quantize_(model, "
           "kwh.train.load_mixture_prior(run))",
}


def _bayesian_model(args: argparse.Namespace):
    """(trained Bayesian model, its TrainConfig, the run's log records): from --checkpoint or
    a fresh training run."""
    from kwh.train import load_checkpoint, run_training

    if args.checkpoint is not None:
        from kwh.train import read_checkpoint_meta

        model, tconfig = load_checkpoint(args.checkpoint)
        if tconfig.method != "bayes":
            raise KwhError(f"{args.checkpoint} is a --method {tconfig.method} run: kwh compress "
                           "prunes and quantizes a Bayesian posterior; "
                           + _OTHER_METHODS[tconfig.method])
        return model, tconfig, read_checkpoint_meta(args.checkpoint).get("log", [])
    from kwh.cli.train import config_from_args

    tconfig = config_from_args(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    res = run_training(tconfig, progress=progress)
    return res.model, tconfig, res.log

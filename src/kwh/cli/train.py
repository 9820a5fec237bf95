"""`kwh train`: pretrain, bayesify and train a reference net on the free energy, with checkpoints."""

from __future__ import annotations

import argparse
import os
import sys

from kwh.cli.args import fraction, int_at_least, nonnegative_float, positive_float

__all__ = ["register", "run", "config_from_args"]





def _prior_option(text: str) -> tuple[str, float | str]:
    """KEY=NUMBER, or KEY=WORD for the options that take a word (init_scale=one)."""
    key, sep, value = (t.strip() for t in text.partition("="))
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. tau0=1e-5, threshold=-1 or init_scale=one), got {text!r}")
    try:
        return key, float(value)
    except ValueError:
        return key, value


def _typed_option(text: str, booleans: bool, examples: str) -> tuple[str, object]:
    """KEY=VALUE with a number, none, or (``booleans``) true/false; the config checks the key."""
    key, sep, value = (t.strip() for t in text.partition("="))
    if sep and key and value:
        low = value.lower()
        if booleans and low in ("true", "false"):
            return key, low == "true"
        if low == "none":
            return key, None
        for kind in (int, float):
            try:
                return key, kind(value)
            except ValueError:
                pass
    kinds = "a number, true/false or none" if booleans else "a number or none"
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE with {kinds} (e.g. {examples}), "
                                     f"got {text!r}")


def _sgld_option(text: str) -> tuple[str, object]:
    """KEY=VALUE of --sgld-option."""
    return _typed_option(text, True, "lr=1e-6, thin_steps=50 or preconditioned=true")


def _sws_option(text: str) -> tuple[str, object]:
    """KEY=VALUE of --sws-option."""
    return _typed_option(text, False, "tau=5e-3, n_components=17 or lr=none")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options that map onto TrainConfig (shared with commands that train first)."""
    from kwh.bayes import PRIORS
    from kwh.data import DATASETS
    from kwh.models import MODELS
    from kwh.train.config import (
        DEVICES,
        LR_DECAYS,
        METHODS,
        SGLD_DEFAULTS,
        SWS_DEFAULTS,
        TrainConfig,
    )

    d = TrainConfig.__dataclass_fields__
    p.add_argument("--model", choices=list(MODELS), default=d["model"].default,
                   help="reference network (default: %(default)s)")
    p.add_argument("--data", choices=list(DATASETS), default=d["data"].default,
                   help="data set (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder holding the data set files, "
                   "searched alone (default: $KWH_DATA, standard places, then download)")
    p.add_argument("--prior", choices=list(PRIORS), default=d["prior"].default,
                   help="sparsity prior (default: %(default)s)")
    p.add_argument("--method", choices=METHODS, default=d["method"].default,
                   help="what the epochs after pretraining do: train on the free energy under "
                        "--prior (bayes), train a binary network from the dense start (binary: "
                        "kwh.binarize_, sign weights and activations), sample the plain "
                        "network's posterior with SGLD (sgld: weight samples kept in "
                        "OUT_DIR/samples.safetensors, for kwh.predict(..., store=...)), or "
                        "retrain it under soft weight-sharing's Gaussian-mixture prior (sws: "
                        "the prior in the checkpoint, kwh.train.load_mixture_prior, for "
                        "kwh.sws.quantize_); default: %(default)s")
    p.add_argument("--sgld-option", action="append", type=_sgld_option, default=[],
                   metavar="KEY=VALUE", help=f"SGLD setting for --method sgld, one of "
                   f"{', '.join(SGLD_DEFAULTS)}; e.g. lr=1e-6 (the constant step size; "
                   f"default 1e-6, 4e-8 when preconditioned; --lr and --lr-decay are the "
                   f"pretraining's), prior_std=1, temperature=1, preconditioned=false, "
                   f"burn_in_epochs=1, thin_steps=100 (SGLD steps between samples), "
                   f"max_samples=50 (none: keep all); repeatable")
    p.add_argument("--sws-option", action="append", type=_sws_option, default=[],
                   metavar="KEY=VALUE", help=f"soft weight-sharing setting for --method sws, "
                   f"one of {', '.join(SWS_DEFAULTS)}; e.g. tau=5e-3 (the prior's weight per "
                   f"example), n_components=17, zero_mix=0.999, init_std=0.25, lr=5e-4 (the "
                   f"network's; none: --lr), lr_means=1e-4, lr_log_vars=3e-3, lr_mix=3e-3; "
                   f"repeatable")
    p.add_argument("--prior-option", action="append", type=_prior_option, default=[],
                   metavar="KEY=VALUE", help="prior setting, e.g. tau0=1e-5, threshold=-1, "
                   "max_weight_var=0.04 or init_scale=one (where a group prior's z starts: 1; "
                   "rms: each group's weight RMS; default: one from scratch, rms from trained "
                   "weights); repeatable")
    p.add_argument("--epochs", type=int_at_least(0), default=d["epochs"].default,
                   help="Bayesian epochs (default: %(default)s); 0 with --pretrain-epochs N "
                        "trains a plain (dense) net only")
    p.add_argument("--pretrain-epochs", type=int_at_least(0),
                   default=d["pretrain_epochs"].default,
                   help="plain cross-entropy epochs first (default: %(default)s)")
    p.add_argument("--batch-size", type=int_at_least(1), default=d["batch_size"].default,
                   help="global batch size (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=d["lr"].default,
                   help="Adam learning rate (default: %(default)s)")
    p.add_argument("--variance-lr-mult", type=positive_float,
                   default=d["variance_lr_mult"].default,
                   help="lr multiplier of the posterior's log-scale parameters (log-variances, "
                        "the horseshoe's locations); default: the prior's own (1 for "
                        "log-uniform and group-nj, 10 for group-horseshoe), 3 for group-nj "
                        "from scratch")
    p.add_argument("--kl-compute-power", type=nonnegative_float,
                   default=d["kl_compute_power"].default,
                   help="weight each Bayesian layer's KL by max(1, output positions per "
                        "weight / those of the layer with the most weights) ** P, so the "
                        "posterior prunes where the multiplications are (0.5: a ResNet-20's "
                        "first stage 4x); default %(default)s: the free energy")
    p.add_argument("--lr-decay", choices=LR_DECAYS, default=d["lr_decay"].default,
                   help="lr schedule: linear decays each phase's lr to 0 at its end (default; "
                        "constant for group-nj from scratch)")
    p.add_argument("--kl-warmup", nargs=2, type=fraction, metavar=("START", "END"),
                   default=[d["kl_warmup_start"].default, d["kl_warmup_end"].default],
                   help="KL weight 0 until START, 1 from END, fractions of the Bayesian epochs "
                   "(default: 0 1 from scratch, 0 0.2 after --pretrain-epochs: the ramp that "
                   "won each case in the LeNet-300-100 ablations)")
    p.add_argument("--seed", type=int_at_least(0), default=d["seed"].default,
                   help="random seed (default: %(default)s)")
    p.add_argument("--shrink-patience", type=int_at_least(0), default=0, metavar="EPOCHS",
                   help="remove groups (filters, units) from the training network once they "
                        "have been pruned this many epochs in a row, so later epochs cost less "
                        "(nn.Sequential chains); 0: never (default)")
    p.add_argument("--limit-train", type=int_at_least(1), default=None,
                   help="use only the first N training examples")
    p.add_argument("--validation", type=int_at_least(0), default=None, metavar="N",
                   help="hold the last N training examples out for validation (the bit guard "
                        "of kwh compress, model choices); default: one twelfth (5,000 of "
                        "MNIST's 60,000); 0 for none")
    p.add_argument("--limit-test", type=int_at_least(1), default=None,
                   help="use only the first N test examples")
    p.add_argument("--out-dir", default=None,
                   help="run folder for log.jsonl and checkpoints (default: runs/MODEL-DATA-PRIOR)")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads per process (default: PyTorch's choice)")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=None, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (default: each epoch)")
    p.add_argument("--max-failures", type=int_at_least(1), default=d["max_failures"].default,
                   help="non-finite steps in a row (each rolled back, lr halved) before giving "
                   "up (default: %(default)s)")
    p.add_argument("--device", default=d["device"].default,
                   help=f"one of {', '.join(DEVICES)} or cuda:N (default: %(default)s)")


def config_from_args(args: argparse.Namespace):
    """A TrainConfig from parsed options (validated by the config itself)."""
    from kwh.train import TrainConfig

    return TrainConfig(
        model=args.model, data=args.data, data_dir=args.data_dir, prior=args.prior,
        prior_options=dict(args.prior_option), method=args.method,
        sgld_options=dict(args.sgld_option), sws_options=dict(args.sws_option),
        pretrain_epochs=args.pretrain_epochs,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        variance_lr_mult=args.variance_lr_mult, lr_decay=args.lr_decay,
        kl_warmup_start=args.kl_warmup[0], kl_warmup_end=args.kl_warmup[1],
        kl_compute_power=args.kl_compute_power, seed=args.seed,
        validation=args.validation, shrink_patience=args.shrink_patience,
        limit_train=args.limit_train, limit_test=args.limit_test,
        out_dir=args.out_dir,
        threads=args.threads, checkpoint_every=args.checkpoint_every,
        max_failures=args.max_failures, device=args.device)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a net with a sparsity prior (free energy), with checkpoints",
        description="Optional plain pretraining, then bayesify_ and Bayesian training on the "
                    "free energy (--method: a binary net, SGLD samples of the plain net's "
                    "weights, or soft weight-sharing). Writes OUT_DIR/log.jsonl and OUT_DIR/checkpoint.safetensors "
                    "every epoch; --resume continues exactly where the last checkpoint left off. "
                    "Runs distributed under torchrun (see docs/distributed.md).")
    add_training_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its last checkpoint (starts a new "
                   "run when there is none)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kwh.train import run_training

    config = config_from_args(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = run_training(config, resume=args.resume, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0 and result.history:
        print(final_line(result.history[-1], result.checkpoint))
    return 0


def final_line(rec: dict, checkpoint) -> str:
    """'test error X%; alive per layer: name kept/total, ...; checkpoint: path', and for an
    SGLD run '; N weight samples: path'."""
    from pathlib import Path

    from kwh.train.samples import SAMPLES_FILENAME

    alive = ", ".join(f"{n}: {rec['alive'][n]}/{rec['total'][n]}" for n in rec.get("alive", {}))
    line = (f"test error {rec['test_error']:.2f}%; alive per layer: {alive or 'n/a'}; "
            f"checkpoint: {checkpoint}")
    if "samples" in rec:
        line += f"; {rec['samples']} weight samples: {Path(checkpoint).parent / SAMPLES_FILENAME}"
    return line

"""The training engine: pretraining, bayesify_, free-energy training (or binary training, SGLD
sampling, or soft weight-sharing), checkpoints and resume."""

from kwh.train.build import is_plain_run, load_checkpoint, load_plain_checkpoint
from kwh.train.checkpoint import checkpoint_path, read_checkpoint, read_checkpoint_meta
from kwh.train.config import TrainConfig
from kwh.train.data import TrainData
from kwh.train.engine import TrainResult, run_training
from kwh.train.mixture import load_mixture_prior
from kwh.train.samples import load_samples

__all__ = [
    # running
    "TrainConfig", "run_training", "TrainResult", "TrainData",
    # checkpoints
    "load_checkpoint", "load_plain_checkpoint", "is_plain_run", "checkpoint_path", "read_checkpoint", "read_checkpoint_meta",
    # the weight samples of an SGLD run, the mixture prior of a soft weight-sharing run
    "load_samples", "load_mixture_prior",
]

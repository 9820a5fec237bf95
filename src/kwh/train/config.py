"""TrainConfig: every setting of a training run, checked on construction, saved in checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from kwh.errors import KwhError

CONFIG_VERSION = 1
CUSTOM = "custom"  # model or data given to run_training as objects, not by name
LR_DECAYS = ("linear", "constant")
METHODS = ("bayes", "binary")  # what the second phase trains: the free energy, or a binary net
DEVICES = ("auto", "cpu", "cuda")

# Fields that change how a run computes, so a resumed run must agree on them; the others
# (where files go, how many threads, how often to save, how patient to be) may differ.
RUNTIME_FIELDS = frozenset({"data_dir", "out_dir", "threads", "device", "eval_batch_size",
                            "checkpoint_every", "max_failures"})


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class TrainConfig:
    """A training run: optional plain pretraining, then Bayesian training on the free energy.

    Schedules (Louizos et al. 2017 train with Adam, lr 1e-3, batch 100, lr decayed linearly
    to 0): with ``lr_decay="linear"`` pretraining decays ``lr`` linearly per step to 0 at its
    end, and the Bayesian epochs start again from ``lr`` and decay every group's lr linearly
    to 0 at the end, log-scale parameters at ``lr * variance_lr_mult`` (None: each prior's own). The KL weight is 0 until ``kl_warmup_start`` and rises
    linearly to 1 at ``kl_warmup_end``, both fractions of the Bayesian epochs (Sparse VD's
    5 -> 20 of 200 epochs, REFERENCES sec. 1, is 0.025 -> 0.1). Defaults 0 -> 0.2: with the
    lr decaying linearly, a KL-free first quarter would waste 44% of all the lr a short run
    has to move the posterior scales.
    """

    model: str = "lenet5"
    data: str = "mnist"
    data_dir: str | None = None
    prior: str = "group-horseshoe"
    prior_options: dict = field(default_factory=dict)
    method: str = "bayes"  # "binary": the second phase trains kwh.binarize_'s network instead
    binary_options: dict = field(default_factory=dict)  # kwh.binarize_ options
    pretrain_epochs: int = 0
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    variance_lr_mult: float | None = None  # None: each prior's own (kwh.bayes.param_groups)
    lr_decay: str = "linear"
    kl_warmup_start: float = 0.0
    kl_warmup_end: float = 0.2
    seed: int = 0
    shrink_patience: int = 0  # remove groups dead this many epochs in a row; 0: never
    validation: int | None = None  # held out of the training examples; None: one twelfth
    limit_train: int | None = None
    limit_test: int | None = None
    out_dir: str | None = None  # default runs/<model>-<data>-<prior>
    threads: int | None = None
    checkpoint_every: int | None = None  # optimizer steps between checkpoints; None: each epoch
    max_failures: int = 3  # consecutive non-finite steps (each rolled back) before giving up
    lr_backoff: float = 0.5  # lr factor applied after each rollback
    deterministic: bool = True
    device: str = "auto"
    eval_batch_size: int = 1000

    def __post_init__(self):
        from kwh.bayes.priors import prior_config
        from kwh.models import MODELS

        if self.model not in MODELS and self.model != CUSTOM:
            raise KwhError(f"Unknown model {self.model!r}; choose one of: {', '.join(MODELS)} "
                           f"(or {CUSTOM!r} with run_training(config, model=...))")
        if not isinstance(self.data, str) or not self.data:
            raise KwhError(f"data must be a data set name such as 'mnist', got {self.data!r}")
        if not isinstance(self.prior_options, dict):
            raise KwhError(f"prior_options must be a dict, got {self.prior_options!r}")
        try:
            pc = prior_config(self.prior, **self.prior_options)
        except (ValueError, TypeError) as e:
            raise KwhError(str(e)) from None
        self.prior = pc.name  # resolve aliases such as 'bc-ghs'
        if self.method not in METHODS:
            raise KwhError(f"Unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if not isinstance(self.binary_options, dict):
            raise KwhError(f"binary_options must be a dict, got {self.binary_options!r}")
        if self.binary_options and self.method != "binary":
            raise KwhError("binary_options are for method='binary'")
        if self.method == "binary":
            from kwh.binary import BinarizeConfig

            try:
                BinarizeConfig(**self.binary_options)
            except (TypeError, ValueError, KwhError) as e:
                raise KwhError(f"bad binary option: {e}") from None
            if self.shrink_patience:
                raise KwhError("shrink_patience removes pruned groups of a Bayesian net; a "
                               "binary run (method='binary') prunes nothing: leave it 0")
        for name in ("pretrain_epochs", "seed", "shrink_patience"):
            self._int(name, 0)
        for name in ("batch_size", "max_failures", "eval_batch_size"):
            self._int(name, 1)
        self._int("epochs", 0 if self.pretrain_epochs else 1)  # 0: a plain (dense) run
        if self.validation is not None:
            self._int("validation", 0)
        for name in ("limit_train", "limit_test", "threads", "checkpoint_every"):
            if getattr(self, name) is not None:
                self._int(name, 1)
        self._positive("lr")
        if self.variance_lr_mult is not None:
            self._positive("variance_lr_mult")
        if not (isinstance(self.lr_backoff, (int, float)) and 0 < self.lr_backoff < 1):
            raise KwhError(f"lr_backoff must lie in (0, 1), got {self.lr_backoff!r}")
        s, e = self.kl_warmup_start, self.kl_warmup_end
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (s, e)) \
                or not 0 <= s <= e <= 1:
            raise KwhError(f"KL warm-up needs 0 <= kl_warmup_start <= kl_warmup_end <= 1 "
                           f"(fractions of the Bayesian epochs), got {s!r} and {e!r}")
        if self.lr_decay not in LR_DECAYS:
            raise KwhError(f"Unknown lr_decay {self.lr_decay!r}; choose one of: {', '.join(LR_DECAYS)}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise KwhError(f"Unknown device {self.device!r}; choose one of: "
                           f"{', '.join(DEVICES)} or cuda:<index>")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            raise KwhError(f"limit_train={self.limit_train} is smaller than batch_size="
                           f"{self.batch_size}; lower the batch size or raise the limit")
        if not isinstance(self.deterministic, bool):
            raise KwhError(f"deterministic must be True or False, got {self.deterministic!r}")
        if self.out_dir is None:
            second = self.prior if self.method == "bayes" else self.method
            self.out_dir = f"runs/{self.model}-{self.data}-{second}"
        self.out_dir = str(self.out_dir)
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)

    def _int(self, name: str, low: int):
        v = getattr(self, name)
        if not _is_int(v) or v < low:
            raise KwhError(f"{name} must be an integer >= {low}, got {v!r}")

    def _positive(self, name: str):
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise KwhError(f"{name} must be a positive finite number, got {v!r}")

    @property
    def total_epochs(self) -> int:
        return self.pretrain_epochs + self.epochs

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of to_dict; unknown keys are an error (a config from another version)."""
        if not isinstance(d, dict):
            raise KwhError(f"a training config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KwhError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**d)

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that affect training and differ between two configs, as 'name: a != b'."""
        out = []
        for f in fields(self):
            if f.name in RUNTIME_FIELDS:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: {a!r} != {b!r}")
        return out

"""TrainConfig: every setting of a training run, checked on construction, saved in checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from kwh.errors import KwhError
from kwh.sws import GAMMA, INIT_STD, N_COMPONENTS, TAU, ZERO_GAMMA, ZERO_MIX

CONFIG_VERSION = 1
CUSTOM = "custom"  # model or data given to run_training as objects, not by name
LR_DECAYS = ("linear", "constant")
# Where the KL weight reaches 1 when kl_warmup_end is None, a fraction of the Bayesian epochs,
# decided by ablation on LeNet-300-100 / MNIST (benchmarks/results/ablations/): from a fresh
# initialisation the ramp over the whole run wins (Sparse VD, 15 epochs: 1.80 % at 100.2x
# against 2.25 % at 136x with 0.2), as the authors' notebook ramps it; from trained weights
# (pretraining, or a model given to run_training) 0.2 wins (after 20 plain epochs: 1.81 % at
# 124.6x against 1.65 % at 80.5x with 1.0).
KL_WARMUP_END_SCRATCH = 1.0
KL_WARMUP_END_TRAINED = 0.2
# Where a group prior's scale z starts when prior_options do not say (its ``init_scale``), by
# ablation on LeNet-300-100 / MNIST too: from a fresh initialisation z at 1 (the authors' code),
# group-NJ, 30 epochs: 1.49 % at 9.1x kept weights x bits against 2.65 % at 6.3x with z at each
# group's weight RMS; from trained weights z at the RMS (20 plain + 30 Bayesian epochs: 1.56 %
# validation error at 29.5x against 1.66 % at 21.5x with z at 1, which over-prunes at the
# 10x log-scale step: 3.64 %).
INIT_SCALE_SCRATCH = "one"
INIT_SCALE_TRAINED = "rms"
GROUP_PRIORS = ("group-nj", "group-horseshoe")
# Group-NJ from a fresh initialisation also trains at a constant lr, its log-scale parameters at
# 3x it, with the variance of w~ capped at 0.04 (the authors' code trains at a constant lr and
# caps fc1 at 0.04): LeNet-300-100 / MNIST, 30 epochs from scratch, 1.82 % at 19.1x kept
# weights x bits over 3 seeds (seed 0: 1.79 % at 18.6x) against 1.49 % at 9.1x with the linear
# decay, 1x and no cap (seed 0); their code: 1.88 % at 17x (benchmarks/results/ablations/).
# Where a setting is left at None / not given and the start is fresh, these apply.
SCRATCH_SETTINGS = {
    "group-nj": {"lr_decay": "constant", "variance_lr_mult": 3.0,
                 "prior_options": {"max_weight_var": 0.04}},
}
LR_DECAY_DEFAULT = "linear"
# What the second phase does: train on the free energy, train a binary net, sample the plain
# net's posterior with SGLD, or retrain the plain net under soft weight-sharing's mixture prior.
METHODS = ("bayes", "binary", "sgld", "sws")
# SGLD settings (TrainConfig.sgld_options; kwh.bayes.SGLD's update, with N the training set's
# size): theta <- theta - (lr / 2) G (N g + theta / prior_std^2) + sqrt(lr T G) xi.
#   lr: the step size epsilon. The drift is (lr N / 2) times the mean-NLL gradient, so lr N / 2
#     is the learning rate of the equivalent SGD step. None picks 1e-6 for plain SGLD: at
#     MNIST's N = 55,000 that is SGD at lr ~0.03, a step plain SGD takes stably from a
#     pretrained LeNet; the injected noise has std sqrt(lr) = 1e-3 per weight and step. With
#     preconditioned=True, G ~ 1 / RMS(g) makes the drift an RMSprop step at lr N / 2 (the
#     same 1e-6 would move every weight by ~0.03 a step), so None picks 4e-8 there: lr N / 2
#     ~ 1e-3, Adam's usual rate. The step is constant: the config's lr and lr_decay are the
#     pretraining's; only the rollback back-off (lr_backoff) lowers it, after a non-finite step.
#   prior_std: the Gaussian prior N(0, prior_std^2) on every weight; None: a flat prior.
#   temperature: T = 1 samples the posterior, T < 1 a tempered ("cold") one, 0 descends to MAP.
#   preconditioned, alpha, eps: pSGLD (Li et al. 2016) and its RMSprop average.
#   burn_in_epochs: epochs of the SGLD phase run before any sample is kept.
#   thin_steps: SGLD steps between kept samples; the first is the state at the end of burn-in
#     (after thin_steps steps when burn_in_epochs is 0). kwh.bayes.SampleStore's policy.
#   max_samples: the newest ones kept (each a full copy of the weights); None: all of them.
SGLD_DEFAULTS = {"lr": None, "prior_std": 1.0, "temperature": 1.0, "preconditioned": False,
                 "alpha": 0.99, "eps": 1e-5, "burn_in_epochs": 1, "thin_steps": 100,
                 "max_samples": 50}
SGLD_LR, PSGLD_LR = 1e-6, 4e-8
# Soft weight-sharing settings (TrainConfig.sws_options; kwh.sws, Ullrich, Meeds and Welling
# 2017): the phase minimises mean NLL + tau * (-log p(w) - log p(lambda)) / N with Adam, the
# network's parameters and the mixture's three kinds of parameters in four groups.
#   tau: the prior's weight per training example (paper: 5e-3).
#   n_components, zero_mix, init_std: the mixture (kwh.sws.MixturePrior): 17 components, the
#     zero one's pi_0 = 0.999 fixed, every sigma starting at 0.25.
#   gamma_shape, gamma_rate / zero_gamma_shape, zero_gamma_rate: Gamma hyper-priors on the
#     precisions of the learned components / of the zero component: (250, 0.1) / (5000, 2).
#   lr, lr_means, lr_log_vars, lr_mix: the base learning rates of the network's parameters, the
#     means, the log-variances and the mixing logits: 5e-4, 1e-4, 3e-3, 3e-3 (the authors'
#     tutorial; the paper names 5e-4 and 1e-4). lr None: the config's lr. Each follows the
#     config's lr_decay over the phase, like every group of a Bayesian run.
#   tau_end: None (tau constant), or the tau the phase ends at: tau moves geometrically from
#     tau to tau_end over the phase (annealing tau, which the authors' tutorial suggests for
#     better results: the prior pulls the weights onto their components ever harder), from
#     the fraction tau_ramp_start of the phase on (0: from its start).
SWS_DEFAULTS = {"tau": TAU, "n_components": N_COMPONENTS, "zero_mix": ZERO_MIX,
                "init_std": INIT_STD, "gamma_shape": GAMMA[0], "gamma_rate": GAMMA[1],
                "zero_gamma_shape": ZERO_GAMMA[0], "zero_gamma_rate": ZERO_GAMMA[1],
                "lr": 5e-4, "lr_means": 1e-4, "lr_log_vars": 3e-3, "lr_mix": 3e-3,
                "tau_end": None, "tau_ramp_start": 0.0}
DEVICES = ("auto", "cpu", "cuda")

# Fields that change how a run computes, so a resumed run must agree on them; the others
# (where files go, how many threads, how often to save, how patient to be) may differ.
RUNTIME_FIELDS = frozenset({"data_dir", "out_dir", "threads", "device", "eval_batch_size",
                            "checkpoint_every", "max_failures"})


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


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
    5 -> 20 of 200 epochs, REFERENCES sec. 1, is 0.025 -> 0.1). ``kl_warmup_end=None`` (the
    default) picks by where the Bayesian epochs start (:meth:`resolved`, which run_training
    applies and records in the checkpoint): 0.2 from trained weights (``pretrain_epochs`` > 0,
    or a model given to run_training), 1.0 from a fresh initialisation. Both by ablation
    (KL_WARMUP_END_SCRATCH above); a KL-free first quarter would waste 44% of all the lr a
    short run from trained weights has to move the posterior scales.

    ``method="sgld"`` keeps the network plain after pretraining and samples its weights'
    posterior with kwh.bayes.SGLD at a constant step for ``epochs`` epochs (settings:
    ``sgld_options``, see SGLD_DEFAULTS), keeping samples past burn-in in a SampleStore.

    ``method="sws"`` keeps it plain too and retrains it for ``epochs`` epochs under soft
    weight-sharing's mixture prior (kwh.sws.MixturePrior, learned with the weights; settings:
    ``sws_options``, see SWS_DEFAULTS); kwh.sws.quantize_ with the trained prior then sets
    each weight to its component's mean.
    """

    model: str = "lenet5"
    data: str = "mnist"
    data_dir: str | None = None
    prior: str = "group-horseshoe"
    prior_options: dict = field(default_factory=dict)
    method: str = "bayes"  # "binary": kwh.binarize_'s network instead; "sgld": posterior samples
    binary_options: dict = field(default_factory=dict)  # kwh.binarize_ options
    sgld_options: dict = field(default_factory=dict)  # keys of SGLD_DEFAULTS
    sws_options: dict = field(default_factory=dict)  # keys of SWS_DEFAULTS
    pretrain_epochs: int = 0
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    variance_lr_mult: float | None = None  # None: each prior's own (kwh.bayes.param_groups)
    lr_decay: str | None = None  # None: resolved(): "linear", or SCRATCH_SETTINGS' from scratch
    kl_warmup_start: float = 0.0
    kl_warmup_end: float | None = None  # None: resolved(): 1.0 from scratch, 0.2 from trained weights
    # > 0: each Bayesian layer's KL weighted by max(1, its weights' output positions / those
    # of the layer with the most weights) ** kl_compute_power (kwh.bayes.scale_kl_by_compute_):
    # the posterior prunes where the multiplications are; 0: the free energy
    kl_compute_power: float = 0.0
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
    # A plain run (epochs=0) may learn from a teacher's outputs as well as the labels
    # (run_training's ``teacher``): loss = (1 - w) NLL + w T^2 KL(teacher || student), both
    # softmaxes at temperature T (Hinton et al. 2015). kwh.app.finetune uses it to recover a
    # compressed model's accuracy from its dense start (DISTILL_WEIGHT, DISTILL_TEMPERATURE
    # there).
    distill_weight: float = 0.0
    distill_temperature: float = 4.0

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
        if not isinstance(self.sgld_options, dict):
            raise KwhError(f"sgld_options must be a dict, got {self.sgld_options!r}")
        if self.sgld_options and self.method != "sgld":
            raise KwhError("sgld_options are for method='sgld'")
        if not isinstance(self.sws_options, dict):
            raise KwhError(f"sws_options must be a dict, got {self.sws_options!r}")
        if self.sws_options and self.method != "sws":
            raise KwhError("sws_options are for method='sws'")
        for name in ("pretrain_epochs", "seed", "shrink_patience"):
            self._int(name, 0)
        for name in ("batch_size", "max_failures", "eval_batch_size"):
            self._int(name, 1)
        self._int("epochs", 0 if self.pretrain_epochs else 1)  # 0: a plain (dense) run
        if self.method == "sgld":
            self._check_sgld()
        if self.method == "sws":
            self._check_sws()
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
        p = self.kl_compute_power
        if not (isinstance(p, (int, float)) and not isinstance(p, bool)
                and math.isfinite(p) and p >= 0):
            raise KwhError(f"kl_compute_power must be a finite number >= 0, got {p!r}")
        if p and self.method != "bayes":
            raise KwhError("kl_compute_power weights a Bayesian layer's KL; it needs "
                           "method='bayes'")
        s, e = self.kl_warmup_start, self.kl_warmup_end
        if e is None:  # resolved() picks it, at least s
            e = 1.0
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (s, e)) \
                or not 0 <= s <= e <= 1:
            raise KwhError(f"KL warm-up needs 0 <= kl_warmup_start <= kl_warmup_end <= 1 "
                           f"(fractions of the Bayesian epochs), got {s!r} and {e!r}")
        if self.lr_decay is not None and self.lr_decay not in LR_DECAYS:
            raise KwhError(f"Unknown lr_decay {self.lr_decay!r}; choose one of: {', '.join(LR_DECAYS)}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise KwhError(f"Unknown device {self.device!r}; choose one of: "
                           f"{', '.join(DEVICES)} or cuda:<index>")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            raise KwhError(f"limit_train={self.limit_train} is smaller than batch_size="
                           f"{self.batch_size}; lower the batch size or raise the limit")
        w, t = self.distill_weight, self.distill_temperature
        if not (_is_number(w) and 0 <= w <= 1):
            raise KwhError(f"distill_weight must lie in [0, 1], got {w!r}")
        if not (_is_number(t) and math.isfinite(t) and t > 0):
            raise KwhError(f"distill_temperature must be a positive number, got {t!r}")
        if w and self.epochs:
            raise KwhError("distill_weight trains a plain run toward a teacher's outputs; the "
                           "Bayesian epochs train on the free energy: give epochs=0 (and "
                           "pretrain_epochs=N) for a distilled run")
        if not isinstance(self.deterministic, bool):
            raise KwhError(f"deterministic must be True or False, got {self.deterministic!r}")
        if self.out_dir is None:
            second = self.prior if self.method == "bayes" else self.method
            self.out_dir = f"runs/{self.model}-{self.data}-{second}"
        self.out_dir = str(self.out_dir)
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)

    def _check_sgld(self) -> None:
        unknown = sorted(set(self.sgld_options) - set(SGLD_DEFAULTS))
        if unknown:
            raise KwhError(f"unknown SGLD option {unknown[0]!r}; choose from: "
                           f"{', '.join(SGLD_DEFAULTS)}")
        o = self.sgld_settings()

        def number(name, low, *, none=False, zero=False, below=None):
            v = o[name]
            if v is None and none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
                and (v >= low if zero else v > low) and (below is None or v < below)
            if not ok:
                bound = f"{'>=' if zero else '>'} {low}" + (f" and < {below}" if below else "")
                raise KwhError(f"SGLD option {name} must be a finite number {bound}"
                               f"{' (or None)' if none else ''}, got {v!r}")

        def count(name, low, *, none=False):
            v = o[name]
            if not (v is None and none) and not (_is_int(v) and v >= low):
                raise KwhError(f"SGLD option {name} must be an integer >= {low}"
                               f"{' (or None: no bound)' if none else ''}, got {v!r}")

        number("lr", 0)
        number("prior_std", 0, none=True)
        number("temperature", 0, zero=True)
        number("alpha", 0, zero=True, below=1)
        number("eps", 0)
        if not isinstance(o["preconditioned"], bool):
            raise KwhError(f"SGLD option preconditioned must be True or False, got "
                           f"{o['preconditioned']!r}")
        count("burn_in_epochs", 0)
        count("thin_steps", 1)
        count("max_samples", 1, none=True)
        if o["burn_in_epochs"] >= self.epochs:
            raise KwhError(f"SGLD option burn_in_epochs={o['burn_in_epochs']} leaves none of "
                           f"the {self.epochs} SGLD epoch(s) to sample: it must be smaller "
                           f"than epochs")
        if self.shrink_patience:
            raise KwhError("shrink_patience removes pruned groups of a Bayesian net; an SGLD "
                           "run (method='sgld') samples a plain net and prunes nothing: leave "
                           "it 0")
        if self.prior_options:
            raise KwhError("prior_options set the sparsity prior of method='bayes'; an SGLD "
                           "run's prior is N(0, prior_std^2): give it as sgld_options "
                           "{'prior_std': ...}")

    def _check_sws(self) -> None:
        unknown = sorted(set(self.sws_options) - set(SWS_DEFAULTS))
        if unknown:
            raise KwhError(f"unknown soft weight-sharing option {unknown[0]!r}; choose from: "
                           f"{', '.join(SWS_DEFAULTS)}")
        o = {**SWS_DEFAULTS, **self.sws_options}
        for name, v in o.items():
            if name == "n_components":
                if not (_is_int(v) and v >= 2):
                    raise KwhError(f"soft weight-sharing option n_components must be an "
                                   f"integer >= 2, got {v!r}")
                continue
            if v is None and name in ("lr", "tau_end"):
                continue
            if name == "tau_ramp_start":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                    raise KwhError(f"soft weight-sharing option tau_ramp_start must be a "
                                   f"fraction of the phase in [0, 1), got {v!r}")
                continue
            high = 1 if name == "zero_mix" else None
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
                and v > 0 and (high is None or v < high)
            if not ok:
                bound = "in (0, 1)" if high else \
                    "> 0" + (" (or None)" if name in ("lr", "tau_end") else "")
                raise KwhError(f"soft weight-sharing option {name} must be a finite number "
                               f"{bound}, got {v!r}")
        if o["tau_ramp_start"] and o["tau_end"] is None:
            raise KwhError("soft weight-sharing option tau_ramp_start starts the annealing of "
                           "tau: give tau_end too")
        if self.shrink_patience:
            raise KwhError("shrink_patience removes pruned groups of a Bayesian net; a soft "
                           "weight-sharing run (method='sws') trains a plain net: leave it 0")
        if self.prior_options:
            raise KwhError("prior_options set the sparsity prior of method='bayes'; a soft "
                           "weight-sharing run's prior is a Gaussian mixture: give its settings "
                           "as sws_options")

    def sws_settings(self) -> dict:
        """Every soft weight-sharing setting: SWS_DEFAULTS updated by sws_options, the
        weights' lr resolved (None: the config's lr)."""
        o = {**SWS_DEFAULTS, **self.sws_options}
        if o["lr"] is None:
            o["lr"] = self.lr
        return o

    def sgld_settings(self) -> dict:
        """Every SGLD setting: the defaults (SGLD_DEFAULTS) updated by sgld_options, the lr
        resolved (None: 1e-6, or 4e-8 when preconditioned)."""
        o = {**SGLD_DEFAULTS, **self.sgld_options}
        if o["lr"] is None:
            o["lr"] = PSGLD_LR if o["preconditioned"] is True else SGLD_LR
        return o

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

    def resolved(self, trained_start: bool | None = None) -> TrainConfig:
        """This config with the defaults that depend on the start decided: ``kl_warmup_end``
        when it is None (KL_WARMUP_END_TRAINED when the Bayesian epochs start from trained
        weights, KL_WARMUP_END_SCRATCH from a fresh initialisation, never below
        ``kl_warmup_start``); a group prior's ``init_scale`` when prior_options do not give it
        (INIT_SCALE_TRAINED / INIT_SCALE_SCRATCH); ``lr_decay`` when it is None ("linear");
        and, from a fresh initialisation, the prior's SCRATCH_SETTINGS where the config
        leaves them open. ``trained_start`` None: trained when there are pretraining epochs;
        run_training also counts a given model as trained."""
        if trained_start is None:
            trained_start = self.pretrain_epochs > 0
        bayes = self.method == "bayes"
        scratch = {} if trained_start or not bayes else SCRATCH_SETTINGS.get(self.prior, {})
        changes: dict = {}
        if self.kl_warmup_end is None:
            end = KL_WARMUP_END_TRAINED if trained_start else KL_WARMUP_END_SCRATCH
            changes["kl_warmup_end"] = max(float(end), float(self.kl_warmup_start))
        if self.lr_decay is None:
            changes["lr_decay"] = scratch.get("lr_decay", LR_DECAY_DEFAULT)
        if self.variance_lr_mult is None and "variance_lr_mult" in scratch:
            changes["variance_lr_mult"] = scratch["variance_lr_mult"]
        if bayes and self.prior in GROUP_PRIORS:
            options = dict(self.prior_options)
            options.setdefault("init_scale",
                               INIT_SCALE_TRAINED if trained_start else INIT_SCALE_SCRATCH)
            for key, value in scratch.get("prior_options", {}).items():
                options.setdefault(key, value)
            if options != self.prior_options:
                changes["prior_options"] = options
        return replace(self, **changes) if changes else self

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
        """Fields that affect training and differ between two configs, as 'name: a != b'.
        The KL warm-up is compared only where both are Bayesian runs (the other methods'
        losses have no KL term); prior options as the prior configs they make (an option
        left out equals its default)."""
        from kwh.bayes.priors import prior_config

        out = []
        kl_free = self.method != "bayes" and other.method != "bayes"
        for f in fields(self):
            if f.name in RUNTIME_FIELDS or (kl_free and f.name.startswith("kl_warmup")):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "prior_options" and self.prior == other.prior:
                if prior_config(self.prior, **a) == prior_config(other.prior, **b):
                    continue
            if a != b:
                out.append(f"{f.name}: {a!r} != {b!r}")
        return out

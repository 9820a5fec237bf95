"""Where a run is (epoch, step) and what that position implies: phase, lr factor, KL weight."""

from __future__ import annotations

from dataclasses import dataclass

from kwh.bayes import KLWarmup
from kwh.train.config import TrainConfig

PRETRAIN, BAYES = "pretrain", "bayes"


@dataclass(frozen=True)
class Schedule:
    """Pure functions of the position: no state to save beyond (epoch, step)."""

    config: TrainConfig
    steps_per_epoch: int

    def __post_init__(self):  # the KL warm-up's default decided once, not at every step
        object.__setattr__(self, "config", self.config.resolved())

    def phase(self, epoch: int) -> str:
        return PRETRAIN if epoch < self.config.pretrain_epochs else BAYES

    def bayes_progress(self, epoch: int, step: int) -> float:
        """Bayesian epochs completed at (epoch, step), fractional; negative during pretraining."""
        return epoch - self.config.pretrain_epochs + step / self.steps_per_epoch

    def lr_factor(self, epoch: int, step: int) -> float:
        """Multiplier of each group's base lr for the update at (epoch, step).

        With ``lr_decay="linear"`` each phase decays its lr linearly to 0 (Louizos et al.
        2017): pretraining converges to a good dense start, and the Bayesian phase starts
        again from the full lr.
        """
        c = self.config
        if c.lr_decay == "constant":
            return 1.0
        if self.phase(epoch) == PRETRAIN:
            return 1.0 - (epoch + step / self.steps_per_epoch) / c.pretrain_epochs
        return 1.0 - self.bayes_progress(epoch, step) / c.epochs  # linear to 0

    def sws_tau(self, epoch: int, step: int) -> float:
        """The soft weight-sharing prior's weight tau at (epoch, step): sws_options' tau, or,
        with tau_end set, tau (tau_end / tau)^p, p the fraction done of the ramp that starts
        at the fraction tau_ramp_start of the phase and ends with it."""
        o = self.config.sws_settings()
        if o["tau_end"] is None:
            return float(o["tau"])
        done = self.bayes_progress(epoch, step) / self.config.epochs
        start = o["tau_ramp_start"]
        p = min(max((done - start) / (1.0 - start), 0.0), 1.0)
        return float(o["tau"] * (o["tau_end"] / o["tau"]) ** p)

    def kl_weight(self, epoch: int, step: int) -> float:
        """beta of the free energy at (epoch, step); 0 during pretraining."""
        if self.phase(epoch) == PRETRAIN:
            return 0.0
        c = self.config
        warm = KLWarmup(c.kl_warmup_start * c.epochs, c.kl_warmup_end * c.epochs)
        return float(warm(self.bayes_progress(epoch, step)))

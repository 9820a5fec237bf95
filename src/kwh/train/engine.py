"""run_training: pretraining, bayesify_, free-energy training; checkpoints, resume, rollback.

Everything random is a function of the position: model init and bayesify_ draw from seeds
derived from the run's seed; each epoch reseeds every RNG from (seed, rank, epoch) and takes
its batches from a DistributedSampler seeded with (seed, epoch). A checkpoint holds the model,
Adam's state, the position (epoch, step), the lr back-off, the epoch's running sums and the RNG
states of every rank, so a resumed run retraces the uninterrupted one bit for bit.

method='sgld' keeps the plain network after pretraining and moves it with kwh.bayes.SGLD on the
mean NLL (its noise from a generator seeded with (seed, "sgld"), the same on every rank so that
DDP replicas stay equal), collecting samples into a kwh.bayes.SampleStore; the checkpoint adds
the generator's state and the store ("samples/<i>/<name>" tensors, the policy and steps in the
meta), and the end of the run writes the samples to samples.safetensors (kwh.train.samples).

method='sws' keeps the plain network too and trains it on mean NLL + tau (-log p(w)) / N under
kwh.sws.MixturePrior, whose means, log-variances and mixing logits Adam learns in their own
groups; the checkpoint adds the prior's parameters ("sws/<name>", kwh.train.mixture).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import kwh
from kwh.bayes import SampleStore, free_energy
from kwh.binary import clip_latent_
from kwh.compress.shrink import Shrinker, carry_optimizer_state
from kwh.errors import FormatError, KwhError, ModelError
from kwh.format.io import atomic_write_bytes
from kwh.sws import MixturePrior, mixture_weights
from kwh.train.batches import BatchOrder
from kwh.train.build import (
    BAYESIAN,
    BINARY,
    PLAIN,
    SGLD,
    SWS,
    build_model,
    make_optimizer,
    new_mixture_prior,
    to_second_phase,
)
from kwh.train.checkpoint import FILENAME, read_checkpoint, write_checkpoint
from kwh.train.config import CUSTOM, TrainConfig
from kwh.train.data import TrainData, load_train_data
from kwh.train.distill import distillation_loss, model_digest
from kwh.train.distributed import DistContext, setup_distributed
from kwh.train.evaluate import (
    layer_stats,
    pruned_architecture,
    recalibrate_from_inputs,
    test_metrics,
)
from kwh.train.mixture import prior_tensors, restore_prior
from kwh.train.runlog import RunLog
from kwh.train.samples import PREFIX, SAMPLES_FILENAME, write_samples
from kwh.train.schedule import Schedule
from kwh.train.state import (
    derive_seed,
    load_model_tensors,
    load_optimizer,
    model_tensors,
    optimizer_payload,
    restore_rng,
    rng_payload,
    seed_all,
)

log = logging.getLogger("kwh.train")

# Test hook: global step -> False, or poison that step: True / "loss" makes the loss NaN,
# "gradient" keeps the loss finite but makes a gradient NaN.
Fault = Callable[[int], "bool | str"]

__all__ = ["TrainResult", "run_training"]


@dataclass
class TrainResult:
    """What a run produced: the model (eval mode), per-epoch history, checkpoint path; for
    method='sgld', the weight samples (``kwh.predict(result.model, x, store=result.samples)``);
    for method='sws', the trained mixture prior (``kwh.sws.quantize_(result.model,
    result.prior)``)."""

    model: nn.Module
    history: list[dict]
    checkpoint: Path | None
    config: TrainConfig | None = None
    log: list[dict] = field(default_factory=list)
    samples: SampleStore | None = None
    prior: MixturePrior | None = None


def run_training(config: TrainConfig, resume: bool = False, progress: bool = True,
                 fault: Fault | None = None, *, model: nn.Module | None = None,
                 data: TrainData | None = None, teacher: nn.Module | None = None) -> TrainResult:
    """Train as ``config`` says; with ``resume``, continue from out_dir's checkpoint if any.

    ``model``: a plain nn.Module to train instead of the config's reference net (its weights
    are the start: pretrained ones make a dense start, with ``pretrain_epochs=0``; resuming
    needs the same model again; it counts as trained weights for the KL warm-up's default,
    see TrainConfig.resolved, so give ``kl_warmup_end`` for a freshly initialised one).
    ``data``: a TrainData (train, validation, test) instead of the config's data set. Under
    torchrun (RANK and WORLD_SIZE set) each process trains its shard with
    DistributedDataParallel; rank 0 evaluates, logs and writes checkpoints.
    ``teacher``: a trained nn.Module whose outputs a plain run with ``distill_weight`` > 0
    learns from besides the labels (kwh.train.distill; in eval mode, never trained; resuming
    needs the same teacher again).
    ``fault`` is a test hook: when it returns True for a global step, that step's loss
    becomes NaN.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise KwhError(f"model must be an nn.Module, got {type(model).__name__}")
    if data is not None and not isinstance(data, TrainData):
        raise KwhError(f"data must be a kwh.train.TrainData, got {type(data).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise KwhError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    if (teacher is None) != (not config.distill_weight):
        raise KwhError("a teacher goes with distill_weight > 0: give both (run_training(config, "
                       "teacher=MODEL) with TrainConfig(distill_weight=W)) or neither")
    if data is None and config.data == CUSTOM:
        raise KwhError("this run's data are 'custom': pass them as run_training(config, "
                       "data=TrainData(train, validation, test))")
    # the KL warm-up's default depends on the start: a given model counts as trained weights
    config = config.resolved(trained_start=config.pretrain_epochs > 0 or model is not None)
    with _runtime(config) as ctx:
        return _Trainer(config, ctx, progress, fault, model, data, teacher).run(resume)


@contextlib.contextmanager
def _runtime(config: TrainConfig):
    """Threads, deterministic algorithms and the process group for the run, restored after."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    ctx = setup_distributed(config.device)
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.deterministic:
            if ctx.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield ctx
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        ctx.close()


class _Trainer:
    """One run's mutable state; the model is kept unwrapped, ``net`` is it or its DDP wrapper."""

    def __init__(self, config: TrainConfig, ctx: DistContext, progress: bool, fault: Fault | None,
                 template: nn.Module | None, data: TrainData | None,
                 teacher: nn.Module | None = None):
        self.c, self.ctx, self.fault = config, ctx, fault
        self.teacher, self.teacher_sha256 = None, None
        if teacher is not None:  # a frozen copy on the run's device
            self.teacher_sha256 = model_digest(teacher)
            self.teacher = copy.deepcopy(teacher).to(ctx.device).eval().requires_grad_(False)
        self.progress = progress and ctx.is_main
        self.out = Path(config.out_dir)
        self.ckpt = self.out / FILENAME
        self.template = None if template is None else copy.deepcopy(template).cpu()
        data = load_train_data(config) if data is None else data
        train, test = data.train, data.test
        self.val = data.validation
        self.n_data = len(train)  # N of the free energy: the global training set
        self.order = BatchOrder(train, config.batch_size, derive_seed(config.seed, "data"),
                                ctx.rank, ctx.world_size)
        self.sched = Schedule(config, self.order.steps_per_epoch)
        self.test_x, self.test_y = test.tensors[:2]
        self.log = RunLog(self.out / "log.jsonl" if ctx.is_main else None)
        self.failures = 0
        self.snapshot: tuple[dict, dict] | None = None
        self.store: SampleStore | None = None  # the SGLD phase's samples
        self.generator: torch.Generator | None = None  # the SGLD phase's noise
        self.prior: MixturePrior | None = None  # the soft weight-sharing phase's prior
        if config.method == SGLD:
            self._check_sgld_plan()

    # ------------------------------------------------------------------ state

    def _fresh(self) -> None:
        self.model, self.kind = build_model(self.c, PLAIN, self.template), PLAIN
        self.shrinker = None
        self.store = self.generator = self.prior = None
        self._check_input()
        self.model.to(self.ctx.device)
        self._new_optimizer()
        self.epoch = self.step = self.global_step = 0
        self.lr_scale = 1.0
        self.stats = _new_stats()

    def _check_input(self) -> None:
        x = self.order.x[:2]
        try:
            with torch.no_grad():
                self.model.eval()(x)
        except RuntimeError as e:
            raise ModelError(f"model {self.c.model!r} does not accept {self.c.data!r} inputs of "
                             f"shape {tuple(x.shape[1:])}: {e}") from None
        self.model.train()

    def _new_optimizer(self) -> None:
        self.opt = make_optimizer(self.model, self.c, self.kind, n_data=self.n_data,
                                  generator=self.generator, prior=self.prior)
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.net = self.model

    def _capture(self) -> tuple[dict, dict]:
        """This process's full state as (tensors, JSON meta): a snapshot or a checkpoint body."""
        tensors = model_tensors(self.model)
        opt_tensors, opt_meta = optimizer_payload(self.opt)
        rng_tensors, rng_meta = rng_payload(self.ctx.rank, self.ctx.device)
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        meta = {"config": self.c.to_dict(), "kind": self.kind,
                "position": {"epoch": self.epoch, "step": self.step,
                             "global_step": self.global_step},
                "lr_scale": self.lr_scale, "stats": dict(self.stats), "optimizer": opt_meta,
                "rng": rng_meta, "world_size": self.ctx.world_size,
                "log": list(self.log.records), "kwh_version": kwh.__version__,
                "shrink": None if self.shrinker is None else self.shrinker.state(),
                "teacher_sha256": self.teacher_sha256, "torch_version": torch.__version__}
        if self.kind == SGLD:
            store_tensors, meta["samples"] = self.store.payload(PREFIX)
            tensors.update(store_tensors)  # the stored samples themselves: they never change
            tensors["sgld/generator"] = self.generator.get_state()
        if self.kind == SWS:
            tensors.update(prior_tensors(self.prior))
        return tensors, meta

    def _apply(self, tensors: dict, meta: dict, where: str) -> None:
        """Become the state in (tensors, meta): the path of both resume and rollback."""
        try:
            kind, pos = meta["kind"], meta["position"]
            epoch, step, global_step = pos["epoch"], pos["step"], pos["global_step"]
            lr_scale, stats, records = float(meta["lr_scale"]), dict(meta["stats"]), meta["log"]
            opt_meta, rng_meta, world = meta["optimizer"], meta["rng"], meta["world_size"]
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{where}: malformed training state ({e})") from None
        if not (0 <= epoch <= self.c.total_epochs and 0 <= step < self.order.steps_per_epoch):
            raise FormatError(f"{where}: position epoch {epoch} step {step} lies outside this run")
        self.model, self.kind = build_model(self.c, kind, self.template), kind
        self.shrinker = self._new_shrinker(meta.get("shrink")) if kind == BAYESIAN else None
        self.store = self.generator = self.prior = None
        if kind == SGLD:
            self._restore_sampler(tensors, meta, where)
        load_model_tensors(self.model, tensors, where)
        self.model.to(self.ctx.device)
        if kind == SWS:
            self.prior = restore_prior(self.model, self.c, tensors, where)
        self._new_optimizer()
        load_optimizer(self.opt, tensors, opt_meta, where)
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.lr_scale, self.stats = lr_scale, stats
        self.log.reset(records)
        exact = world == self.ctx.world_size and restore_rng(tensors, rng_meta, self.ctx.rank,
                                                             self.ctx.device)
        if not exact:
            seed_all(derive_seed(self.c.seed, self.ctx.rank, epoch, step, "resume"))
            log.warning("%s was written by %s process(es), this run has %s: random streams are "
                        "reseeded, so the run continues but not bit for bit", where, world,
                        self.ctx.world_size)
        self.snapshot = (tensors, meta)

    def _checkpoint(self) -> None:
        """Snapshot in memory on every rank; rank 0 writes it (with every rank's RNG) atomically."""
        tensors, meta = self._capture()
        self.snapshot, self.failures = (tensors, meta), 0
        disk = dict(tensors)
        if self.ctx.distributed:
            for r, s in enumerate(self.ctx.gather(torch.get_rng_state())):
                disk[f"rng/torch/{r}"] = s
            if self.ctx.device.type == "cuda":
                for r, s in enumerate(self.ctx.gather(torch.cuda.get_rng_state(self.ctx.device))):
                    disk[f"rng/cuda/{r}"] = s
        if self.ctx.is_main:
            write_checkpoint(self.ckpt, disk, meta)
        self.ctx.barrier()

    # ------------------------------------------------------------------ the run

    def run(self, resume: bool) -> TrainResult:
        self._start(resume)
        while self.epoch < self.c.total_epochs:
            self._run_epoch()
        self.model.eval()
        if self.kind == SGLD and self.ctx.is_main:
            write_samples(self.out / SAMPLES_FILENAME, self.store, self.c)
        self.ctx.barrier()
        return TrainResult(self.model, self.log.epochs(), self.ckpt, self.c, self.log.records,
                           self.store, self.prior)

    def _start(self, resume: bool) -> None:
        exists = self.ckpt.is_file()
        if exists and not resume:
            raise KwhError(f"{self.out} already holds a checkpoint; pass --resume to continue "
                           f"that run, or choose another --out-dir")
        if exists and self.ctx.is_main:
            for name in (FILENAME, SAMPLES_FILENAME):  # temp files left by a kill in a write
                for stale in self.out.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
        if exists:
            tensors, meta = read_checkpoint(self.ckpt)
            try:
                saved = TrainConfig.from_dict(meta["config"])
            except (KeyError, KwhError) as e:
                raise FormatError(f"{self.ckpt}: malformed config ({e})") from None
            diffs = saved.differences(self.c)
            if diffs:
                hint = ""
                if any(d.startswith("kl_warmup_end") for d in diffs):
                    hint = (" (kl_warmup_end's default depends on the start: 1.0 from a fresh "
                            "initialisation, 0.2 from trained weights; a run saved with 0.2 "
                            "from scratch resumes with --kl-warmup 0 0.2)")
                if any(d.startswith(("prior_options", "lr_decay", "variance_lr_mult"))
                       for d in diffs):
                    hint += (" (the defaults of a group prior depend on the start, see "
                             "TrainConfig.resolved: a run saved before they did resumes with its "
                             "own settings given, e.g. --lr-decay linear --prior-option "
                             "init_scale=rms)")
                raise KwhError(f"cannot resume {self.ckpt}: settings differ from the run that "
                               f"wrote it ({'; '.join(diffs)}){hint}; use the same settings or "
                               f"another --out-dir")
            if meta.get("teacher_sha256") != self.teacher_sha256:
                raise KwhError(f"cannot resume {self.ckpt}: the run distilled from another "
                               "teacher (its weights' digest differs); give the same teacher or "
                               "another out_dir")
            self._apply(tensors, meta, str(self.ckpt))
            log.info("resuming %s at epoch %d step %d", self.ckpt, self.epoch + 1, self.step)
            return
        if resume:
            log.info("no checkpoint in %s yet: starting a new run", self.out)
        self._fresh()
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "config.json",
                               (json.dumps(self.c.to_dict(), indent=2) + "\n").encode())
            self.log.reset([])
        self.ctx.barrier()
        self.snapshot = self._capture()

    def _run_epoch(self) -> None:
        """Train from the current position to the end of its epoch, or roll back on a fault."""
        e, c = self.epoch, self.c
        if self.sched.phase(e) == "bayes" and self.kind == PLAIN:
            model, self.kind = to_second_phase(self.model.cpu(), c)
            self.model = model.to(self.ctx.device)
            self.shrinker = self._new_shrinker(None) if self.kind == BAYESIAN else None
            if self.kind == SGLD:
                self._new_sampler()
            if self.kind == SWS:  # its means spread over the dense start's weights
                self.prior = new_mixture_prior(self.model, c)
            self._new_optimizer()
        if self.step == 0:
            seed_all(derive_seed(c.seed, self.ctx.rank, e))
            self.stats = _new_stats()
        started = time.perf_counter() - self.stats["seconds"]
        cpu_started = time.process_time() - self.stats.get("cpu_seconds", 0.0)
        steps = self.order.steps_per_epoch
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress, leave=False,
                   desc=f"epoch {e + 1}/{c.total_epochs} {self._phase(e)}", unit="step",
                   dynamic_ncols=True, mininterval=0.5)
        self.net.train()
        with bar:
            for k in range(self.step, steps):
                beta = self.sched.kl_weight(e, k) if self.kind not in (SGLD, SWS) else 0.0
                # SGLD samples at its own constant step (sgld_options' lr): the lr schedule is
                # the pretraining's. The rollback back-off still lowers it.
                factor = (self.sched.lr_factor(e, k) if self.kind != SGLD else 1.0) * self.lr_scale
                for g in self.opt.param_groups:
                    g["lr"] = g["base_lr"] * factor
                x, y = (t.to(self.ctx.device) for t in self.order.batch(e, k))
                logits = self.net(x)
                nll = F.cross_entropy(logits, y)  # mean over this rank's batch
                # Each rank adds beta KL / N to its local mean NLL; DDP averages gradients over
                # ranks, so the KL gradient arrives once per global step, not world_size times.
                if self.kind == BAYESIAN:
                    loss = free_energy(self.model, nll, self.n_data, beta)
                elif self.kind == SWS:  # the prior term's gradient reaches every rank alike
                    loss = nll + self.prior.loss(self.model, self.n_data,
                                                 self.sched.sws_tau(e, k))
                elif self.teacher is not None and self.kind == PLAIN:
                    with torch.no_grad():
                        target = self.teacher(x)
                    loss = distillation_loss(nll, logits, target, c.distill_weight,
                                             c.distill_temperature)
                else:
                    loss = nll
                if self.fault is not None:
                    loss = _poison(loss, self.fault(self.global_step), self.model)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                problem = self._nonfinite(loss)
                if problem:
                    return self._rollback(problem, e, k)
                self.opt.step()
                if self.kind == BINARY:
                    clip_latent_(self.model)  # latent weights stay in [-1, 1]
                self.step, self.global_step = k + 1, self.global_step + 1
                if self.kind == SGLD:  # kept when past burn-in and on the thinning interval
                    self.store.collect(self.model, self._sgld_step())
                self.stats["nll_sum"] += nll.item() * len(y)
                self.stats["loss_sum"] += loss.item() * len(y)
                self.stats["n"] += len(y)
                self.stats["seconds"] = time.perf_counter() - started
                self.stats["cpu_seconds"] = time.process_time() - cpu_started
                bar.update()
                if k % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}", kl_w=f"{beta:.2f}", refresh=False)
                if (c.checkpoint_every and self.global_step % c.checkpoint_every == 0
                        and k + 1 < steps):
                    self._checkpoint()
        self._end_epoch(e, beta, factor, started, cpu_started)

    def _end_epoch(self, e: int, beta: float, factor: float, started: float,
                   cpu_started: float) -> None:
        sums = [self.stats["nll_sum"], self.stats["loss_sum"], float(self.stats["n"])]
        if self.ctx.distributed:
            t = torch.tensor(sums, dtype=torch.float64, device=self.ctx.device)
            torch.distributed.all_reduce(t)
            sums = t.tolist()
        if self.ctx.is_main:
            phase = self._phase(e)
            rec = {"event": "epoch", "epoch": e + 1, "phase": phase,
                   "global_step": self.global_step, "train_nll": sums[0] / sums[2],
                   "train_loss": sums[1] / sums[2]}
            if self.kind == BAYESIAN:  # BatchNorm statistics of the network eval mode runs
                # (no randomness drawn: resuming stays exact)
                recalibrate_from_inputs(self.model, self.order.x, self.c.eval_batch_size,
                                        self.ctx.device)
            rec.update(test_metrics(self.model, self.test_x, self.test_y, self.c.eval_batch_size,
                                    self.ctx.device))
            if self.val is not None:
                v = test_metrics(self.model, *self.val.tensors[:2], self.c.eval_batch_size,
                                 self.ctx.device)
                rec.update({"val_error": v["test_error"], "val_nll": v["test_nll"]})
            base = self.c.sgld_settings()["lr"] if self.kind == SGLD else \
                self.c.sws_settings()["lr"] if self.kind == SWS else self.c.lr
            rec.update({"kl_weight": beta, "lr": base * factor, "lr_scale": self.lr_scale})
            if self.kind == SGLD:
                rec["samples"] = len(self.store)  # held now (max_samples bounds it)
            if self.kind == SWS:
                rec["mixture"] = _mixture_stats(self.model, self.prior)
            if self.kind == BAYESIAN:
                rec.update(layer_stats(self.model))
                rec["architecture"] = pruned_architecture(self.model, tuple(self.order.x.shape[1:]))
            steps = max(1, self.order.steps_per_epoch)
            rec["step_ms"] = round(1000 * self.stats["seconds"] / steps, 3)  # training only
            rec["seconds"] = round(time.perf_counter() - started, 3)  # wall, with evaluation
            rec["cpu_seconds"] = round(time.process_time() - cpu_started, 3)  # this process
            self.log.append(rec)
            log.info("%s", _summary(rec))
        self.epoch, self.step = e + 1, 0
        if self.shrinker is not None:
            self._shrink(e)
        self._checkpoint()

    def _phase(self, e: int) -> str:
        """The epoch's phase for the log: pretrain, bayes, binary, sgld or sws."""
        return self.kind if self.kind in (BINARY, SGLD, SWS) else self.sched.phase(e)

    # ------------------------------------------------------------------ SGLD

    def _sgld_step(self) -> int:
        """SGLD steps taken so far: the store's clock (burn-in and thinning count in it)."""
        return self.global_step - self.c.pretrain_epochs * self.order.steps_per_epoch

    def _new_store(self) -> SampleStore:
        o = self.c.sgld_settings()
        return SampleStore(burn_in=o["burn_in_epochs"] * self.order.steps_per_epoch,
                           thin=o["thin_steps"], max_samples=o["max_samples"])

    def _new_generator(self) -> torch.Generator:
        """The SGLD noise's generator: on the run's device, one seed for every rank."""
        return torch.Generator(device=self.ctx.device).manual_seed(
            derive_seed(self.c.seed, "sgld"))

    def _new_sampler(self) -> None:
        """An empty store and a freshly seeded generator: the start of the SGLD phase."""
        self.store, self.generator = self._new_store(), self._new_generator()

    def _restore_sampler(self, tensors: dict, meta: dict, where: str) -> None:
        """The store and the generator's state of an SGLD checkpoint."""
        try:
            store = SampleStore.from_payload(tensors, meta["samples"], PREFIX)
            generator = self._new_generator()
            generator.set_state(tensors["sgld/generator"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise FormatError(f"{where}: malformed SGLD state ({e})") from None
        want = self._new_store()
        if (store.burn_in, store.thin, store.max_samples) != (want.burn_in, want.thin,
                                                              want.max_samples):
            raise FormatError(f"{where}: the stored samples' burn-in, thinning or bound differ "
                              f"from this run's ({store!r}, expected {want!r})")
        self.store, self.generator = store, generator

    def _check_sgld_plan(self) -> None:
        """KwhError when burn-in and thinning would leave the SGLD phase without a sample."""
        store, total = self._new_store(), self.c.epochs * self.order.steps_per_epoch
        first = store.burn_in if store.burn_in >= 1 else store.thin
        if first > total:
            raise KwhError(f"SGLD would keep no sample: the first is due after SGLD step "
                           f"{first} (burn-in {store.burn_in}, thin_steps {store.thin}), the "
                           f"run takes {total} ({self.c.epochs} epochs of "
                           f"{self.order.steps_per_epoch} steps); lower thin_steps or "
                           f"burn_in_epochs, or train longer")

    # ------------------------------------------------------------------ shrinking

    def _new_shrinker(self, state: dict | None) -> Shrinker | None:
        """A Shrinker over the Bayesian model when the run shrinks (state: from a checkpoint)."""
        if not self.c.shrink_patience:
            return None
        was = self.model.training
        sh = Shrinker(self.model.cpu(), tuple(self.order.x.shape[1:]), self.c.shrink_patience)
        if state is not None:
            sh.load_state(state)
        self.model.to(self.ctx.device).train(was)
        return sh

    def _shrink(self, e: int) -> None:
        """Remove groups dead for shrink_patience epochs; Adam's state follows the weights."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        old = self.opt
        removed = self.shrinker.step()
        if removed is None:
            return
        self._new_optimizer()
        carry_optimizer_state(old, names, self.opt, self.model, self.shrinker.moves)
        sizes = self.shrinker.sizes()
        if self.ctx.is_main:
            self.log.append({"event": "shrink", "epoch": e + 1, "removed": removed,
                             "sizes": {n: list(v) for n, v in sizes.items()}})
            log.info("shrink after epoch %d: removed %s; layers now %s", e + 1,
                     ", ".join(f"{n}: {r['outputs']} out / {r['inputs']} in"
                               for n, r in removed.items()),
                     " ".join(f"{o}x{i}" for o, i in sizes.values()))

    # ------------------------------------------------------------------ divergence guard

    def _nonfinite(self, loss: torch.Tensor) -> str | None:
        """'loss' or 'gradient' when this step is not finite on any rank, else None."""
        problem = None
        if not torch.isfinite(loss.detach()).all():
            problem = "loss"
        else:
            params = [*self.model.parameters(),
                      *(self.prior.parameters() if self.prior is not None else ())]
            grads = [p.grad for p in params if p.grad is not None]
            if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
                problem = "gradient"
        if self.ctx.any(problem is not None) and problem is None:
            problem = "loss or gradient on another process"
        return problem

    def _rollback(self, problem: str, e: int, k: int) -> None:
        """Return to the last good state with a lower lr, or stop after max_failures in a row."""
        self.failures += 1
        failures, (tensors, meta) = self.failures, self.snapshot
        pos = meta["position"]
        rec = {"event": "rollback", "epoch": e + 1, "step": k, "global_step": self.global_step,
               "reason": f"non-finite {problem}", "failures": failures,
               "to_epoch": pos["epoch"] + 1, "to_step": pos["step"]}
        if failures >= self.c.max_failures:
            rec["event"] = "stopped"
            self.log.append(rec)
            where = (f"the last good checkpoint is {self.ckpt} (epoch {pos['epoch'] + 1}, "
                     f"step {pos['step']})" if self.ckpt.is_file()
                     else "no checkpoint had been written yet")
            raise KwhError(f"training diverged: non-finite {problem} at epoch {e + 1} step {k}, "
                           f"{failures} times in a row even after lowering the learning rate to "
                           f"{self.c.lr_backoff ** (failures - 1):g}x; {where}. Lower --lr and "
                           f"resume with --resume")
        since = self.log.records[len(meta["log"]):]  # earlier rollbacks since the snapshot
        self._apply(tensors, meta, "last good state")
        self.failures = failures
        for r in since:
            self.log.append(r)
        self.lr_scale = float(meta["lr_scale"]) * self.c.lr_backoff ** failures
        rec["lr_scale"] = self.lr_scale
        self.log.append(rec)
        log.warning("non-finite %s at epoch %d step %d: rolled back to epoch %d step %d, "
                    "lr x%g", problem, e + 1, k, pos["epoch"] + 1, pos["step"], self.lr_scale)


def _poison(loss: torch.Tensor, kind, model: nn.Module) -> torch.Tensor:
    """The fault hook's injection: a NaN loss, or a finite loss whose gradient is NaN."""
    if not kind:
        return loss
    if kind == "gradient":
        p = next(model.parameters())
        return loss + (0.0 * p.sum()).sqrt()  # value 0, d/dp = inf * 0 = NaN
    return loss * float("nan")


@torch.no_grad()
def _mixture_stats(model: nn.Module, prior: MixturePrior) -> dict:
    """The prior's components (pi, mean, sigma) and the percentage of the weights that the
    zero component is most responsible for: what quantize_ would set to 0 before merging."""
    log_pi, mu, log_var = prior.mixture()
    zero = total = 0
    for _, w in mixture_weights(model):
        zero += int((prior.log_joint(w).argmax(dim=1) == 0).sum())
        total += w.numel()
    return {"zero_pct": 100 * zero / max(1, total), "pi": log_pi.exp().tolist(),
            "mean": mu.tolist(), "std": (0.5 * log_var).exp().tolist()}


def _new_stats() -> dict:
    return {"nll_sum": 0.0, "loss_sum": 0.0, "n": 0, "seconds": 0.0, "cpu_seconds": 0.0}


def _summary(rec: dict) -> str:
    """One line per epoch: error, NLL, KL weight and what each layer keeps."""
    s = f"epoch {rec['epoch']} ({rec['phase']}): "
    if "val_error" in rec:
        s += f"validation error {rec['val_error']:.2f}%, "
    s += (f"test error {rec['test_error']:.2f}%, NLL {rec['test_nll']:.4f}, "
          f"kl_weight {rec['kl_weight']:.2f}, lr {rec['lr']:.2e}")
    if "alive" in rec:
        s += ", alive " + " ".join(f"{rec['alive'][n]}/{rec['total'][n]}" for n in rec["alive"])
    if rec.get("architecture"):
        s += f" (after propagation {rec['architecture']})"
    if "samples" in rec:
        s += f", {rec['samples']} weight samples held"
    if "mixture" in rec:
        s += f", {rec['mixture']['zero_pct']:.1f}% of the weights at the zero component"
    if math.isfinite(rec.get("seconds", 0)):
        s += f", {rec['seconds']:.1f} s"
    return s

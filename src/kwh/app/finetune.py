"""Quantization-aware fine-tuning of a compressed model through kwh.train's engine.

``finetune(small, data, epochs)``: the compressed model's weights train on their fixed-point
grids with the pruned weights held at zero (kwh.compress.finetune), as a plain run of
kwh.train (Adam, lr decayed linearly to 0, a checkpoint every epoch, resumable), then leave the
run exactly on the grids; the summary's counts and the codec's payload are measured again and
``summary["finetune"]`` records the run and the validation error before and after.

``finetune_codebook(model, quantized, data, epochs)``: the same for a model soft weight-sharing
quantized (kwh.sws.quantize_): the codebook's values train, each weight held to its code
(kwh.sws.share_codebook_), every other parameter (biases, norms) free; codes, and so the
sparsity, do not change.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from kwh.app.verb import measure_payload
from kwh.compress.finetune import (attach_fixed_point_, detach_fixed_point_, quantized_layers,
                                   recount)
from kwh.compress.floats import snap_floats_
from kwh.format.io import atomic_write_bytes
from kwh.compress.metrics import evaluate
from kwh.data import batch_loader
from kwh.errors import KwhError
from kwh.sws import Quantized, share_codebook_, unshare_codebook_
from kwh.train import TrainConfig, TrainData, checkpoint_path, run_training
from kwh.train.config import CUSTOM
from kwh.train.distill import check_teacher, model_digest
from kwh.train.state import hash_state

__all__ = ["finetune", "finetune_codebook"]

START = "finetune_start.json"  # in the run folder: what the run starts from and its settings
# Distillation from the dense start while fine-tuning (kwh.train.distill), chosen on the
# validation split: LeNet-300-100 / MNIST, BC-GNJ and BC-GHS, three seeds each, mean fine-tuned
# validation error at the priors' default thresholds: 1.77 % with the labels alone (5 epochs),
# 1.73 % distilled at weight 0.9, T = 4 (5 epochs), 1.68 % distilled for 20 epochs
# (benchmarks/results/finetune/distill/, `python -m benchmarks.finetune_choice`).
DISTILL_WEIGHT = 0.9
DISTILL_TEMPERATURE = 4.0


def _start_record(model: nn.Module, data: TrainData, settings: dict) -> dict:
    """The fine-tuning's identity: a digest of every tensor of the compressed model it starts
    from (weights, biases, the layers' bits), of the data's sizes, and the settings (with the
    teacher's digest when it distils)."""
    h = hash_state(hashlib.sha256(), model)
    for name, m in quantized_layers(model):
        h.update(f"{name}:{m.kwh_bits}:{m.kwh_frac_bits}".encode())
    sizes = {k: None if d is None else len(d) for k, d in
             (("train", data.train), ("validation", data.validation), ("test", data.test))}
    return {"model_sha256": h.hexdigest(), "data_sizes": sizes, "settings": settings}


def _claim(out_dir: Path, record: dict) -> None:
    """Refuse a run folder that holds the fine-tuning of another model or other settings (a
    resumed run would return its weights and masks); else record this one there."""
    path = out_dir / START
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old != record:
            what = "other settings" if old and old.get("model_sha256") == \
                record["model_sha256"] else "another compressed model"
            raise KwhError(f"{out_dir} holds a fine-tuning of {what}; give another run folder "
                           "(kwh compress --finetune-dir) or remove that one")
        return
    if checkpoint_path(out_dir).exists():
        raise KwhError(f"{out_dir} holds a training checkpoint but no fine-tuning record "
                       f"({START}): it may be another model's; give another run folder (kwh "
                       "compress --finetune-dir) or remove that one")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def _check_run(epochs, lr) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise KwhError(f"epochs={epochs!r} is invalid; fine-tune for a positive whole number "
                       "of epochs")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise KwhError(f"lr={lr!r} is invalid; give a positive, finite learning rate")


def finetune_codebook(model: nn.Module, quantized: Quantized, data: TrainData, epochs: int,
                      out_dir: str | os.PathLike, *, lr: float = 1e-4, batch_size: int = 100,
                      seed: int = 0, threads: int | None = None, device: str = "cpu",
                      progress: bool = False) -> tuple[nn.Module, Quantized]:
    """A copy of ``model`` (quantized by kwh.sws.quantize_ into ``quantized``) whose shared
    values are fine-tuned, and its codes with the trained codebook.

    ``epochs`` plain epochs of kwh.train on ``data.train`` at ``lr`` (Adam, decayed linearly to
    0; the run in ``out_dir``, resumed when it is there): the nonzero codebook values and every
    parameter that is not a shared weight (biases, norms) train, every weight held to its code
    (the gradient of a value sums those of its weights), zeros stay zero. ``model`` is not
    changed.
    """
    _check_run(epochs, lr)
    if not isinstance(quantized, Quantized):
        raise KwhError(f"quantized must be what kwh.sws.quantize_ returned, got "
                       f"{type(quantized).__name__}")
    start = copy.deepcopy(model).cpu()
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "what": "codebook"}
    _claim(Path(out_dir), _start_record(start, data, settings))
    work = share_codebook_(start, quantized)
    config = TrainConfig(model=CUSTOM, data=CUSTOM, pretrain_epochs=epochs, epochs=0, lr=lr,
                         batch_size=batch_size, seed=seed, out_dir=os.fspath(out_dir),
                         validation=0 if data.validation is None else len(data.validation),
                         threads=threads, device=device)
    tuned = run_training(config, resume=True, progress=progress, model=work, data=data).model
    tuned = tuned.cpu().eval()
    return tuned, unshare_codebook_(tuned)


def finetune(small: nn.Module, data: TrainData, epochs: int, out_dir: str | os.PathLike, *,
             lr: float = 1e-4, batch_size: int = 100, seed: int = 0, threads: int | None = None,
             device: str = "cpu", progress: bool = False, eval_data=None,
             teacher: nn.Module | None = None, distill_weight: float = DISTILL_WEIGHT,
             distill_temperature: float = DISTILL_TEMPERATURE) -> nn.Module:
    """A fine-tuned copy of ``small`` (a model kwh.compress returned, quantized).

    ``epochs`` plain epochs on ``data.train`` at ``lr`` (decayed linearly to 0), the run in
    ``out_dir`` (resumed when it is there). ``small`` itself is not changed. The copy has the
    same architecture, bits and zero weights; its summary's nonzero counts, payload and
    maximum compression are measured again, and ``kwh_summary["finetune"]`` holds the
    settings and the validation error before and after (None without a validation split).
    ``teacher``: the dense model ``small`` was compressed from (or any model of the same
    task): the loss is then (1 - distill_weight) NLL + distill_weight T^2 KL(teacher || model)
    at temperature T = ``distill_temperature`` (kwh.train.distill), which recovers more of the
    accuracy pruning and quantization cost than the labels alone (DISTILL_WEIGHT above).
    When the summary holds a test error (``eval``, from kwh.compress's eval_data), the error
    after fine-tuning goes beside it as ``eval["error_after_finetune"]``: measured on
    ``eval_data`` (batches of (x, y)), else None (the summary then says it was not measured).
    """
    _check_run(epochs, lr)
    if getattr(small, "kwh_summary", None) is None:
        raise KwhError("finetune takes the model kwh.compress returned (it has a kwh_summary); "
                       "compress the trained model first")
    val = None if data.validation is None else batch_loader(data.validation, 1000)
    before = None if val is None else evaluate(small, val)["error"]
    work = attach_fixed_point_(copy.deepcopy(small).cpu())
    recount(work)  # the summary must describe these layers: checked before any training
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    distill = None
    if teacher is not None:  # checked on a training batch before the folder is claimed
        check_teacher(teacher, work, data.train.tensors[0][:2])
        distill = {"weight": distill_weight, "temperature": distill_temperature,
                   "teacher_sha256": model_digest(teacher)}
        settings["distill"] = distill
    config = TrainConfig(model=CUSTOM, data=CUSTOM, pretrain_epochs=epochs, epochs=0, lr=lr,
                         batch_size=batch_size, seed=seed, out_dir=os.fspath(out_dir),
                         validation=0 if data.validation is None else len(data.validation),
                         threads=threads, device=device,
                         distill_weight=distill_weight if teacher is not None else 0.0,
                         distill_temperature=distill_temperature if teacher is not None
                         else DISTILL_TEMPERATURE)
    if teacher is not None and not config.distill_weight:
        raise KwhError("distill_weight=0 with a teacher distils nothing: give a weight in "
                       "(0, 1], or no teacher")
    _claim(Path(out_dir), _start_record(small, data, settings))
    tuned = run_training(config, resume=True, progress=progress, model=work, data=data,
                         teacher=teacher).model
    tuned = detach_fixed_point_(tuned.cpu().eval())
    floats = (small.kwh_summary.get("float_grids") or {}).get("bits")
    if floats is not None:  # the biases and norms trained in float32: back onto their grids
        snap_floats_(tuned, floats)
    summary = copy.deepcopy(small.kwh_summary)
    tuned.kwh_summary = summary
    recount(tuned)
    measure_payload(tuned)
    if summary.get("eval"):
        summary["eval"]["error_after_finetune"] = \
            None if eval_data is None else evaluate(tuned, eval_data)["error"]
    summary["finetune"] = {
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
        "distill": distill,
        "examples": len(data.train), "validation_examples": 0 if val is None else len(data.validation),
        "validation_error_before": before,
        "validation_error_after": None if val is None else evaluate(tuned, val)["error"],
        "how": "weights trained on their fixed-point grids (straight-through rounding), pruned "
               "weights held at zero; biases and norms trained in float32, then put back on "
               "grids of the summary's float_grids bits (kwh.compress.floats)",
    }
    return tuned

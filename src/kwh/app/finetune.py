"""Quantization-aware fine-tuning of a compressed model through kwh.train's engine.

``finetune(small, data, epochs)``: the compressed model's weights train on their fixed-point
grids with the pruned weights held at zero (kwh.compress.finetune), as a plain run of
kwh.train (Adam, lr decayed linearly to 0, a checkpoint every epoch, resumable), then leave the
run exactly on the grids; the summary's counts and the codec's payload are measured again and
``summary["finetune"]`` records the run and the validation error before and after.
"""

from __future__ import annotations

import copy
import os

from torch import nn

from kwh.app.verb import measure_payload
from kwh.compress.finetune import attach_fixed_point_, detach_fixed_point_, recount
from kwh.compress.metrics import evaluate
from kwh.data import batch_loader
from kwh.errors import KwhError
from kwh.train import TrainConfig, TrainData, run_training
from kwh.train.config import CUSTOM

__all__ = ["finetune"]


def finetune(small: nn.Module, data: TrainData, epochs: int, out_dir: str | os.PathLike, *,
             lr: float = 1e-4, batch_size: int = 100, seed: int = 0, threads: int | None = None,
             device: str = "cpu", progress: bool = False, eval_data=None) -> nn.Module:
    """A fine-tuned copy of ``small`` (a model kwh.compress returned, quantized).

    ``epochs`` plain epochs on ``data.train`` at ``lr`` (decayed linearly to 0), the run in
    ``out_dir`` (resumed when it is there). ``small`` itself is not changed. The copy has the
    same architecture, bits and zero weights; its summary's nonzero counts, payload and
    maximum compression are measured again, and ``kwh_summary["finetune"]`` holds the
    settings and the validation error before and after (None without a validation split).
    When the summary holds a test error (``eval``, from kwh.compress's eval_data), the error
    after fine-tuning goes beside it as ``eval["error_after_finetune"]``: measured on
    ``eval_data`` (batches of (x, y)), else None (the summary then says it was not measured).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise KwhError(f"epochs={epochs!r} is invalid; fine-tune for a positive whole number "
                       "of epochs")
    if not lr > 0:
        raise KwhError(f"lr={lr!r} is invalid; give a positive learning rate")
    if getattr(small, "kwh_summary", None) is None:
        raise KwhError("finetune takes the model kwh.compress returned (it has a kwh_summary); "
                       "compress the trained model first")
    val = None if data.validation is None else batch_loader(data.validation, 1000)
    before = None if val is None else evaluate(small, val)["error"]
    work = copy.deepcopy(small).cpu()
    recount(work)  # the summary must describe these layers: checked before any training
    work = attach_fixed_point_(work)
    config = TrainConfig(model=CUSTOM, data=CUSTOM, pretrain_epochs=epochs, epochs=0, lr=lr,
                         batch_size=batch_size, seed=seed, out_dir=os.fspath(out_dir),
                         validation=0 if data.validation is None else len(data.validation),
                         threads=threads, device=device)
    tuned = run_training(config, resume=True, progress=progress, model=work, data=data).model
    tuned = detach_fixed_point_(tuned.cpu().eval())
    summary = copy.deepcopy(small.kwh_summary)
    tuned.kwh_summary = summary
    recount(tuned)
    measure_payload(tuned)
    if summary.get("eval"):
        summary["eval"]["error_after_finetune"] = \
            None if eval_data is None else evaluate(tuned, eval_data)["error"]
    summary["finetune"] = {
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
        "examples": len(data.train), "validation_examples": 0 if val is None else len(data.validation),
        "validation_error_before": before,
        "validation_error_after": None if val is None else evaluate(tuned, val)["error"],
        "how": "weights trained on their fixed-point grids (straight-through rounding), pruned "
               "weights held at zero, biases float32 (kwh.compress.finetune)",
    }
    return tuned

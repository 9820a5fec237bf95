"""Knowledge distillation's loss (Hinton, Vinyals and Dean 2015) for kwh.train's plain runs."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kwh.errors import KwhError
from kwh.train.state import hash_state

__all__ = ["distillation_loss", "model_digest", "check_teacher"]


def model_digest(model: nn.Module) -> str:
    """sha256 of a model's state dict (names and bytes): which teacher a run distils from."""
    return hash_state(hashlib.sha256(), model).hexdigest()


def check_teacher(teacher: nn.Module, model: nn.Module, x: Tensor) -> None:
    """Raise KwhError unless ``teacher`` takes the inputs ``x`` and answers with the shape of
    ``model``'s outputs (both run in eval mode on a copy-free no-grad pass; modes restored)."""
    if not isinstance(teacher, nn.Module):
        raise KwhError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    modes = [(m, m.training) for m in (teacher, model)]
    try:
        teacher.eval()
        model.eval()
        with torch.no_grad():
            want = model(x).shape
            try:
                got = teacher(x).shape
            except (RuntimeError, ValueError, TypeError) as e:
                raise KwhError(f"the teacher cannot run on the training inputs of shape "
                               f"{tuple(x.shape)} ({' '.join(str(e).split())[:200]}): distil "
                               "from a model of the same task (the dense net the compressed one "
                               "started from)") from None
    finally:
        for m, training in modes:
            m.train(training)
    if got != want:
        raise KwhError(f"the teacher's outputs have shape {tuple(got)}, the model's "
                       f"{tuple(want)}: distil from a model of the same task (the dense net "
                       "the compressed one started from)")


def distillation_loss(nll: Tensor, logits: Tensor, teacher_logits: Tensor, weight: float,
                      temperature: float) -> Tensor:
    """(1 - weight) nll + weight T^2 KL(p_teacher || p_student), both distributions the
    softmax of the logits divided by T, the KL averaged over the batch. The T^2 keeps the
    soft term's gradient on the scale of the hard one's as T changes; weight 0 gives nll."""
    if weight == 0:
        return nll
    if teacher_logits.shape != logits.shape:
        raise KwhError(f"the teacher's outputs have shape {tuple(teacher_logits.shape)}, the "
                       f"model's {tuple(logits.shape)}: distil from a model of the same task "
                       "(the dense net the compressed one started from)")
    t = temperature
    soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    log_target=True, reduction="batchmean")
    return (1 - weight) * nll + weight * t * t * soft

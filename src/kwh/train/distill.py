"""Knowledge distillation's loss (Hinton, Vinyals and Dean 2015) for kwh.train's plain runs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kwh.errors import KwhError

__all__ = ["distillation_loss"]


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

"""Scores of a predictive distribution: NLL, Brier, calibration error, OOD AUROC, temperature.

Every function takes class probabilities ``probs`` (N, C) and integer ``labels`` (N,), as
torch tensors or numpy arrays, computes in float64 and returns Python floats (or numpy arrays).
Conventions, stated once:

- NLL: mean over examples of -log p[y], with p clamped below at 1e-12 (a zero probability on
  the true class costs 27.6 nats, not infinity).
- Brier score: sum over the C classes of (p_c - 1[c = y])^2, mean over examples; range [0, 2]
  (Brier 1950, the multi-class form).
- ECE (Guo et al. 2017, sec. 2; Naeini et al. 2015): top-1 confidence max_c p_c against top-1
  correctness (argmax, first index on ties); ``bins`` equal-width bins (0, 1/M], (1/M, 2/M],
  ..., ((M-1)/M, 1] (a confidence of exactly 0 goes to the first bin);
  ECE = sum_b (n_b / N) |acc_b - conf_b|.
- OOD AUROC: out-of-distribution examples are the positives and a higher score means "more
  out of distribution"; ties count one half (Mann-Whitney U / (n_in n_out)).
- Temperature scaling (Guo et al. 2017, sec. 4.2): one scalar T > 0 dividing the logits, fitted
  on held-out data by minimising the NLL over log T with L-BFGS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "nll", "brier_score", "expected_calibration_error", "reliability_data", "ReliabilityData",
    "auroc", "ood_auroc", "fit_temperature", "apply_temperature", "accuracy",
]

PROB_FLOOR = 1e-12


def _as_probs_labels(probs, labels) -> tuple[Tensor, Tensor]:
    """Validated float64 probabilities (N, C) and int64 labels (N,)."""
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu", torch.int64)
    if p.dim() != 2:
        raise ValueError(f"probs must have shape (N, C), got {tuple(p.shape)}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},) to match probs, got {tuple(y.shape)}")
    if p.shape[0] == 0:
        raise ValueError("probs is empty; need at least one example")
    if (y < 0).any() or (y >= p.shape[1]).any():
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}], got min {int(y.min())}, "
                         f"max {int(y.max())}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs must be finite and non-negative (pass softmax outputs, not logits)")
    sums = p.sum(1)
    if (sums - 1).abs().max() > 1e-3:
        raise ValueError(f"each row of probs must sum to 1 (softmax outputs, not logits); "
                         f"row sums range over [{float(sums.min()):.4g}, {float(sums.max()):.4g}]")
    return p, y


def accuracy(probs, labels) -> float:
    """Top-1 accuracy (argmax, first index on ties)."""
    p, y = _as_probs_labels(probs, labels)
    return float((p.argmax(1) == y).double().mean())


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class, in nats (p clamped at 1e-12)."""
    p, y = _as_probs_labels(probs, labels)
    py = p.gather(1, y[:, None]).squeeze(1)  # (N,)
    return float(-py.clamp_min(PROB_FLOOR).log().mean())


def brier_score(probs, labels) -> float:
    """Sum over classes of (p_c - onehot_c)^2, mean over examples; range [0, 2]."""
    p, y = _as_probs_labels(probs, labels)
    onehot = F.one_hot(y, p.shape[1]).to(p.dtype)  # (N, C)
    return float((p - onehot).pow(2).sum(1).mean())


@dataclass(frozen=True)
class ReliabilityData:
    """Reliability-diagram data: per bin accuracy, mean confidence and count (NaN when empty)."""

    edges: np.ndarray  # (M + 1,) bin edges 0, 1/M, ..., 1
    accuracy: np.ndarray  # (M,) fraction correct among examples in the bin
    confidence: np.ndarray  # (M,) mean top-1 confidence in the bin
    count: np.ndarray  # (M,) number of examples in the bin

    @property
    def ece(self) -> float:
        """Expected calibration error: sum_b (n_b / N) |acc_b - conf_b|."""
        n = self.count.sum()
        full = self.count > 0
        return float((self.count[full] / n * np.abs(self.accuracy[full] - self.confidence[full])).sum())

    def to_dict(self) -> dict:
        """JSON-ready lists (None for the accuracy and confidence of empty bins)."""
        def clean(a):
            return [None if np.isnan(v) else float(v) for v in a]
        return {"edges": [float(e) for e in self.edges], "accuracy": clean(self.accuracy),
                "confidence": clean(self.confidence), "count": [int(c) for c in self.count]}


def reliability_data(probs, labels, bins: int = 15) -> ReliabilityData:
    """Bin examples by top-1 confidence into ``bins`` equal-width bins (0, 1/M], ..., (1-1/M, 1]."""
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    p, y = _as_probs_labels(probs, labels)
    conf, pred = p.max(1)  # (N,) each; max returns the first index on ties, like argmax
    correct = (pred == y).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1], right=False)  # edges[i-1] < c <= edges[i] -> bin i
    count = torch.bincount(idx, minlength=bins).double()
    acc_sum = torch.bincount(idx, weights=correct, minlength=bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (acc_sum / count).numpy()  # NaN where the bin is empty
        mean_conf = (conf_sum / count).numpy()
    return ReliabilityData(edges.numpy(), acc, mean_conf, count.numpy().astype(np.int64))


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width top-1 confidence bins, weighted by bin count (Guo et al. 2017)."""
    return reliability_data(probs, labels, bins).ece


def auroc(scores_negative, scores_positive) -> float:
    """Area under the ROC curve: P(score_pos > score_neg) + 0.5 P(equal) (Mann-Whitney U)."""
    neg = torch.as_tensor(scores_negative).detach().to("cpu", torch.float64).reshape(-1)
    pos = torch.as_tensor(scores_positive).detach().to("cpu", torch.float64).reshape(-1)
    if neg.numel() == 0 or pos.numel() == 0:
        raise ValueError(f"AUROC needs both kinds of example; got {neg.numel()} negatives and "
                         f"{pos.numel()} positives")
    if not (torch.isfinite(neg).all() and torch.isfinite(pos).all()):
        raise ValueError("AUROC scores must be finite")
    allv = torch.cat([neg, pos])  # (n,)
    ranks = _average_ranks(allv)  # 1-based, ties share their mean rank
    n_neg, n_pos = neg.numel(), pos.numel()
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0  # Mann-Whitney U of the positives
    return float(u / (n_neg * n_pos))


def _average_ranks(v: Tensor) -> Tensor:
    """1-based ranks of v, ties replaced by the mean of the ranks they span."""
    order = torch.argsort(v, stable=True)
    sv = v[order]
    new = torch.ones_like(sv, dtype=torch.bool)
    new[1:] = sv[1:] != sv[:-1]  # first element of each run of equal values
    run = torch.cumsum(new.long(), 0) - 1  # (n,) run id
    first = torch.nonzero(new).squeeze(1).double()  # 0-based start of each run
    length = torch.bincount(run).double()
    mean_rank = first + (length + 1) / 2.0  # mean of the 1-based ranks first+1 .. first+length
    ranks = torch.empty_like(v)
    ranks[order] = mean_rank[run]
    return ranks


def ood_auroc(score_in, score_out) -> float:
    """AUROC of telling out-of-distribution (positive) from in-distribution examples by score."""
    return auroc(score_in, score_out)


def apply_temperature(logits, temperature: float) -> Tensor:
    """softmax(logits / T), (N, C)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = torch.as_tensor(logits).detach().to(torch.float64)
    return torch.softmax(z / temperature, dim=-1)


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """T minimising the NLL of softmax(logits / T) on held-out data (L-BFGS on log T)."""
    z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu", torch.int64)
    if z.dim() != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"need logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("logits must be finite")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature fit diverged (T = {t}); are the held-out labels right?")
    return t

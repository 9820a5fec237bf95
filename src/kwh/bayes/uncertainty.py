"""Predictive uncertainty from the posterior that compresses: sample, average, split the entropy.

p(y | x) ~ (1/S) sum_s softmax(f(x; w_s)), w_s from the variational posterior (Bayesian layers,
local reparameterization, kwh.bayes.sampling), from dropout masks (MC dropout, Gal and
Ghahramani 2016) or from weights stored along a sampler's trajectory (SGLD, Welling and Teh
2011: kwh.bayes.SGLD and kwh.bayes.SampleStore, method "samples"). The predictive entropy
H[p] splits into the expected entropy E_s H[p_s] (aleatoric) and the mutual information
I(y; w | x) = H[p] - E_s H[p_s] (epistemic; the BALD score of Houlsby et al. 2011). Note: the
local reparameterization draws pre-activations independently per example and, in Conv2d
layers, per output position -- exact for Linear layers, the usual approximation for
convolutions (Kingma et al. 2015).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kwh import metrics
from kwh.bayes.layers import bayes_layers, sampling
from kwh.bayes.samples import SampleStore

__all__ = ["Prediction", "predict", "predict_loader", "evaluate_uncertainty",
           "format_uncertainty", "METHODS", "DETERMINISTIC_NOTE", "REQUESTED_NOTE"]

METHODS = ("auto", "bayes", "mc-dropout", "deterministic", "samples")
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout)
DETERMINISTIC_NOTE = (
    "deterministic model (no Bayesian layers, no dropout): one forward pass, mutual information 0; "
    "posterior samples need the Bayesian checkpoint from `kwh train` (kwh.train.load_checkpoint) -- "
    "a compressed model keeps only the posterior mean")
REQUESTED_NOTE = "method='deterministic': one forward pass in eval mode, mutual information 0"


@dataclass(frozen=True)
class Prediction:
    """Posterior predictive of a batch: mean probabilities and the entropy split, per example."""

    probs: Tensor  # (B, C) mean of the S sampled softmax outputs
    entropy: Tensor  # (B,) predictive entropy H[p], nats
    expected_entropy: Tensor  # (B,) E_s H[p_s] (aleatoric part), nats
    mutual_information: Tensor  # (B,) H[p] - E_s H[p_s] (epistemic part), nats, >= 0
    samples: int  # forward samples averaged (1 for a deterministic model)
    method: str  # "bayes", "mc-dropout", "samples" or "deterministic"
    note: str = ""  # why the prediction is deterministic, when it is

    @property
    def stochastic(self) -> bool:
        return self.method != "deterministic"

    @property
    def labels(self) -> Tensor:
        """Top-1 class, (B,)."""
        return self.probs.argmax(dim=1)


def _resolve_method(model: nn.Module, method: str, store: SampleStore | None = None) -> str:
    """The sampling method for ``model``: auto picks samples when given a store, then bayes,
    then mc-dropout, then deterministic."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if store is not None:
        if not isinstance(store, SampleStore):
            raise ValueError(f"store must be a kwh.bayes.SampleStore, got {type(store).__name__}")
        if method not in ("auto", "samples"):
            raise ValueError(f"store= gives weight samples for method='samples'; got "
                             f"method={method!r}")
        if len(store) == 0:
            raise ValueError(f"the store holds no samples yet ({store!r}): collect past its "
                             "burn-in first")
        store.check(model.state_dict())
        return "samples"
    if method == "samples":
        raise ValueError("method='samples' needs store=, a kwh.bayes.SampleStore of the model's "
                         "weights (e.g. collected while training with kwh.bayes.SGLD)")
    has_bayes = any(True for _ in bayes_layers(model))
    has_dropout = any(isinstance(m, _DROPOUT) for m in model.modules())
    if method == "auto":
        return "bayes" if has_bayes else "mc-dropout" if has_dropout else "deterministic"
    if method == "bayes" and not has_bayes:
        raise ValueError("method='bayes' needs Bayesian layers; this model has none (a compressed "
                         "model keeps only the posterior mean: load the Bayesian checkpoint from "
                         "`kwh train`, or use method='mc-dropout' / 'deterministic')")
    if method == "mc-dropout" and not has_dropout:
        raise ValueError("method='mc-dropout' needs nn.Dropout layers; this model has none")
    return method


@contextlib.contextmanager
def _predictive_mode(model: nn.Module, method: str):
    """Eval mode (BatchNorm on running stats) with only the chosen source of noise switched on."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if method == "mc-dropout":
            for m in model.modules():
                if isinstance(m, _DROPOUT):
                    m.train()
        with sampling(model, enabled=method == "bayes"):
            yield
    finally:
        for m, t in flags:
            m.training = t


def _entropy(p: Tensor) -> Tensor:
    """-sum_c p_c log p_c over the last dim, with 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def _device(model: nn.Module) -> torch.device | None:
    p = next(model.parameters(), None)
    return None if p is None else p.device


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, samples: int = 20, *, method: str = "auto",
            max_rows: int = 256, store: SampleStore | None = None) -> Prediction:
    """Posterior predictive of ``x`` (B, ...) averaged over ``samples`` stochastic forward passes.

    ``method``: "auto" (the stored samples if ``store`` is given, else Bayesian layers if any,
    else dropout layers if any, else deterministic), "bayes", "mc-dropout", "samples" or
    "deterministic". The S samples run batched: ``x`` is repeated along the batch dim, at most
    ``max_rows`` rows per forward pass. "samples" loads up to S of the weights in ``store``
    (SampleStore.select: spread evenly; all of them if it holds fewer) in turn into the model in
    eval mode, and ``Prediction.samples`` says how many. The model's modes and weights are
    restored.
    """
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch tensor (B, ...), got {getattr(x, 'shape', x)!r}")
    kind = _resolve_method(model, method, store)
    dev = _device(model)
    if dev is not None:
        x = x.to(dev)
    with _predictive_mode(model, kind):
        if kind == "samples":
            p, eh, n = _stored_samples(model, x, store, samples, max_rows)
            h = _entropy(p)
            return Prediction(p, h, eh, (h - eh).clamp_min(0.0), n, kind)
        if kind == "deterministic":
            logits = torch.cat([model(xb) for xb in x.split(max_rows)])  # (B, C)
            p = F.softmax(logits.double(), dim=-1)
            h = _entropy(p)
            note = DETERMINISTIC_NOTE if method == "auto" else REQUESTED_NOTE
            return Prediction(p, h, h.clone(), torch.zeros_like(h), 1, kind, note)
        parts = [_sample_block(model, xb, samples, max_rows) for xb in x.split(max_rows)]
    p = torch.cat([a for a, _ in parts])  # (B, C)
    eh = torch.cat([b for _, b in parts])  # (B,)
    h = _entropy(p)
    mi = (h - eh).clamp_min(0.0)  # >= 0 by Jensen; the clamp only removes rounding
    return Prediction(p, h, eh, mi, samples, kind)


def _sample_block(model: nn.Module, x: Tensor, samples: int, max_rows: int) -> tuple[Tensor, Tensor]:
    """Mean probabilities (B, C) and mean per-sample entropy (B,) of one block, float64."""
    b = x.shape[0]
    per_pass = max(1, max_rows // b)  # samples per forward pass
    sum_p: Tensor | None = None
    sum_h = torch.zeros(b, dtype=torch.float64, device=x.device)
    done = 0
    while done < samples:
        k = min(per_pass, samples - done)
        xs = x.repeat(k, *([1] * (x.dim() - 1)))  # (k B, ...): each copy draws its own sample
        logp = F.log_softmax(model(xs).double(), dim=-1)  # (k B, C)
        logp = logp.reshape(k, b, -1)  # (k, B, C)
        p = logp.exp()
        sum_p = p.sum(0) if sum_p is None else sum_p + p.sum(0)
        sum_h += -(p * logp).sum(-1).sum(0)  # p log p -> 0 as p -> 0; logp is finite here
        done += k
    return sum_p / samples, sum_h / samples


def _stored_samples(model: nn.Module, x: Tensor, store: SampleStore, samples: int,
                    max_rows: int) -> tuple[Tensor, Tensor, int]:
    """Mean probabilities (B, C), mean per-sample entropy (B,) and count of the stored weights."""
    picks = store.select(samples)
    own = {k: v.detach().clone() if isinstance(v, Tensor) else v
           for k, v in model.state_dict().items()}  # restored after, however it ends
    sum_p: Tensor | None = None
    sum_h: Tensor | None = None
    try:
        for i in picks:
            model.load_state_dict(store[i])
            logp = torch.cat([F.log_softmax(model(xb).double(), dim=-1)
                              for xb in x.split(max_rows)])  # (B, C)
            p = logp.exp()
            h = -(p * logp).sum(-1)  # (B,)
            sum_p = p if sum_p is None else sum_p + p
            sum_h = h if sum_h is None else sum_h + h
    finally:
        model.load_state_dict(own)
    return sum_p / len(picks), sum_h / len(picks), len(picks)


def predict_loader(model: nn.Module, loader: Iterable, samples: int = 20, *, method: str = "auto",
                   max_rows: int = 256, store: SampleStore | None = None
                   ) -> tuple[Prediction, Tensor | None]:
    """predict() over every batch of a loader of (x, y) or x; returns the joined prediction and labels."""
    preds: list[Prediction] = []
    labels: list[Tensor] = []
    for batch in loader:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        preds.append(predict(model, x, samples, method=method, max_rows=max_rows, store=store))
        if y is not None:
            labels.append(torch.as_tensor(y).reshape(-1).cpu())
    if not preds:
        raise ValueError("the loader yielded no batches")
    first = preds[0]
    joined = Prediction(
        torch.cat([q.probs.cpu() for q in preds]), torch.cat([q.entropy.cpu() for q in preds]),
        torch.cat([q.expected_entropy.cpu() for q in preds]),
        torch.cat([q.mutual_information.cpu() for q in preds]), first.samples, first.method,
        first.note)
    return joined, (torch.cat(labels) if labels else None)


def evaluate_uncertainty(model: nn.Module, test_loader: Iterable, ood_loader: Iterable | None = None,
                         samples: int = 20, *, method: str = "auto", bins: int = 15,
                         max_rows: int = 256, store: SampleStore | None = None) -> dict:
    """Test error, NLL, Brier, ECE and reliability data; with ``ood_loader``, OOD AUROC.

    AUROC scores: predictive entropy and mutual information (the latter is None for a
    deterministic model, whose mutual information is identically 0).
    """
    pred, y = predict_loader(model, test_loader, samples, method=method, max_rows=max_rows,
                             store=store)
    if y is None:
        raise ValueError("test_loader must yield (x, y) batches with labels")
    rel = metrics.reliability_data(pred.probs, y, bins)
    out = {
        "method": pred.method, "samples": pred.samples, "note": pred.note, "n_test": len(y),
        "error": 1.0 - metrics.accuracy(pred.probs, y), "nll": metrics.nll(pred.probs, y),
        "brier": metrics.brier_score(pred.probs, y), "ece": rel.ece, "bins": bins,
        "mean_entropy": float(pred.entropy.mean()),
        "mean_mutual_information": float(pred.mutual_information.mean()),
        "reliability": rel.to_dict(),
    }
    if ood_loader is not None:
        ood, _ = predict_loader(model, ood_loader, samples, method=method, max_rows=max_rows,
                                store=store)
        out["ood"] = {
            "n": len(ood.entropy),
            "auroc_entropy": metrics.ood_auroc(pred.entropy, ood.entropy),
            "auroc_mutual_information": (metrics.ood_auroc(pred.mutual_information,
                                                           ood.mutual_information)
                                         if pred.stochastic else None),
            "mean_entropy": float(ood.entropy.mean()),
            "mean_mutual_information": float(ood.mutual_information.mean()),
        }
    return out


def format_uncertainty(result: dict) -> str:
    """Human-readable lines for a result of evaluate_uncertainty."""
    how = (f"{result['method']}, {result['samples']} samples" if result["method"] != "deterministic"
           else "deterministic, 1 forward pass")
    if result["method"] == "samples":
        how = f"{result['samples']} stored weight samples"
    lines = [f"model             {result['model_file']} ({result.get('model_kind', '')})"
             ] if "model_file" in result else []
    lines += [
        f"predictive distribution: {how}",
        f"test examples     {result['n_test']}",
        f"test error        {100 * result['error']:.2f} %",
        f"NLL               {result['nll']:.4f} nats",
        f"Brier             {result['brier']:.4f} (sum over classes, mean over examples)",
        f"ECE               {100 * result['ece']:.2f} % ({result['bins']} equal-width top-1 "
        f"confidence bins)",
        f"mean entropy      {result['mean_entropy']:.4f} nats",
        f"mean mutual info  {result['mean_mutual_information']:.4f} nats",
    ]
    ood = result.get("ood")
    if ood is not None:
        mi = ood["auroc_mutual_information"]
        lines += [
            f"OOD examples      {ood['n']}",
            f"OOD AUROC (entropy)            {ood['auroc_entropy']:.4f}",
            "OOD AUROC (mutual information) "
            + ("n/a (deterministic: mutual information is 0)" if mi is None else f"{mi:.4f}"),
        ]
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)

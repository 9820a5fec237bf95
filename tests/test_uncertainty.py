"""kwh.predict: batched posterior sampling against a naive loop, the entropy split, MC dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kwh
from kwh.bayes import bayes_layers, sampling
from kwh.bayes.uncertainty import evaluate_uncertainty, format_uncertainty, predict_loader

PRIORS = ["log-uniform", "group-nj", "group-horseshoe"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(prior: str | None, width: int = 16) -> nn.Sequential:
    m = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                      nn.Linear(width, 3))
    if prior is not None:
        kwh.bayesify_(m, prior)
    return m


def _set_log_vars(model: nn.Module, value: float):
    """Set every posterior log-variance of the model (weights and group scales) to ``value``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "log_var" in name or "log_sigma2" in name:
                p.fill_(value)


@pytest.mark.parametrize("prior", PRIORS)
def test_batched_samples_match_naive_loop(prior):
    """Mean probs and expected entropy of predict() agree with one sample per forward pass.

    Tolerance: 5 combined standard errors of the two Monte Carlo means, per entry.
    """
    m = _mlp(prior)
    _set_log_vars(m, -2.0)  # visible posterior spread
    m.eval()
    x = torch.randn(4, 2) * 2
    s = 1001  # odd, and max_rows=10 gives 2 samples per pass: exercises the remainder pass
    got = kwh.predict(m, x, samples=s, max_rows=10)
    with torch.no_grad(), sampling(m):
        logp = torch.stack([F.log_softmax(m(x).double(), 1) for _ in range(s)])  # (S, B, C)
    p = logp.exp()
    se = (p.var(0) / s).sqrt()  # (B, C), the same for both estimators
    assert ((got.probs - p.mean(0)).abs() <= 5 * se * 2 ** 0.5 + 1e-9).all()
    h = -(p * logp).sum(-1)  # (S, B)
    se_h = (h.var(0) / s).sqrt()
    assert ((got.expected_entropy - h.mean(0)).abs() <= 5 * se_h * 2 ** 0.5 + 1e-9).all()
    assert p.std(0).max() > 0.01  # the check had something to compare
    assert got.samples == s and got.method == "bayes" and got.note == ""


def test_samples_run_batched():
    """S samples of a small batch take one forward pass; more rows than max_rows split up."""
    m = _mlp("group-nj").eval()
    calls = []
    m[0].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    kwh.predict(m, torch.randn(8, 2), samples=20)
    assert calls == [160]
    calls.clear()
    kwh.predict(m, torch.randn(8, 2), samples=5, max_rows=16)
    assert calls == [16, 16, 8]  # 2 + 2 + 1 samples of 8 rows


def test_entropy_split_is_consistent():
    m = _mlp("group-nj")
    _set_log_vars(m, -1.0)
    pr = kwh.predict(m, torch.randn(32, 2) * 3, samples=200)
    h = -(pr.probs * pr.probs.log()).sum(1)
    assert torch.allclose(pr.entropy, h, atol=1e-10)
    assert torch.allclose(pr.mutual_information, pr.entropy - pr.expected_entropy, atol=1e-12)
    assert (pr.mutual_information >= 0).all() and pr.mutual_information.max() > 1e-3
    assert torch.allclose(pr.probs.sum(1), torch.ones(32, dtype=torch.float64))


@pytest.mark.parametrize("prior", PRIORS)
def test_point_mass_posterior_has_zero_mutual_information(prior):
    m = _mlp(prior)
    _set_log_vars(m, -1e4)  # clamped to the minimum log-variance: samples (nearly) coincide
    pr = kwh.predict(m, torch.randn(16, 2) * 3, samples=50)
    assert pr.method == "bayes"
    assert pr.mutual_information.abs().max() < 1e-6
    x = torch.randn(16, 2) * 3
    with torch.no_grad():
        det = F.softmax(m.eval()(x).double(), 1)  # posterior mean: what the samples collapse to
    assert torch.allclose(kwh.predict(m, x, samples=20).probs, det, atol=1e-3)


def test_plain_model_is_deterministic_with_a_note():
    m = _mlp(None).train()
    x = torch.randn(5, 2)
    pr = kwh.predict(m, x, samples=30)
    assert pr.method == "deterministic" and pr.samples == 1 and not pr.stochastic
    assert torch.equal(pr.mutual_information, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(pr.entropy, pr.expected_entropy)
    assert "Bayesian checkpoint" in pr.note
    with torch.no_grad():
        want = F.softmax(m.eval()(x).double(), 1)
    assert torch.allclose(pr.probs, want, atol=1e-12)


def test_mc_dropout_keeps_batchnorm_in_eval_and_restores_modes():
    m = nn.Sequential(nn.Linear(2, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                      nn.Linear(32, 3))
    m.train()
    m(torch.randn(64, 2))  # give BatchNorm non-trivial running statistics
    m[1].eval()  # a mixed state, to check that every module's own flag comes back
    flags = [mod.training for mod in m.modules()]
    stats = (m[1].running_mean.clone(), m[1].running_var.clone(), int(m[1].num_batches_tracked))
    x = torch.randn(6, 2)
    pr = kwh.predict(m, x, samples=200)
    assert pr.method == "mc-dropout" and pr.mutual_information.min() > 0
    assert [mod.training for mod in m.modules()] == flags
    assert torch.equal(m[1].running_mean, stats[0]) and torch.equal(m[1].running_var, stats[1])
    assert int(m[1].num_batches_tracked) == stats[2]
    det = kwh.predict(m, x, method="deterministic")
    with torch.no_grad():
        m.eval()
        want = F.softmax(m(x).double(), 1)
    assert torch.allclose(det.probs, want, atol=1e-12) and det.mutual_information.max() == 0
    # MC-dropout mean within Monte Carlo error of the dropout-averaged forward passes
    with torch.no_grad():
        m[3].train()
        ref = torch.stack([F.softmax(m(x).double(), 1) for _ in range(2000)]).mean(0)
    assert (pr.probs - ref).abs().max() < 0.08


def test_uncertainty_grows_away_from_the_training_data():
    """Two clusters at -(1, 1) and (1, 1); moving away from them along (1, -1), where the data
    say nothing, the predictive entropy and the mutual information grow.

    The off-data direction mixes both inputs on purpose: a sparsity prior prunes an input the
    data never use (a pure y direction would be cut off, and nothing would change along it).
    """
    g = torch.Generator().manual_seed(0)
    n = 200
    y = torch.randint(0, 2, (n,), generator=g)
    c = (2.0 * y - 1).float()
    x = 0.3 * torch.randn(n, 2, generator=g) + torch.stack([c, c], 1)
    m = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    kwh.bayesify_(m, "group-horseshoe")
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for step in range(300):
        loss = kwh.free_energy(m, F.cross_entropy(m(x), y), n_data=n, kl_weight=min(1.0, step / 100))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert (m(x).argmax(1) == y).float().mean() > 0.98
    h, mi = [], []
    for r in (0.0, 4.0, 8.0, 16.0, 32.0):
        pts = torch.tensor([[-1.0 - r, -1.0 + r], [1.0 - r, 1.0 + r],
                            [-1.0 + r, -1.0 - r], [1.0 + r, 1.0 - r]])
        pr = kwh.predict(m, pts, samples=400)
        h.append(float(pr.entropy.mean()))
        mi.append(float(pr.mutual_information.mean()))
    assert all(a < b for a, b in zip(mi, mi[1:])), mi
    assert all(v > 3 * h[0] for v in h[1:]), h
    assert mi[-1] > 100 * mi[0] and mi[-1] > 0.1, mi
    train = kwh.predict(m, x, samples=100)
    assert float(train.mutual_information.mean()) < 0.01


def test_evaluate_uncertainty_report():
    m = _mlp("group-nj")
    _set_log_vars(m, -2.0)
    x, y = torch.randn(60, 2), torch.randint(0, 3, (60,))
    test = DataLoader(TensorDataset(x, y), batch_size=25)
    ood = DataLoader(TensorDataset(10 * torch.randn(40, 2), torch.zeros(40, dtype=torch.long)),
                     batch_size=25)
    r = evaluate_uncertainty(m, test, ood, samples=10)
    pred, labels = predict_loader(m, test, 10)
    assert torch.equal(labels, y) and pred.probs.shape == (60, 3)
    assert r["n_test"] == 60 and r["ood"]["n"] == 40 and r["method"] == "bayes"
    assert 0 <= r["ece"] <= 1 and 0 <= r["error"] <= 1 and r["brier"] >= 0
    assert isinstance(r["ood"]["auroc_mutual_information"], float)
    assert sum(r["reliability"]["count"]) == 60
    assert "OOD AUROC (mutual information)" in format_uncertainty(r)
    plain = evaluate_uncertainty(_mlp(None), test, ood, samples=10)
    assert plain["ood"]["auroc_mutual_information"] is None and plain["mean_mutual_information"] == 0
    text = format_uncertainty(plain)
    assert "deterministic" in text and "Bayesian checkpoint" in text


def test_bad_arguments_are_named():
    m = _mlp(None)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        kwh.predict(m, torch.randn(2, 2), samples=0)
    with pytest.raises(ValueError, match="choose one of: auto, bayes, mc-dropout, deterministic"):
        kwh.predict(m, torch.randn(2, 2), method="ensemble")
    with pytest.raises(ValueError, match="Bayesian checkpoint"):
        kwh.predict(m, torch.randn(2, 2), method="bayes")
    with pytest.raises(ValueError, match="no(ne)? ?.*Dropout|Dropout layers"):
        kwh.predict(m, torch.randn(2, 2), method="mc-dropout")
    with pytest.raises(ValueError, match="non-empty batch"):
        kwh.predict(m, torch.randn(0, 2))


def test_bayes_layers_left_in_their_mode():
    m = _mlp("log-uniform").train()
    kwh.predict(m, torch.randn(3, 2), samples=4)
    assert m.training and all(layer.training and not layer.sample for _, layer in bayes_layers(m))


def test_evaluate_model_file_checkpoint_and_kwh(data_root, tmp_path):
    """`kwh evaluate MODEL --uncertainty`: a training checkpoint samples, a .kwh file cannot."""
    from kwh.app import evaluate_model_file
    from kwh.train import TrainConfig, run_training

    cfg = TrainConfig(model="lenet300", data="mnist", data_dir=str(data_root), prior="group-nj",
                      epochs=1, limit_train=200, limit_test=100, out_dir=str(tmp_path / "run"),
                      threads=1)
    res = run_training(cfg, progress=False)
    r = evaluate_model_file(res.checkpoint, "mnist", "fashion-mnist", 4, data_dir=data_root,
                            limit_test=50)
    assert r["method"] == "bayes" and r["samples"] == 4 and r["model_kind"] == "checkpoint"
    assert r["n_test"] == 50 and r["ood"]["n"] == 50
    assert isinstance(r["ood"]["auroc_mutual_information"], float)
    kwh.save(kwh.compress(res.model), tmp_path / "m.kwh")
    d = evaluate_model_file(tmp_path / "m.kwh", "mnist", "fashion-mnist", 4, data_dir=data_root,
                            limit_test=50)
    assert d["method"] == "deterministic" and d["model_kind"] == "kwh"
    assert d["ood"]["auroc_mutual_information"] is None and "Bayesian checkpoint" in d["note"]
    assert "deterministic" in format_uncertainty(d)
    with pytest.raises(FileNotFoundError, match="no such model"):
        evaluate_model_file(tmp_path / "missing", "mnist")

"""kwh.bayes.SGLD and SampleStore: the stationary law on a Gaussian posterior, the update by
hand, the store's policy, and kwh.predict over stored weights against a manual average."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kwh
from kwh.bayes import SGLD, SampleStore
from kwh.bayes.uncertainty import evaluate_uncertainty, format_uncertainty, predict_loader

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# --- the sampler ------------------------------------------------------------------------------

def _gaussian_posterior(n: int, x_mean: float, prior_std: float, seed: int = 0):
    """n observations x_i ~ N(theta, 1) and the prior N(0, prior_std^2): the posterior of theta is
    N(mu, s2), s2 = 1 / (n + 1 / prior_std^2), mu = s2 * sum_i x_i. Returns (x_bar, mu, s2)."""
    g = torch.Generator().manual_seed(seed)
    x = x_mean + torch.randn(n, generator=g, dtype=F64)
    s2 = 1.0 / (n + 1.0 / prior_std ** 2)
    return float(x.mean()), s2 * float(x.sum()), s2


def _chains(theta0: torch.Tensor, x_bar: float, steps: int, keep: int, **sgld) -> torch.Tensor:
    """Run K independent chains (the K entries of theta, each its own 1-D problem) on full-batch
    gradients of the mean NLL, grad = theta - x_bar; returns the last ``keep`` states (keep, K)."""
    theta = nn.Parameter(theta0.clone())
    opt = SGLD([theta], **sgld)
    out = torch.empty(keep, theta.numel(), dtype=F64)
    for t in range(steps):
        theta.grad = theta.detach() - x_bar
        opt.step()
        if t >= steps - keep:
            out[t - steps + keep] = theta.detach()
    return out


@pytest.mark.parametrize("case", ["plain", "tempered", "preconditioned"])
def test_stationary_law_is_the_gaussian_posterior(case):
    """Sample mean and variance of 1,000 chains x 2,000 kept steps against the closed form.

    Mean: within 4 standard errors, from the spread of the per-chain means (each chain's time
    average is one batch; chains are independent). Variance (times the temperature T): within
    5 %; the Monte Carlo error is about 1.4 % (AR(1) chains with rho = 1 - h/2, h = 0.02 the
    step times the posterior precision: ~20,000 effective draws of theta^2) and the step's own
    bias is h/4 = 0.5 % (the discrete chain's variance is s2 / (1 - h/4)). pSGLD is checked
    where the prior keeps the mean likelihood gradient far from 0, so its preconditioner is
    nearly constant and the omitted correction term Gamma is negligible.
    """
    k, keep = 1000, 2000
    temp = 0.5 if case == "tempered" else 1.0
    if case == "preconditioned":
        prior_std, x_mean, burn = 0.1, 5.0, 2000
    else:
        prior_std, x_mean, burn = 1.0, 1.5, 1000
    x_bar, mu, s2 = _gaussian_posterior(100, x_mean, prior_std)
    g_settled = 1.0 / abs(mu - x_bar) if case == "preconditioned" else 1.0  # G where V settles
    h = 0.02
    lr = h * s2 / g_settled  # lr * G * precision = h
    gen = torch.Generator().manual_seed(1)
    out = _chains(torch.zeros(k, dtype=F64), x_bar, burn + keep, keep, lr=lr, n_data=100,
                  prior_std=prior_std, temperature=temp, preconditioned=case == "preconditioned",
                  generator=gen)
    chain_means = out.mean(0)  # (K,)
    se = float(chain_means.std()) / math.sqrt(k)
    assert se < 0.02 * math.sqrt(temp * s2)  # the check is sharp: 2 % of the posterior's std
    assert abs(float(out.mean()) - mu) < 4 * se
    var = float(((out - mu) ** 2).mean())
    assert abs(var / (temp * s2) - 1) < 0.05, (var, temp * s2)
    if case == "plain":  # the flat prior's posterior mean, x_bar, is told apart: the prior counts
        assert abs(mu - x_bar) > 10 * se


def test_zero_temperature_descends_to_the_map_deterministically():
    x_bar, mu, s2 = _gaussian_posterior(100, 1.5, 1.0)
    runs = [_chains(torch.tensor([3.0, -2.0], dtype=F64), x_bar, 200, 1, lr=0.5 * s2, n_data=100,
                    prior_std=1.0, temperature=0.0, generator=torch.Generator().manual_seed(s))
            for s in (0, 1)]
    assert torch.equal(runs[0], runs[1])  # no noise drawn
    assert torch.allclose(runs[0], torch.full((1, 2), mu, dtype=F64), atol=1e-12, rtol=0)
    pre = _chains(torch.tensor([3.0, -2.0], dtype=F64), x_bar, 3000, 1, lr=1e-4, n_data=100,
                  prior_std=1.0, temperature=0.0, preconditioned=True)
    assert torch.allclose(pre, torch.full((1, 2), mu, dtype=F64), atol=1e-6, rtol=0)


def test_zero_temperature_equals_sgd_with_weight_decay():
    """T = 0: theta -= (lr/2)(N g + theta / s^2), i.e. SGD at lr N / 2 with weight decay
    1 / (N s^2); checked on a Linear layer trained with cross-entropy."""
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    a = nn.Linear(5, 3)
    b = copy.deepcopy(a)
    start = a.weight.detach().clone()
    n, lr, prior_std = 1000, 1e-3, 0.5
    opt_a = SGLD(a.parameters(), lr=lr, n_data=n, prior_std=prior_std, temperature=0.0)
    opt_b = torch.optim.SGD(b.parameters(), lr=lr * n / 2, weight_decay=1 / (n * prior_std ** 2))
    for _ in range(5):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=1e-5)
    assert (a.weight - start).abs().max() > 1e-3  # it moved


def test_one_step_by_hand():
    """theta = (1, -2), g = (0.5, 0.25), N = 10, lr = 0.1, prior_std = 2, T = 0.5:
    drift N g + theta / 4 = (5.25, 2.0); theta - 0.05 drift = (0.7375, -2.1); then the noise,
    sqrt(lr T) xi = sqrt(0.05) xi."""
    theta = nn.Parameter(torch.tensor([1.0, -2.0], dtype=F64))
    opt = SGLD([theta], lr=0.1, n_data=10, prior_std=2.0, temperature=0.5,
               generator=torch.Generator().manual_seed(7))
    theta.grad = torch.tensor([0.5, 0.25], dtype=F64)
    opt.step()
    xi = torch.randn(2, generator=torch.Generator().manual_seed(7), dtype=F64)
    want = torch.tensor([0.7375, -2.1], dtype=F64) + math.sqrt(0.05) * xi
    assert torch.allclose(theta.detach(), want, atol=1e-15, rtol=0)
    assert opt.state[theta]["step"] == 1


def test_two_preconditioned_steps_by_hand():
    """pSGLD, flat prior: V_1 = 0.01 g_1^2, V_2 = 0.99 V_1 + 0.01 g_2^2, G = 1 / (1e-5 + sqrt V),
    theta -= (lr/2) G N g, then + sqrt(lr G) xi."""
    lr, n = 0.01, 50
    theta = nn.Parameter(torch.tensor([0.3, -1.2, 2.0], dtype=F64))
    opt = SGLD([theta], lr=lr, n_data=n, preconditioned=True,
               generator=torch.Generator().manual_seed(3))
    noise = torch.Generator().manual_seed(3)
    want = [0.3, -1.2, 2.0]
    v = [0.0, 0.0, 0.0]
    for grad in ([0.2, -0.4, 1e-3], [-0.1, 0.5, 2e-3]):
        theta.grad = torch.tensor(grad, dtype=F64)
        opt.step()
        xi = torch.randn(3, generator=noise, dtype=F64).tolist()
        for i, g in enumerate(grad):
            v[i] = 0.99 * v[i] + 0.01 * g * g
            precond = 1.0 / (1e-5 + math.sqrt(v[i]))
            want[i] += -lr / 2 * precond * n * g + math.sqrt(lr * precond) * xi[i]
        assert torch.allclose(theta.detach(), torch.tensor(want, dtype=F64), atol=1e-13, rtol=0)
    assert torch.allclose(opt.state[theta]["square_avg"], torch.tensor(v, dtype=F64), rtol=1e-14)


def test_generator_reproduces_the_noise_and_unused_parameters_stay():
    def run(seed):
        used = nn.Parameter(torch.zeros(4))
        unused = nn.Parameter(torch.ones(3))
        opt = SGLD([used, unused], lr=1e-2, n_data=10,
                   generator=torch.Generator().manual_seed(seed))
        for _ in range(3):
            used.grad = torch.ones(4)
            opt.step()
        assert torch.equal(unused.detach(), torch.ones(3)) and unused not in opt.state
        return used.detach()

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_param_groups_take_their_own_options():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = SGLD([{"params": [a]}, {"params": [b], "lr": 0.2, "prior_std": 1.0}], lr=0.1, n_data=4,
               temperature=0.0)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert torch.allclose(a, torch.full((2,), -0.2)) and torch.allclose(b, torch.full((2,), -0.4))
    assert opt.param_groups[1]["prior_std"] == 1.0 and opt.param_groups[0]["prior_std"] is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(lr="1e-3"), "lr must be a finite number > 0"),
    (dict(n_data=0), "n_data must be a positive integer"),
    (dict(n_data=2.5), "n_data must be a positive integer"),
    (dict(n_data=True), "n_data must be a positive integer"),
    (dict(prior_std=0.0), "prior_std must be a finite number > 0"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(alpha=1.0), r"alpha must be in \[0, 1\)"),
    (dict(eps=0.0), "eps must be a finite number > 0"),
    (dict(preconditioned="yes"), "preconditioned must be True or False"),
    (dict(generator=0), "generator must be a torch.Generator or None"),
])
def test_bad_sgld_arguments_are_named(kwargs, match):
    args = dict(lr=1e-3, n_data=100) | kwargs
    with pytest.raises(ValueError, match=match):
        SGLD([nn.Parameter(torch.zeros(1))], **args)


# --- the store --------------------------------------------------------------------------------

def test_store_keeps_burn_in_thinning_and_the_last_k():
    m = nn.Linear(2, 1)
    store = SampleStore(burn_in=3, thin=2, max_samples=3)
    kept = []
    for step in range(13):
        with torch.no_grad():
            m.weight.fill_(step)
        if store.collect(m, step):
            kept.append(step)
    assert kept == [3, 5, 7, 9, 11] and store.collected == 5
    assert store.steps == (7, 9, 11) and len(store) == 3  # the last 3 kept
    assert [float(s["weight"][0, 0]) for s in store] == [7.0, 9.0, 11.0]
    assert store[0]["weight"].device.type == "cpu" and set(store[0]) == {"weight", "bias"}
    with torch.no_grad():
        m.weight.fill_(-1.0)  # the samples are copies
    assert float(store[-1]["weight"][0, 0]) == 11.0
    everything = SampleStore()
    for step in range(1, 6):
        everything.collect(m, step)
    assert everything.steps == (1, 2, 3, 4, 5)
    everything.clear()
    assert len(everything) == 0 and everything.collect(m, 1)


def test_store_selects_evenly_spread_samples():
    m = nn.Linear(2, 1)
    store = SampleStore()
    for step in range(10):
        store.collect(m, step)
    assert store.select(3) == [0, 5, 9]  # round(4.5) up
    assert store.select(4) == [0, 3, 6, 9]
    assert store.select(2) == [0, 9] and store.select(1) == [9]
    assert store.select(10) == store.select(50) == list(range(10))


def test_bad_store_arguments_are_named():
    for kwargs, match in [(dict(burn_in=-1), "burn_in must be an integer >= 0"),
                          (dict(thin=0), "thin must be an integer >= 1"),
                          (dict(max_samples=0), "max_samples must be an integer >= 1"),
                          (dict(thin=1.5), "thin must be an integer >= 1")]:
        with pytest.raises(ValueError, match=match):
            SampleStore(**kwargs)
    store = SampleStore()
    m = nn.Linear(2, 1)
    store.collect(m, 4)
    with pytest.raises(ValueError, match="step must increase between calls to collect: got 4 "
                                         "after 4"):
        store.collect(m, 4)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        SampleStore().collect(m, -1)
    with pytest.raises(ValueError, match="does not match the stored samples.*weight"):
        store.collect(nn.Linear(3, 1), 5)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        store.select(0)


def test_store_payload_round_trips_and_continues_where_it_left_off():
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    store = SampleStore(burn_in=2, thin=3, max_samples=2)
    for step in range(1, 10):
        with torch.no_grad():
            m[0].weight.fill_(step)
        store.collect(m, step)
    tensors, meta = store.payload("s/")
    assert sorted(tensors) == sorted(f"s/{i}/{n}" for i in (0, 1) for n in m.state_dict())
    assert meta["steps"] == [5, 8] and meta["collected"] == 3 and meta["last_step"] == 9
    back = SampleStore.from_payload({**tensors, "other": torch.zeros(1)}, meta, "s/")
    assert (back.steps, back.collected, repr(back)) == (store.steps, 3, repr(store))
    assert list(back[0]) == list(store[0])  # the state_dict's order
    assert all(torch.equal(a[k], b[k]) for a, b in zip(back, store) for k in a)
    for s in (store, back):  # both go on alike: 11 kept, 5 dropped, 11 not taken twice
        with torch.no_grad():
            m[0].weight.fill_(11)
        s.collect(m, 11)
        with pytest.raises(ValueError, match="step must increase"):
            s.collect(m, 11)
    assert back.steps == store.steps == (8, 11) and back.collected == 4
    empty = SampleStore.from_payload(*SampleStore(thin=4).payload())
    assert len(empty) == 0 and empty.thin == 4 and empty.collect(m, 0)


def test_bad_store_payloads_are_named():
    m = nn.Linear(2, 1)
    store = SampleStore()
    store.collect(m, 1)
    store.collect(m, 2)
    tensors, meta = store.payload()
    for t, changes, match in [
            (tensors, {"steps": [2, 1]}, "do not increase"),
            (tensors, {"last_step": 1}, "do not increase up to the last step 1"),
            (tensors, {"max_samples": 1}, "2 samples exceed max_samples=1"),
            (tensors, {"thin": 0}, "thin must be an integer >= 1"),
            (tensors, {"collected": 1}, "collected must be an integer >= 2"),
            ({k: v for k, v in tensors.items() if k != "samples/1/bias"}, {},
             "do not match their metadata: samples/1/bias"),
            ({**tensors, "samples/0/bias": torch.zeros(2)}, {}, "sample 1 differs from sample 0"),
            (tensors, {"steps": None}, "malformed sample store metadata")]:
        with pytest.raises(ValueError, match=match):
            SampleStore.from_payload(t, {**meta, **changes})


# --- predict over the stored samples ------------------------------------------------------------

def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(8, 4))


def _filled_store(m: nn.Module, n: int = 6) -> SampleStore:
    """n samples of visibly different weights and BatchNorm statistics."""
    store = SampleStore(burn_in=1)
    m.train()
    for step in range(n + 1):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.5 * torch.randn_like(p))
            m(torch.randn(16, 3) * 2)  # moves the running statistics
        store.collect(m, step)
    return store


def _manual(m: nn.Module, store: SampleStore, picks: list[int], x: torch.Tensor):
    """Average softmax and mean entropy over the picked samples, one copy of the model each."""
    probs = []
    for i in picks:
        ref = copy.deepcopy(m)
        ref.load_state_dict(store[i])
        with torch.no_grad():
            probs.append(F.softmax(ref.eval()(x).double(), 1))
    p = torch.stack(probs)  # (S, B, C)
    return p.mean(0), -(p * p.log()).sum(-1).mean(0)


def test_predict_averages_the_softmax_over_stored_samples():
    m = _net()
    store = _filled_store(m)
    assert len(store) == 6
    with torch.no_grad():
        m[0].weight.fill_(0.1)  # the model's own weights differ from every sample
    m.train()
    own = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(10, 3)
    pr = kwh.predict(m, x, samples=3, store=store, max_rows=4)
    want_p, want_eh = _manual(m, store, [0, 3, 5], x)
    assert pr.method == "samples" and pr.samples == 3 and pr.stochastic
    assert torch.allclose(pr.probs, want_p, atol=1e-12, rtol=0)
    assert torch.allclose(pr.expected_entropy, want_eh, atol=1e-12, rtol=0)
    assert torch.allclose(pr.mutual_information, pr.entropy - pr.expected_entropy, atol=1e-12)
    assert pr.mutual_information.max() > 1e-3  # the samples disagree
    state = m.state_dict()
    assert all(torch.equal(state[k], v) for k, v in own.items())  # weights and statistics back
    assert m.training and all(mod.training for mod in m.modules())
    every = kwh.predict(m, x, samples=20, store=store, method="samples")
    assert every.samples == 6
    assert torch.allclose(every.probs, _manual(m, store, list(range(6)), x)[0], atol=1e-12, rtol=0)


def test_predict_loader_and_evaluation_take_the_store():
    m = _net()
    store = _filled_store(m, 4)
    x, y = torch.randn(30, 3), torch.randint(0, 4, (30,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    pred, labels = predict_loader(m, loader, 4, store=store)
    whole = kwh.predict(m, x, 4, store=store)
    assert torch.equal(labels, y) and pred.method == "samples" and pred.samples == 4
    assert torch.allclose(pred.probs, whole.probs, atol=1e-12, rtol=0)
    ood = DataLoader(TensorDataset(10 * torch.randn(20, 3), torch.zeros(20, dtype=torch.long)),
                     batch_size=8)
    r = evaluate_uncertainty(m, loader, ood, 4, store=store)
    assert r["method"] == "samples" and isinstance(r["ood"]["auroc_mutual_information"], float)
    assert "4 stored weight samples" in format_uncertainty(r)


def test_predict_with_a_store_names_bad_arguments():
    m = _net()
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="method='samples' needs store="):
        kwh.predict(m, x, method="samples")
    store = SampleStore(burn_in=100)
    store.collect(m, 1)
    with pytest.raises(ValueError, match="holds no samples yet"):
        kwh.predict(m, x, store=store)
    store = _filled_store(m, 2)
    with pytest.raises(ValueError, match="store= gives weight samples for method='samples'"):
        kwh.predict(m, x, store=store, method="mc-dropout")
    with pytest.raises(ValueError, match="does not match the stored samples"):
        kwh.predict(nn.Sequential(nn.Linear(3, 4)), x, store=store)
    with pytest.raises(ValueError, match="store must be a kwh.bayes.SampleStore"):
        kwh.predict(m, x, store=[store[0]])
    with pytest.raises(ValueError, match="choose one of: .*samples"):
        kwh.predict(m, x, method="swag")


def test_sgld_training_loop_feeds_predict():
    """The docstring's loop on two blobs: the stored samples classify and disagree off the data."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=g)
    x = 0.5 * torch.randn(200, 2, generator=g) + (2.0 * y - 1).float()[:, None]
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = SGLD(model.parameters(), lr=1e-3, n_data=200, prior_std=1.0, generator=g)
    store = SampleStore(burn_in=100, thin=10, max_samples=20)
    for step in range(1, 301):
        idx = torch.randint(0, 200, (50,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        store.collect(model, step)
    assert store.steps == tuple(range(110, 301, 10))
    pred = kwh.predict(model, x, samples=20, store=store)
    assert (pred.labels == y).float().mean() > 0.95
    far = kwh.predict(model, torch.tensor([[-8.0, 8.0], [8.0, -8.0]]), samples=20, store=store)
    assert float(far.mutual_information.mean()) > float(pred.mutual_information.mean())


def test_weights_come_back_when_a_forward_pass_fails():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.calls = None  # counting once armed; the second forward pass then fails

        def forward(self, x):
            if self.calls is not None:
                self.calls += 1
                if self.calls == 2:
                    raise RuntimeError("boom")
            return self.lin(x)

    m = Fails()
    store = _filled_store(m, 3)
    with torch.no_grad():
        m.lin.weight.fill_(0.1)  # unlike every sample
    own = {k: v.clone() for k, v in m.state_dict().items()}
    m.calls = 0
    with pytest.raises(RuntimeError, match="boom"):
        kwh.predict(m, torch.randn(2, 3), samples=3, store=store)
    assert m.calls == 2 and all(torch.equal(m.state_dict()[k], v) for k, v in own.items())

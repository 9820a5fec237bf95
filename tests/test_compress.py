"""kwh.compress end to end: the pruned model equals the masked Bayesian model, the contract of
the compressed model, the summary's counts (the paper's LeNet-5 case by hand), errors.

Oracle for exactness: the Bayesian model in eval mode (posterior mean x keep mask), on random
inputs, to 1e-5. Random masks come from editing the variational parameters of random groups.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kwh
from kwh.bayes import BayesLayer, GroupHorseshoe, GroupNJ, bayes_layers
from kwh.compress import CompressConfig, evaluate, format_summary
from kwh.errors import ModelError
from kwh.modules import SelectInputs
from kwh.models import lenet5, lenet300

PRIORS = ["group-horseshoe", "group-nj", "log-uniform"]
TOL = 1e-5


def _bn_cnn() -> nn.Sequential:
    """A small VGG-like net: conv-BN-ReLU blocks with padding, pooling, fc with BatchNorm1d."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU()),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(12 * 4 * 4, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(20, 5),
    )


MODELS = {"mlp": (lenet300, (1, 28, 28)), "lenet5": (lenet5, (1, 28, 28)),
          "bn-cnn": (_bn_cnn, (3, 16, 16))}


@torch.no_grad()
def _random_posterior_(model: nn.Module, frac: float, seed: int) -> None:
    """Prune a random fraction of groups (or weights) and give the kept weights variances."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in bayes_layers(model):
        p = layer.prior
        if isinstance(p, GroupHorseshoe):
            p.a_log_var[torch.rand(p.n_groups, generator=g) < frac] = 3.0  # broad z: pruned
        elif isinstance(p, GroupNJ):
            p.z_log_var[torch.rand(p.n_groups, generator=g) < frac] = 3.0
        else:
            p.log_sigma2[torch.rand(p.theta.shape, generator=g) < frac] = 5.0
        for name in ("weight_log_var", "log_sigma2"):
            lv = getattr(p, name, None)
            if lv is not None:
                keep = lv < 0
                lv[keep] = torch.empty(int(keep.sum())).uniform_(-22, -12, generator=g)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-1, 1, generator=g)


def _bayes(model_name: str, prior: str, frac: float = 0.5, seed: int = 1):
    build, shape = MODELS[model_name]
    model = build()
    kwh.bayesify_(model, prior)
    _random_posterior_(model, frac if prior != "log-uniform" else 0.8, seed)
    return model.eval(), shape


def _plain_layers(small):
    return [m for m in small if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_pruned_model_equals_masked_bayesian_model(model_name, prior):
    model, shape = _bayes(model_name, prior)
    small = kwh.compress(model, CompressConfig(quantize=False, input_shape=shape))
    x = torch.randn(32, *shape)
    with torch.no_grad():
        ref, out = model(x), small(x)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    # physically smaller and plain: no Bayesian layer, fewer weights than the original
    assert not any(isinstance(m, BayesLayer) for m in small.modules())
    s = small.kwh_summary
    assert s["weights"] < s["weights_original"]
    units = [d["shape"][0] for d in s["layers"][:-1]]
    assert sum(units) < sum(d["shape_original"][0] for d in s["layers"][:-1])


@pytest.mark.parametrize("prior", PRIORS)
def test_compressed_model_contract(prior):
    model, shape = _bayes("lenet5", prior)
    small = kwh.compress(model, input_shape=shape)
    pruned = kwh.compress(model, input_shape=shape, quantize=False)
    assert isinstance(small, nn.Sequential) and isinstance(small.kwh_summary, dict)
    for q, f in zip(_plain_layers(small), _plain_layers(pruned)):
        t, bits = q.kwh_frac_bits, q.kwh_bits
        assert type(t) is int and type(bits) is int
        ints = q.weight.double() * 2.0 ** t
        assert torch.equal(ints, ints.round()), "weights must be int * 2^-t exactly"
        assert (q.weight.double() - f.weight.double()).abs().max() <= 2.0 ** -(t + 1)
        m = int(ints.abs().max())
        assert bits == 1 + max(1, m.bit_length())  # sign + magnitude bits hold every integer
    assert not hasattr(model, "kwh_summary")


def test_quantized_model_is_saved_and_loaded_unchanged(tmp_path):
    model, shape = _bayes("lenet5", "group-horseshoe")
    small = kwh.compress(model, input_shape=shape)
    path = tmp_path / "m.kwh"
    kwh.save(small, path)
    loaded = kwh.load(path)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), atol=0, rtol=0)
    assert loaded.kwh_summary == small.kwh_summary
    assert small.kwh_summary["payload_bytes"] < path.stat().st_size  # header, checksum extra


def _paper_lenet5() -> nn.Sequential:
    """Plain LeNet-5 with zeros where the paper's BC-GHS result 5-10-76-16 prunes."""
    torch.manual_seed(3)
    m = lenet5()
    with torch.no_grad():
        conv1, conv2, fc1, fc2 = m[0], m[3], m[7], m[9]
        conv1.weight[5:] = 0
        conv1.bias[5:] = 0  # 15 dead filters
        conv2.weight[10:] = 0
        conv2.bias[10:] = 0  # 40 dead filters
        keep = torch.zeros(800, dtype=torch.bool)
        for c in range(10):  # 76 inputs of the 10 kept channels (16 positions each) survive
            keep[c * 16: c * 16 + (8 if c < 6 else 7)] = True
        fc1.weight[:, ~keep] = 0
        fc2.weight[:, 16:] = 0  # 16 hidden units read
    return m.eval()


def test_architecture_string_and_counts_of_the_papers_lenet5_case():
    small = kwh.compress(_paper_lenet5(), input_shape=(1, 28, 28), quantize=False)
    s = small.kwh_summary
    assert s["architecture_original"] == "20-50-800-500"
    assert s["architecture"] == "5-10-76-16"
    assert s["weights_original"] == 430_500
    assert s["weights_pruned_dense"] == 5 * 25 + 10 * 5 * 25 + 76 * 16 + 16 * 10 == 2751
    assert s["rates"]["pruning"] == pytest.approx(430_500 / 2751)
    assert [tuple(d["shape"]) for d in s["layers"]] == [(5, 1, 5, 5), (10, 5, 5, 5), (16, 160),
                                                        (10, 16)]
    # MACs from shapes: conv out 24x24 and 8x8 positions, fc one each
    assert s["macs_original"] == 20 * 25 * 576 + 50 * 20 * 25 * 64 + 800 * 500 + 500 * 10
    assert s["macs"] == 5 * 25 * 576 + 10 * 5 * 25 * 64 + 160 * 16 + 16 * 10
    bits = [d["bits"] for d in s["layers"]]
    dense = [125, 1250, 1216, 160]
    assert s["rates"]["fast_prediction"] == pytest.approx(
        32 * 430_500 / sum(n * b for n, b in zip(dense, bits)))
    assert s["size_fp32_original_bytes"] == 4 * (430_500 + 20 + 50 + 500 + 10)


def test_summary_of_a_quantized_model_and_its_printout():
    model, shape = _bayes("lenet5", "group-horseshoe")
    s = kwh.compress(model, input_shape=shape).kwh_summary
    assert s["bits"] == "-".join(str(d["bits"]) for d in s["layers"])
    assert s["payload_bytes"] > 0 and s["rates"]["max_compression"] == pytest.approx(
        32 * s["weights_original"] / (8 * s["payload_bytes"]))
    assert s["input_shape"] == [1, 28, 28] and s["num_classes"] == 10
    assert s["priors"] == ["group-horseshoe"]
    text = format_summary(s)
    for piece in (s["architecture"], s["bits"], "fast prediction", "max compression"):
        assert piece in text


def test_eval_data_gives_errors_before_and_after_quantization():
    model, shape = _bayes("mlp", "group-nj")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, *shape, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:30] = (y[:30] + 1) % 10  # the Bayesian model errs on exactly these 30
    data = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100)]
    s = kwh.compress(model, eval_data=data).kwh_summary
    assert s["input_shape"] == [1, 28, 28]  # read from the first batch
    assert s["eval"]["examples"] == 300
    assert s["eval"]["error_before_quantization"] == pytest.approx(30 / 300)
    assert 0.0 <= s["eval"]["error_after_quantization"] <= 1.0


def test_threshold_overrides_by_layer_name():
    model, shape = _bayes("mlp", "group-nj", frac=0.0)  # nothing pruned at the default
    base = kwh.compress(model, quantize=False).kwh_summary
    assert base["architecture"] == "784-300-100"
    prior = dict(bayes_layers(model))["3"].prior  # layer 3 reads the 300 hidden units
    with torch.no_grad():
        prior.z_log_var.uniform_(-7, -1)
        la = prior.log_alpha()  # (300,)
    t = float(la.median())
    s = kwh.compress(model, thresholds={"3": t}, quantize=False).kwh_summary
    assert s["architecture"] == f"784-{int((la < t).sum())}-100"
    assert s["layers"][1]["threshold"] == t
    with pytest.raises(ValueError, match="no Bayesian layer named 'fc9'"):
        kwh.compress(model, thresholds={"fc9": 0.0})


def test_bits_cap_and_override_by_name():
    model, shape = _bayes("lenet5", "group-horseshoe")
    s = kwh.compress(model, input_shape=shape, max_bits=6, bits={"9": 4}).kwh_summary
    by_name = {d["name"]: d for d in s["layers"]}
    assert by_name["9"]["bits"] <= 4 and by_name["9"]["bits_source"] == "override"
    assert all(d["bits"] <= 6 for d in s["layers"])
    with pytest.raises(ValueError, match="bits: no Linear/Conv2d layer named 'x'"):
        kwh.compress(model, input_shape=shape, bits={"x": 8})


def test_unsupported_layer_is_named_with_the_supported_ones():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Upsample(scale_factor=2), nn.Flatten(),
                          nn.Linear(4 * 52 * 52, 2))
    with pytest.raises(ModelError, match=r"layer '1' \(Upsample\) is not supported.*MaxPool2d"):
        kwh.compress(model, input_shape=(1, 28, 28))
    with pytest.raises(ModelError, match="needs the input shape.*example_inputs"):
        kwh.compress(nn.ModuleList([nn.Linear(2, 2)]))
    with pytest.raises(ModelError, match="cannot trace ModuleList.forward"):
        kwh.compress(nn.ModuleList([nn.Linear(2, 2)]), input_shape=(2,))
    with pytest.raises(ModelError, match=r"layer '1' \(Softmax\) is not supported before the last"):
        kwh.compress(nn.Sequential(nn.Linear(3, 3), nn.Softmax(1), nn.Linear(3, 2)))


def test_conv_net_without_input_shape_asks_for_it():
    model, _ = _bayes("lenet5", "group-nj")
    assert kwh.compress(model).kwh_summary["input_shape"] == [1, 28, 28]  # reference nets know
    del model.kwh_input_shape
    with pytest.raises(ModelError, match=r"input_shape=\(C, H, W\)"):
        kwh.compress(model)
    with pytest.raises(ModelError, match="fails on input of shape"):
        kwh.compress(model, input_shape=(1, 8, 8))


def test_compress_draws_no_random_numbers():
    model, shape = _bayes("mlp", "group-horseshoe")
    torch.manual_seed(5)
    kwh.compress(model, input_shape=shape)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


# ------------------------------------------------------------------ pruned inputs, bits guard


def test_pruned_input_pixels_are_dropped_exactly_and_the_file_keeps_the_selection(tmp_path):
    model, shape = _bayes("mlp", "group-nj", frac=0.6)
    first = next(m for _, m in bayes_layers(model))
    kept_in = int(first.keep_mask().sum())
    assert 0 < kept_in < 784
    small = kwh.compress(model, input_shape=shape, quantize=False)
    sel = [m for m in small if isinstance(m, SelectInputs)]
    assert len(sel) == 1 and sel[0].out_features <= kept_in
    lin = _plain_layers(small)[0]
    assert lin.in_features == sel[0].out_features  # stored and multiplied: kept pixels only
    assert small.kwh_summary["layers"][0]["macs"] == lin.weight.numel()
    x = torch.randn(16, *shape)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=TOL, rtol=0)
    q = kwh.compress(model, input_shape=shape)
    kwh.save(q, tmp_path / "m.kwh")
    loaded = kwh.load(tmp_path / "m.kwh")
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert torch.equal(loaded[1].index, q[1].index)


def _labelled(model, shape, n=400, flip=0):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, *shape, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:flip] = (y[:flip] + 1) % 10
    return [(x[i:i + 100], y[i:i + 100]) for i in range(0, n, 100)]


def test_bits_guard_raises_bits_until_quantization_costs_at_most_the_tolerance():
    model, shape = _bayes("mlp", "group-nj", frac=0.3)
    for _, layer in bayes_layers(model):  # a barely trained posterior: huge variances
        with torch.no_grad():
            layer.prior.weight_log_var.fill_(4.0)
    data = _labelled(model, shape)
    bare = kwh.compress(model, input_shape=shape, eval_data=data)
    ev = bare.kwh_summary["eval"]
    assert ev["error_after_quantization"] - ev["error_before_quantization"] > 0.05  # broken
    small = kwh.compress(model, input_shape=shape, eval_data=data, guard_data=data,
                         bits_search="raise")
    s = small.kwh_summary
    g = s["bits_guard"]
    assert g["mode"] == "raise" and g["changes"] and all(v > 0 for v in g["changes"].values())
    assert 100 * (g["error_chosen_bits"] - g["error_unquantized"]) <= 0.05 + 1e-9
    assert s["eval"]["error_after_quantization"] == pytest.approx(g["error_chosen_bits"])
    raised = [d for d in s["layers"] if "raised" in d["bits_source"]]
    assert raised and all(d["frac_bits"] > d["posterior_frac_bits"] for d in raised)
    assert "bits guard" in format_summary(s)


def test_bits_fit_lowers_bits_only_within_the_tolerance():
    model, shape = _bayes("mlp", "log-uniform")
    data = _labelled(model, shape)
    post = kwh.compress(model, input_shape=shape, guard_data=data, bits_search="off")
    fit = kwh.compress(model, input_shape=shape, guard_data=data, bits_search="fit",
                       bits_tolerance=0.5)
    g = fit.kwh_summary["bits_guard"]
    assert 100 * (g["error_chosen_bits"] - g["error_unquantized"]) <= 0.5 + 1e-9
    lowered = [a["frac_bits"] - b["frac_bits"] for a, b in
               zip(post.kwh_summary["layers"], fit.kwh_summary["layers"])]
    assert any(d > 0 for d in lowered) and all(d >= 0 for d in lowered)
    assert fit.kwh_summary["payload_bytes"] < post.kwh_summary["payload_bytes"]
    with pytest.raises(ValueError, match="Unknown bits_search 'up'"):
        CompressConfig(bits_search="up")


@pytest.mark.parametrize("prior", PRIORS)
def test_prune_fit_cuts_past_the_posterior_only_within_the_tolerance(prior):
    model, shape = _bayes("mlp", prior, frac=0.3)
    silent = torch.arange(0, 784, 3)  # inputs that are always zero in the data
    fc1 = dict(bayes_layers(model))["1"].prior
    with torch.no_grad():  # their groups (or weights) have the largest kept log alpha
        if hasattr(fc1, "a_log_var"):  # group horseshoe: log alpha -3.4 against -8
            keep = fc1.a_log_var < 0
            fc1.a_log_var[keep] = -9.0
            fc1.a_log_var[silent] = torch.where(keep[silent], -2.0, fc1.a_log_var[silent])
        if hasattr(fc1, "z_log_var"):  # group NJ: log alpha threshold - 1 against -8
            keep = fc1.log_alpha() < fc1.threshold
            base = torch.log(fc1.z_mu.pow(2) + 1e-8)
            la = torch.where(keep, torch.tensor(-8.0), torch.tensor(5.0))
            la[silent] = torch.where(keep[silent], torch.tensor(fc1.threshold - 1.0), la[silent])
            fc1.z_log_var.copy_(la + base)
        if hasattr(fc1, "log_sigma2"):
            keep = fc1.log_alpha() < fc1.threshold
            cols = torch.zeros_like(keep)
            cols[:, silent] = True
            la = torch.where(keep & cols, torch.tensor(1.0), torch.tensor(-6.0))
            fc1.log_sigma2[keep] = (la + torch.log(fc1.theta.pow(2) + 1e-8))[keep]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 784, generator=g)
    x[:, silent] = 0
    x = x.reshape(400, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    data = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 400, 100)]
    post = kwh.compress(model, input_shape=shape, guard_data=data, quantize=False)
    tol = 0.5
    fit = kwh.compress(model, input_shape=shape, guard_data=data, quantize=False,
                       prune_search="fit", prune_tolerance=tol)
    g = fit.kwh_summary["prune_guard"]
    assert g["error_posterior"] == pytest.approx(evaluate(post, data)["error"])
    assert g["error_chosen"] == pytest.approx(evaluate(fit, data)["error"])  # what it claims
    assert 100 * (g["error_chosen"] - g["error_posterior"]) <= tol + 1e-9
    assert g["steps"] and g["steps"][0]["layer"] == "1"  # the silent inputs went first
    assert fit.kwh_summary["nonzero"] < post.kwh_summary["nonzero"]
    for name, t in g["thresholds"].items():  # thresholds only go down (prune more)
        assert t["chosen"] <= t["posterior"]
    # the chosen thresholds, given by hand, give the same model
    again = kwh.compress(model, input_shape=shape, quantize=False,
                         thresholds={n: t["chosen"] for n, t in g["thresholds"].items()})
    for a, b in zip(again.state_dict().values(), fit.state_dict().values()):
        assert torch.equal(a, b)

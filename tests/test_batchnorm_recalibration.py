"""BatchNorm statistics re-estimated for the deterministic network eval mode runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kwh
from kwh.bayes import bayes_layers, recalibrate_batchnorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    kwh.bayesify_(model, "group-horseshoe")
    with torch.no_grad():  # a broad posterior: the noisy and the mean network differ a lot
        for _, m in bayes_layers(model):
            m.prior.weight_log_var.fill_(-1.0)
    return model


def _batch_stats_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The oracle: Bayesian layers deterministic, every BatchNorm on the batch's own statistics."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    with torch.no_grad():
        out = model(x)
    model.eval()
    return out


@pytest.mark.parametrize("batches", [1, 4])
def test_recalibrated_statistics_are_those_of_the_mean_network(batches):
    model = _net()
    x = torch.randn(512, 1, 8, 8)
    model.train()
    with torch.no_grad():  # running statistics of the noisy network, as training leaves them
        for i in range(0, 512, 64):
            model(x[i:i + 64])
    model.eval()
    with torch.no_grad():
        stale = model(x)
    oracle = _batch_stats_output(model, x)
    assert (stale - oracle).abs().max() > 0.1  # the training statistics are off
    step = 512 // batches
    n = recalibrate_batchnorm(model, (x[i:i + step] for i in range(0, 512, step)))
    assert n == 2 and not model.training
    assert all(not m.training for m in model.modules())
    with torch.no_grad():
        fresh = model(x)
    # equal up to the unbiased variance (N/(N-1), N = 512*64 per channel) and, for 4 batches,
    # the second layer seeing each batch normalised by that batch's own statistics
    tol = 2e-3 if batches == 1 else 5e-2
    assert torch.allclose(fresh, oracle, atol=tol, rtol=tol)
    bn = model[1]
    assert bn.momentum == 0.1  # restored


def test_modes_restored_and_empty_inputs_refused():
    model = _net()
    model.train()
    before = [b.clone() for b in (model[1].running_mean, model[1].running_var)]
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, before[0])
    assert torch.equal(model[1].running_var, before[1])
    plain = nn.Sequential(nn.Linear(3, 2))
    assert recalibrate_batchnorm(plain, iter(())) == 0  # no BatchNorm: nothing read, nothing done


def test_training_run_ends_with_the_statistics_of_its_mean_network(tmp_path):
    """kwh.train re-estimates them before each Bayesian epoch's evaluation, from the first
    BN_CALIBRATION training inputs: the checkpoint holds what recalibrate gives."""
    from kwh.train import TrainConfig, TrainData, load_checkpoint, run_training
    from kwh.train.evaluate import BN_CALIBRATION

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 8, 8, generator=g), torch.randint(0, 10, (300,), generator=g)
    ds = torch.utils.data.TensorDataset
    data = TrainData(ds(x[:200], y[:200]), ds(x[200:250], y[200:250]), ds(x[250:], y[250:]))
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 64, 10))
    cfg = TrainConfig(model="custom", data="custom", prior="group-nj", epochs=1, batch_size=50,
                      kl_warmup_end=1.0, out_dir=str(tmp_path / "run"), threads=1)
    run_training(cfg, progress=False, model=plain, data=data)
    model, _ = load_checkpoint(tmp_path / "run", model=plain)
    saved = model[1].running_mean.clone(), model[1].running_var.clone()
    assert BN_CALIBRATION >= 200
    recalibrate_batchnorm(model, [x[:200]])
    assert torch.allclose(model[1].running_mean, saved[0], atol=1e-6)
    assert torch.allclose(model[1].running_var, saved[1], atol=1e-6)


def test_the_benchmark_rebuilds_a_resized_resnet_from_its_width_factor(tmp_path, data_root,
                                                                       capsys):
    """benchmarks.bn_recalibration --width takes the factor paper_table trained with (0.25:
    4 channels), as threshold_sweep does, and reports both errors."""
    from benchmarks import bn_recalibration
    from benchmarks.baselines.common import fit, load_data, make_net

    data, _ = load_data("mnist", str(data_root), 300, 100, 50)
    run = tmp_path / "run"
    fit("resnet20", data, run, model=make_net("resnet20", 0.25), epochs=1, threads=1,
        data_dir=str(data_root), limit_train=300, limit_test=100)
    bn_recalibration.main([str(run), "--width", "0.25"])
    out = capsys.readouterr().out
    assert "BatchNorm layers; training statistics: test" in out and "re-estimated" in out
    from kwh.errors import FormatError
    with pytest.raises(FormatError, match="the model needs"):  # width 1's 16 channels: not it
        bn_recalibration.main([str(run), "--width", "1"])

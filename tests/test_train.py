"""The training engine: config checks, schedules, log and checkpoint, exact resume, rollback."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from kwh.bayes import BayesLayer
from kwh.errors import KwhError
from kwh.train import TrainConfig, load_checkpoint, read_checkpoint, run_training
from kwh.train.schedule import Schedule

# LeNet-300-100 on 500 MNIST examples: 5 steps per epoch, 1 plain + 2 Bayesian epochs.
TINY = dict(model="lenet300", prior="group-horseshoe", pretrain_epochs=1, epochs=2,
            limit_train=500, limit_test=200, threads=1, checkpoint_every=3)


def tiny(tmp_path, data_root, name="run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw}, data_dir=str(data_root), out_dir=str(tmp_path / name))


def fault_once(step: int, kind: str):
    """The fault hook of one non-finite step: ``kind`` ("loss" or "gradient") at global step
    ``step``, the first time only (the rolled-back run passes it again)."""
    fired = []

    def fault(s: int):
        if s == step and not fired:
            fired.append(s)
            return kind
        return False
    return fault


class Crash(Exception):
    """Stands in for a process dying at a given step (the SIGKILL tests do it for real)."""


def crash_at(step: int):
    def fault(s: int):
        if s == step:
            raise Crash(step)
        return False
    return fault


def model_tensors(path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "optim/"))}


def read_log(out_dir) -> list[dict]:
    with open(f"{out_dir}/log.jsonl", encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds", "step_ms")} for r in records]


def assert_bit_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"tensors differ: {diff[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """One uninterrupted tiny run, shared by the tests that compare against it."""
    cfg = tiny(tmp_path_factory.mktemp("ref"), data_root)
    return cfg, run_training(cfg, progress=False)


# ------------------------------------------------------------------ config and schedule


@pytest.mark.parametrize("kw, match", [
    (dict(model="lenet6"), "Unknown model 'lenet6'; choose one of: lenet300, lenet5, vgg"),
    (dict(prior="horshoe"), "Unknown prior 'horshoe'; choose one of: log-uniform"),
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(batch_size=2.5), "batch_size must be an integer"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(kl_warmup_start=0.6, kl_warmup_end=0.5), "0 <= kl_warmup_start <= kl_warmup_end <= 1"),
    (dict(limit_train=50), "limit_train=50 is smaller than batch_size=100"),
    (dict(lr_decay="cosine"), "choose one of: linear, constant"),
    (dict(prior_options={"tau0": -1.0}), "tau0 must be positive"),
    (dict(lr_backoff=1.0), "lr_backoff must lie in"),
])
def test_config_rejects_bad_values_with_a_clear_message(kw, match):
    with pytest.raises(KwhError, match=match.replace("(", r"\(").replace("[", r"\[")):
        TrainConfig(**kw)


def test_config_round_trips_and_names_differences():
    c = TrainConfig(prior="bc-ghs", prior_options={"tau0": 1e-4})
    assert c.prior == "group-horseshoe" and c.out_dir == "runs/lenet5-mnist-group-horseshoe"
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.differences(TrainConfig(prior="bc-ghs", prior_options={"tau0": 1e-4},
                                     threads=4, out_dir="elsewhere")) == []
    assert c.differences(TrainConfig(lr=2e-3, prior_options={"tau0": 1e-4})) == [
        "lr: 0.001 != 0.002"]
    with pytest.raises(KwhError, match="unknown training config keys: colour"):
        TrainConfig.from_dict({"colour": "red"})


def test_schedule_lr_decays_linearly_and_kl_warms_up():
    s = Schedule(TrainConfig(pretrain_epochs=2, epochs=10, kl_warmup_start=0.2,
                             kl_warmup_end=0.5), steps_per_epoch=4)
    assert [s.phase(e) for e in (0, 1, 2, 11)] == ["pretrain", "pretrain", "bayes", "bayes"]
    assert s.lr_factor(0, 0) == 1.0 and s.kl_weight(1, 3) == 0.0  # pretraining: its own decay
    assert s.lr_factor(1, 2) == pytest.approx(1 - 6 / 8)
    assert s.lr_factor(2, 0) == 1.0  # the Bayesian phase starts again from the full lr
    assert s.lr_factor(7, 0) == pytest.approx(0.5)
    assert s.lr_factor(11, 3) == pytest.approx(1 / 40)  # last step: 1 - 39/40
    assert s.kl_weight(3, 3) == 0.0  # 1.75 Bayesian epochs < 2
    assert s.kl_weight(4, 2) == pytest.approx(0.5 / 3)  # 2.5 of the 2 -> 5 ramp
    assert s.kl_weight(7, 0) == 1.0
    assert Schedule(TrainConfig(kl_warmup_start=0, kl_warmup_end=0), 4).kl_weight(0, 0) == 1.0


def test_a_run_from_scratch_records_the_whole_run_warm_up(tmp_path, data_root):
    res = run_training(tiny(tmp_path, data_root, pretrain_epochs=0, epochs=1, limit_train=200),
                       progress=False)
    assert res.config.kl_warmup_end == 1.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["kl_warmup_end"] == 1.0  # resolved before it is saved: resuming compares it
    again = run_training(tiny(tmp_path, data_root, pretrain_epochs=0, epochs=1, limit_train=200),
                         resume=True, progress=False)  # the same default resumes, not refused
    assert again.config.kl_warmup_end == 1.0
    # a run saved with the old from-scratch default (0.2) is refused with the way out
    run_training(tiny(tmp_path, data_root, "old", pretrain_epochs=0, epochs=1, limit_train=200,
                      kl_warmup_end=0.2), progress=False)
    with pytest.raises(KwhError, match=r"kl_warmup_end: 0\.2 != 1\.0.*--kl-warmup 0 0\.2"):
        run_training(tiny(tmp_path, data_root, "old", pretrain_epochs=0, epochs=1,
                          limit_train=200), resume=True, progress=False)


def test_kl_warm_up_is_not_compared_between_runs_without_a_kl_term():
    a = TrainConfig(method="sws", kl_warmup_end=0.2)
    assert a.differences(TrainConfig(method="sws", kl_warmup_end=1.0)) == []
    assert TrainConfig(kl_warmup_end=0.2).differences(TrainConfig(kl_warmup_end=1.0)) == [
        "kl_warmup_end: 0.2 != 1.0"]


def test_kl_warmup_default_depends_on_the_start():
    scratch, pre = TrainConfig(epochs=10), TrainConfig(pretrain_epochs=2, epochs=10)
    assert scratch.kl_warmup_end is None and pre.kl_warmup_end is None
    assert scratch.resolved().kl_warmup_end == 1.0  # a fresh initialisation: the whole run
    assert pre.resolved().kl_warmup_end == 0.2  # trained weights: the first fifth
    assert scratch.resolved(trained_start=True).kl_warmup_end == 0.2  # a given dense start
    assert pre.resolved(trained_start=False).kl_warmup_end == 1.0
    assert TrainConfig(kl_warmup_start=0.3).resolved(True).kl_warmup_end == 0.3  # never below
    given = TrainConfig(kl_warmup_end=0.5, prior_options={"init_scale": "rms"}, lr_decay="linear")
    assert given.resolved() is given and given.resolved(True).kl_warmup_end == 0.5
    # the schedule of an unresolved config follows the same rule: 1 from scratch at the end
    s = Schedule(scratch, steps_per_epoch=4)
    assert s.kl_weight(4, 2) == pytest.approx(4.5 / 10) and s.kl_weight(9, 3) < 1.0
    assert Schedule(pre, 4).kl_weight(4, 0) == 1.0  # 2 Bayesian epochs = 0.2 of 10


def test_group_prior_defaults_depend_on_the_start():
    """z starts at 1 from a fresh initialisation, at each group's weight RMS from trained
    weights; group-NJ from scratch also takes SCRATCH_SETTINGS (constant lr, 3x log-scale
    step, w~'s variance capped); whatever the config gives is kept, and Sparse VD (no z)
    gets none of it."""
    nj = TrainConfig(prior="group-nj", epochs=10).resolved()
    assert nj.prior_options == {"init_scale": "one", "max_weight_var": 0.04}
    assert (nj.lr_decay, nj.variance_lr_mult) == ("constant", 3.0)
    nj_trained = TrainConfig(prior="group-nj", epochs=10).resolved(trained_start=True)
    assert nj_trained.prior_options == {"init_scale": "rms"}
    assert (nj_trained.lr_decay, nj_trained.variance_lr_mult) == ("linear", None)
    hs = TrainConfig(prior="group-horseshoe", epochs=10)
    assert hs.resolved().prior_options == {"init_scale": "one"}
    assert (hs.resolved().lr_decay, hs.resolved().variance_lr_mult) == ("linear", None)
    assert TrainConfig(prior="group-horseshoe", pretrain_epochs=2).resolved().prior_options == {
        "init_scale": "rms"}
    given = TrainConfig(prior="group-nj", prior_options={"init_scale": "rms", "threshold": -2.0},
                        lr_decay="linear", variance_lr_mult=1.0)
    r = given.resolved(trained_start=False)
    assert r.prior_options == {"init_scale": "rms", "threshold": -2.0, "max_weight_var": 0.04}
    assert (r.lr_decay, r.variance_lr_mult) == ("linear", 1.0)
    lu = TrainConfig(prior="log-uniform").resolved()
    assert lu.prior_options == {} and (lu.lr_decay, lu.variance_lr_mult) == ("linear", None)
    sws = TrainConfig(method="sws", prior="group-nj").resolved()
    assert sws.prior_options == {} and sws.lr_decay == "linear"


def test_prior_options_compare_as_the_configs_they_make():
    """An option left out equals its default (runs saved before an option existed resume);
    a real difference is reported."""
    a = TrainConfig(prior="group-nj", kl_warmup_end=0.2)
    assert a.differences(replace(a, prior_options={"init_scale": "rms"})) == []
    assert a.differences(replace(a, prior_options={"init_scale": "one"})) == [
        "prior_options: {} != {'init_scale': 'one'}"]


# ------------------------------------------------------------------ a run, its log and checkpoint


def test_run_logs_every_epoch_and_checkpoint_rebuilds_the_model(reference, data_root):
    cfg, result = reference
    lines = read_log(cfg.out_dir)
    assert lines == result.history and [r["epoch"] for r in lines] == [1, 2, 3]
    assert [r["phase"] for r in lines] == ["pretrain", "bayes", "bayes"]
    last = lines[-1]
    for key in ("test_error", "test_nll", "train_nll", "kl", "kl_weight", "lr", "alive", "total",
                "log_alpha", "architecture", "seconds", "cpu_seconds", "step_ms"):
        assert key in last, key
    assert set(last["alive"]) == {"1", "3", "5"} and last["total"] == {"1": 784, "3": 300, "5": 100}
    assert set(last["log_alpha"]["3"]) == {"min", "q10", "median", "q90", "max"}
    # kwh.compress's count: input units per Linear, with masks propagated between layers.
    kept = [int(k) for k in last["architecture"].split("-")]
    assert len(kept) == 3 and all(k <= last["alive"][n] for k, n in zip(kept, ("1", "3", "5")))
    assert last["kl_weight"] == 1.0 and last["lr"] == pytest.approx(1e-3 / 10)  # last of 10 steps
    assert last["test_error"] < 60  # 500 examples, 15 steps: well above chance (90%)

    model, cfg2 = load_checkpoint(cfg.out_dir)
    assert cfg2 == cfg.resolved() and not model.training
    assert sum(isinstance(m, BayesLayer) for m in model.modules()) == 3
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))


def test_same_seed_same_bits_other_seed_other_bits(reference, tmp_path, data_root):
    cfg, _ = reference
    again = tiny(tmp_path, data_root, "again")
    run_training(again, progress=False)
    assert_bit_equal(model_tensors(again.out_dir), model_tensors(cfg.out_dir))
    other = tiny(tmp_path, data_root, "other", seed=1)
    run_training(other, progress=False)
    a, b = model_tensors(other.out_dir), model_tensors(cfg.out_dir)
    assert not torch.equal(a["model/1.prior.weight_mu"], b["model/1.prior.weight_mu"])


# Crash points: in pretraining, right after the pretraining->Bayesian checkpoint (step 5),
# just after a mid-epoch checkpoint, mid-way between checkpoints, on the last step.
@pytest.mark.parametrize("step", [2, 5, 7, 10, 14])
def test_resume_after_a_crash_retraces_the_uninterrupted_run_bit_for_bit(reference, tmp_path,
                                                                         data_root, step):
    ref_cfg, ref = reference
    cfg = tiny(tmp_path, data_root)
    with pytest.raises(Crash):
        run_training(cfg, progress=False, fault=crash_at(step))
    resumed = run_training(cfg, resume=True, progress=False)
    assert_bit_equal(model_tensors(cfg.out_dir), model_tensors(ref_cfg.out_dir))
    assert untimed(resumed.history) == untimed(ref.history)


def test_resume_of_a_finished_run_returns_it(reference):
    cfg, ref = reference
    again = run_training(cfg, resume=True, progress=False)
    assert again.history == ref.history and not again.model.training


def test_resume_refuses_other_settings_and_new_run_refuses_to_overwrite(reference):
    cfg, _ = reference
    changed = TrainConfig(**{**cfg.to_dict(), "lr": 5e-4})
    with pytest.raises(KwhError, match=r"settings differ .*lr: 0.001 != 0.0005"):
        run_training(changed, resume=True, progress=False)
    with pytest.raises(KwhError, match="already holds a checkpoint; pass --resume"):
        run_training(cfg, progress=False)


def test_pretraining_checkpoint_is_not_a_bayesian_model(tmp_path, data_root):
    cfg = tiny(tmp_path, data_root, pretrain_epochs=2, epochs=1)
    with pytest.raises(Crash):
        run_training(cfg, progress=False, fault=crash_at(7))
    with pytest.raises(KwhError, match="written during pretraining"):
        load_checkpoint(cfg.out_dir)


# ------------------------------------------------------------------ divergence guard


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_one_non_finite_step_is_rolled_back_with_half_the_lr(reference, tmp_path, data_root,
                                                              kind):
    ref_cfg, ref = reference
    cfg = tiny(tmp_path, data_root)
    result = run_training(cfg, progress=False, fault=fault_once(8, kind))
    events = [r for r in result.log if r["event"] == "rollback"]
    assert len(events) == 1
    ev = events[0]
    assert ev["reason"] == f"non-finite {kind}" and ev["global_step"] == 8
    assert (ev["to_epoch"], ev["to_step"]) == (2, 1)  # the checkpoint after global step 6
    assert ev["lr_scale"] == 0.5
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert untimed(result.history[:1]) == untimed(ref.history[:1])  # before the fault
    assert [r["lr_scale"] for r in result.history] == [1.0, 0.5, 0.5]
    assert result.history[-1]["lr"] == pytest.approx(0.5 * ref.history[-1]["lr"])
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    lines = read_log(cfg.out_dir)
    assert [r["event"] for r in lines] == ["epoch", "rollback", "epoch", "epoch"]


def test_repeated_non_finite_steps_stop_with_the_last_checkpoint_intact(tmp_path, data_root):
    cfg = tiny(tmp_path, data_root, max_failures=3)
    with pytest.raises(KwhError, match=r"diverged: .* 3 times in a row .*epoch 2, step 1"):
        run_training(cfg, progress=False, fault=lambda step: step >= 7)
    tensors, meta = read_checkpoint(cfg.out_dir + "/checkpoint.safetensors")
    assert meta["position"] == {"epoch": 1, "step": 1, "global_step": 6}
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point())
    lines = read_log(cfg.out_dir)
    assert [r["event"] for r in lines] == ["epoch", "rollback", "rollback", "stopped"]
    assert [r.get("lr_scale") for r in lines[1:3]] == [0.5, 0.25]
    # The stopped run resumes from that checkpoint once the fault is gone.
    result = run_training(cfg, resume=True, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


# ------------------------------------------------------------------ a user's model and data


class _TwoLayer(torch.nn.Module):
    """A model that is no reference net: its own class and forward()."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 32)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x.flatten(1))))


def test_run_training_takes_a_users_model_data_and_dense_start(tmp_path, data_root):
    from torch.utils.data import TensorDataset

    from kwh.data import load_mnist
    from kwh.train import TrainData

    full = load_mnist("train", data_root, limit=600)
    x, y = full.tensors
    data = TrainData(TensorDataset(x[:500], y[:500]), TensorDataset(x[500:], y[500:]),
                     load_mnist("test", data_root, limit=200))
    torch.manual_seed(0)
    start = _TwoLayer()
    with torch.no_grad():
        start.fc.weight.mul_(3.0)  # a recognisable dense start
    cfg = TrainConfig(model="custom", data="custom", prior="group-nj", pretrain_epochs=0,
                      epochs=2, threads=1, out_dir=str(tmp_path / "run"))
    res = run_training(cfg, progress=False, model=start, data=data)
    log = read_log(tmp_path / "run")
    assert [r["epoch"] for r in log] == [1, 2] and all("val_error" in r for r in log)
    assert res.config.kl_warmup_end == 0.2  # a given model is a trained start, recorded so
    assert log[-1]["global_step"] == 10  # 500 examples, batch 100: N is the given train set
    assert isinstance(res.model.fc, BayesLayer) and isinstance(res.model, _TwoLayer)
    # the checkpoint restores through the user's model (its structure; weights from the file)
    with pytest.raises(KwhError, match="pass the same plain model again"):
        load_checkpoint(tmp_path / "run")
    again, _ = load_checkpoint(tmp_path / "run", model=_TwoLayer())
    xb = x[:8]
    with torch.no_grad():
        assert torch.equal(again(xb), res.model(xb))
    # the dense start was the given weights: training moved them only a little
    w0 = start.fc.weight
    mean, _ = res.model.fc.prior.weight_moments()
    assert (mean - w0).abs().mean() < 0.2 * w0.abs().mean()
    with pytest.raises(KwhError, match="data are 'custom'"):
        run_training(TrainConfig(model="custom", data="custom", out_dir=str(tmp_path / "x")),
                     model=start)


def test_validation_split_is_held_out_of_the_training_examples(tmp_path, data_root):
    from kwh.train.data import load_train_data

    d = load_train_data(tiny(tmp_path, data_root, validation=50))
    assert len(d.train) == 450 and len(d.validation) == 50
    full = load_train_data(tiny(tmp_path, data_root, validation=0))
    assert d.validation is not None and full.validation is None
    assert torch.equal(d.validation.tensors[0], full.train.tensors[0][450:])
    assert len(load_train_data(tiny(tmp_path, data_root)).validation) == 500 // 12
    with pytest.raises(KwhError, match="leaves no training examples"):
        load_train_data(tiny(tmp_path, data_root, validation=500))


# ------------------------------------------------------------------ shrinking while training


def test_a_shrinking_run_resumes_bit_for_bit_and_its_checkpoint_rebuilds(tmp_path, data_root):
    from kwh.compress.shrink import Shrinker

    # A threshold just above where log alpha starts (-8): input pixels go after 2 epochs.
    kw = dict(prior="group-nj", epochs=4, shrink_patience=1, kl_warmup_end=0.0,
              prior_options={"threshold": -7.97})
    ref = run_training(tiny(tmp_path, data_root, "ref", **kw), progress=False)
    events = [r for r in ref.log if r.get("event") == "shrink"]
    assert events and events[0]["epoch"] < 4, "nothing was removed before step 17"
    start = sum(p.numel() for p in build_check_model(kw))
    assert sum(p.numel() for p in ref.model.parameters()) < start
    with pytest.raises(Crash):
        run_training(tiny(tmp_path, data_root, "cut", **kw), progress=False, fault=crash_at(17))
    done = run_training(tiny(tmp_path, data_root, "cut", **kw), resume=True, progress=False)
    assert_bit_equal(model_tensors(tmp_path / "ref" / "checkpoint.safetensors"),
                     model_tensors(tmp_path / "cut" / "checkpoint.safetensors"))
    assert untimed(read_log(tmp_path / "ref")) == untimed(read_log(tmp_path / "cut"))
    again, _ = load_checkpoint(tmp_path / "ref")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again(x), ref.model.eval()(x))
        assert torch.equal(done.model.eval()(x), ref.model(x))
    assert isinstance(Shrinker, type)


def build_check_model(kw):
    import kwh

    m = kwh.models.lenet300()
    kwh.bayesify_(m, kw["prior"], **kw["prior_options"])
    return list(m.parameters())


def test_binary_method_trains_a_binary_net_from_the_dense_start(tmp_path, data_root):
    from kwh.binary import BinaryLayer
    cfg = tiny(tmp_path, data_root, method="binary", epochs=2)
    result = run_training(cfg, progress=False)
    lines = read_log(cfg.out_dir)
    assert [r["phase"] for r in lines] == ["pretrain", "binary", "binary"]
    assert "kl" not in lines[-1] and "alive" not in lines[-1]  # no posterior in a binary net
    model, c = load_checkpoint(cfg.out_dir)
    assert c.method == "binary"
    layers = [m for m in model.modules() if isinstance(m, BinaryLayer)]
    assert len(layers) == 2  # the last Linear stays float (binarize_'s default)
    assert all(m.weight.abs().max() <= 1 for m in layers)  # clipped after every step
    assert not any(isinstance(m, BayesLayer) for m in model.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model.eval()(x))
    # resumed from a crash mid-epoch, it ends with the same bits
    crashed = tiny(tmp_path, data_root, name="crashed", method="binary", epochs=2)
    with pytest.raises(Crash):
        run_training(crashed, progress=False, fault=crash_at(8))
    run_training(crashed, resume=True, progress=False)
    assert_bit_equal(model_tensors(f"{cfg.out_dir}/checkpoint.safetensors"),
                     model_tensors(f"{crashed.out_dir}/checkpoint.safetensors"))


def test_binary_method_options_are_checked(tmp_path, data_root):
    with pytest.raises(KwhError, match="bad binary option"):
        tiny(tmp_path, data_root, method="binary", binary_options={"scale": "row"})
    with pytest.raises(KwhError, match="binary run.*prunes nothing"):
        tiny(tmp_path, data_root, method="binary", shrink_patience=2)
    with pytest.raises(KwhError, match="Unknown method"):
        tiny(tmp_path, data_root, method="ternary")
    with pytest.raises(KwhError, match="for method='binary'"):
        tiny(tmp_path, data_root, binary_options={"scale": "channel"})


# ------------------------------------------------------------------ SGLD: posterior samples

# 5 SGLD steps per epoch after 1 plain epoch: burn-in is the first SGLD epoch (steps 1-5), then
# a sample every 2 steps (5, 7, ..., 15), the newest 4 held.
SGLD_KW = dict(method="sgld", epochs=3,
               sgld_options={"thin_steps": 2, "max_samples": 4, "burn_in_epochs": 1})


def sgld_tensors(path) -> dict[str, torch.Tensor]:
    """Everything of a checkpoint that the chain's state is: weights, sampler, samples."""
    tensors, _ = read_checkpoint(path)
    return {k: v for k, v in tensors.items()
            if k.startswith(("model/", "optim/", "samples/", "sgld/"))}


@pytest.fixture(scope="module")
def sgld_reference(tmp_path_factory, data_root):
    cfg = tiny(tmp_path_factory.mktemp("sgld"), data_root, **SGLD_KW)
    return cfg, run_training(cfg, progress=False)


def test_sgld_method_samples_after_burn_in_on_the_thinning_interval(sgld_reference):
    cfg, result = sgld_reference
    lines = read_log(cfg.out_dir)
    assert [r["phase"] for r in lines] == ["pretrain", "sgld", "sgld", "sgld"]
    # samples held after each SGLD epoch: {5}, {5, 7, 9}, {9, 11, 13, 15} (6 kept, 4 held)
    assert [r.get("samples") for r in lines] == [None, 1, 3, 4]
    store = result.samples
    assert store.steps == (9, 11, 13, 15) and store.collected == 6
    # a constant step: the config's lr decay is the pretraining's alone
    assert [r["lr"] for r in lines[1:]] == [1e-6] * 3 and lines[0]["lr"] < 1e-3
    assert "kl" not in lines[-1] and "alive" not in lines[-1]
    assert not any(isinstance(m, BayesLayer) for m in result.model.modules())
    # the last step is on the interval: the newest sample is the final state
    final = result.model.state_dict()
    assert all(torch.equal(store[-1][k], final[k]) for k in final)
    # the chain moves (gradient and noise): no two samples alike
    assert not torch.equal(store[0]["1.weight"], store[1]["1.weight"])
    assert (result.checkpoint.parent / "samples.safetensors").is_file()
    again = run_training(cfg, resume=True, progress=False)  # finished: the same store back
    assert again.samples.steps == store.steps and again.samples.collected == 6


def test_sgld_run_loads_as_a_plain_model_and_samples_that_predict(sgld_reference, reference):
    import kwh
    from kwh.train import load_samples

    cfg, result = sgld_reference
    model, c = load_checkpoint(cfg.out_dir)
    assert c == cfg.resolved() and not model.training
    store = load_samples(cfg.out_dir, model)
    assert store.steps == result.samples.steps and store.collected == 6
    for a, b in zip(store, result.samples):
        assert_bit_equal(a, b)
    x = torch.randn(6, 1, 28, 28)
    pred = kwh.predict(model, x, samples=len(store), store=store)
    assert pred.method == "samples" and pred.samples == 4
    probs = []
    with torch.no_grad():
        for state in result.samples:
            model.load_state_dict(state)
            probs.append(torch.softmax(model(x).double(), dim=1))
    torch.testing.assert_close(pred.probs.double(), torch.stack(probs).mean(0))
    # the checkpoint holds the same samples while a run goes on
    ckpt_store = load_samples(f"{cfg.out_dir}/checkpoint.safetensors")
    assert ckpt_store.steps == store.steps
    with pytest.raises(KwhError, match="not from an SGLD run"):
        load_samples(reference[0].out_dir)
    with pytest.raises(KwhError, match="does not match the stored samples"):
        load_samples(cfg.out_dir, torch.nn.Linear(3, 2))
    with pytest.raises(KwhError, match="holds an SGLD run's weight samples"):
        load_checkpoint(f"{cfg.out_dir}/samples.safetensors")


# Crash points: in burn-in (back to a mid-epoch checkpoint with no sample yet), and after the
# checkpoint at global step 12, which holds samples 5 and 7.
@pytest.mark.parametrize("step", [7, 13])
def test_sgld_resume_after_a_crash_gives_the_same_chain_and_samples(sgld_reference, tmp_path,
                                                                    data_root, step):
    ref_cfg, ref = sgld_reference
    cfg = tiny(tmp_path, data_root, **SGLD_KW)
    with pytest.raises(Crash):
        run_training(cfg, progress=False, fault=crash_at(step))
    resumed = run_training(cfg, resume=True, progress=False)
    a, b = (f"{c.out_dir}/checkpoint.safetensors" for c in (ref_cfg, cfg))
    assert_bit_equal(sgld_tensors(a), sgld_tensors(b))
    assert read_checkpoint(a)[1]["samples"] == read_checkpoint(b)[1]["samples"]
    a, b = (read_checkpoint(f"{c.out_dir}/samples.safetensors") for c in (ref_cfg, cfg))
    assert_bit_equal(a[0], b[0])
    assert a[1]["samples"] == b[1]["samples"]
    assert untimed(resumed.history) == untimed(ref.history)
    assert resumed.samples.steps == ref.samples.steps


def test_sgld_non_finite_step_rolls_back_with_its_samples_and_half_the_step(tmp_path,
                                                                            data_root):
    result = run_training(tiny(tmp_path, data_root, **SGLD_KW), progress=False,
                          fault=fault_once(14, "gradient"))
    events = [r for r in result.log if r["event"] == "rollback"]
    assert [(e["global_step"], e["to_epoch"], e["to_step"]) for e in events] == [(14, 3, 2)]
    assert [r["lr"] for r in result.history[1:]] == [1e-6, 5e-7, 5e-7]
    # samples 5 and 7 came back with the checkpoint; 9 on were taken again, none twice
    assert result.samples.steps == (9, 11, 13, 15) and result.samples.collected == 6


@pytest.mark.parametrize("kw, match", [
    (dict(sgld_options={"thin": 2}), "unknown SGLD option 'thin'; choose from: lr, prior_std"),
    (dict(sgld_options={"lr": 0.0}), "SGLD option lr must be a finite number > 0"),
    (dict(sgld_options={"thin_steps": 0}), "SGLD option thin_steps must be an integer >= 1"),
    (dict(sgld_options={"max_samples": 2.5}), "max_samples must be an integer >= 1"),
    (dict(sgld_options={"temperature": -1}), "temperature must be a finite number >= 0"),
    (dict(sgld_options={"preconditioned": "yes"}), "preconditioned must be True or False"),
    (dict(sgld_options={"burn_in_epochs": 3}), "burn_in_epochs=3 leaves none of the 3 SGLD"),
    (dict(shrink_patience=1), "an SGLD run .* prunes nothing: leave it 0"),
    (dict(prior_options={"tau0": 1e-5}), "give it as sgld_options"),
    (dict(method="bayes"), "sgld_options are for method='sgld'"),
])
def test_sgld_options_are_checked(tmp_path, data_root, kw, match):
    with pytest.raises(KwhError, match=match):
        tiny(tmp_path, data_root, **{**SGLD_KW, **kw})


def test_sgld_settings_fill_in_the_defaults_and_a_run_without_samples_is_refused(tmp_path,
                                                                                data_root):
    c = TrainConfig(method="sgld")
    assert c.out_dir == "runs/lenet5-mnist-sgld" and c.sgld_settings() == {
        "lr": 1e-6, "prior_std": 1.0, "temperature": 1.0, "preconditioned": False,
        "alpha": 0.99, "eps": 1e-5, "burn_in_epochs": 1, "thin_steps": 100, "max_samples": 50}
    assert TrainConfig(method="sgld", sgld_options={"preconditioned": True}
                       ).sgld_settings()["lr"] == 4e-8
    # no burn-in, and the first sample due after 11 of the 10 SGLD steps
    cfg = tiny(tmp_path, data_root, method="sgld",
               sgld_options={"burn_in_epochs": 0, "thin_steps": 11})
    with pytest.raises(KwhError, match="SGLD would keep no sample: .* lower thin_steps"):
        run_training(cfg, progress=False)


# ------------------------------------------------------------------ soft weight-sharing

# 1 plain epoch, then 2 epochs (10 steps) under the mixture prior; sigma starts at 0.01 (the
# tiny run's weights reach 0.1) so that a few steps leave some at nonzero components.
SWS_KW = dict(method="sws", epochs=2, sws_options={"init_std": 0.01, "tau": 0.01})


def sws_tensors(path) -> dict[str, torch.Tensor]:
    """Everything of a checkpoint that the run's state is: weights, Adam, the mixture prior."""
    tensors, _ = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "optim/", "sws/"))}


@pytest.fixture(scope="module")
def sws_reference(tmp_path_factory, data_root):
    cfg = tiny(tmp_path_factory.mktemp("sws"), data_root, **SWS_KW)
    return cfg, run_training(cfg, progress=False)


def test_sws_method_retrains_the_plain_net_under_the_prior_and_loads_it_back(sws_reference,
                                                                              reference):
    import math

    from kwh.sws import MixturePrior, mixture_weights, quantize_
    from kwh.train import load_mixture_prior

    cfg, result = sws_reference
    lines = read_log(cfg.out_dir)
    assert [r["phase"] for r in lines] == ["pretrain", "sws", "sws"]
    assert "kl" not in lines[-1] and "alive" not in lines[-1]
    assert [r["kl_weight"] for r in lines[1:]] == [0.0, 0.0]
    assert lines[-1]["lr"] == pytest.approx(5e-4 / 10)  # the phase's weight lr, decayed linearly
    mix = lines[-1]["mixture"]
    assert len(mix["pi"]) == len(mix["mean"]) == len(mix["std"]) == 17
    assert mix["mean"][0] == 0.0 and mix["pi"][0] == pytest.approx(0.999)
    assert 0 < mix["zero_pct"] < 100
    assert all(r["train_loss"] != r["train_nll"] for r in lines[1:])  # the prior's term
    prior = result.prior
    assert isinstance(prior, MixturePrior)
    assert not torch.allclose(prior.log_vars.detach(), torch.full((17,), 2 * math.log(0.01)))
    # the checkpoint: the plain net, the prior's tensors, Adam over four groups
    tensors, meta = read_checkpoint(f"{cfg.out_dir}/checkpoint.safetensors")
    assert {k for k in tensors if k.startswith("sws/")} == {"sws/means", "sws/log_vars",
                                                            "sws/mix_logits"}
    assert [g["name"] for g in meta["optimizer"]["param_groups"]] == [
        "weights", "mixture means", "mixture log-variances", "mixing logits"]
    assert [g["base_lr"] for g in meta["optimizer"]["param_groups"]] == [5e-4, 1e-4, 3e-3, 3e-3]
    model, c = load_checkpoint(cfg.out_dir)
    assert c == cfg.resolved() and not model.training
    assert not any(isinstance(m, BayesLayer) for m in model.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    loaded = load_mixture_prior(cfg.out_dir)
    assert_bit_equal(loaded.state_dict(), prior.state_dict())
    # quantized with the trained prior: every weight on the codebook, the zero code exactly 0
    q = quantize_(model, loaded)
    for name, w in mixture_weights(model):
        assert torch.equal(w, q.codebook[q.codes[name]]) and torch.equal(w == 0, q.codes[name] == 0)
    assert 0 < q.density() < 1
    with pytest.raises(KwhError, match="not from a soft weight-sharing run"):
        load_mixture_prior(reference[0].out_dir)


# Crash points: the first step under the prior (back to the plain checkpoint of epoch 1), just
# after the mid-epoch checkpoint at global step 6, and after the one at step 12.
@pytest.mark.parametrize("step", [5, 7, 13])
def test_sws_resume_after_a_crash_retraces_the_run_bit_for_bit(sws_reference, tmp_path,
                                                               data_root, step):
    ref_cfg, ref = sws_reference
    cfg = tiny(tmp_path, data_root, **SWS_KW)
    with pytest.raises(Crash):
        run_training(cfg, progress=False, fault=crash_at(step))
    resumed = run_training(cfg, resume=True, progress=False)
    assert_bit_equal(sws_tensors(f"{cfg.out_dir}/checkpoint.safetensors"),
                     sws_tensors(f"{ref_cfg.out_dir}/checkpoint.safetensors"))
    assert untimed(resumed.history) == untimed(ref.history)
    assert_bit_equal(resumed.prior.state_dict(), ref.prior.state_dict())


def test_sws_non_finite_step_rolls_back_the_prior_too(tmp_path, data_root):
    result = run_training(tiny(tmp_path, data_root, **SWS_KW), progress=False,
                          fault=fault_once(8, "gradient"))
    events = [r for r in result.log if r["event"] == "rollback"]
    assert [(e["global_step"], e["to_epoch"], e["to_step"]) for e in events] == [(8, 2, 1)]
    assert [r["lr_scale"] for r in result.history] == [1.0, 0.5, 0.5]
    assert all(torch.isfinite(p).all() for p in result.prior.parameters())


@pytest.mark.parametrize("kw, match", [
    (dict(sws_options={"taus": 1}), "unknown soft weight-sharing option 'taus'; choose from: "
                                    "tau, n_components"),
    (dict(sws_options={"tau": 0}), "option tau must be a finite number > 0, got 0"),
    (dict(sws_options={"zero_mix": 1.0}), r"option zero_mix must be a finite number in \(0, 1\)"),
    (dict(sws_options={"n_components": 1}), "option n_components must be an integer >= 2"),
    (dict(sws_options={"lr_means": float("inf")}), "option lr_means must be a finite number"),
    (dict(sws_options={"gamma_rate": True}), "option gamma_rate must be a finite number > 0"),
    (dict(shrink_patience=1), "a soft weight-sharing run .* trains a plain net: leave it 0"),
    (dict(prior_options={"tau0": 1e-5}), "give its settings as sws_options"),
    (dict(method="bayes"), "sws_options are for method='sws'"),
])
def test_sws_options_are_checked(tmp_path, data_root, kw, match):
    with pytest.raises(KwhError, match=match):
        tiny(tmp_path, data_root, **{**SWS_KW, **kw})


def test_sws_settings_fill_in_the_paper_defaults():
    c = TrainConfig(method="sws")
    assert c.out_dir == "runs/lenet5-mnist-sws" and c.sws_settings() == {
        "tau": 5e-3, "n_components": 17, "zero_mix": 0.999, "init_std": 0.25,
        "gamma_shape": 250.0, "gamma_rate": 0.1, "zero_gamma_shape": 5000.0,
        "zero_gamma_rate": 2.0, "lr": 5e-4, "lr_means": 1e-4, "lr_log_vars": 3e-3,
        "lr_mix": 3e-3, "tau_end": None, "tau_ramp_start": 0.0}
    assert TrainConfig(method="sws", lr=2e-3, sws_options={"lr": None}).sws_settings()["lr"] == 2e-3


def test_sws_tau_is_constant_or_annealed_geometrically_over_the_phase():
    const = Schedule(TrainConfig(method="sws", pretrain_epochs=2, epochs=4), steps_per_epoch=10)
    assert {const.sws_tau(e, k) for e in range(6) for k in (0, 5)} == {5e-3}
    c = TrainConfig(method="sws", pretrain_epochs=2, epochs=4,
                    sws_options={"tau": 1e-3, "tau_end": 1e-1})
    s = Schedule(c, steps_per_epoch=10)
    assert s.sws_tau(0, 3) == pytest.approx(1e-3)  # pretraining: the phase has not started
    assert s.sws_tau(2, 0) == pytest.approx(1e-3)
    assert s.sws_tau(4, 0) == pytest.approx(1e-2)  # half way: the geometric mean
    assert s.sws_tau(5, 5) == pytest.approx(1e-3 * 100 ** (3.5 / 4))
    with pytest.raises(KwhError, match="option tau_end must be a finite number > 0 \\(or None\\)"):
        TrainConfig(method="sws", sws_options={"tau_end": -1.0})
    late = Schedule(TrainConfig(method="sws", pretrain_epochs=0, epochs=4, sws_options={
        "tau": 1e-3, "tau_end": 1e-1, "tau_ramp_start": 0.5}), steps_per_epoch=10)
    assert late.sws_tau(1, 9) == pytest.approx(1e-3)  # constant for the first half
    assert late.sws_tau(3, 0) == pytest.approx(1e-2)  # half way through the ramp
    assert late.sws_tau(3, 9) == pytest.approx(1e-3 * 100 ** 0.95)
    with pytest.raises(KwhError, match="tau_ramp_start must be a fraction of the phase"):
        TrainConfig(method="sws", sws_options={"tau_ramp_start": 1.0})
    with pytest.raises(KwhError, match="tau_ramp_start starts the annealing of tau: give "
                                       "tau_end too"):
        TrainConfig(method="sws", sws_options={"tau_ramp_start": 0.5})
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c

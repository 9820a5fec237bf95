"""Distillation while fine-tuning: the loss is Hinton et al.'s formula, at weight 1 only the
teacher speaks, a teacher pulls the model toward its outputs, and the dense net of a plain run
loads as the teacher."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from kwh.app import load_model
from kwh.app.finetune import finetune
from kwh.compress.finetune import quantized_layers
from kwh.errors import KwhError
from kwh.train import TrainConfig, TrainData, run_training
from kwh.train.config import CUSTOM
from kwh.train.distill import distillation_loss

from test_finetune import _compressed_mlp


def test_distillation_loss_is_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    nll = F.cross_entropy(s, y)
    w, temp = 0.7, 3.0
    ps, pt = torch.softmax(s / temp, 1), torch.softmax(t / temp, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    want = (1 - w) * nll + w * temp ** 2 * kl
    assert torch.allclose(distillation_loss(nll, s, t, w, temp), want, atol=1e-6)
    assert distillation_loss(nll, s, t, 0.0, temp) is nll
    assert float(distillation_loss(nll, s, s.clone(), 1.0, temp)) == pytest.approx(0, abs=1e-7)
    with pytest.raises(KwhError, match="same task"):
        distillation_loss(nll, s, torch.randn(6, 4), 0.5, temp)


def test_distillation_settings_are_checked():
    with pytest.raises(KwhError, match=r"distill_weight must lie in \[0, 1\]"):
        TrainConfig(pretrain_epochs=1, epochs=0, distill_weight=1.5)
    with pytest.raises(KwhError, match="distill_temperature"):
        TrainConfig(pretrain_epochs=1, epochs=0, distill_weight=0.5, distill_temperature=0)
    with pytest.raises(KwhError, match="epochs=0"):
        TrainConfig(pretrain_epochs=1, epochs=2, distill_weight=0.5)
    small, data = _compressed_mlp()
    plain = TrainConfig(model=CUSTOM, data=CUSTOM, pretrain_epochs=1, epochs=0, out_dir="unused")
    with pytest.raises(KwhError, match="teacher goes with distill_weight"):
        run_training(plain, model=small, data=data, teacher=small, progress=False)
    distilled = TrainConfig(model=CUSTOM, data=CUSTOM, pretrain_epochs=1, epochs=0,
                            distill_weight=0.5, out_dir="unused")
    with pytest.raises(KwhError, match="teacher goes with distill_weight"):
        run_training(distilled, model=small, data=data, progress=False)


def _kl_to(teacher, model, x) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(model(x), 1), F.log_softmax(teacher(x), 1),
                              log_target=True, reduction="batchmean"))


def test_at_weight_one_the_labels_have_no_say(tmp_path):
    """Weight 1: the loss is the teacher's term alone, so shuffled labels give the very same
    fine-tuned model; at weight 0.9 they do not; without a teacher the summary says none."""
    small, data = _compressed_mlp()
    torch.manual_seed(3)
    teacher = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 4))
    x, y = data.train.tensors
    shuffled = TrainData(TensorDataset(x, y[torch.randperm(len(y))]), data.validation, data.test)

    def tuned(d, name, w):
        return finetune(small, d, 2, tmp_path / name, lr=1e-2, batch_size=50, teacher=teacher,
                        distill_weight=w)

    def same(a, b):
        return all(torch.equal(p.weight, q.weight) and torch.equal(p.bias, q.bias) for (_, p), (_, q)
                   in zip(quantized_layers(a), quantized_layers(b)))

    a, b = tuned(data, "a", 1.0), tuned(shuffled, "b", 1.0)
    assert same(a, b) and not same(a, small)
    assert a.kwh_summary["finetune"]["distill"]["weight"] == 1.0
    assert not same(tuned(data, "c", 0.9), tuned(shuffled, "d", 0.9))
    assert finetune(small, data, 1, tmp_path / "e", lr=1e-2, batch_size=50
                    ).kwh_summary["finetune"]["distill"] is None


def test_a_teacher_pulls_the_model_toward_its_outputs(tmp_path):
    small, data = _compressed_mlp()
    torch.manual_seed(3)
    teacher = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 4))
    x = data.test.tensors[0]
    tuned = finetune(small, data, 3, tmp_path / "run", lr=1e-2, batch_size=50, teacher=teacher,
                     distill_weight=1.0, distill_temperature=1.0)
    assert _kl_to(teacher, tuned, x) < 0.5 * _kl_to(teacher, small, x)
    # resuming into that folder with another teacher (or none) is refused: other settings
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other[0].weight.add_(0.1)
    for t in (other, None):
        with pytest.raises(KwhError, match="other settings"):
            finetune(small, data, 3, tmp_path / "run", lr=1e-2, batch_size=50, teacher=t,
                     distill_weight=1.0, distill_temperature=1.0)


def test_a_plain_run_loads_as_its_dense_net(tmp_path, data_root):
    run = tmp_path / "dense"
    result = run_training(TrainConfig(model="lenet300", data="mnist", data_dir=str(data_root),
                                      pretrain_epochs=1, epochs=0, limit_train=300,
                                      limit_test=100, out_dir=str(run), threads=1),
                          progress=False)
    loaded = load_model(run)
    assert loaded.kind == "dense-checkpoint" and loaded.data == "mnist"
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model.eval()(x))


def test_cli_compress_distils_from_a_teacher(tmp_path, data_root, capsys):
    from safetensors.torch import save_file

    import kwh
    from kwh.cli.main import main
    from kwh.models import lenet300

    run = tmp_path / "run"
    run_training(TrainConfig(model="lenet300", data="mnist", data_dir=str(data_root),
                             prior="log-uniform", pretrain_epochs=1, epochs=1, limit_train=300,
                             limit_test=100, out_dir=str(run), threads=1), progress=False)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_file(lenet300().state_dict(), str(teacher))
    out = tmp_path / "m.kwh"
    common = ["compress", "--checkpoint", str(run), "--data-dir", str(data_root),
              "--finetune-epochs", "1", "--out", str(out), "--no-progress"]
    # a missing teacher, an untrained one or one of another task fails before any work, exit 2
    wrong = tmp_path / "wrong.safetensors"
    torch.manual_seed(1)
    save_file(torch.nn.Linear(784, 10).state_dict(), str(wrong))
    for bad, says in ((str(tmp_path / "nope.safetensors"), "nope.safetensors"),
                      ("lenet300", "untrained reference model"),
                      (str(wrong), "fits no reference model")):
        assert main(common + ["--finetune-teacher", bad]) == 2
        io = capsys.readouterr()
        assert says in io.err and io.out == ""
        assert not out.exists() and not (tmp_path / "m.kwh-finetune").exists()
    assert main(common + ["--finetune-teacher", str(teacher)]) == 0
    d = kwh.load(out).kwh_summary["finetune"]["distill"]
    assert d["weight"] == 0.9 and d["temperature"] == 4.0 and len(d["teacher_sha256"]) == 64


def test_the_teacher_runs_in_eval_mode_and_is_left_as_it_was(tmp_path):
    """A teacher given in train mode (BatchNorm on batch statistics, dropout on) distils as
    its eval mode does: the same fine-tuned model as from the same teacher in eval mode; the
    caller's teacher keeps its mode and its running statistics."""
    small, data = _compressed_mlp()
    torch.manual_seed(5)
    teacher = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.BatchNorm1d(32),
                                  torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 4))
    with torch.no_grad():
        teacher[1].running_mean.normal_()
        teacher[1].running_var.uniform_(0.5, 2.0)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    a = finetune(small, data, 1, tmp_path / "a", lr=1e-2, batch_size=50, teacher=teacher,
                 distill_weight=1.0)
    assert teacher.training and all(torch.equal(v, state[k])
                                    for k, v in teacher.state_dict().items())
    b = finetune(small, data, 1, tmp_path / "b", lr=1e-2, batch_size=50,
                 teacher=copy.deepcopy(teacher).eval(), distill_weight=1.0)
    assert all(torch.equal(p.weight, q.weight) for (_, p), (_, q) in
               zip(quantized_layers(a), quantized_layers(b)))


def test_a_teacher_of_another_task_leaves_the_folder_free(tmp_path):
    small, data = _compressed_mlp()
    with pytest.raises(KwhError, match="same task"):
        finetune(small, data, 1, tmp_path / "run", lr=1e-2, teacher=torch.nn.Linear(20, 3))
    with pytest.raises(KwhError, match="cannot run on the training inputs"):
        finetune(small, data, 1, tmp_path / "run", lr=1e-2, teacher=torch.nn.Linear(7, 4))
    with pytest.raises(KwhError, match="distill_weight must lie"):
        finetune(small, data, 1, tmp_path / "run", lr=1e-2, teacher=torch.nn.Linear(20, 4),
                 distill_weight=1.5)
    tuned = finetune(small, data, 1, tmp_path / "run", lr=1e-2, teacher=torch.nn.Linear(20, 4))
    assert tuned.kwh_summary["finetune"]["distill"]["weight"] == 0.9


def test_run_training_resumes_only_with_its_teacher(tmp_path):
    small, data = _compressed_mlp()
    torch.manual_seed(2)
    teacher, other = torch.nn.Linear(20, 4), torch.nn.Linear(20, 4)
    config = TrainConfig(model=CUSTOM, data=CUSTOM, pretrain_epochs=1, epochs=0,
                         distill_weight=0.5, batch_size=50, validation=100,
                         out_dir=str(tmp_path / "run"), threads=1)
    first = run_training(config, model=small, data=data, teacher=teacher, progress=False)
    with pytest.raises(KwhError, match="another teacher"):
        run_training(config, resume=True, model=small, data=data, teacher=other, progress=False)
    again = run_training(config, resume=True, model=small, data=data, teacher=teacher,
                         progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 again.model.state_dict().values()))

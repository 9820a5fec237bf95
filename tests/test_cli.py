"""The CLI root: registration, exit codes and messages; `kwh env`; `kwh train` option mapping."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import kwh.cli.main as cli
from cli_run import run_main
from kwh.errors import FormatError, KwhError



@pytest.mark.parametrize("argv, fragment", [
    (["env", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: <command>"),
    (["fly"], "invalid choice: 'fly'"),
    (["train", "--epochs", "banana"], "argument --epochs: expected an integer, got 'banana'"),
    (["train", "--epochs", "-1"], "argument --epochs: must be >= 0, got -1"),
    (["train", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
    (["train", "--lr", "nan"], "argument --lr: must be a positive number"),
    (["train", "--kl-warmup", "0.5"], "argument --kl-warmup: expected 2 arguments"),
    (["train", "--kl-compute-power", "-1"],
     "argument --kl-compute-power: must be a finite number >= 0, got -1"),
    (["train", "--method", "sgld", "--kl-compute-power", "0.5"],
     "kl_compute_power weights a Bayesian layer's KL; it needs method='bayes'"),
    (["train", "--prior-option", "tau0"], "expected KEY=VALUE"),
    (["train", "--prior", "group-nj", "--prior-option", "init_scale=half"],
     "Unknown init_scale 'half'"),
    (["train", "--sgld-option", "lr"], "expected KEY=VALUE with a number, true/false or none"),
    (["train", "--sgld-option", "preconditioned=maybe"], "expected KEY=VALUE"),
    (["train", "--method", "sgld", "--sgld-option", "thin=2"], "unknown SGLD option 'thin'"),
    (["train", "--sgld-option", "lr=1e-6"], "sgld_options are for method='sgld'"),
    (["train", "--sws-option", "tau"], "expected KEY=VALUE with a number or none"),
    (["train", "--method", "sws", "--sws-option", "taus=1"],
     "unknown soft weight-sharing option 'taus'"),
    (["train", "--sws-option", "tau=1e-3"], "sws_options are for method='sws'"),
])
def test_nonsense_arguments_exit_2_with_a_message(argv, fragment, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == 2 and fragment in err and "Traceback" not in err and out == ""
    assert len(err.splitlines()) == 1 and "usage:" not in err  # one line, no usage block


@pytest.mark.parametrize("argv, line", [
    (["train", "--epochs", "banana"], "kwh train: error: argument --epochs: expected an "
     "integer, got 'banana' (see kwh train --help)"),
    (["env", "--bogus"], "kwh env: error: unrecognized arguments: --bogus (see kwh env --help)"),
    (["export", "m.kwh"], "kwh export: error: the following arguments are required: --onnx "
     "(see kwh export --help)"),
    ([], "kwh: error: the following arguments are required: <command> (see kwh --help)"),
])
def test_usage_errors_are_one_line_naming_the_subcommand(argv, line, capsys):
    code, out, err = run_main(argv, capsys)
    assert (code, out, err) == (2, "", line + "\n")


def test_every_subcommand_parser_answers_in_one_line(capsys):
    """Each registered subcommand (subparsers included) uses the one-line error format."""
    sub = cli.build_parser()._subparsers._group_actions[0]
    for name in sub.choices:
        code, out, err = run_main([name, "--no-such-option"], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, name
        assert err.startswith(f"kwh {name}: error: "), name  # missing MODEL or the option
        assert err.endswith(f" (see kwh {name} --help)\n"), name


def test_unknown_model_and_prior_name_the_valid_choices(capsys):
    code, _, err = run_main(["train", "--model", "resnet"], capsys)
    assert code == 2 and "choose from 'lenet300', 'lenet5', 'vgg'" in err
    code, _, err = run_main(["train", "--prior", "horshoe"], capsys)
    assert code == 2
    assert "choose from 'log-uniform', 'group-nj', 'group-horseshoe'" in err


def test_bad_values_caught_by_the_config_exit_2_with_one_line(capsys, tmp_path):
    code, out, err = run_main(["train", "--limit-train", "50", "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and out == ""
    assert err == "kwh: error: limit_train=50 is smaller than batch_size=100; lower the batch " \
                  "size or raise the limit\n"


def _parser_raising(exc: BaseException):
    def build():
        p = argparse.ArgumentParser(prog="kwh")
        p.add_argument("-q", "--quiet", action="store_true")

        def boom(args):
            raise exc
        p.set_defaults(func=boom)
        return p
    return build


@pytest.mark.parametrize("exc, code, message", [
    (KwhError("bad thing\nwith detail"), 2, "kwh: error: bad thing with detail\n"),
    (FormatError("x.kwh: truncated"), 2, "kwh: error: x.kwh: truncated\n"),
    (ValueError("width must be positive"), 2, "kwh: error: width must be positive\n"),
    (FileNotFoundError(2, "No such file or directory", "m.kwh"), 2,
     "kwh: error: [Errno 2] No such file or directory: 'm.kwh'\n"),
    (PermissionError(13, "Permission denied", "/root/x"), 2,
     "kwh: error: [Errno 13] Permission denied: '/root/x'\n"),
    (KeyboardInterrupt(), 130, "kwh: interrupted\n"),
])
def test_errors_map_to_exit_codes(monkeypatch, capsys, exc, code, message):
    monkeypatch.setattr(cli, "build_parser", _parser_raising(exc))
    assert run_main([], capsys) == (code, "", message)


def test_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", _parser_raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main([])


def test_missing_or_broken_subcommand_modules_are_errors(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ("env", "not_written_yet"))
    with pytest.raises(ModuleNotFoundError, match="not_written_yet"):
        cli.build_parser()

    monkeypatch.setattr(cli, "SUBCOMMANDS", ("env",))
    real_import = cli.importlib.import_module

    def broken(name):
        if name == "kwh.cli.env":  # the module exists but needs a package that is missing
            raise ModuleNotFoundError("No module named 'somedep'", name="somedep")
        return real_import(name)

    monkeypatch.setattr(cli.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="somedep"):
        cli.build_parser()


def test_every_registered_subcommand_has_a_function():
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0]
    assert {"train", "env"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert callable(p.get_default("func")), name


def test_env_reports_versions_without_initialising_cuda(capsys):
    import torch

    code, out, _ = run_main(["env"], capsys)
    assert code == 0
    for key in ("kwh", "python", "torch", "numpy", "platform", "cpu", "cores", "cuda_available",
                "nvml", "rapl"):
        assert f"- {key}: " in out, key
    assert f"- torch: {torch.__version__}" in out
    code, out, _ = run_main(["env", "--json"], capsys)
    assert code == 0 and json.loads(out)["cuda_available"] == torch.cuda.is_available()
    assert not torch.cuda.is_initialized()


def test_train_maps_options_onto_the_config(capsys, tmp_path, data_root):
    out_dir = tmp_path / "run"
    argv = ["train", "--model", "lenet300", "--prior", "log-uniform", "--epochs", "1",
            "--limit-train", "200", "--limit-test", "100", "--batch-size", "50", "--lr", "0.002",
            "--seed", "7", "--threads", "1", "--kl-warmup", "0", "0.5", "--prior-option",
            "threshold=2.5", "--data-dir", str(data_root), "--out-dir", str(out_dir),
            "--no-progress"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert out.startswith("test error ") and "alive per layer: 1: " in out
    assert out.rstrip().endswith(f"checkpoint: {out_dir / 'checkpoint.safetensors'}")
    with open(out_dir / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    assert {k: cfg[k] for k in ("model", "prior", "epochs", "limit_train", "batch_size", "lr",
                                "seed", "threads", "kl_warmup_start", "kl_warmup_end",
                                "prior_options")} == {
        "model": "lenet300", "prior": "log-uniform", "epochs": 1, "limit_train": 200,
        "batch_size": 50, "lr": 0.002, "seed": 7, "threads": 1, "kl_warmup_start": 0.0,
        "kl_warmup_end": 0.5, "prior_options": {"threshold": 2.5}}
    # Same folder again without --resume: refused, exit 2, the run left as it was.
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "already holds a checkpoint; pass --resume" in err


def test_train_method_sgld_maps_its_options_and_names_the_samples(capsys, tmp_path, data_root):
    from kwh.train import load_checkpoint, load_samples

    out_dir = tmp_path / "run"
    argv = ["train", "--model", "lenet300", "--method", "sgld", "--pretrain-epochs", "1",
            "--epochs", "2", "--limit-train", "200", "--limit-test", "100", "--batch-size", "50",
            "--threads", "1", "--sgld-option", "thin_steps=2", "--sgld-option",
            "max_samples=none", "--sgld-option", "preconditioned=true", "--sgld-option",
            "lr=2e-8", "--data-dir", str(data_root), "--out-dir", str(out_dir), "--no-progress"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    with open(out_dir / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    assert cfg["method"] == "sgld" and cfg["sgld_options"] == {
        "thin_steps": 2, "max_samples": None, "preconditioned": True, "lr": 2e-8}
    # 4 steps an SGLD epoch: burn-in 4, then samples at SGLD steps 4, 6 and 8
    assert out.rstrip().endswith(f"; 3 weight samples: {out_dir / 'samples.safetensors'}")
    model, _ = load_checkpoint(out_dir)
    assert load_samples(out_dir, model).steps == (4, 6, 8)


def test_train_method_sws_maps_its_options_and_keeps_the_prior(capsys, tmp_path, data_root):
    from kwh.train import load_mixture_prior

    out_dir = tmp_path / "run"
    argv = ["train", "--model", "lenet300", "--method", "sws", "--pretrain-epochs", "1",
            "--epochs", "1", "--limit-train", "200", "--limit-test", "100", "--batch-size", "50",
            "--threads", "1", "--sws-option", "tau=1e-3", "--sws-option", "n_components=9",
            "--sws-option", "lr=none", "--data-dir", str(data_root), "--out-dir", str(out_dir),
            "--no-progress"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    with open(out_dir / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    assert cfg["method"] == "sws" and cfg["sws_options"] == {
        "tau": 1e-3, "n_components": 9, "lr": None}
    assert out.startswith("test error ") and "checkpoint: " in out
    assert load_mixture_prior(out_dir).n_components == 9


def test_python_dash_m_kwh_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "kwh", "train", "--model", "resnet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "invalid choice: 'resnet'" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("kwh train: error: argument --model: invalid choice")
    assert proc.stderr.endswith(" (see kwh train --help)\n") and proc.stderr.count("\n") == 1

"""`kwh evaluate --uncertainty`: the CLI branch prints the metrics of the loaded file."""

from __future__ import annotations

import torch

import kwh
from kwh.cli.main import main
from kwh.models import lenet300


def test_evaluate_uncertainty_on_a_kwh_file(tmp_path, data_root, capsys):
    model = lenet300().eval()
    path = tmp_path / "m.kwh"
    kwh.save(model, path, input_shape=(1, 28, 28))
    code = main(["evaluate", str(path), "--data", "mnist", "--data-dir", str(data_root),
                 "--limit-test", "300", "--uncertainty", "--ood", "fashion-mnist"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ECE" in out and "OOD AUROC (entropy)" in out
    assert "n/a (deterministic" in out  # a .kwh file carries no posterior to sample
    err_line = next(line for line in out.splitlines() if line.startswith("test error"))
    with torch.no_grad():
        ds = kwh.get_dataset("mnist", "test", data_root, limit=300)
        want = (model(ds.tensors[0]).argmax(1) != ds.tensors[1]).float().mean().item()
    assert f"{100 * want:.2f} %" in err_line


def test_evaluate_rejects_a_missing_file(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "nope.kwh"), "--uncertainty"])
    assert code == 2
    assert "kwh: error:" in capsys.readouterr().err

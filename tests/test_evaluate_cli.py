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


def test_an_explicit_data_dir_is_used_alone(tmp_path, data_root, monkeypatch, capsys):
    """--data-dir without the files: one line naming that folder, though $KWH_DATA has them."""
    import urllib.request

    def closed(url, timeout=None):
        raise AssertionError(f"no download for an explicit --data-dir: {url}")

    monkeypatch.setenv("KWH_DATA", str(data_root))
    monkeypatch.setattr(urllib.request, "urlopen", closed)
    kwh.save(lenet300().eval(), tmp_path / "m.kwh", input_shape=(1, 28, 28))
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["evaluate", str(tmp_path / "m.kwh"), "--data-dir", str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"kwh: error: mnist test set: the data folder {empty} lacks "
                          "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (expected "
                          f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in "
                          f"{empty / 'mnist'} or {empty})")
    assert main(["evaluate", str(tmp_path / "m.kwh"), "--limit-test", "10"]) == 0  # $KWH_DATA

"""One dense baseline for "x smaller": the same words and number in compress, inspect, report."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

import kwh
import kwh.data
from kwh.app import load_model
from kwh.bayes import bayes_layers
from kwh.cli import compress as compress_cli
from kwh.cli import main as cli
from kwh.models import lenet300
from kwh.report import build_report

SMALLER = re.compile(r"([\d.,]+)x smaller than the dense original \(([^)]*)\)")


def _bayesian_lenet300():
    """LeNet-300 (group-NJ), the first half of every layer's input units pruned; no training."""
    m = lenet300()
    kwh.bayesify_(m, "group-nj")
    with torch.no_grad():
        for _, layer in bayes_layers(m):
            z = layer.prior.z_log_var
            z[: z.numel() // 2] = 5.0  # log alpha = 5: pruned
    return m.eval()


def _run(argv, capsys) -> str:
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_compress_inspect_and_report_state_one_dense_baseline(tmp_path, capsys, monkeypatch):
    x = torch.randn(200, 1, 28, 28)
    y = torch.randint(0, 10, (200,))
    monkeypatch.setattr(kwh.data, "get_dataset",
                        lambda *a, **k: torch.utils.data.TensorDataset(x, y))
    run = SimpleNamespace(model="lenet300", data="mnist", prior="group-nj", data_dir=None,
                          limit_test=None)
    monkeypatch.setattr(compress_cli, "_bayesian_model",
                        lambda args: (_bayesian_lenet300(), run, []))
    path = tmp_path / "m.kwh"
    printed = _run(["compress", "--bits-search", "off", "--out", str(path)], capsys)
    inspected = _run(["inspect", str(path)], capsys)
    html = build_report(load_model(str(path)))

    # the oracle: the original LeNet-300's float32 weights and biases over the real file size
    params = 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    ratio = 4 * params / path.stat().st_size
    want = (f"{ratio:,.2f}x" if ratio < 10 else f"{ratio:,.1f}x") + (
        f" smaller than the dense original ({params:,} float32 weights and biases = "
        f"{4 * params:,} B)")
    for name, text in (("compress", printed), ("inspect", inspected), ("report", html)):
        found = {m.group(0) for m in SMALLER.finditer(text)}
        assert found == {want}, (name, found)
        assert text.count("smaller than") == len(SMALLER.findall(text)), name  # no other
    assert f"{path.stat().st_size:,} B" in inspected and "written to" in printed

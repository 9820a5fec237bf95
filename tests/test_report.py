"""`kwh report`: one self-contained HTML page with every section, or a note saying why not."""

from __future__ import annotations

import argparse
import base64
import json
import re
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

from kwh.cli import report as report_cli
from kwh.energy.sources import LoadedModel, load_model
from kwh.report import SECTION_IDS, build_report, read_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Resources(HTMLParser):
    """Every URL-bearing attribute and <section> of a page."""

    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.sections: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href", "data", "poster", "srcset", "action"):
            if key in a:
                self.urls.append((tag, key, a[key]))
        if tag == "link":
            self.urls.append((tag, "link", a.get("href", "")))
        if tag == "section":
            self.sections[a["id"]] = a.get("data-available")


def check_self_contained(html: str) -> Resources:
    """No external resource: every src is a data: PNG, hrefs only in-page anchors."""
    assert "http://" not in html and "https://" not in html
    assert "url(" not in html and "@import" not in html
    r = Resources()
    r.feed(html)
    for tag, key, url in r.urls:
        if key == "href":
            assert url.startswith("#"), (tag, url)
        else:
            assert key == "src" and url.startswith("data:image/png;base64,"), (tag, key, url[:40])
            png = base64.b64decode(url.split(",", 1)[1], validate=True)
            assert png.startswith(PNG_MAGIC)
    return r


@pytest.fixture(scope="module")
def kwh_file(tmp_path_factory):
    """LeNet-5 (group-NJ), three conv1 filters pruned, compressed and saved as a .kwh file."""
    codec = pytest.importorskip("kwh.compress.codec", reason="the .kwh codec is not in this "
                                "checkout")
    import kwh
    from kwh.bayes import bayes_layers
    from kwh.compress import compress
    from kwh.models import lenet5
    torch.manual_seed(0)
    m = lenet5()
    kwh.bayesify_(m, "group-nj")
    _, conv1 = next(bayes_layers(m))
    with torch.no_grad():
        conv1.prior.z_log_var[:3] = 5.0
    path = tmp_path_factory.mktemp("kwh") / "lenet5.kwh"
    codec.save(compress(m, input_shape=(1, 28, 28)), path)
    return path


def test_report_of_kwh_file_has_every_section_and_is_self_contained(kwh_file, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "table.csv").write_text(
        "method,error,fast_prediction,macs\nBC-GNJ,0.010,361,300000\nBC-GHS,0.011,419,250000\n"
        "dense,0.009,1,2293000\n")
    html = build_report(load_model(str(kwh_file)), results_dir=results, accuracy=0.98,
                        dense_accuracy=0.991)
    r = check_self_contained(html)
    assert list(r.sections) == list(SECTION_IDS)
    assert r.sections["architecture"] == "yes" and r.sections["bits"] == "yes"
    assert r.sections["rates"] == "yes" and r.sections["energy"] == "yes"
    assert r.sections["curves"] == "yes"
    assert r.sections["log-alpha"] == "no"  # a .kwh file has no posterior
    assert "Not available because no Bayesian checkpoint was given" in html
    assert "17-50-800-500" in html       # kept filters of conv1
    assert "dense fp32 (lenet5)" in html and "compressed (lenet5.kwh)" in html
    assert len(re.findall(r'<img src="data:image/png', html)) >= 5
    assert f"file {kwh_file.stat().st_size:,} bytes on disk" in html
    assert "no test data was given (--data)" in html


def test_report_degrades_without_summary_or_data(tmp_path):
    html = build_report(load_model("lenet300"), results_dir=tmp_path / "none")
    r = check_self_contained(html)
    assert r.sections["architecture"] == "no" and r.sections["bits"] == "no"
    assert r.sections["energy"] == "yes"
    assert html.count("Not available because MODEL carries no compression summary") == 3
    assert "Not available because no benchmark results folder" not in html
    assert "none is not a folder" in html or "no CSV in" in html


def test_log_alpha_histograms_from_a_bayesian_model():
    import kwh
    from kwh.models import lenet300
    m = lenet300()
    kwh.bayesify_(m, "group-nj")
    html = build_report(LoadedModel(m.eval(), None, "lenet300 (Bayesian)"), results_dir=None)
    r = check_self_contained(html)
    assert r.sections["log-alpha"] == "yes"
    assert "From the Bayesian checkpoint" in html


def test_log_alpha_course_from_training_log(tmp_path):
    log = tmp_path / "log.jsonl"
    recs = [{"event": "epoch", "epoch": e, "alive": {"1": 300 - 50 * e}, "total": {"1": 784},
             "log_alpha": {"1": {"min": -8, "q10": -6 + e, "median": -4 + e, "q90": -2 + e,
                                 "max": 3}}} for e in (1, 2, 3)]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\nnot json\n")
    html = build_report(load_model("lenet300"), log=str(log))
    r = check_self_contained(html)
    assert r.sections["log-alpha"] == "yes"
    assert "log-alpha quantiles per epoch" in html
    with pytest.raises(FileNotFoundError, match="training log not found"):
        build_report(load_model("lenet300"), log=str(tmp_path / "missing.jsonl"))


def test_reliability_diagram_with_data(monkeypatch):
    import kwh.data
    from pathlib import Path
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    monkeypatch.setattr(kwh.data, "get_dataset",
                        lambda *a, **k: torch.utils.data.TensorDataset(x, y))
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    html = build_report(LoadedModel(model, None, "tiny", Path("tiny.pt")), data="mnist",
                        accuracy=0.5, results_dir=None)
    assert check_self_contained(html).sections["reliability"] == "yes"
    assert "64 test examples" in html and "softmax of the deterministic model" in html
    from kwh.report import sections
    untrained = sections.reliability([], (x, y), 10, "")  # a reference name: nothing trained
    assert not untrained.available and "no model to evaluate" in untrained.body


def test_read_curves_finds_columns_and_skips_others(tmp_path):
    (tmp_path / "a.csv").write_text("name,accuracy,compression\nx,0.98,10\ny,99.1,20\n")
    (tmp_path / "b.csv").write_text("name,seconds\nx,3\n")
    (tmp_path / "c.csv").write_text("")
    c = read_curves(tmp_path)
    assert c.compression == {"a: x": [(10.0, 98.0)], "a: y": [(20.0, 99.1)]}
    assert c.sources == ["a.csv"] and len(c.skipped) == 2


def test_cli_writes_atomically_and_reports_errors(kwh_file, tmp_path, capsys):
    p = argparse.ArgumentParser(prog="kwh")
    report_cli.register(p.add_subparsers())
    out = tmp_path / "r.html"
    args = p.parse_args(["report", str(kwh_file), "--out", str(out), "--results",
                         str(tmp_path)])
    assert args.func(args) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert [f.name for f in tmp_path.iterdir()] == ["r.html"]  # no temp file left behind
    check_self_contained(out.read_text())
    args = p.parse_args(["report", "nonet", "--out", str(out)])
    with pytest.raises(ValueError, match="neither an existing file"):
        args.func(args)
    args = p.parse_args(["report", "lenet5", "--out", str(tmp_path / "no" / "r.html")])
    with pytest.raises(FileNotFoundError):
        args.func(args)

"""`kwh report`: one self-contained HTML page with every section, or a note saying why not."""

from __future__ import annotations

import argparse
import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

import kwh
from kwh.app import LoadedModel, load_model
from kwh.cli import report as report_cli
from kwh.report import SECTION_IDS, build_report, read_comparison
from kwh.report.figures import series_styles

ROOT = Path(__file__).resolve().parents[1]

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


def section(html: str, id_: str) -> str:
    """The HTML of one <section>, images left out."""
    body = html[html.index(f'<section id="{id_}"'):]
    body = body[:body.index("</section>")]
    return re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', body)


@pytest.fixture(scope="module")
def kwh_file(tmp_path_factory):
    """LeNet-5 (group-NJ), three conv1 filters pruned, compressed with a test error measured on
    64 random examples (as kwh compress records it), saved as a .kwh file."""
    import kwh
    from kwh.bayes import bayes_layers
    from kwh.models import lenet5
    torch.manual_seed(0)
    m = lenet5()
    kwh.bayesify_(m, "group-nj")
    _, conv1 = next(bayes_layers(m))
    with torch.no_grad():
        conv1.prior.z_log_var[:3] = 5.0
    path = tmp_path_factory.mktemp("kwh") / "lenet5.kwh"
    test = [(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))]
    kwh.save(kwh.compress(m, input_shape=(1, 28, 28), eval_data=test), path)
    return path


def test_report_of_kwh_file_has_every_section_and_is_self_contained(kwh_file, tmp_path):
    csv = tmp_path / "table_lenet5_mnist.csv"
    csv.write_text("method,error,fast_prediction,macs\nBC-GNJ,0.010,361,300000\n"
                   "BC-GHS,0.011,419,250000\ndense,0.009,1,2293000\n")
    html = build_report(load_model(str(kwh_file)), compare_csv=csv, accuracy=0.98,
                        dense_accuracy=0.991)
    r = check_self_contained(html)
    assert list(r.sections) == list(SECTION_IDS)
    assert r.sections["architecture"] == "yes" and r.sections["bits"] == "yes"
    assert r.sections["rates"] == "yes" and r.sections["energy"] == "yes"
    assert r.sections["comparison"] == "yes"
    assert r.sections["log-alpha"] == "no"  # a .kwh file has no posterior
    assert "Give --checkpoint RUN" in html
    assert "17-50-800-500" in html       # kept filters of conv1
    assert "dense fp32 (lenet5)" in html and "compressed (lenet5.kwh)" in html
    assert len(re.findall(r'<img src="data:image/png', html)) >= 6
    assert f"file {kwh_file.stat().st_size:,} bytes on disk" in html
    assert "Give --data mnist" in html
    comparison = section(html, "comparison")
    assert "BC-GNJ" in comparison and "3 rows of lenet5 on mnist" in comparison
    assert "Test error of this model: 2.00% (given (--accuracy))" in comparison


def test_report_is_about_the_model_in_hand(kwh_file, monkeypatch):
    """No --compare: no repository CSV (run where benchmarks/results holds some); each
    section that needs more than the file names the option that gives it; the file's own
    test error is used."""
    assert any((ROOT / "benchmarks" / "results").glob("*.csv"))  # they are there to be found
    monkeypatch.chdir(ROOT)
    html = build_report(load_model(str(kwh_file)))
    r = check_self_contained(html)
    assert ".csv" not in html and "paper_table" not in html and "benchmarks" not in html
    assert r.sections["comparison"] == "yes"  # this model against its dense original
    assert "give --compare CSV" in section(html, "comparison")
    na = {k for k, v in r.sections.items() if v == "no"}
    assert na == {"log-alpha", "reliability"}
    assert "--checkpoint RUN" in section(html, "log-alpha")
    assert "Give --data mnist" in section(html, "reliability")
    s = kwh.load(kwh_file).kwh_summary
    err = f"{100 * s['eval']['error_after_quantization']:.2f}% after quantization"
    assert f"Test error: {err}" in section(html, "overview")
    assert "recorded in the file" in section(html, "energy")  # per correct from the file
    # human axis labels, not column names; the dense original is the model's own
    comparison = section(html, "comparison")
    assert "multiply-accumulates per inference (nonzero weights)" in comparison
    assert "macs_nonzero" not in html and "fast_prediction" not in html
    assert "Of the dense original: not in the file; give --dense-accuracy" in comparison


def test_report_quotes_the_fine_tuned_error_of_a_fine_tuned_file(kwh_file, tmp_path):
    """A file whose model was fine-tuned after compression (its summary's
    eval["error_after_finetune"]) is that model: the report quotes that error, not the one
    measured before fine-tuning."""
    small = kwh.load(kwh_file)
    ev = small.kwh_summary["eval"]
    ev["error_after_finetune"] = ev["error_after_quantization"] / 2 + 0.0123
    path = tmp_path / "tuned.kwh"
    kwh.save(small, path)
    html = build_report(load_model(str(path)))
    tuned, before = 100 * ev["error_after_finetune"], 100 * ev["error_after_quantization"]
    overview = section(html, "overview")
    assert f"Test error: {tuned:.2f}% after fine-tuning ({before:.2f}% before it" in overview


def test_rates_and_bits_say_what_they_count(kwh_file):
    html = build_report(load_model(str(kwh_file)))
    s = kwh.load(kwh_file).kwh_summary
    rates = section(html, "rates")
    for measure, paper in (("weights", "pruning"), ("weights&#x27;", "fast prediction"),
                           ("MACs", "-"), ("weight bytes", "max compression"),
                           ("file bytes", "-")):
        assert f"<td>{measure}" in rates and f"<td>{paper}</td>" in rates, measure
    macs = s["macs_original"] / s["macs_nonzero"]
    assert f"<td>{macs:.2f}x</td>" in rates  # the MACs rate beside fast prediction
    assert "counts stored bits, not speed" in rates
    bits = section(html, "bits")
    assert "magnitude bits m" in bits and "1 sign + m magnitude bits" in bits
    for d in s["layers"]:
        t, e = d["frac_bits"], d["exp_bits"]
        assert d["bits"] == 1 + e + t
        assert (f"<td>{d['bits']}</td><td>{d['bits'] - 1}</td><td>{t}</td><td>{e}</td>"
                in bits), d["name"]


def test_report_degrades_without_summary_or_data(tmp_path):
    html = build_report(load_model("lenet300"))
    r = check_self_contained(html)
    assert r.sections["architecture"] == "no" and r.sections["bits"] == "no"
    assert r.sections["energy"] == "yes" and r.sections["comparison"] == "no"
    assert html.count("Not available because MODEL carries no compression summary") == 4
    assert "untrained reference architecture" in section(html, "overview")


def test_log_alpha_histograms_from_a_bayesian_model():
    import kwh
    from kwh.models import lenet300
    m = lenet300()
    kwh.bayesify_(m, "group-nj")
    html = build_report(LoadedModel(m.eval(), None, "lenet300 (Bayesian)"))
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
                        accuracy=0.5)
    assert check_self_contained(html).sections["reliability"] == "yes"
    assert "64 test examples" in html and "softmax of the deterministic model" in html
    from kwh.report import sections
    untrained = sections.reliability([], (x, y), 10, "")  # a reference name: nothing trained
    assert not untrained.available and "no model to evaluate" in untrained.body


def test_compare_keeps_one_network_and_data_set(tmp_path):
    path = tmp_path / "published.csv"
    path.write_text("network,dataset,method,error_pct,max_compression,macs_nonzero\n"
                    "LeNet-5-Caffe,MNIST,BC-GNJ,1.0,771,300000\n"
                    "LeNet-5-Caffe,MNIST,BC-GHS,1.0,1115,250000\n"
                    "LeNet-5-Caffe,Fashion-MNIST,BC-GNJ,9.5,500,280000\n"
                    "LeNet-300-100,MNIST,BC-GNJ,1.8,58,20000\n"
                    "LeNet-300-100,MNIST,DC,1.6,40,25000\n")
    c = read_comparison(path, "lenet5", "mnist")
    assert c.compression == {"BC-GNJ": [(771.0, 1.0)], "BC-GHS": [(1115.0, 1.0)]}
    assert c.ops == {"BC-GNJ": [(300000.0, 1.0)], "BC-GHS": [(250000.0, 1.0)]}
    assert c.rows_used == 2
    assert c.left_out == {"other networks (lenet300)": 2,
                          "lenet5 on other data sets (fashion-mnist)": 1}
    assert read_comparison(path, "lenet300").data == "mnist"  # the only one for LeNet-300
    with pytest.raises(ValueError, match=r"lenet5 rows cover fashion-mnist, mnist; give --data"):
        read_comparison(path, "lenet5")
    with pytest.raises(ValueError, match=r"no rows for this model's network 'vgg'.*lenet300, "
                                         r"lenet5"):
        read_comparison(path, "vgg", "cifar10")
    unnamed = tmp_path / "results.csv"
    unnamed.write_text("method,error,fast_prediction\na,0.01,100\n")
    with pytest.raises(ValueError, match="cannot tell which network"):
        read_comparison(unnamed, "lenet5")
    (tmp_path / "b.csv").write_text("name,seconds\nx,3\n")
    with pytest.raises(ValueError, match="needs an error or accuracy column"):
        read_comparison(tmp_path / "b.csv", "lenet5")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_comparison(tmp_path / "missing.csv", "lenet5")


def test_compare_in_the_report_shows_only_the_model_s_network(kwh_file, tmp_path):
    path = tmp_path / "published.csv"
    path.write_text("network,data,method,error,fast_prediction\n"
                    "lenet5,mnist,Sparse VD,0.0075,280\nlenet5,mnist,BC-GHS,0.010,419\n"
                    "lenet300,mnist,Pruning,0.016,40\nlenet300,fashion-mnist,BC-GHS,0.12,20\n")
    html = build_report(load_model(str(kwh_file)), compare_csv=path)
    comparison = section(html, "comparison")
    assert "Sparse VD" in comparison and "BC-GHS" in comparison
    assert "Pruning" not in comparison  # a LeNet-300 row
    assert "2 rows of lenet5 on mnist from published.csv" in comparison
    assert "Left out: 2 rows of other networks (lenet300)" in comparison
    assert "(paper: fast prediction)" in comparison  # the axis, in words
    with pytest.raises(ValueError, match="cannot tell this model's network"):
        build_report(LoadedModel(nn.Linear(784, 10), None, "x", tmp_path / "x.pt"),
                     compare_csv=path)


def test_every_series_has_its_own_marker():
    styles = series_styles(22)  # the newcomer's chart had 18-22 series
    assert len(set(styles)) == 22
    assert len(set(series_styles(60))) == 60


def test_cli_writes_atomically_and_reports_errors(kwh_file, tmp_path, capsys):
    p = argparse.ArgumentParser(prog="kwh")
    report_cli.register(p.add_subparsers())
    out = tmp_path / "r.html"
    args = p.parse_args(["report", str(kwh_file), "--out", str(out)])
    assert args.func(args) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert [f.name for f in tmp_path.iterdir()] == ["r.html"]  # no temp file left behind
    check_self_contained(out.read_text())
    args = p.parse_args(["report", "nonet", "--out", str(out)])
    with pytest.raises(ValueError, match="neither a file nor a reference model"):
        args.func(args)
    args = p.parse_args(["report", "lenet5", "--out", str(tmp_path / "no" / "r.html")])
    with pytest.raises(FileNotFoundError):
        args.func(args)

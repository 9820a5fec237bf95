"""`kwh energy`: dense vs compressed from a .kwh file, tables, JSON, errors."""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
import torch

from kwh.cli import energy as energy_cli
from kwh.energy.sources import dense_reference
from kwh.errors import ModelError


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kwh")
    energy_cli.register(p.add_subparsers())
    return p.parse_args(["energy", *argv])


@pytest.fixture(scope="module")
def kwh_file(tmp_path_factory):
    """A real .kwh file: LeNet-5 made Bayesian, three conv filters pruned, compressed, saved."""
    import kwh
    from kwh.bayes import bayes_layers
    from kwh.models import lenet5
    torch.manual_seed(0)
    m = lenet5()
    kwh.bayesify_(m, "group-nj")
    _, conv1 = next(bayes_layers(m))
    with torch.no_grad():
        conv1.prior.z_log_var[:3] = 5.0  # log alpha = 5: filters 0-2 pruned, 17 of 20 kept
    small = kwh.compress(m, input_shape=(1, 28, 28))
    path = tmp_path_factory.mktemp("kwh") / "lenet5.kwh"
    kwh.save(small, path)
    return path


def test_reference_model_prints_per_layer_table(capsys):
    args = parse("lenet300", "--no-measure")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "dense fp32 (lenet300)" in out and "1:Linear (+ReLU)" in out
    assert "total per inference" in out
    assert "untrained reference architecture" in out  # no accuracy invented


def test_kwh_file_dense_vs_compressed(kwh_file, tmp_path, capsys):
    out_json = tmp_path / "e.json"
    args = parse(str(kwh_file), "--no-measure", "--json", str(out_json), "--accuracy", "0.5",
                 "--dense-accuracy", "0.99")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "dense fp32 (lenet5)" in out and "compressed (lenet5.kwh)" in out
    assert "dense / compressed: energy per inference" in out
    d = json.loads(out_json.read_text())
    dense, small = d["variants"]
    assert dense["key"] == "dense" and small["key"] == "compressed"
    assert small["estimate"]["total_j"] < dense["estimate"]["total_j"]
    assert small["estimate"]["accuracy"] == 0.5 and dense["estimate"]["accuracy"] == 0.99
    conv1 = small["estimate"]["layers"][0]
    assert conv1["arith"].startswith("int ")
    assert conv1["mults"] == 17 * 24 * 24 * 25  # 17 kept filters, all weights nonzero


def test_measurement_reasons_are_printed(kwh_file, capsys, monkeypatch, tmp_path):
    import kwh.energy.measure as measure
    monkeypatch.setattr(measure, "RAPL_ROOT", tmp_path / "no-powercap")
    monkeypatch.setattr(measure.measure_model, "__kwdefaults__",
                        {"window_s": 2.0, "rapl_root": tmp_path / "no-powercap", "nvml": None})
    args = parse(str(kwh_file), "--window", "0.1")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "not measured: RAPL:" in out and "no-powercap does not exist" in out


def test_custom_table_is_named_in_output(kwh_file, tmp_path, capsys):
    t = tmp_path / "t.json"
    t.write_text(json.dumps({"name": "my 7 nm guess", "dram_pj_per_64bit": 500}))
    args = parse(str(kwh_file), "--no-measure", "--table", str(t))
    assert args.func(args) == 0
    assert "(my 7 nm guess)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,exc,match", [
    (["nonet", "--no-measure"], ValueError, "neither a file nor a reference model.*lenet5"),
    (["missing.kwh", "--no-measure"], FileNotFoundError, "missing.kwh"),
    (["lenet5", "--no-measure", "--sram-kb", "-3"], ValueError, "sram_kb"),
    (["lenet5", "--no-measure", "--dense-accuracy", "99"], ValueError, "dense-accuracy"),
    (["lenet5", "--no-measure", "--data", "imagenet"], ValueError, "imagenet.*mnist"),
])
def test_bad_input_raises_clear_errors(argv, exc, match):
    args = parse(*argv)
    with pytest.raises(exc, match=match):
        args.func(args)


def test_dense_reference_recognised_from_summary():
    lenet300_summary = {"num_classes": 10, "input_shape": [1, 28, 28],
                        "layers": [{"shape_original": [300, 784]},
                                   {"shape_original": [100, 300]},
                                   {"shape_original": [10, 100]}]}
    _, name = dense_reference(lenet300_summary)
    assert name == "lenet300"
    with pytest.raises(ValueError, match="match no reference model.*--dense"):
        dense_reference({"layers": [{"shape_original": [7, 3]}]})
    with pytest.raises(ValueError, match="--dense NAME"):
        dense_reference(None)


def test_main_maps_errors_to_exit_code_2(capsys):
    from kwh.cli import main
    assert main.main(["energy", "nonet", "--no-measure"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kwh: error:") and "Traceback" not in err


def test_measured_numbers_are_printed_when_a_counter_exists(kwh_file, capsys, monkeypatch,
                                                            tmp_path):
    import kwh.energy.measure as measure
    root = tmp_path / "powercap" / "intel-rapl:0"
    root.mkdir(parents=True)
    (root / "name").write_text("package-0\n")
    (root / "energy_uj").write_text("1000\n")  # a frozen counter: 0 J over the window
    (root / "max_energy_range_uj").write_text("262143328850\n")
    monkeypatch.setattr(measure.measure_model, "__kwdefaults__",
                        {"window_s": 2.0, "rapl_root": root.parent, "nvml": None})
    args = parse(str(kwh_file), "--window", "0.05")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "measured energy of compressed (lenet5.kwh): RAPL package-0," in out
    assert "idle 0.00 W" in out and "not measured" not in out


def test_sigma_delta_variant_per_frame(kwh_file, data_root, capsys, tmp_path):
    out_json = tmp_path / "sd.json"
    args = parse(str(kwh_file), "--no-measure", "--sigma-delta", "--sequences", "3",
                 "--frames", "3", "--data", "mnist", "--data-dir", str(data_root),
                 "--limit", "200", "--json", str(out_json))
    assert args.func(args) == 0
    assert "sigma-delta (lenet5.kwh): modelled energy per frame" in capsys.readouterr().out
    sd = json.loads(out_json.read_text())["variants"][-1]
    assert sd["key"] == "sigma-delta" and sd["estimate"]["unit"] == "frame"
    assert sd["estimate"]["mults"] == 0 and sd["estimate"]["adds"] > 0
    assert 0.0 <= sd["estimate"]["accuracy"] <= 1.0


def _sensitivity(kwh_file, tmp_path, capsys, *argv):
    out_json = tmp_path / "e.json"
    args = parse(str(kwh_file), "--no-measure", "--json", str(out_json), *argv)
    assert args.func(args) == 0
    d = json.loads(out_json.read_text())
    return capsys.readouterr().out, d, {s["name"]: s for s in
                                        d["weight_memory_sensitivity"]["scenarios"]}


def test_energy_ratio_is_printed_with_its_memory_sensitivity(kwh_file, tmp_path, capsys):
    out, d, sc = _sensitivity(kwh_file, tmp_path, capsys)
    dense, small = d["variants"]
    assert sc["as modelled"]["ratio"] == pytest.approx(
        dense["estimate"]["total_j"] / small["estimate"]["total_j"], rel=1e-12)
    head = re.search(r"dense / compressed: energy per inference ([\d.,]+)x", out).group(1)
    lines = {name: re.search(rf"^\s+([\d.,]+)x  {name}: ", out, re.M) for name in sc}
    assert all(lines.values()), out
    assert lines["as modelled"].group(1) == head  # the headline is the modelled line
    assert "by where the weights are read from" in out
    # LeNet-5's dense float32 weights (1.7 MB) miss the 1 MB SRAM; the compressed ones fit
    assert dense["estimate"]["layers"][0]["weight_mem"] == "DRAM"
    assert small["estimate"]["layers"][0]["weight_mem"].startswith("SRAM")
    assert sc["both from SRAM"]["ratio"] < sc["as modelled"]["ratio"]
    assert sc["both from DRAM"]["ratio"] < sc["as modelled"]["ratio"]
    need = d["weight_memory_sensitivity"]["dense_on_chip_kb"]
    assert f"--sram-kb {math.ceil(need):,} or more" in out


@pytest.mark.parametrize("sram_kb, where, scenario", [
    ("64", "DRAM", "both from DRAM"),          # neither model's weights fit: all from DRAM
    ("16384", "SRAM 16384 KB", "both from SRAM"),  # both fit: all from that SRAM
])
def test_memory_scenario_equals_the_model_when_it_holds(kwh_file, tmp_path, capsys, sram_kb,
                                                        where, scenario):
    """Oracle: where the energy model itself put both models' weights in one memory, that
    scenario's ratio is the modelled one."""
    _, d, sc = _sensitivity(kwh_file, tmp_path, capsys, "--sram-kb", sram_kb)
    assert [v["estimate"]["layers"][0]["weight_mem"] for v in d["variants"]] == [where] * 2
    assert sc[scenario]["dense_j"] == pytest.approx(sc["as modelled"]["dense_j"], rel=1e-12)
    assert sc[scenario]["compressed_j"] == pytest.approx(sc["as modelled"]["compressed_j"],
                                                         rel=1e-12)


def test_no_sram_scenario_without_sram(kwh_file, tmp_path, capsys):
    out, _, sc = _sensitivity(kwh_file, tmp_path, capsys, "--sram-kb", "0")
    assert set(sc) == {"as modelled", "both from DRAM"}
    assert "both from SRAM" not in out


def test_dense_original_rebuilt_from_a_compressed_chain():
    import kwh
    from kwh.energy.counts import count_model
    from kwh.energy.sources import dense_from_chain
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(6 * 7 * 7, 12), torch.nn.ReLU(),
                              torch.nn.Linear(12, 4))
    dense_counts = count_model(net, (1, 14, 14))
    kwh.bayesify_(net, "group-nj")
    with torch.no_grad():
        for _, layer in kwh.bayes.bayes_layers(net):
            layer.prior.z_log_var[::3] = 5.0  # a third of the groups pruned
    small = kwh.compress(net.eval(), input_shape=(1, 14, 14))
    ref, label = dense_reference(small.kwh_summary, None, small)
    assert "summary" in label
    rebuilt = count_model(ref, (1, 14, 14))
    assert [c.macs for c in rebuilt] == [c.macs for c in dense_counts]
    assert sum(c.macs for c in count_model(small, (1, 14, 14))) < sum(c.macs for c in rebuilt)
    with pytest.raises(ValueError, match="match no reference model"):
        dense_reference(small.kwh_summary)  # without the model: not a reference net
    with pytest.raises(ModelError, match="compressed chain"):
        dense_from_chain(torch.nn.Linear(2, 2), small.kwh_summary)

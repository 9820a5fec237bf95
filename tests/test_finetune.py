"""Quantization-aware fine-tuning of a compressed model: the weights stay on their layers'
fixed-point grids, pruned weights stay zero, the summary and the file follow the new values."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import kwh
from kwh.app.finetune import finetune
from kwh.compress import CompressConfig
from kwh.compress.finetune import (FixedPoint, attach_fixed_point_, detach_fixed_point_,
                                   quantized_layers, recount)
from kwh.compress.floats import grid_of
from kwh.errors import KwhError, ModelError
from kwh.format import file_report
from kwh.train import TrainData


def bias_on_grid(b: torch.Tensor, bits: int) -> bool:
    """Whether ``b`` lies on its kwh.compress.floats grid of ``bits`` magnitude bits."""
    frac = grid_of(b, bits)
    return frac is None or _on_grid(b, bits + 1, frac)


def _on_grid(w: torch.Tensor, bits: int, frac: int) -> bool:
    q = w.detach().double() * 2.0 ** frac
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return bool(torch.equal(q, torch.round(q)) and q.min() >= lo and q.max() <= hi)


def test_fixed_point_rounds_clamps_and_passes_the_gradient_straight_through():
    """Forward: floor(v 2^t + 1/2) 2^-t clamped to the bits' range, masked; backward: the
    gradient is 1 inside the range, 0 outside it and on masked weights."""
    p = FixedPoint(torch.tensor([True, True, True, True, False]), bits=3, frac_bits=1)
    v = torch.tensor([0.3, -0.26, 5.0, -0.75, 0.9], requires_grad=True)
    w = p(v)
    # v 2^1 = 0.6, -0.52, 10, -1.5, 1.8 -> floor(+0.5) = 1, -1, 10 -> clamp 3, -1, (masked)
    assert w.tolist() == [0.5, -0.5, 1.5, -0.5, 0.0]
    w.sum().backward()
    assert v.grad.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]


def _compressed_mlp(seed: int = 0) -> tuple[nn.Module, TrainData]:
    torch.manual_seed(seed)
    teacher = nn.Linear(20, 4)
    x = torch.randn(700, 20)
    y = teacher(x).argmax(1)
    data = TrainData(TensorDataset(x[:500], y[:500]), TensorDataset(x[500:600], y[500:600]),
                     TensorDataset(x[600:], y[600:]))
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:500]), y[:500]).backward()
        opt.step()
    kwh.bayesify_(model, "log-uniform")
    small = kwh.compress(model.eval(), CompressConfig(input_shape=(20,), bits_search="off"))
    with torch.no_grad():  # prune a block by hand: zeros are on every grid
        small[0].weight[:5, :7] = 0
    return small, data


def test_attach_detach_keep_the_grid_and_the_zeros():
    small, _ = _compressed_mlp()
    layers = quantized_layers(small)
    assert [n for n, _ in layers] == ["0", "2"]
    zeros = [m.weight == 0 for _, m in layers]
    attach_fixed_point_(small)
    with pytest.raises(ModelError, match="already parametrized"):
        attach_fixed_point_(small)
    opt = torch.optim.SGD(small.parameters(), lr=0.5)
    for _ in range(5):  # large steps: the latent weights move far
        opt.zero_grad()
        small(torch.randn(64, 20)).pow(2).sum().backward()
        opt.step()
    detach_fixed_point_(small)
    for (name, m), z in zip(layers, zeros):
        assert _on_grid(m.weight, m.kwh_bits, m.kwh_frac_bits), name
        assert bool((m.weight[z] == 0).all()), name  # pruned stays pruned
    assert not any(isinstance(p, FixedPoint) for p in small.modules())


def test_attach_refuses_models_it_cannot_fine_tune():
    with pytest.raises(ModelError, match="no quantized layer"):
        attach_fixed_point_(nn.Sequential(nn.Linear(3, 2)))
    small, _ = _compressed_mlp()
    with torch.no_grad():
        small[2].weight[0, 0] += 2.0 ** -(small[2].kwh_frac_bits + 3)  # off the grid
    with pytest.raises(ModelError, match="not on the grid"):
        attach_fixed_point_(small)


def test_recount_follows_the_weights():
    small, _ = _compressed_mlp()
    s = small.kwh_summary
    with torch.no_grad():
        small[2].weight[:2] = 0
    recount(small)
    assert s["layers"][1]["nonzero"] == int(torch.count_nonzero(small[2].weight))
    assert s["nonzero"] == sum(int(torch.count_nonzero(small[i].weight)) for i in (0, 2))
    assert s["macs_nonzero"] == s["nonzero"]  # Linear layers on one token: a MAC per weight
    assert s["density"] == pytest.approx(s["nonzero"] / s["weights_original"])


def test_finetune_trains_on_the_grids_and_the_file_follows(tmp_path):
    small, data = _compressed_mlp()
    before = {n: m.weight.clone() for n, m in quantized_layers(small)}
    tuned = finetune(small, data, 2, tmp_path / "run", lr=1e-2, batch_size=50)
    for n, m in quantized_layers(small):  # the input model is left as it was
        assert torch.equal(m.weight, before[n])
    moved = False
    for (n, m), (_, m0) in zip(quantized_layers(tuned), quantized_layers(small)):
        assert m.weight.shape == m0.weight.shape and m.kwh_bits == m0.kwh_bits
        assert _on_grid(m.weight, m.kwh_bits, m.kwh_frac_bits)
        assert bool((m.weight[m0.weight == 0] == 0).all())
        moved |= not torch.equal(m.weight, m0.weight)
    assert moved
    bits = small.kwh_summary["float_grids"]["bits"]  # the biases trained, then went back on grids
    start = dict(quantized_layers(small))
    for name, m in quantized_layers(tuned):
        assert bias_on_grid(m.bias, bits) and not torch.equal(m.bias, start[name].bias)
    s = tuned.kwh_summary
    ft = s["finetune"]
    assert ft["epochs"] == 2 and ft["examples"] == 500 and ft["validation_examples"] == 100
    assert 0 <= ft["validation_error_after"] <= 1 and 0 <= ft["validation_error_before"] <= 1
    path = tmp_path / "tuned.kwh"
    kwh.save(tuned, path, input_shape=(20,))
    assert file_report(path)["payload_bytes"] == s["payload_bytes"]
    again = kwh.load(path)
    x = data.test.tensors[0]
    assert torch.equal(again(x), tuned(x))
    assert again.kwh_summary["finetune"]["epochs"] == 2
    # no eval_data: the summary has no test error to compare (compressed without eval_data)
    assert "eval" not in s or s["eval"].get("error_after_finetune") is None
    # the run is resumable: the same call returns the finished run's weights
    twice = finetune(small, data, 2, tmp_path / "run", lr=1e-2, batch_size=50)
    assert all(torch.equal(a.weight, b.weight) for (_, a), (_, b) in
               zip(quantized_layers(twice), quantized_layers(tuned)))


def test_finetune_rejects_bad_input(tmp_path):
    small, data = _compressed_mlp()
    with pytest.raises(KwhError, match="epochs"):
        finetune(small, data, 0, tmp_path / "r")
    with pytest.raises(KwhError, match="kwh.compress"):
        finetune(nn.Sequential(nn.Linear(20, 4)), data, 1, tmp_path / "r")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_root):
    """A real, tiny Sparse VD run of LeNet-300-100 on 600 MNIST images."""
    from kwh.train import TrainConfig, run_training

    run = tmp_path_factory.mktemp("tiny") / "run"
    run_training(TrainConfig(model="lenet300", data="mnist", data_dir=str(data_root),
                             prior="log-uniform", pretrain_epochs=1, epochs=1, limit_train=600,
                             limit_test=200, out_dir=str(run), threads=1), progress=False)
    return run


def test_cli_compress_fine_tunes(tiny_run, tmp_path, data_root, capsys):
    from kwh.cli.main import main

    out = tmp_path / "m.kwh"
    assert main(["compress", "--checkpoint", str(tiny_run), "--data-dir", str(data_root),
                 "--finetune-epochs", "1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "fine-tuned 1 epoch on the fixed-point grids" in text
    small = kwh.load(out)
    ev = small.kwh_summary["eval"]
    assert small.kwh_summary["finetune"]["epochs"] == 1
    assert f"-> {100 * ev['error_after_finetune']:.2f}%" in text
    assert (tmp_path / "m.kwh-finetune").is_dir()
    assert "after fine-tuning" in text and "fine-tuned    1 epoch at lr 0.001" in text
    with pytest.raises(SystemExit) as e:
        main(["compress", "--checkpoint", str(tiny_run), "--finetune-epochs", "-1",
              "--out", str(tmp_path / "x.kwh")])
    assert e.value.code == 2


def test_threshold_sweep_fine_tunes_each_threshold(tiny_run, tmp_path, data_root):
    """A real (tiny) Bayesian run: each threshold's model fine-tuned, the choice made on the
    fine-tuned validation errors, the fine-tuned file reproducing its test error."""
    from benchmarks import threshold_sweep
    from benchmarks.baselines.common import load_data
    from benchmarks.baselines.common import test_error as error_of

    run = tiny_run
    out = tmp_path / "sweep"
    assert threshold_sweep.main([str(run), "--thresholds", "2", "3", "--match-val-error", "100",
                                 "--finetune-epochs", "1", "--out", str(out)]) == 0
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["threshold"] for r in saved["rows"]] == [2, 3]
    best = max(saved["rows"], key=lambda r: r["finetuned"]["max_compression"])
    assert saved["chosen"]["threshold"] == best["threshold"]
    path = tmp_path / "sweep_files" / "threshold_3_finetuned.kwh"
    _, data = load_data("mnist", str(data_root), 600, 200)
    row = saved["rows"][1]["finetuned"]
    assert 100 * error_of(kwh.load(path), data) == pytest.approx(row["test_error_pct"], abs=1e-9)
    assert "fine-tuned" in (tmp_path / "sweep.md").read_text()
    # each row's nonzero MACs and both files: the bare one is the same model, smaller
    assert row["macs_nonzero"] == kwh.load(path).kwh_summary["macs_nonzero"]
    bare = tmp_path / "sweep_files" / "threshold_3_finetuned_bare.kwh"
    assert row["file_bytes_bare"] == bare.stat().st_size < row["file_bytes"]
    x = data.x_test[:50]
    with torch.no_grad():
        assert torch.equal(kwh.load(bare)(x), kwh.load(path)(x))


def test_threshold_sweep_searches_per_layer_thresholds_for_macs(tiny_run, tmp_path):
    """--prune-search fit-macs: from the row's threshold, kwh.compress's search cuts the
    nonzero multiplications within the tolerance on the validation split."""
    from benchmarks import threshold_sweep

    base, _ = threshold_sweep.sweep(str(tiny_run), [3.0])
    fit, _ = threshold_sweep.sweep(str(tiny_run), [3.0], prune_search="fit-macs",
                                   prune_tolerance=5.0)
    g = fit[0]["prune_guard"]
    assert g["mode"] == "fit-macs" and base[0]["prune_guard"] is None
    assert fit[0]["macs_nonzero"] <= base[0]["macs_nonzero"]
    assert 100 * (g["error_chosen"] - g["error_posterior"]) <= 5.0 + 1e-9


def test_threshold_sweep_puts_the_biases_on_the_grids_asked_for(tiny_run):
    """--float-bits reaches kwh.compress: the biases sit on grids of that many magnitude bits."""
    from benchmarks import threshold_sweep

    rows, _ = threshold_sweep.sweep(str(tiny_run), [3.0], float_bits=4)
    default, _ = threshold_sweep.sweep(str(tiny_run), [3.0])
    assert rows[0]["float_bits"] == 4 and default[0]["float_bits"] == 12


def test_threshold_sweep_passes_the_bits_tolerance(tiny_run):
    """--bits-tolerance reaches kwh.compress's guard: recorded, and a looser budget never
    gives more bits (the fit takes bits while the looser budget holds)."""
    from benchmarks import threshold_sweep

    tight, _ = threshold_sweep.sweep(str(tiny_run), [3.0], bits_tolerance=0.0)
    loose, _ = threshold_sweep.sweep(str(tiny_run), [3.0], bits_tolerance=50.0)
    assert tight[0]["bits_tolerance"] == 0.0 and loose[0]["bits_tolerance"] == 50.0
    bits = [[int(b) for b in r[0]["bits"].split("-")] for r in (tight, loose)]
    assert all(b1 <= b0 for b0, b1 in zip(*bits)) and sum(bits[1]) < sum(bits[0])


def test_threshold_sweep_holds_the_layers_set(tiny_run):
    """--set GLOB=T: those layers stay at T in every row, the others follow the sweep."""
    from benchmarks import threshold_sweep

    with pytest.raises(SystemExit, match="matches no Bayesian layer"):
        threshold_sweep.sweep(str(tiny_run), [3.0], fixed={"*.attn.out": 0.0})
    rows, _ = threshold_sweep.sweep(str(tiny_run), [-2.0, 3.0], fixed={"5": 3.0})
    at3, _ = threshold_sweep.sweep(str(tiny_run), [3.0])
    at_2, _ = threshold_sweep.sweep(str(tiny_run), [-2.0])
    assert rows[1]["nonzero_pct"] == at3[0]["nonzero_pct"]  # 3 everywhere either way
    # at -2 with the last Linear held at 3: fewer weights than 3 everywhere, more than -2
    assert at_2[0]["nonzero_pct"] < rows[0]["nonzero_pct"] < at3[0]["nonzero_pct"]
    with pytest.raises(SystemExit):
        threshold_sweep.main([str(tiny_run), "--thresholds", "3", "--set", "5", "--out", "x"])


def test_threshold_sweep_only_moves_the_matching_layers(tiny_run, tmp_path):
    """--only GLOB: the swept threshold reaches the matching layers alone; the others keep
    their posterior's threshold, so their kept weights do not change along the sweep."""
    from benchmarks import threshold_sweep

    with pytest.raises(SystemExit, match="matches no Bayesian layer"):
        threshold_sweep.sweep(str(tiny_run), [3.0], only="*.attn.out")
    rows, _ = threshold_sweep.sweep(str(tiny_run), [-2.0, 3.0], only="5")  # the last Linear
    full, _ = threshold_sweep.sweep(str(tiny_run), [-2.0])  # every layer at -2
    arch = [r["architecture"].split("-") for r in rows]
    assert arch[0][:2] == arch[1][:2]  # fc1's and fc2's inputs: untouched by fc3's threshold
    assert rows[0]["nonzero_pct"] < rows[1]["nonzero_pct"]  # fc3 at -2 keeps fewer weights
    assert full[0]["nonzero_pct"] < rows[0]["nonzero_pct"]  # -2 everywhere prunes more


def test_finetune_a_weights_mode_compression(tmp_path):
    """mode="weights" keeps the user's architecture: fine-tuning works on it too, the summary's
    counts follow, and the state-layout file loads into the user's class."""
    from any_models import Branchy  # a data-dependent branch: not traceable

    torch.manual_seed(1)
    x = torch.randn(300, 6)
    y = torch.randint(0, 3, (300,))
    data = TrainData(TensorDataset(x[:200], y[:200]), TensorDataset(x[200:250], y[200:250]),
                     TensorDataset(x[250:], y[250:]))
    model = Branchy()
    kwh.bayesify_(model, "log-uniform")
    small = kwh.compress(model.eval(), CompressConfig(input_shape=(6,)), mode="weights")
    with torch.no_grad():
        small.fc1.weight[:2] = 0
    recount(small)
    tuned = finetune(small, data, 1, tmp_path / "run", lr=1e-2, batch_size=50)
    assert bool((tuned.fc1.weight[:2] == 0).all())
    for _, m in quantized_layers(tuned):
        assert _on_grid(m.weight, m.kwh_bits, m.kwh_frac_bits)
    s = tuned.kwh_summary
    assert s["nonzero"] == sum(int(torch.count_nonzero(m.weight)) for m in (tuned.fc1, tuned.fc2))
    path = tmp_path / "w.kwh"
    kwh.save(tuned, path)
    again = kwh.load(path, model=Branchy())
    x = data.test.tensors[0]
    assert torch.equal(again(x), tuned(x))


def test_summary_says_when_the_test_error_after_fine_tuning_was_not_measured(tmp_path):
    small, data = _compressed_mlp()
    test = [(data.test.tensors[0], data.test.tensors[1])]
    small.kwh_summary["eval"] = {"error_before_quantization": 0.1, "error_after_quantization": 0.1,
                                 "examples": 100}
    blind = finetune(small, data, 1, tmp_path / "a", lr=1e-2, batch_size=50)
    assert blind.kwh_summary["eval"]["error_after_finetune"] is None
    assert "not measured after fine-tuning" in str(blind.kwh_summary)
    seen = finetune(small, data, 1, tmp_path / "b", lr=1e-2, batch_size=50, eval_data=test)
    err = seen.kwh_summary["eval"]["error_after_finetune"]
    assert err == kwh.compress.evaluate(seen, test)["error"]
    assert "after fine-tuning" in str(seen.kwh_summary)


def test_finetune_a_transformer_graph_and_its_loaded_file(tmp_path):
    """A compressed ViT (a traced graph whose modules are not in the summary's order) and the
    same model loaded from its graph-layout file both fine-tune, each weight kept on its grid."""
    from kwh.models import build

    torch.manual_seed(0)
    vit = build("vit", depth=1, dim=16, heads=2, mlp=16)
    kwh.bayesify_(vit, "group-horseshoe", group_sizes=vit.kwh_head_groups())
    small = kwh.compress(vit.eval(), CompressConfig(input_shape=(1, 28, 28)))
    x = torch.randn(60, 1, 28, 28)
    y = torch.randint(0, 10, (60,))
    data = TrainData(TensorDataset(x[:40], y[:40]), TensorDataset(x[40:50], y[40:50]),
                     TensorDataset(x[50:], y[50:]))
    path = tmp_path / "vit.kwh"
    kwh.save(small, path)
    for i, model in enumerate((small, kwh.load(path))):
        tuned = finetune(model, data, 1, tmp_path / f"run{i}", lr=1e-2, batch_size=20)
        names = [n for n, _ in quantized_layers(tuned)]
        assert len(names) == len(tuned.kwh_summary["layers"])
        for _, m in quantized_layers(tuned):
            assert _on_grid(m.weight, m.kwh_bits, m.kwh_frac_bits)
        assert tuned.kwh_summary["nonzero"] == sum(
            int(torch.count_nonzero(m.weight)) for _, m in quantized_layers(tuned))


def test_a_run_folder_of_another_fine_tuning_is_refused(tmp_path):
    """Resuming into a folder that fine-tuned another model (or with other settings) would
    return that run's weights and masks: refused with the folder named."""
    small, data = _compressed_mlp()
    finetune(small, data, 1, tmp_path / "run", lr=1e-2, batch_size=50)
    other = _compressed_mlp()[0]
    with torch.no_grad():
        other[0].weight[:, :10] = 0
    with pytest.raises(KwhError, match="another compressed model"):
        finetune(other, data, 1, tmp_path / "run", lr=1e-2, batch_size=50)
    with pytest.raises(KwhError, match="other settings"):
        finetune(small, data, 2, tmp_path / "run", lr=1e-2, batch_size=50)
    (tmp_path / "run" / "finetune_start.json").unlink()  # a checkpoint nobody vouches for
    with pytest.raises(KwhError, match="no fine-tuning record"):
        finetune(small, data, 1, tmp_path / "run", lr=1e-2, batch_size=50)
    tuned = finetune(other, data, 1, tmp_path / "run2", lr=1e-2, batch_size=50)
    assert bool((tuned[0].weight[:, :10] == 0).all())


def test_rounding_is_exact_at_25_bits():
    """The widest layer kwh.compress makes (25 bits): odd integers above 2^23 stay put."""
    q = torch.tensor([8388609.0, -8388609.0, 16777215.0, -16777216.0, 3.0])
    p = FixedPoint(torch.ones(5, dtype=torch.bool), bits=25, frac_bits=0)
    assert p(q).tolist() == q.tolist()
    lin = nn.Linear(5, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(q.view(1, 5))
    lin.kwh_bits, lin.kwh_frac_bits = 25, 0
    attach_fixed_point_(nn.Sequential(lin))  # on its grid: accepted


def test_an_unquantized_compression_is_named_as_such(tmp_path):
    _, data = _compressed_mlp()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 4))
    kwh.bayesify_(model, "log-uniform")
    small = kwh.compress(model.eval(), CompressConfig(input_shape=(20,), quantize=False))
    with pytest.raises(ModelError, match="quantize=True"):
        finetune(small, data, 1, tmp_path / "r")


def test_cli_fine_tuning_options_are_checked_before_any_work(tmp_path, capsys):
    from kwh.cli.main import main

    out = tmp_path / "m.kwh"
    for bad in (["--finetune-epochs", "1", "--finetune-lr", "inf"],
                ["--finetune-epochs", "1", "--finetune-lr", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["compress", "--checkpoint", str(tmp_path / "none"), *bad, "--out", str(out)])
        assert e.value.code == 2
    code = main(["compress", "--checkpoint", str(tmp_path / "none"), "--finetune-lr", "0.01",
                 "--out", str(out)])
    assert code == 2
    assert "give --finetune-epochs" in capsys.readouterr().err


def test_cli_float_bits(tiny_run, tmp_path, data_root, capsys):
    from kwh.cli.main import main

    for bits, want in (("8", 8), ("0", None)):
        out = tmp_path / f"m{bits}.kwh"
        assert main(["compress", "--checkpoint", str(tiny_run), "--data-dir", str(data_root),
                     "--float-bits", bits, "--out", str(out), "--no-progress"]) == 0
        grids = kwh.load(out).kwh_summary.get("float_grids")
        assert (grids or {}).get("bits") == want
        encodings = {t["encoding"] for sec in file_report(out)["sections"] for t in sec["tensors"]
                     if t["name"] == "bias"}
        assert encodings == ({"fixed"} if want else {"float32"})
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["compress", "--checkpoint", str(tiny_run), "--float-bits", "30",
              "--out", str(tmp_path / "x.kwh")])
    assert e.value.code == 2
    assert "--float-bits" in capsys.readouterr().err

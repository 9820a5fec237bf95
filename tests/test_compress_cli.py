"""`kwh compress`, `kwh evaluate`, `kwh inspect` on a tiny real MNIST run.

Oracles: the file the command wrote, loaded with kwh.load and evaluated in process, and its
own summary; errors exit 2 with one line.
"""

from __future__ import annotations

import json

import pytest
import torch

import kwh
import kwh.cli.main as cli
from cli_run import run_main
from kwh.compress.metrics import evaluate
from kwh.data import batch_loader, get_dataset

LIMIT_TEST = 200



@pytest.fixture(scope="module")
def compressed(data_root, tmp_path_factory):
    """One `kwh compress` run: 1 epoch of LeNet-300-100 on 300 examples, then compression."""
    folder = tmp_path_factory.mktemp("cli")
    out = folder / "m.kwh"
    argv = ["-q", "compress", "--model", "lenet300", "--prior", "group-nj", "--epochs", "1",
            "--limit-train", "300", "--limit-test", str(LIMIT_TEST), "--data-dir",
            str(data_root), "--out-dir", str(folder / "run"), "--threads", "1",
            "--threshold", "-4", "--max-bits", "12", "--out", str(out), "--no-progress"]
    code = cli.main(argv)
    return code, out, folder


def test_compress_writes_a_file_whose_summary_matches_the_model(compressed, data_root, capsys):
    code, out, _ = compressed
    assert code == 0 and out.is_file()
    model = kwh.load(out)
    s = model.kwh_summary
    assert s["config"]["threshold"] == -4 and s["config"]["max_bits"] == 12
    assert all(d["bits"] <= 12 and d["threshold"] == -4 for d in s["layers"])
    test = batch_loader(get_dataset("mnist", "test", data_root, limit=LIMIT_TEST), 100)
    assert s["eval"]["examples"] == LIMIT_TEST
    assert s["eval"]["error_after_quantization"] == pytest.approx(evaluate(model, test)["error"])


def test_evaluate_prints_the_test_error_of_the_file(compressed, data_root, capsys):
    _, out, _ = compressed
    code, text, err = run_main(["evaluate", str(out), "--data", "mnist", "--data-dir",
                             str(data_root), "--limit-test", str(LIMIT_TEST)], capsys)
    err_after = kwh.load(out).kwh_summary["eval"]["error_after_quantization"]
    assert code == 0 and f"test error {100 * err_after:.2f}%" in text


def test_inspect_prints_the_stored_summary(compressed, capsys):
    _, out, _ = compressed
    code, text, _ = run_main(["inspect", str(out)], capsys)
    s = kwh.load(out).kwh_summary
    assert code == 0 and s["architecture"] in text and s["bits"] in text
    assert f"{out.stat().st_size:,} B" in text
    code, text, _ = run_main(["inspect", str(out), "--json"], capsys)
    assert code == 0 and json.loads(text)["summary"] == s
    assert "measured when the model was compressed" not in text


def test_inspect_says_when_the_summary_counts_another_payload(compressed, tmp_path, capsys):
    """A file saved again by another codec version: its summary's rates are the old payload's."""
    _, out, _ = compressed
    model = kwh.load(out)
    real = model.kwh_summary["payload_bytes"]
    model.kwh_summary["payload_bytes"] = real + 100  # as an older codec measured it
    again = tmp_path / "again.kwh"
    kwh.save(model, again)
    code, text, _ = run_main(["inspect", str(again)], capsys)
    assert code == 0
    assert f"the summary's rates count the {real + 100:,} B payload measured when" in text
    assert f"{real:,} B payload in" in text


def test_compress_from_a_checkpoint_of_the_same_run(compressed, data_root, capsys):
    _, out, folder = compressed
    again = folder / "again.kwh"
    code, text, _ = run_main(["-q", "compress", "--checkpoint", str(folder / "run"), "--data-dir",
                           str(data_root), "--threshold", "-4", "--max-bits", "12",
                           "--out", str(again), "--deploy-copy", str(folder / "bare.kwh")],
                          capsys)
    assert code == 0 and "written to" in text
    assert kwh.load(again).kwh_summary == kwh.load(out).kwh_summary
    # the deployment copy: the same model without the summary, smaller, named in the output
    bare = kwh.load(folder / "bare.kwh")
    assert getattr(bare, "kwh_summary", None) is None
    assert (folder / "bare.kwh").stat().st_size < again.stat().st_size
    assert f"{(folder / 'bare.kwh').stat().st_size:,} B (deployment copy" in text
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(bare(x), kwh.load(again)(x))


@pytest.mark.parametrize("argv, fragment", [
    (["compress", "--max-bits", "40"], "argument --max-bits: must lie in [2, 25], got 40"),
    (["evaluate", "missing.kwh"], "kwh: error:"),
    (["inspect", "missing.kwh"], "kwh: error:"),
    (["compress", "--checkpoint", "no-such-run"], "kwh: error:"),
    (["compress", "--prune-search", "all"], "argument --prune-search: invalid choice: 'all'"),
])
def test_bad_input_exits_2_with_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(argv, capsys)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_compress_searches_thresholds_for_fewer_multiplications(compressed, data_root, capsys):
    _, out, folder = compressed
    again = folder / "macs.kwh"
    code, _, _ = run_main(["-q", "compress", "--checkpoint", str(folder / "run"), "--data-dir",
                           str(data_root), "--threshold", "-4", "--max-bits", "12",
                           "--prune-search", "fit-macs", "--prune-tolerance", "2",
                           "--out", str(again)], capsys)
    assert code == 0
    s, base = kwh.load(again).kwh_summary, kwh.load(out).kwh_summary
    assert s["prune_guard"]["mode"] == "fit-macs" and s["prune_guard"]["tolerance_pp"] == 2
    assert s["macs_nonzero"] <= base["macs_nonzero"]
    code, _, err = run_main(["compress", "--checkpoint", str(folder / "run"), "--data-dir",
                             str(data_root), "--prune-tolerance", "-1",
                             "--out", str(folder / "bad.kwh")], capsys)
    assert code == 2 and "prune_tolerance=-1" in err and not (folder / "bad.kwh").exists()


def test_compress_names_a_run_of_another_method(data_root, tmp_path, capsys):
    from kwh.train import TrainConfig, run_training
    cfg = TrainConfig(model="lenet300", data="mnist", data_dir=str(data_root), method="binary",
                      pretrain_epochs=1, epochs=1, limit_train=300, limit_test=100, threads=1,
                      out_dir=str(tmp_path / "bin"))
    run_training(cfg, progress=False)
    code, _, err = run_main(["compress", "--checkpoint", cfg.out_dir, "--out",
                             str(tmp_path / "b.kwh")], capsys)
    assert code == 2 and "--method binary run" in err and "already 1 bit" in err
    assert not (tmp_path / "b.kwh").exists()


def test_the_file_records_the_training_data_normalization(compressed, data_root):
    """The pixels' normalization the model was trained with travels in the file, and it is
    the one the data set applies: (x - mean) / std of the [0, 1] pixels."""
    from kwh.data import input_normalization

    _, out, _ = compressed
    stored = kwh.load(out).kwh_input_normalization
    assert stored == input_normalization("mnist")
    raw = get_dataset("mnist", "test", data_root, limit=5, normalize=False).tensors[0]
    norm = get_dataset("mnist", "test", data_root, limit=5).tensors[0]
    mean, std = stored["mean"][0], stored["std"][0]
    assert torch.allclose((raw - mean) / std, norm, atol=1e-5)


def test_evaluate_notes_a_file_trained_with_another_normalization(compressed, data_root):
    from kwh.app import evaluate_model_file

    _, out, _ = compressed
    same = evaluate_model_file(out, "mnist", samples=1, data_dir=data_root, limit_test=50)
    other = evaluate_model_file(out, "fashion-mnist", samples=1, data_dir=data_root, limit_test=50)
    assert "normalization" not in (same.get("note") or "")
    assert "records input normalization" in other["note"]


def test_plain_evaluate_notes_another_normalization(compressed, data_root, capsys):
    _, out, _ = compressed
    code, text, _ = run_main(["evaluate", str(out), "--data", "fashion-mnist", "--data-dir",
                              str(data_root), "--limit-test", "50"], capsys)
    assert code == 0 and "note: the file records input normalization" in text
    code, text, _ = run_main(["evaluate", str(out), "--data", "mnist", "--data-dir",
                              str(data_root), "--limit-test", "50"], capsys)
    assert code == 0 and "note:" not in text

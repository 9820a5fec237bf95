"""`kwh bench FILE`: every variant is printed (and written with --json), errors with --data,
bad input exits 2 with one line. Timings are never asserted on (the machine may be busy)."""

from __future__ import annotations

import json

import pytest

import kwh
from kwh.compress import CompressConfig
from test_cli import run_main
from test_compress import _bayes

VARIANTS = [("dense original", "torch"), ("dense original", "onnxruntime"), ("float32", "torch"),
            ("sparse", "torch"), ("int8", "torch"), ("float32", "onnxruntime"),
            ("int8", "onnxruntime"), ("sparse", "onnxruntime")]
FAST = ["--repeats", "1", "--warmup", "0", "--batch", "8", "--calib", "32"]


def _kwh_file(tmp_path, model_name: str, capsys) -> str:
    """A compressed randomly initialised Bayesian model, weights at most 8 bits, saved."""
    model, shape = _bayes(model_name, "group-horseshoe")
    small = kwh.compress(model, CompressConfig(max_bits=8, input_shape=shape))
    path = tmp_path / f"{model_name}.kwh"
    kwh.save(small, path)
    capsys.readouterr()  # drop what building it logged (bayesify_ speaks once logging is set up)
    return str(path)


def _row(out: str, variant: str, runtime: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(f"{variant:<15} {runtime:<11} ")]
    assert len(lines) == 1, f"no single row for {variant} [{runtime}] in:\n{out}"
    return lines[0]


def test_bench_prints_every_variant_and_writes_json(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path, out_json = _kwh_file(tmp_path, "lenet5", capsys), tmp_path / "bench.json"
    code, out, err = run_main(["bench", path, *FAST, "--json", str(out_json)], capsys)
    assert code == 0, err
    for variant, runtime in VARIANTS:
        row = _row(out, variant, runtime)
        ran = not (variant, runtime) == ("sparse", "onnxruntime")
        assert ("not run:" not in row) == ran, row
        if ran:  # one progress line per variant on stderr
            assert f"kwh bench: {variant} [{runtime}]: 2/2 runs" in err
    assert "lenet5, random weights: speed only" in out
    assert "threads: torch 1, onnxruntime intra-op 1" in out
    assert "sparse choices at batch 1" in out and "sparse choices at batch 8" in out
    data = json.loads(out_json.read_text())
    rows = {(r["variant"], r["runtime"]): r for r in data["rows"]}
    assert set(rows) == set(VARIANTS)
    summary = kwh.load(path).kwh_summary
    for key, r in rows.items():
        if key[1] == "onnxruntime" and key[0] == "sparse":
            assert r["latency_ms"] is None
            continue
        assert r["latency_ms"] > 0 and r["throughput"] > 0 and r["bytes_reduction"] > 0
        assert r["error"] is None  # no --data
        if key[0] != "dense original":
            assert r["latency_speedup"] > 0 and r["throughput_speedup"] > 0
    assert rows[("float32", "torch")]["macs_reduction"] == pytest.approx(
        summary["macs_original"] / summary["macs"])
    assert rows[("sparse", "torch")]["macs_reduction"] == pytest.approx(
        summary["macs_original"] / summary["macs_nonzero"])
    assert rows[("float32", "torch")]["bytes_reduction"] == pytest.approx(
        summary["size_fp32_original_bytes"] / summary["size_fp32_bytes"])
    assert rows[("int8", "torch")]["weight_bytes"] < rows[("float32", "torch")]["weight_bytes"]
    assert all(data["int8"]["onnxruntime"]["weights_exact"].values())
    assert data["config"]["threads"] == 1 and data["environment"]["torch_threads"] == 1


def test_bench_reports_the_test_error_of_every_variant(tmp_path, capsys, data_root):
    pytest.importorskip("onnxruntime")
    path = _kwh_file(tmp_path, "mlp", capsys)
    code, out, err = run_main(["bench", path, *FAST, "--data", "mnist", "--data-dir",
                               str(data_root), "--limit-test", "100", "--dense",
                               "lenet300", "--sparse", "always"], capsys)
    assert code == 0, err
    for variant, runtime in VARIANTS:
        row = _row(out, variant, runtime)
        has_error = variant != "dense original" and (variant, runtime) != ("sparse", "onnxruntime")
        assert ("%" in row) == has_error, row
    assert "mnist test (100 examples), int8 calibrated on 32 training examples" in out


def test_int8_rows_say_why_when_no_layer_fits_8_bits(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model, shape = _bayes("mlp", "log-uniform")  # unstructured; the bits stay above 8
    path = tmp_path / "wide.kwh"
    kwh.save(kwh.compress(model, input_shape=shape), path)
    capsys.readouterr()
    code, out, err = run_main(["-q", "bench", str(path), *FAST, "--sparse", "always"], capsys)
    assert code == 0 and err == ""  # -q: no progress lines
    for runtime in ("torch", "onnxruntime"):
        assert "not run: no Linear/Conv2d layer of this model fits int8" in _row(out, "int8",
                                                                                 runtime)
    assert "CSR layers: 3 at batch 1, 3 at batch 8" in _row(out, "sparse", "torch")


@pytest.mark.parametrize("argv, fragment", [
    (["bench", "no/such/model.kwh"], "model file not found: no/such/model.kwh"),
    (["bench", "{file}", "--dense", "alexnet"], "Unknown dense model 'alexnet'; choose one of: "
                                                "lenet300"),
    (["bench", "{file}", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
])
def test_bad_input_exits_2_with_one_line(argv, fragment, tmp_path, capsys):
    path = tmp_path / "m.kwh"
    path.write_bytes(b"not read: the option is checked first")
    code, out, err = run_main([a.replace("{file}", str(path)) for a in argv], capsys)
    assert code == 2 and fragment in err and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err

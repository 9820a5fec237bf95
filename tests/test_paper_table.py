"""The paper-table benchmark end to end on tiny data: every method row, sane numbers, real files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import paper_table
from benchmarks.baselines import huffman, sparse_file
from benchmarks.baselines.common import load_data
from benchmarks.baselines.common import test_error as error_of
import kwh.format
from kwh.format.codec import load

METHODS = ("dense", "Sparse VD", "BC-GNJ", "BC-GHS", "Deep Compression", "Soft weight-sharing",
           "Torch-Pruning")
# The quick runs give the soft weight-sharing phase a few steps: its components start narrow
# (sigma 0.01, not 0.25) so that some weights already sit at nonzero ones.
SWS_QUICK = ["--sws-option", "init_std=0.01"]


def _write_cifar(folder: Path, n_train_file: int, n_test: int) -> None:
    """Tiny CIFAR-10 binary batches: per record 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = n_test if name == "test_batch.bin" else n_train_file
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        pixels[:, labels % 3] = np.minimum(255, pixels[:, labels % 3].astype(int) + 60).astype(np.uint8)  # learnable hint
        records = np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1)  # (n, 3073)
        records.astype(np.uint8).tofile(folder / name)


def _check_outputs(out: Path, stem: str, files_dir: Path, data, seed: int = 0) -> list[dict]:
    for suffix in (".md", ".csv", ".json", "_error_vs_compression.png", "_alive_units.png",
                   "_log_alpha.png"):
        assert (out / f"{stem}{suffix}").is_file(), suffix
    rows = list(csv.DictReader(io.StringIO((out / f"{stem}.csv").read_text())))
    assert len(rows) == len(METHODS)
    for m in METHODS:
        assert sum(m in r["method"] for r in rows) == 1, m
    for r in rows:
        assert 0 <= float(r["error_pct"]) <= 100
        assert 0 < float(r["nonzero_pct"]) <= 100
        assert float(r["pruning"]) > 0.4 and float(r["fast_prediction"]) > 0.4
        assert int(r["file_bytes"]) > 0 and int(r["macs"]) >= int(r["macs_nonzero"]) > 0
        assert float(r["images_per_s"]) > 0
    md = (out / f"{stem}.md").read_text()
    assert "Published" in md and all(m in md for m in METHODS)
    # the .kwh files are real: they load and give the row's test error on the same test set
    for prior in ("log-uniform", "group-nj", "group-horseshoe"):
        path = files_dir / f"seed{seed}_{prior}.kwh"
        row = next(r for r in rows if prior in r["method"])
        assert path.stat().st_size == int(row["file_bytes"])
        err = 100 * error_of(load(path), data)
        assert err == pytest.approx(float(row["error_pct"]), abs=1e-9)
    dc = next(r for r in rows if "Deep Compression" in r["method"])
    assert (files_dir / f"seed{seed}_deep_compression.sphf").stat().st_size == int(dc["file_bytes"])
    # soft weight-sharing: the same kind of file, its weights the codebook's values, as many
    # nonzero as the row says
    sws = next(r for r in rows if "Soft weight-sharing" in r["method"])
    path = files_dir / f"seed{seed}_soft_weight_sharing.sphf"
    assert path.stat().st_size == int(sws["file_bytes"])
    layers = sparse_file.read(path)
    weights = np.concatenate([d["weight"].reshape(-1) for d in layers.values()])
    assert 100 * np.count_nonzero(weights) / weights.size == pytest.approx(
        float(sws["nonzero_pct"]), abs=1e-9)
    codebook = json.loads((out / f"{stem}.json").read_text())["rows"]
    codebook = next(r for r in codebook if "Soft weight-sharing" in r["method"])["codebook"]
    assert codebook[0] == 0.0 and set(np.unique(weights)) <= set(np.float32(codebook))
    assert len(sws["bits"].split("-")) == len(layers)
    return rows


def test_vgg_cifar10_quick_pipeline(tmp_path):
    _write_cifar(tmp_path / "data" / "cifar-10-batches-bin", 20, 30)
    out = tmp_path / "out"
    args = ["--net", "vgg", "--data", "cifar10", "--budget", "quick", "--data-dir", str(tmp_path / "data"),
            "--out", str(out), "--width", "0.0625", "--epochs", "1", "--pretrain-epochs", "1",
            "--limit-train", "100", "--limit-test", "30", "--tp-ratios", "0.5",
            "--repeats", "1", "--bench-batch", "50", *SWS_QUICK]
    assert paper_table.main(args) == 0
    _, data = load_data("cifar10", str(tmp_path / "data"), 100, 30)
    rows = _check_outputs(out, "paper_table_vgg_cifar10", out / "paper_table_vgg_cifar10_files", data)
    assert len(rows[0]["bits"].split("-")) == 15  # 13 conv + 2 fc layers
    hist = json.loads((out / "paper_table_vgg_cifar10.json").read_text())["histories"]["0"]
    assert set(hist) == {"log-uniform", "group-nj", "group-horseshoe"}
    assert all(len(h) == 1 and len(h[0]["alive"]) == 15 for h in hist.values())  # 1 epoch


def test_lenet300_mnist_quick_subset(tmp_path, data_root):
    out = tmp_path / "out"
    args = ["--net", "lenet300", "--data", "mnist", "--budget", "quick", "--data-dir", str(data_root),
            "--out", str(out), "--epochs", "1", "--pretrain-epochs", "1", "--limit-train", "500",
            "--limit-test", "200", "--tp-ratios", "0.5",
            "--repeats", "1", "--bench-batch", "100", *SWS_QUICK]
    assert paper_table.main(args) == 0
    _, data = load_data("mnist", str(data_root), 500, 200)
    rows = _check_outputs(out, "paper_table_lenet300_mnist", out / "paper_table_lenet300_mnist_files", data)
    dc = next(r for r in rows if "Deep Compression" in r["method"])
    assert float(dc["nonzero_pct"]) == pytest.approx(8.0, abs=0.01)  # kept fraction 8%
    assert float(dc["pruning"]) == pytest.approx(1 / (2 * 0.08), rel=1e-3)


def test_sws_codebook_fine_tune_row_keeps_the_codes(tmp_path, data_root):
    """--sws-finetune-epochs: a second soft weight-sharing row whose codebook values trained;
    the same weights are zero, every weight is a value of the new codebook."""
    out = tmp_path / "out"
    args = ["--net", "lenet300", "--data", "mnist", "--budget", "quick", "--data-dir", str(data_root),
            "--out", str(out), "--epochs", "1", "--pretrain-epochs", "1", "--limit-train", "500",
            "--limit-test", "200", "--methods", "soft-weight-sharing", "--sws-finetune-epochs", "1",
            "--repeats", "1", "--bench-batch", "100", *SWS_QUICK]
    assert paper_table.main(args) == 0
    rows = json.loads((out / "paper_table_lenet300_mnist_selected.json").read_text())["rows"]
    plain, tuned = (next(r for r in rows if r["method"].endswith(end))
                    for end in ("Huffman)", "codebook fine-tune"))
    assert tuned["nonzero_pct"] == plain["nonzero_pct"]
    assert tuned["error_after_quantization_pct"] == plain["error_pct"]
    assert len(tuned["codebook"]) == len(plain["codebook"]) and tuned["codebook"][0] == 0.0
    assert tuned["codebook"] != plain["codebook"]  # the values trained
    files = out / "paper_table_lenet300_mnist_files"
    a, b = (sparse_file.read(files / f"seed0_{stem}.sphf")
            for stem in ("soft_weight_sharing", "soft_weight_sharing_codebook"))
    for name in a:
        assert np.array_equal(a[name]["weight"] == 0, b[name]["weight"] == 0)
        assert set(np.unique(b[name]["weight"])) <= set(np.float32(tuned["codebook"]))


def test_huffman_is_optimal_and_decodes():
    # CLRS's example: frequencies 45, 13, 12, 16, 9, 5 -> an optimal code costs 224 bits
    sym = np.repeat(np.arange(6), [45, 13, 12, 16, 9, 5])
    lengths = huffman.code_lengths(sym)
    assert huffman.stream_bits(sym, lengths) == 224
    assert sum(2.0 ** -n for n in lengths.values()) == 1.0  # a full prefix code (Kraft equality)
    rng = np.random.default_rng(1)
    s = rng.permutation(sym)
    assert (huffman.decode(huffman.encode(s, lengths), lengths, len(s)) == s).all()


def test_sparse_file_round_trip_with_fillers(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(-40, 41, size=(30, 200)) * (rng.random((30, 200)) < 0.03)
    a[5:20] = 0  # gaps far longer than 2**5 need fillers
    g, v = sparse_file.relative_index(a.reshape(-1), 5)
    assert g.max() < 32 and (sparse_file.from_relative_index(g, v, a.size) == a.reshape(-1)).all()
    bias = rng.standard_normal(30).astype(np.float32)
    info = sparse_file.write(tmp_path / "w.sphf", [{"name": "fc", "shape": [30, 200], "symbols": a,
                                                   "index_bits": 5, "frac_bits": 3, "bias": bias}])
    assert info["file_bytes"] == (tmp_path / "w.sphf").stat().st_size
    back = sparse_file.read(tmp_path / "w.sphf")["fc"]
    assert np.array_equal(back["weight"], (a * 2.0 ** -3).astype(np.float32))
    assert np.array_equal(back["bias"], bias)


def test_bad_net_data_pair_is_a_clear_error():
    with pytest.raises(ValueError, match="reads cifar10"):
        paper_table.parse_args(["--net", "vgg", "--data", "mnist"])


def test_sws_options_parse_to_numbers(capsys):
    a = paper_table.parse_args(["--net", "lenet5", "--data", "mnist", "--sws-option", "tau=1e-3",
                                "--sws-option", "n_components=9", "--sws-option", "lr=none"])
    assert a.sws_options == {"tau": 1e-3, "n_components": 9, "lr": None}
    with pytest.raises(SystemExit):
        paper_table.parse_args(["--net", "lenet5", "--data", "mnist", "--sws-option", "tau"])
    assert "expected KEY=NUMBER" in capsys.readouterr().err


def test_selected_methods_write_their_rows(tmp_path, data_root):
    """A run of some methods writes their rows (and the shared dense start is reused)."""
    out = tmp_path / "out"
    args = ["--net", "lenet300", "--data", "mnist", "--budget", "quick", "--data-dir", str(data_root),
            "--out", str(out), "--epochs", "1", "--pretrain-epochs", "1", "--limit-train", "300",
            "--limit-test", "100", "--repeats", "1", "--bench-batch", "50",
            "--methods", "dense", "group-nj"]
    assert paper_table.main(args) == 0
    stem = "paper_table_lenet300_mnist"
    assert not (out / f"{stem}.md").exists()  # the full table needs every method
    saved = json.loads((out / f"{stem}_selected.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["dense (pretrained start)", "kwh BC-GNJ (group-nj)"]
    assert set(saved["histories"]["0"]) == {"group-nj"}
    md = (out / f"{stem}_selected.md").read_text()
    assert "kwh BC-GNJ (group-nj)" in md and "BC-GHS" in md  # its row and the published ones
    kwh_row = saved["rows"][1]
    _, data = load_data("mnist", str(data_root), 300, 100)
    err = 100 * error_of(load(out / f"{stem}_files" / "seed0_group-nj.kwh"), data)
    assert err == pytest.approx(kwh_row["error_pct"], abs=1e-9)


def test_resnet20_rows_through_the_graph_path(tmp_path, data_root):
    """A residual net in the table: kwh's row is a structured graph compression saved in the
    graph layout, which reloads without the class and reproduces the row's error."""
    out = tmp_path / "out"
    args = ["--net", "resnet20", "--data", "fashion-mnist", "--budget", "quick", "--width", "0.25",
            "--data-dir", str(data_root), "--out", str(out), "--epochs", "1", "--pretrain-epochs",
            "1", "--limit-train", "200", "--limit-test", "100", "--repeats", "1",
            "--bench-batch", "50", "--methods", "dense", "group-horseshoe"]
    assert paper_table.main(args) == 0
    stem = "paper_table_resnet20_fashion-mnist"
    rows = json.loads((out / f"{stem}_selected.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense (pretrained start)", "kwh BC-GHS (group-horseshoe)"]
    path = out / f"{stem}_files" / "seed0_group-horseshoe.kwh"
    assert kwh.format.file_report(path)["layout"] == "graph"
    _, data = load_data("fashion-mnist", str(data_root), 200, 100)
    assert 100 * error_of(load(path), data) == pytest.approx(rows[1]["error_pct"], abs=1e-9)
    assert "no resnet20 row" in (out / f"{stem}_selected.md").read_text()


def test_vit_rows_prune_heads_and_keep_them_in_torch_pruning(tmp_path, data_root):
    """The small ViT in the table: kwh's row (head groups under a group prior) is a graph-layout
    file that reproduces its error; Torch-Pruning's row prunes MLP units but leaves every
    attention head whole (its dependency graph cannot see the heads inside SelfAttention)."""
    out = tmp_path / "out"
    args = ["--net", "vit", "--data", "mnist", "--budget", "quick", "--data-dir", str(data_root),
            "--out", str(out), "--epochs", "1", "--pretrain-epochs", "1", "--limit-train", "200",
            "--limit-test", "100", "--repeats", "1", "--bench-batch", "50",
            "--methods", "dense", "group-nj"]
    assert paper_table.main(args) == 0
    stem = "paper_table_vit_mnist"
    rows = json.loads((out / f"{stem}_selected.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense (pretrained start)", "kwh BC-GNJ (group-nj)"]
    path = out / f"{stem}_files" / "seed0_group-nj.kwh"
    assert kwh.format.file_report(path)["layout"] == "graph"
    _, data = load_data("mnist", str(data_root), 200, 100)
    assert 100 * error_of(load(path), data) == pytest.approx(rows[1]["error_pct"], abs=1e-9)

    from benchmarks.baselines.structured import prune_channels
    from kwh.models import build
    from kwh.modules import SelfAttention
    torch.manual_seed(0)
    dense = build("vit").eval()
    small = prune_channels(dense, 0.5, (1, 28, 28))
    for a, b in zip((m for m in dense.modules() if isinstance(m, SelfAttention)),
                    (m for m in small.modules() if isinstance(m, SelfAttention))):
        assert [l.weight.shape for l in (b.q, b.k, b.v, b.out)] == \
            [l.weight.shape for l in (a.q, a.k, a.v, a.out)]
    hidden = [blk.mlp[0].out_features for blk in small.blocks]
    assert all(h < 128 for h in hidden), hidden
    assert small(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_finetuned_rows_follow_their_kwh_rows(tmp_path, data_root):
    """--finetune-epochs adds, after each kwh row, the same compressed model fine-tuned on its
    grids: same architecture and bits, its own file reproducing its error."""
    out = tmp_path / "out"
    args = ["--net", "lenet300", "--data", "mnist", "--budget", "quick", "--data-dir", str(data_root),
            "--out", str(out), "--epochs", "1", "--pretrain-epochs", "1", "--limit-train", "300",
            "--limit-test", "100", "--repeats", "1", "--bench-batch", "50",
            "--methods", "dense", "group-nj", "--finetune-epochs", "1"]
    assert paper_table.main(args) == 0
    stem = "paper_table_lenet300_mnist"
    rows = json.loads((out / f"{stem}_selected.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense (pretrained start)", "kwh BC-GNJ (group-nj)",
                                           "kwh BC-GNJ (group-nj) + fine-tune"]
    assert rows[2]["arch"] == rows[1]["arch"] and rows[2]["bits"] == rows[1]["bits"]
    assert "1 fine-tune" in rows[2]["epochs"]
    _, data = load_data("mnist", str(data_root), 300, 100)
    path = out / f"{stem}_files" / "seed0_group-nj_finetuned.kwh"
    assert 100 * error_of(load(path), data) == pytest.approx(rows[2]["error_pct"], abs=1e-9)
    # distilled from the table's dense start: its own run folder, the teacher recorded
    assert paper_table.main(args + ["--finetune-distill", "--methods", "group-nj"]) == 0
    rows = json.loads((out / f"{stem}_selected.json").read_text())["rows"]
    assert rows[-1]["method"] == "kwh BC-GNJ (group-nj) + fine-tune (distilled)"
    assert "distilled from the dense start" in rows[-1]["epochs"]
    assert (out / f"{stem}_runs" / "seed0" / "group-nj-finetune-distill").is_dir()
    distilled = out / f"{stem}_files" / "seed0_group-nj_finetuned_distilled.kwh"
    assert load(distilled).kwh_summary["finetune"]["distill"]["weight"] == 0.9
    assert load(path).kwh_summary["finetune"]["distill"] is None  # the first row's file kept


def test_kwh_rows_alone_log_their_own_numbers(tmp_path, data_root, capsys):
    """A run of one kwh prior without the dense row logs that row's error (no other row's)."""
    out = tmp_path / "out"
    args = ["--net", "lenet300", "--data", "mnist", "--budget", "quick", "--data-dir", str(data_root),
            "--out", str(out), "--epochs", "1", "--pretrain-epochs", "1", "--limit-train", "300",
            "--limit-test", "100", "--repeats", "1", "--bench-batch", "50", "--methods", "group-nj"]
    assert paper_table.main(args) == 0
    rows = json.loads((out / "paper_table_lenet300_mnist_selected.json").read_text())["rows"]
    lines = [l for l in (out / "paper_table_lenet300_mnist.log").read_text().splitlines()
             if "kwh BC-GNJ" in l]
    assert lines == [f"seed 0: kwh BC-GNJ (group-nj): error {rows[0]['error_pct']:.2f}% arch "
                     f"{rows[0]['arch']} bits {rows[0]['bits']} max compression "
                     f"{rows[0]['max_compression']:.1f}x file {rows[0]['file_bytes']} B"]

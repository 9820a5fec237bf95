"""Signs of life: kwh.progress on a terminal and in a log, and the library's progress callbacks."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
import torch

import kwh
from kwh.app import evaluate_model_file
from kwh.cli.main import main
from kwh.models import lenet300
from kwh.progress import Progress
from kwh.spike import build_plan, compare, train_scales

SRC = Path(kwh.__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_thread")


def test_plain_lines_every_tenth_in_a_log():
    log = io.StringIO()  # not a terminal
    with Progress("kwh spike", "sequences", file=log) as p:
        for done in [*range(7, 500, 7), 500, 500]:
            p(done, 500)
    lines = log.getvalue().splitlines()
    assert lines[0] == "kwh spike: 56/500 sequences" and lines[-1] == "kwh spike: 500/500 sequences"
    assert len(lines) == 10 and "\r" not in log.getvalue()
    counts = [int(line.split()[-2].split("/")[0]) for line in lines]
    assert counts == sorted(set(counts))  # each line further on, the last one once


def test_a_bar_on_a_terminal_and_nothing_when_disabled():
    tty = io.StringIO()
    with Progress("kwh evaluate", "examples", file=tty, bar=True) as p:
        for done in range(100, 1001, 100):
            p(done, 1000)
    assert "kwh evaluate:" in tty.getvalue() and "/1000 examples" in tty.getvalue()
    assert "\r" in tty.getvalue() and "\n" not in tty.getvalue()  # redrawn in place, removed
    quiet = io.StringIO()
    with Progress("kwh spike", "sequences", file=quiet, enabled=False) as p:
        p(5, 5)
    assert quiet.getvalue() == ""


def test_compare_reports_sequences_and_keeps_its_rows():
    torch.manual_seed(0)
    plan = build_plan(lenet300().eval())
    x = torch.rand(3, 10, 1, 28, 28)  # (T, B, C, H, W)
    calls: list[tuple[int, int]] = []
    rows = compare(plan, x, scales=3.0, threshold=0.1, batch_size=4,
                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]  # all four networks per batch
    whole = compare(plan, x, scales=3.0, threshold=0.1, batch_size=None)
    assert [r.as_dict() for r in rows] == [r.as_dict() for r in whole]
    steps: list[tuple[int, int]] = []
    train_scales(plan, x, 0.1, steps=3, batch_size=4, progress=lambda *a: steps.append(a))
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_evaluate_model_file_counts_test_then_ood_examples(tmp_path, data_root):
    kwh.save(lenet300().eval(), tmp_path / "m.kwh", input_shape=(1, 28, 28))
    calls: list[tuple[int, int]] = []
    r = evaluate_model_file(tmp_path / "m.kwh", "mnist", "fashion-mnist", data_dir=data_root,
                            limit_test=120, batch_size=50,
                            progress=lambda done, total: calls.append((done, total)))
    assert r["n_test"] == 120 and r["ood"]["n"] == 120
    assert calls == [(50, 240), (100, 240), (120, 240), (170, 240), (220, 240), (240, 240)]


def test_kwh_spike_and_evaluate_show_progress_on_stderr(tmp_path, data_root, capsys):
    torch.manual_seed(0)
    path = tmp_path / "m.kwh"
    kwh.save(lenet300().eval(), path, input_shape=(1, 28, 28))
    assert main(["spike", str(path), "--data-dir", str(data_root), "--sequences", "40",
                 "--frames", "2"]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == "kwh spike (learning scales): 6/60 steps"
    assert lines.index("kwh spike (learning scales): 60/60 steps") < lines.index(
        "kwh spike: 4/40 sequences")
    assert lines[-1] == "kwh spike: 40/40 sequences" and len(lines) == 20
    assert "kwh spike" not in out  # the table stays clean on stdout
    assert main(["evaluate", str(path), "--data-dir", str(data_root), "--limit-test", "600",
                 "--uncertainty", "--ood", "fashion-mnist"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [f"kwh evaluate: {n:,}/1,200 examples"
                                for n in (500, 600, 1100, 1200)]
    assert main(["-q", "spike", str(path), "--data-dir", str(data_root), "--sequences", "4",
                 "--frames", "2", "--scales", "2"]) == 0
    assert capsys.readouterr().err == ""  # -q: warnings and errors only


CORE = ("bayes", "spike", "compress", "energy")


def test_core_packages_do_not_import_the_command_line():
    """Progress reaches the core as a callback; kwh.cli and kwh.progress stay above it."""
    bad = []
    for package in CORE:
        for path in sorted((SRC / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.relative_to(SRC)}: {n}" for n in names
                        if n.split(".")[:2] in (["kwh", "cli"], ["kwh", "progress"])]
    assert bad == []

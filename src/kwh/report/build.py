"""Gather everything a report shows about one model and render the page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from kwh.app import LoadedModel, compare, load_model, load_test
from kwh.bayes import BayesLayer
from kwh.compress.summary import smaller_than_dense
from kwh.energy.config import EnergyConfig
from kwh.energy.format import ratio
from kwh.energy.sensitivity import MemorySensitivity, weight_memory_sensitivity
from kwh.energy.sources import dense_reference
from kwh.energy.table import HOROWITZ_45NM, EnergyTable

from . import sections as S
from .html import render_page, write_page
from .results import network_family, read_comparison

__all__ = ["build_report", "write_report", "read_log"]


def read_log(path: str | os.PathLike) -> list[dict]:
    """Records of a training run's log.jsonl (lines that are not JSON objects are skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _is_bayesian(model: nn.Module) -> bool:
    return any(isinstance(m, BayesLayer) for m in model.modules())


def _bayesian(loaded: LoadedModel, checkpoint: str | None) -> tuple[nn.Module | None,
                                                                   Path | None]:
    """The Bayesian model (from --checkpoint or MODEL itself) and its run folder, or None."""
    if checkpoint is not None:
        run = load_model(checkpoint)
        if run.kind != "checkpoint":
            what = ("a plain run's dense net, not a Bayesian run" if run.kind == "dense-checkpoint"
                    else f"a {run.kind} model, not a checkpoint or run folder of `kwh train`")
            raise ValueError(f"--checkpoint {checkpoint}: {what}")
        return run.model, run.path.parent
    if _is_bayesian(loaded.model):
        return loaded.model, loaded.path.parent if loaded.path else None
    return None, None


def _network(loaded: LoadedModel) -> str | None:
    """The model's network family (lenet300, lenet5, vgg), from its summary or its name."""
    if loaded.summary:
        try:
            return network_family(dense_reference(loaded.summary)[1])
        except ValueError:
            return None
    return network_family(loaded.label) if loaded.path is None else None


def _file_error(ev: dict) -> tuple[float, bool]:
    """The recorded test error of the model the file holds, and whether it was fine-tuned
    (then the error after fine-tuning, else the one after quantization)."""
    tuned = ev.get("error_after_finetune")
    return (ev["error_after_quantization"], False) if tuned is None else (tuned, True)


def _recorded_error(summary: dict | None) -> tuple[float, str] | None:
    """(test error, where from) as kwh compress recorded it in the summary."""
    ev = (summary or {}).get("eval")
    if not ev:
        return None
    error, tuned = _file_error(ev)
    if tuned:
        return error, (
            f"{100 * error:.2f}% after fine-tuning "
            f"({100 * ev['error_after_quantization']:.2f}% before it, after quantization), "
            f"recorded in the file (measured on {ev['examples']:,} test examples; --data "
            "measures it again)")
    return ev["error_after_quantization"], (
        f"{100 * ev['error_after_quantization']:.2f}% after quantization, "
        f"{100 * ev['error_before_quantization']:.2f}% before, recorded in the file (kwh "
        f"compress measured it on {ev['examples']:,} test examples; --data measures it again)")


def _errors(comp, summary: dict | None, recorded: tuple[float, str] | None, hint: str,
            reference: bool) -> tuple[tuple[float | None, str], tuple[float | None, str]]:
    """Test error (%, or None) and where it comes from, of the model and of the dense original."""
    mine = comp.get("compressed") or comp.get("model")
    acc = mine.estimate.accuracy
    if recorded:
        error = (100 * recorded[0], recorded[1])
    elif acc is not None:
        text = f"{100 * (1 - acc):.2f}% ({mine.accuracy_note})"
        ev = (summary or {}).get("eval")
        if ev:
            recorded_error, tuned = _file_error(ev)
            text += (f"; the file records {100 * recorded_error:.2f}% on "
                     f"{ev['examples']:,} test examples" + (" (after fine-tuning)" * tuned))
        error = (100 * (1 - acc), text)
    elif reference:
        error = (None, mine.accuracy_note)
    else:
        error = (None, f"not recorded in the file; give {hint}")
    d = comp.get("dense")
    if d is None or d.estimate.accuracy is None:
        return error, (None, "not in the file; give --dense-accuracy")
    e = 100 * (1 - d.estimate.accuracy)
    return error, (e, f"{e:.2f}% ({d.accuracy_note})")


def _headlines(summary: dict | None, file_bytes: int | None, error: str,
               sens: MemorySensitivity | None) -> list[str]:
    """The figures a reader looks for first, each saying what it compares."""
    out = []
    if summary and file_bytes is not None:
        out.append(f"File: {file_bytes:,} B, {smaller_than_dense(summary, file_bytes)}.")
    out.append(f"Test error: {error}.")
    if sens is not None:
        modelled = sens.scenarios[0]
        same = [sc.ratio for sc in sens.scenarios[1:]]
        line = (f"Modelled energy per inference: {ratio(modelled.ratio)} less than the dense "
                f"original as modelled ({modelled.where})")
        if same:
            line += (f"; {ratio(min(same))} to {ratio(max(same))} with both models' weights in "
                     "the same memory (see Energy)")
        out.append(line + ".")
    return out


def build_report(loaded: LoadedModel, *, checkpoint: str | None = None, log: str | None = None,
                 compare_csv: str | os.PathLike | None = None, data: str | None = None,
                 data_dir: str | None = None, limit: int | None = None,
                 table: EnergyTable | None = None, config: EnergyConfig | None = None,
                 dense: str | None = None, dense_accuracy: float | None = None,
                 accuracy: float | None = None, measure: bool = False, window_s: float = 2.0,
                 samples: int = 10, reliability_examples: int = 1000,
                 progress: bool = False) -> str:
    """The report page of ``loaded`` as an HTML string.

    Everything comes from MODEL (its summary) unless an option adds to it: ``checkpoint``
    the posterior, ``data`` test error and reliability, ``compare_csv`` results of other
    methods on the same network and data set.
    """
    bar = tqdm(total=8, desc="kwh report", disable=not progress, leave=False)

    def step(what: str):
        bar.set_postfix_str(what, refresh=False)
        bar.update()

    summary = loaded.summary
    network = _network(loaded)
    rows = None
    if compare_csv is not None:  # read first: a bad file fails before the slow parts
        if network is None:
            raise ValueError(f"--compare {compare_csv}: cannot tell this model's network, so "
                             "the rows to compare with cannot be chosen; give a .kwh file "
                             "written by kwh compress")
        rows = read_comparison(compare_csv, network, data or loaded.data)
    file_bytes = loaded.path.stat().st_size if loaded.path and loaded.path.is_file() else None
    bayes, run_dir = _bayesian(loaded, checkpoint)
    log_path = Path(log) if log else (run_dir / "log.jsonl" if run_dir else None)
    records = read_log(log_path) if log_path and log_path.is_file() else None
    if log and records is None:
        raise FileNotFoundError(f"training log not found: {log}")

    step("energy")
    recorded = _recorded_error(summary) if accuracy is None and data is None else None
    comp = compare(loaded, data=data, data_dir=data_dir, limit=limit, table=table,
                   config=config, dense=dense, dense_accuracy=dense_accuracy,
                   accuracy=1 - recorded[0] if recorded else accuracy, measure=measure,
                   window_s=window_s, dense_optional=True)
    mine = comp.get("compressed") or comp.get("model")
    if recorded:
        mine.accuracy_note = "1 - the test error recorded in the file: " + recorded[1]
    sens = weight_memory_sensitivity(comp, table or HOROWITZ_45NM, config or EnergyConfig())
    hint = S.data_hint(summary)
    error, dense_error = _errors(comp, summary, recorded, hint, loaded.path is None)
    out = [S.overview(loaded.label, summary, file_bytes,
                      _headlines(summary, file_bytes, error[1], sens))]
    step("architecture")
    out.append(S.architecture(summary))
    step("log alpha")
    out.append(S.log_alpha(bayes, records, summary))
    out.append(S.bits(summary))
    out.append(S.rates(summary, file_bytes))
    out.append(S.energy(comp, sens))
    step("comparison")
    out.append(S.comparison(summary, network, error, dense_error, rows))
    step("reliability")
    test = None
    if data is not None:
        test = load_test(data, data_dir, reliability_examples)
    models = ([("Bayesian", bayes)] if bayes is not None else [])
    if loaded.path is not None and bayes is not loaded.model:
        models.append((loaded.label, loaded.model))
    with torch.no_grad():
        out.append(S.reliability(models, test, samples,
                                 f"Give {hint} for the reliability diagrams: the file records "
                                 "the test error, not the predictions."))
    step("page")
    bar.close()
    footer = " ".join(comp.notes)
    return render_page(f"kwh report: {loaded.label}", out, footer)


def write_report(path: str | os.PathLike, loaded: LoadedModel, **options) -> int:
    """Build the report and write it atomically to ``path``; returns its size in bytes."""
    return write_page(path, build_report(loaded, **options))

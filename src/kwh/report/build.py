"""Gather everything a report shows about one model and render the page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from kwh.energy.compare import compare
from kwh.energy.config import EnergyConfig
from kwh.energy.sources import LoadedModel
from kwh.energy.table import EnergyTable

from . import sections as S
from .html import render_page, write_page

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
    return any(hasattr(m, "prior") and hasattr(m, "keep_mask") for m in model.modules())


def _bayesian(loaded: LoadedModel, checkpoint: str | None) -> tuple[nn.Module | None, Path | None,
                                                                   str]:
    """The Bayesian model (from --checkpoint or MODEL itself), its run folder, or why none."""
    if checkpoint is not None:
        from kwh.train import checkpoint_path, load_checkpoint
        path = checkpoint_path(checkpoint)
        model, _ = load_checkpoint(path)
        return model, path.parent, ""
    if _is_bayesian(loaded.model):
        return loaded.model, loaded.path.parent if loaded.path else None, ""
    return None, None, ("no Bayesian checkpoint was given (--checkpoint RUN_DIR); a .kwh file "
                        "keeps the pruned weights, not the posterior")


def build_report(loaded: LoadedModel, *, checkpoint: str | None = None, log: str | None = None,
                 results_dir: str | os.PathLike | None = None, data: str | None = None,
                 data_dir: str | None = None, limit: int | None = None,
                 table: EnergyTable | None = None, config: EnergyConfig | None = None,
                 dense: str | None = None, dense_accuracy: float | None = None,
                 accuracy: float | None = None, measure: bool = False, window_s: float = 2.0,
                 samples: int = 10, reliability_examples: int = 1000,
                 progress: bool = False) -> str:
    """The report page of ``loaded`` as an HTML string."""
    bar = tqdm(total=8, desc="kwh report", disable=not progress, leave=False)

    def step(what: str):
        bar.set_postfix_str(what, refresh=False)
        bar.update()

    summary = loaded.summary
    file_bytes = loaded.path.stat().st_size if loaded.path and loaded.path.is_file() else None
    bayes, run_dir, why_no_ckpt = _bayesian(loaded, checkpoint)
    log_path = Path(log) if log else (run_dir / "log.jsonl" if run_dir else None)
    records = read_log(log_path) if log_path and log_path.is_file() else None
    if log and records is None:
        raise FileNotFoundError(f"training log not found: {log}")
    if results_dir is None and Path("benchmarks/results").is_dir():
        results_dir = Path("benchmarks/results")

    out = [S.overview(loaded.label, summary, file_bytes)]
    step("architecture")
    out.append(S.architecture(summary))
    step("log alpha")
    out.append(S.log_alpha(bayes, records, summary, why_no_ckpt))
    out.append(S.bits(summary))
    out.append(S.rates(summary, file_bytes))
    step("energy")
    comp = compare(loaded, data=data, data_dir=data_dir, limit=limit, table=table,
                   config=config, dense=dense, dense_accuracy=dense_accuracy,
                   accuracy=accuracy, measure=measure, window_s=window_s, dense_optional=True)
    out.append(S.energy(comp))
    step("curves")
    out.append(S.curves(Path(results_dir) if results_dir is not None else None))
    step("reliability")
    test = None
    if data is not None:
        from kwh.data import get_dataset
        test = get_dataset(data, "test", data_dir, limit=reliability_examples).tensors
    models = ([("Bayesian", bayes)] if bayes is not None else [])
    if loaded.path is not None and bayes is not loaded.model:
        models.append((loaded.label, loaded.model))
    with torch.no_grad():
        out.append(S.reliability(models, test, samples, "no test data was given (--data)"))
    step("page")
    bar.close()
    footer = " ".join(comp.notes)
    return render_page(f"kwh report: {loaded.label}", out, footer)


def write_report(path: str | os.PathLike, loaded: LoadedModel, **options) -> int:
    """Build the report and write it atomically to ``path``; returns its size in bytes."""
    return write_page(path, build_report(loaded, **options))

"""The fine-tuning settings and thresholds chosen on validation, over the seeds of threshold sweeps.

    python -m benchmarks.finetune_choice benchmarks/results/finetune/distill --min-rate group-nj=58 group-horseshoe=59

Reads the ``<net>_<data>_<prior>_seed<S>_<setting>.json`` files `benchmarks.threshold_sweep
--finetune-epochs N` wrote into a folder, and for each setting and prior prints the mean over
the seeds of the fine-tuned validation error, test error and rate under three rules for the
threshold: the lowest validation error; the lowest validation error among the models at or
above the prior's --min-rate (a rate is known before any test image is seen); the prior's
default threshold (kwh.bayes.priors' prior_config(...).threshold). The test error is reported, never used.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from kwh.bayes.priors import prior_config

RULES = ("lowest val.", "lowest val. at >= min. rate", "default threshold")


def load(folder: Path) -> dict:
    """{setting: {net_data_prior: {seed: rows}}} of the sweeps in ``folder``."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for f in sorted(folder.glob("*_seed*_*.json")):
        head, setting = f.stem.rsplit("_", 1)
        head, seed = head.rsplit("_", 1)
        out[setting][head][seed] = json.loads(f.read_text())["rows"]
    return out


def choose(rows: list[dict], rule: str, min_rate: float, prior: str) -> dict:
    ft = [r for r in rows if r.get("finetuned")]
    if rule == RULES[2]:
        default = prior_config(prior).threshold
        same = [r for r in ft if r["threshold"] == default]
        if not same:
            raise SystemExit(f"{prior}: the sweep has no row at the prior's default threshold "
                             f"{default:g}")
        return same[0]
    if rule == RULES[1]:
        ft = [r for r in ft if r["finetuned"]["max_compression"] >= min_rate] or \
            [dict(r, below_min_rate=True) for r in ft]
    return min(ft, key=lambda r: (r["finetuned"]["val_error_pct"],
                                  -r["finetuned"]["max_compression"]))


def table(sweeps: dict, min_rates: dict[str, float]) -> list[str]:
    md = []
    for rule in RULES:
        md += ["", f"Threshold: {rule}" + (" (* : no row of that seed reaches it; its lowest "
                                           "validation error instead)" if rule == RULES[1] else ""),
               "",
               "| setting | run | mean val. error % | mean test error % | mean rate | per seed: threshold, test error, rate |",
               "|---|---|---|---|---|---|"]
        for setting in sorted(sweeps):
            for head in sorted(sweeps[setting]):
                runs = sweeps[setting][head]
                prior = head.split("_")[-1]
                picked = [choose(runs[s], rule, min_rates.get(prior, 0), prior)
                          for s in sorted(runs)]

                def mean(key):
                    return statistics.mean(r["finetuned"][key] for r in picked)

                per = "; ".join(f"{r['threshold']:g}{'*' if r.get('below_min_rate') else ''}: "
                                f"{r['finetuned']['test_error_pct']:.2f} %, "
                                f"{r['finetuned']['max_compression']:.1f}x" for r in picked)
                md.append(f"| {setting} | {head} | {mean('val_error_pct'):.3f} | "
                          f"{mean('test_error_pct'):.3f} | {mean('max_compression'):.1f}x | {per} |")
    return md


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_choice",
                                description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--min-rate", nargs="*", default=[], metavar="PRIOR=RATE")
    a = p.parse_args(argv)
    try:
        rates = {k: float(v) for k, v in (s.split("=", 1) for s in a.min_rate)}
    except ValueError:
        p.error("--min-rate takes PRIOR=RATE, e.g. group-nj=58")
    sweeps = load(a.folder)
    if not sweeps:
        p.error(f"{a.folder}: no threshold_sweep files (*_seed<S>_<setting>.json)")
    print("\n".join(table(sweeps, rates)))


if __name__ == "__main__":
    main()

"""Every way to run a compressed model, timed side by side with its dense original.

Variants: the dense original and the compressed model in float32, sparse (CSR, chosen per
layer) and int8, on PyTorch and on onnxruntime. A variant this installation cannot run (no
onnxruntime, no quantized engine, no layer that fits int8, no sparse kernel) is a row that says
why instead of a number.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from kwh.errors import KwhError

from .bench import Measurement, measure, weight_bytes
from .prepare import SPARSE_MODES, format_choices, prepare

__all__ = ["BenchConfig", "BenchRow", "BenchResult", "run_bench", "format_bench"]

ProgressFactory = Callable[[str], contextlib.AbstractContextManager]


@dataclass
class BenchConfig:
    """How to time: threads for torch and onnxruntime, the large batch, repeats, warm-up."""

    threads: int = 1
    batch: int = 1000
    repeats: int = 30
    warmup: int = 5
    sparse: str = "auto"
    sparse_repeats: int = 5  # per layer and form, when sparse="auto" chooses
    engine: str | None = None  # torch quantized engine (default: torch's current)
    activation_type: str = "uint8"  # onnxruntime int8 activations

    def __post_init__(self):
        for name in ("threads", "batch", "repeats", "sparse_repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is invalid; give a positive integer")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup={self.warmup!r} is invalid; give an integer >= 0")
        if self.sparse not in SPARSE_MODES:
            raise ValueError(f"Unknown sparse mode {self.sparse!r}; choose one of: "
                             f"{', '.join(SPARSE_MODES)}")


@dataclass
class BenchRow:
    """One variant: its timings (None where it could not run), reductions and test error."""

    variant: str  # "dense original", "float32", "sparse", "int8"
    runtime: str  # "torch" or "onnxruntime"
    latency_ms: float | None = None
    throughput: float | None = None  # examples per second at the large batch
    latency_speedup: float | None = None  # vs the dense original on the same runtime
    throughput_speedup: float | None = None
    macs_reduction: float | None = None  # from the summary
    bytes_reduction: float | None = None  # original float32 bytes / this variant's weight bytes
    weight_bytes: int | None = None
    error: float | None = None
    note: str = ""
    measurement: dict | None = None


@dataclass
class BenchResult:
    """The rows, the settings they were measured under, and what sparse/int8 chose per layer."""

    rows: list[BenchRow]
    config: BenchConfig
    environment: dict
    summary: dict
    inputs: str
    sparse_choices: dict = field(default_factory=dict)  # "batch 1" / "batch N" -> [dict]
    int8: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "environment": self.environment,
                "summary": self.summary, "inputs": self.inputs,
                "rows": [asdict(r) for r in self.rows], "sparse_choices": self.sparse_choices,
                "int8": self.int8}


def _environment(threads: int) -> dict:
    env = {"torch": torch.__version__, "torch_threads": threads,
           "quantized_engine": torch.backends.quantized.engine,
           "machine": platform.machine(), "processor": platform.processor() or None,
           "cpus": os.cpu_count()}
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
        env["onnxruntime_intra_op_threads"] = threads
    except ImportError:
        env["onnxruntime"] = None
    return env


def _summary_ratios(summary: dict) -> dict:
    def ratio(a, b):
        x, y = summary.get(a), summary.get(b)
        return x / y if x and y else None
    return {"macs": ratio("macs_original", "macs"),
            "macs_nonzero": ratio("macs_original", "macs_nonzero"),
            "bytes_fp32": ratio("size_fp32_original_bytes", "size_fp32_bytes"),
            "bytes_payload": ratio("size_fp32_original_bytes", "payload_bytes"),
            "original_bytes": summary.get("size_fp32_original_bytes")}


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _no_progress(_desc: str):
    return contextlib.nullcontext(None)


def run_bench(model: nn.Module, *, one: Tensor, batch: Tensor, calibration: Tensor,
              dense: nn.Module | None = None, dense_label: str = "dense original",
              dense_note: str = "", test: Iterable | None = None,
              config: BenchConfig | None = None, progress: ProgressFactory | None = None,
              calibration_note: str = "") -> BenchResult:
    """Time every variant of ``model`` (a compressed chain) at batch 1 (``one``) and at the
    large batch (``batch``); with ``test`` batches of (x, y), also each variant's test error.

    calibration: inputs that fix int8 activation ranges. dense: the dense original (random
    weights are fine: it is timed, not evaluated). progress(desc) gives a context manager
    whose value is a progress(done, total) callback (or None).
    """
    from kwh.format.onnx import export_onnx
    from kwh.compress.metrics import evaluate

    config = config or BenchConfig()
    progress = progress or _no_progress
    summary = dict(getattr(model, "kwh_summary", None) or {})
    ratios = _summary_ratios(summary)
    model = model.eval()
    shape = tuple(one.shape[1:])
    result = BenchResult([], config, _environment(config.threads),
                         {"ratios": ratios, **{k: summary.get(k) for k in (
                             "architecture_original", "architecture", "bits", "macs_original",
                             "macs", "macs_nonzero", "size_fp32_original_bytes",
                             "size_fp32_bytes", "payload_bytes", "density")}},
                         calibration_note)
    original_bytes = ratios["original_bytes"] or (weight_bytes(dense) if dense is not None
                                                  else None)
    base: dict[str, BenchRow] = {}

    def add(variant: str, runtime: str, build: Callable[[], tuple], macs: float | None,
            evaluated: bool = True) -> None:
        row = BenchRow(variant, runtime, macs_reduction=macs)
        result.rows.append(row)
        try:
            small, big, note = build()
        except (KwhError, ImportError, NotImplementedError, RuntimeError) as err:
            row.note = "not run: " + " ".join(str(err).split())
            return
        row.note = note
        with progress(f"kwh bench: {variant} [{runtime}]") as bar:
            m: Measurement = measure(small, one, batch, repeats=config.repeats,
                                     warmup=config.warmup, model_batch=big, progress=bar)
        row.measurement = m.to_dict()
        row.latency_ms, row.throughput = m.latency_ms, m.throughput
        row.weight_bytes = weight_bytes(big)
        if original_bytes:
            row.bytes_reduction = original_bytes / row.weight_bytes
        ref = base.get(runtime)
        if variant == "dense original":
            base[runtime] = row
        elif ref is not None and ref.latency_ms:
            row.latency_speedup = ref.latency_ms / row.latency_ms
            row.throughput_speedup = row.throughput / ref.throughput
        if test is not None and evaluated:
            with torch.inference_mode():
                row.error = evaluate(big, test)["error"]

    with _torch_threads(config.threads), tempfile.TemporaryDirectory() as tmp:
        from .ort import OrtModule

        onnx_path = {}

        def exported(name: str, m: nn.Module) -> str:
            if name not in onnx_path:
                onnx_path[name] = export_onnx(m, os.path.join(tmp, f"{name}.onnx"), shape)
            return onnx_path[name]

        def ort_float(name: str, m: nn.Module, note: str = "") -> Callable[[], tuple]:
            def build():
                session = OrtModule(exported(name, m), config.threads, f"{name} float32")
                return session, session, note
            return build

        if dense is not None:
            dense = dense.eval()
            note = f"{dense_label}, random weights: speed only"
            add("dense original", "torch", lambda: (dense, dense, note), 1.0, False)
            add("dense original", "onnxruntime", ort_float("dense", dense, note), 1.0, False)
        else:
            for runtime in ("torch", "onnxruntime"):
                result.rows.append(BenchRow("dense original", runtime,
                                            note=f"not run: {dense_note or 'no dense original'}"))
        add("float32", "torch", lambda: (model, model, ""), ratios["macs"])

        def sparse_variant():
            kw = dict(input_shape=shape, repeats=config.sparse_repeats)
            small = prepare(model, config.sparse, example_inputs=one, **kw)
            big = prepare(model, config.sparse, example_inputs=batch, **kw)
            result.sparse_choices = {
                "batch 1": [c.to_dict() for c in small.kwh_sparse_choices],
                f"batch {len(batch)}": [c.to_dict() for c in big.kwh_sparse_choices]}
            n = [sum(c.chosen == "sparse" for c in m.kwh_sparse_choices) for m in (small, big)]
            return small, big, f"CSR layers: {n[0]} at batch 1, {n[1]} at batch {len(batch)}"
        add("sparse", "torch", sparse_variant, ratios["macs_nonzero"])

        def int8_torch():
            from .int8_torch import quantize_torch
            q = quantize_torch(model, calibration, engine=config.engine)
            n = sum(p.int8 for p in q.kwh_int8_plan)
            result.int8["torch"] = {
                "engine": q.kwh_quant_engine, "activation_bits": q.kwh_activation_bits,
                "layers": [p.to_dict() for p in q.kwh_int8_plan]}
            return q, q, (f"{q.kwh_quant_engine}, {n}/{len(q.kwh_int8_plan)} layers int8, "
                          f"{q.kwh_activation_bits}-bit activations")
        add("int8", "torch", int8_torch, ratios["macs"])
        add("float32", "onnxruntime", ort_float("compressed", model), ratios["macs"])

        def int8_onnx():
            from .int8_onnx import quantize_onnx
            r = quantize_onnx(model, os.path.join(tmp, "int8.onnx"), calibration,
                              float_onnx=exported("compressed", model),
                              activation_type=config.activation_type)
            n = sum(p.int8 for p in r.layers)
            exact = all(v is True for v in r.exact.values())
            result.int8["onnxruntime"] = {
                "activation_type": r.activation_type, "calibrate_method": r.calibrate_method,
                "weights": "int8 per tensor, scale 2^-frac_bits, zero point 0",
                "weights_exact": r.exact, "layers": [p.to_dict() for p in r.layers]}
            o = OrtModule(r.path, config.threads, "compressed int8")
            return o, o, (f"QDQ {r.activation_type} activations, {n}/{len(r.layers)} layers "
                          f"int8, weights {'exact' if exact else 'NOT all exact'}")
        add("int8", "onnxruntime", int8_onnx, ratios["macs"])
        result.rows.append(BenchRow(
            "sparse", "onnxruntime", macs_reduction=ratios["macs_nonzero"],
            note="not run: onnxruntime's CPU provider has no sparse-weight kernel (it stores "
                 "sparse initializers dense)"))
    return result


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_bench(result: BenchResult) -> str:
    """The table, then the settings, the speed-up's meaning and the per-layer choices."""
    c, env = result.config, result.environment
    head = (f"{'variant':<15} {'runtime':<11} {'b=1 ms':>8} {'x':>6} "
            f"{f'b={c.batch} ex/s':>12} {'x':>6} {'MACs /':>7} {'bytes /':>8} {'error':>7}  note")
    lines = [head, "-" * len(head)]
    for r in result.rows:
        lines.append(
            f"{r.variant:<15} {r.runtime:<11} {_fmt(r.latency_ms, '.3f'):>8} "
            f"{_fmt(r.latency_speedup, '.2f'):>6} {_fmt(r.throughput, ',.0f'):>12} "
            f"{_fmt(r.throughput_speedup, '.2f'):>6} {_fmt(r.macs_reduction, '.1f'):>7} "
            f"{_fmt(r.bytes_reduction, '.1f'):>8} "
            f"{'-' if r.error is None else f'{100 * r.error:.2f}%':>7}  {r.note}")
    s, ratios = result.summary, result.summary.get("ratios", {})
    lines += [
        "",
        f"x: speed-up over the dense original on the same runtime (median of {c.repeats} runs "
        f"after {c.warmup} warm-up; onnxruntime rows time session.run on a numpy input, "
        "without forward()'s torch conversions); MACs /: macs_original / macs from the summary (nonzero "
        "MACs for sparse); bytes /: the original's float32 bytes / the weight bytes this "
        "variant holds (int8 weights, CSR values and indices, ONNX initializers)",
        f"summary: {s.get('architecture_original')} -> {s.get('architecture')}, bits "
        f"{s.get('bits')}; MACs / {_fmt(ratios.get('macs'), '.1f')} (nonzero "
        f"{_fmt(ratios.get('macs_nonzero'), '.1f')}), float32 bytes / "
        f"{_fmt(ratios.get('bytes_fp32'), '.1f')}, .kwh payload / "
        f"{_fmt(ratios.get('bytes_payload'), '.1f')}",
        f"threads: torch {env['torch_threads']}, onnxruntime intra-op "
        f"{env.get('onnxruntime_intra_op_threads', '-')}; torch {env['torch']} "
        f"(quantized engine {env['quantized_engine']}), onnxruntime "
        f"{env.get('onnxruntime') or 'not installed'}; {env['cpus']} CPUs, {env['machine']}",
    ]
    if result.inputs:
        lines.append(f"inputs: {result.inputs}")
    for key, choices in result.sparse_choices.items():
        from .prepare import SparseChoice
        lines += ["", f"sparse choices at {key} (sparse={c.sparse}):",
                  format_choices([SparseChoice(**d) for d in choices])]
    return "\n".join(lines)

"""`kwh env`: versions, machine and energy counters, to paste into bug reports."""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
from importlib import metadata

__all__ = ["register", "run", "collect"]

_PACKAGES = ("torch", "numpy", "safetensors", "tqdm", "zstandard", "matplotlib", "onnx",
             "onnxruntime", "nvidia-ml-py")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cuda() -> dict:
    """CUDA as torch sees it, without creating a CUDA context (no device properties queried)."""
    import torch

    info = {"cuda_build": torch.version.cuda or "none",
            "cuda_available": torch.cuda.is_available()}
    if info["cuda_available"]:
        info["cuda_devices"] = torch.cuda.device_count()
    return info


def _nvml() -> str:
    """NVML (GPU energy counter) availability: device names and whether the counter answers."""
    try:
        import pynvml
    except ImportError:
        return "unavailable (nvidia-ml-py not installed)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # no driver, no GPU: the library raises its own error types
        return f"unavailable ({type(e).__name__})"
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
                names.append(f"{name} (energy counter ok)")
            except Exception:
                names.append(f"{name} (no energy counter)")
        return "; ".join(names) or "no GPU"
    finally:
        pynvml.nvmlShutdown()


def _rapl() -> str:
    """Intel/AMD RAPL package counters under /sys/class/powercap and whether they are readable."""
    files = sorted(glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"))
    if not files:
        return "unavailable (no /sys/class/powercap/intel-rapl:*)"
    readable = []
    for f in files:
        try:
            with open(f, encoding="ascii") as fh:
                int(fh.read().strip())
            readable.append(f)
        except (OSError, ValueError):
            pass
    if not readable:
        return f"present ({len(files)} domains) but not readable (root only on kernels >= 5.10)"
    return f"readable ({len(readable)} of {len(files)} domains)"


def collect() -> dict:
    """Everything `kwh env` reports, as a dict."""
    import torch
    import torch.distributed as dist

    import kwh

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "kwh": f"{kwh.__version__} ({os.path.dirname(kwh.__file__)})",
        "python": f"{platform.python_version()} ({platform.python_implementation()}, "
                  f"{sys.executable})",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "torch_threads": torch.get_num_threads(),
    }
    info.update({p: _version(p) for p in _PACKAGES})
    info.update(_cuda())
    info["distributed"] = (f"gloo {dist.is_available() and dist.is_gloo_available()}, "
                           f"nccl {dist.is_available() and dist.is_nccl_available()}")
    info["nvml"] = _nvml()
    info["rapl"] = _rapl()
    info["KWH_DATA"] = os.environ.get("KWH_DATA", "not set")
    return info


def register(subparsers) -> None:
    p = subparsers.add_parser("env", help="print versions and machine information for bug reports",
                              description="Versions of kwh and its dependencies, the CPU, CUDA "
                                          "(without initialising it), NVML and RAPL counters.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"- {key}: {value}")
    return 0

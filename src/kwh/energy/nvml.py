"""NVIDIA GPU energy through NVML's total-energy counter (nvidia-ml-py).

``nvmlDeviceGetTotalEnergyConsumption`` returns millijoules since the driver was loaded
(Volta and newer); it is refreshed every 20-100 ms, so a measurement window must span many
inferences. The module is imported and initialised only when asked, never at import of kwh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NvmlCounter", "find_nvml"]


@dataclass
class NvmlCounter:
    """Total energy of one GPU, in joules since driver load."""

    nvml: Any
    handle: Any
    index: int
    name: str = ""

    def read_j(self) -> float:
        """Joules (the counter is 64-bit millijoules: no wrap-around in practice)."""
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) * 1e-3


def _import_nvml():
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def find_nvml(index: int = 0, nvml: Any = None) -> tuple[NvmlCounter | None, list[str]]:
    """The energy counter of GPU ``index``, or None and the reasons there is none.

    ``nvml`` defaults to the ``pynvml`` module of nvidia-ml-py (tests pass a fake).
    """
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is None:
        return None, ["NVML: nvidia-ml-py is not installed (pip install 'kwh[energy]')"]
    error = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error as e:
        return None, [f"NVML: cannot initialise ({e}); no NVIDIA driver on this machine?"]
    try:
        count = nvml.nvmlDeviceGetCount()
        if index >= count:
            getattr(nvml, "nvmlShutdown", lambda: None)()
            return None, [f"NVML: no GPU {index} (this machine has {count})"]
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except error as e:
        getattr(nvml, "nvmlShutdown", lambda: None)()
        return None, [f"NVML: GPU {index} has no total-energy counter ({e}; it needs a "
                      "Volta or newer GPU)"]
    return NvmlCounter(nvml, handle, index, f"NVML GPU {index} ({name})"), []

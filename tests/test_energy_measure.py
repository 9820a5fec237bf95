"""Measured energy: RAPL on a fake sysfs tree, NVML through a fake module, idle subtraction."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from kwh.energy.measure import Measurement, Unavailable, measure, measure_model
from kwh.energy.nvml import find_nvml
from kwh.energy.rapl import find_rapl, wrap_delta


def rapl_tree(root: Path, domains: dict[str, tuple[str, int, int]]) -> Path:
    """Write powercap folders: {folder: (name, energy_uj, max_energy_range_uj)}."""
    for folder, (name, energy, max_range) in domains.items():
        d = root / folder
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def set_energy(root: Path, folder: str, uj: int) -> None:
    (root / folder / "energy_uj").write_text(f"{uj}\n")


def test_wrap_delta():
    assert wrap_delta(100, 250, 1000) == 150
    assert wrap_delta(900, 50, 1000) == 150


def test_rapl_sums_packages_only_and_undoes_wrap(tmp_path):
    root = rapl_tree(tmp_path, {
        "intel-rapl:0": ("package-0", 999_000_000, 1_000_000_000),
        "intel-rapl:0:0": ("core", 5, 1_000_000_000),       # nested: never summed
        "intel-rapl:0:1": ("dram", 7, 1_000_000_000),
        "intel-rapl:1": ("package-1", 10_000_000, 1_000_000_000),
        "intel-rapl:2": ("psys", 0, 1_000_000_000),          # platform: contains packages
        "intel-rapl-mmio:0": ("package-0", 0, 1_000_000_000),
    })
    counter, reasons = find_rapl(root)
    assert reasons == []
    assert counter.name == "RAPL package-0 + package-1"
    assert counter.read_j() == 0.0
    set_energy(root, "intel-rapl:0", 2_000_000)          # wrapped: +1 J +2 J
    set_energy(root, "intel-rapl:1", 14_000_000)         # +4 J
    set_energy(root, "intel-rapl:0:0", 999_999_999)      # nested change must not count
    set_energy(root, "intel-rapl:2", 500_000_000)        # psys must not count
    assert counter.read_j() == pytest.approx(7.0)
    set_energy(root, "intel-rapl:0", 3_000_000)
    assert counter.read_j() == pytest.approx(8.0)


def test_rapl_psys_alone_is_used(tmp_path):
    root = rapl_tree(tmp_path, {"intel-rapl:0": ("psys", 1, 100)})
    counter, _ = find_rapl(root)
    assert counter.name == "RAPL psys"


def test_rapl_permission_denied_is_said(tmp_path, monkeypatch):
    root = rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, 100)})
    real = Path.read_text

    def guarded(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", guarded)  # root ignores chmod, so deny here
    counter, reasons = find_rapl(root)
    assert counter is None
    assert len(reasons) == 1 and "permission denied" in reasons[0]
    assert "intel-rapl:0/energy_uj" in reasons[0] and "root" in reasons[0]


def test_rapl_missing_tree(tmp_path):
    counter, reasons = find_rapl(tmp_path / "powercap")
    assert counter is None and "does not exist" in reasons[0]
    counter, reasons = find_rapl(tmp_path)
    assert counter is None and "no intel-rapl:N domain" in reasons[0]


class FakeNvml:
    """The parts of pynvml kwh uses; energy in mJ advances by ``step_mj`` per reading."""

    class NVMLError(Exception):
        pass

    def __init__(self, supported=True, driver=True, start_mj=5_000, step_mj=250):
        self.supported, self.driver = supported, driver
        self.mj, self.step = start_mj, step_mj
        self.shutdown = False

    def nvmlInit(self):
        if not self.driver:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        return b"Fake V100"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.supported:
            raise self.NVMLError("Not Supported")
        self.mj += self.step
        return self.mj


def test_nvml_counter_reads_joules():
    counter, reasons = find_nvml(0, FakeNvml())
    assert reasons == [] and counter.name == "NVML GPU 0 (Fake V100)"
    a, b = counter.read_j(), counter.read_j()
    assert b - a == pytest.approx(0.25)


@pytest.mark.parametrize("fake,match", [
    (FakeNvml(driver=False), "cannot initialise.*Library Not Found"),
    (FakeNvml(supported=False), "no total-energy counter.*Volta"),
])
def test_nvml_unavailable_says_why(fake, match):
    counter, reasons = find_nvml(0, fake)
    assert counter is None
    assert len(reasons) == 1 and re.search(match, reasons[0])
    counter, reasons = find_nvml(3, FakeNvml())
    assert counter is None and "no GPU 3" in reasons[0]


class FakeClockCounter:
    """Energy = idle power x time + fixed joules per inference, on a fake clock."""

    def __init__(self, idle_w=20.0, j_per_inf=0.5, s_per_inf=0.01):
        self.t, self.e = 0.0, 0.0
        self.idle_w, self.j_per_inf, self.s_per_inf = idle_w, j_per_inf, s_per_inf
        self.name = "fake"

    def clock(self):
        return self.t

    def sleep(self, s):
        self.t += s
        self.e += self.idle_w * s

    def step(self, n=10):
        dt = n * self.s_per_inf
        self.t += dt
        self.e += self.idle_w * dt + n * self.j_per_inf
        return n

    def read_j(self):
        return self.e


def test_measure_subtracts_idle_power():
    f = FakeClockCounter()
    m = measure(f.step, f, window_s=1.0, clock=f.clock, sleep=f.sleep)
    assert m.idle_w == pytest.approx(20.0)
    assert m.inferences == 100 and m.window_s == pytest.approx(1.0)
    assert m.total_j == pytest.approx(100 * 0.5 + 20.0 * 1.0)
    assert m.dynamic_per_inference_j == pytest.approx(0.5)
    assert m.to_dict()["available"] is True


def test_measure_model_without_counters_says_so(tmp_path):
    r = measure_model(nn.Linear(3, 2), torch.zeros(4, 3), rapl_root=tmp_path / "none")
    assert isinstance(r, Unavailable) and not isinstance(r, Measurement)
    assert "does not exist" in str(r) and r.to_dict() == {"available": False,
                                                           "reasons": r.reasons}


def test_measure_model_on_fake_rapl(tmp_path, monkeypatch):
    root = rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 0, 10**12)})
    calls = {"n": 0}

    class Model(nn.Module):
        def forward(self, x):
            calls["n"] += 1
            set_energy(root, "intel-rapl:0", calls["n"] * 1_000_000)  # 1 J per batch
            return x

    r = measure_model(Model(), torch.zeros(8, 3), rapl_root=root, window_s=0.05)
    assert isinstance(r, Measurement) and r.counter == "RAPL package-0"
    assert r.inferences == 8 * (calls["n"] - 1)
    assert r.total_j == pytest.approx(calls["n"] - 1)
    assert r.idle_w == 0.0


def test_measure_refuses_a_step_that_counts_nothing():
    f = FakeClockCounter()

    def step() -> int:
        f.sleep(0.1)  # time passes, nothing is counted
        return 0

    with pytest.raises(ValueError, match="no inferences"):
        measure(step, f, window_s=0.5, clock=f.clock, sleep=f.sleep)

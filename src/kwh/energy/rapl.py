"""Intel/AMD RAPL energy counters through the Linux powercap sysfs tree.

``/sys/class/powercap/intel-rapl:N/energy_uj`` counts microjoules of package N since some
unknown start and wraps to 0 after ``max_energy_range_uj``. Domains nest: intel-rapl:N:M
(core, uncore, dram) are parts of, or beside, package N and must never be added to it; the
``psys`` domain covers the whole platform, packages included. So the total here is the sum of
the top-level package domains only (psys alone where no package domain exists). Since Linux
5.10 ``energy_uj`` is readable by root only (CVE-2020-8694, the Platypus attack).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RAPL_ROOT", "RaplDomain", "RaplCounter", "find_rapl", "wrap_delta"]

RAPL_ROOT = Path("/sys/class/powercap")
_TOP = re.compile(r"^intel-rapl:\d+$")


def wrap_delta(prev: int, now: int, max_range: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after ``max_range``."""
    return now - prev if now >= prev else now + max_range - prev


@dataclass
class RaplDomain:
    """One top-level powercap domain: its folder, name and wrap range."""

    path: Path
    name: str
    max_range_uj: int

    def read_uj(self) -> int:
        """The raw counter, in microjoules."""
        return int((self.path / "energy_uj").read_text().strip())


@dataclass
class RaplCounter:
    """Sum of the package domains, with wrap-around undone between polls.

    Poll (``read_j``) at least once per wrap period (``max_energy_range_uj`` / power: minutes
    to hours); a window between two polls longer than that would lose whole wraps.
    """

    domains: list[RaplDomain]
    name: str = ""
    _last: list[int] = field(default_factory=list, repr=False)
    _total_uj: int = 0

    def __post_init__(self):
        self.name = self.name or "RAPL " + " + ".join(d.name for d in self.domains)
        self._last = [d.read_uj() for d in self.domains]

    def read_j(self) -> float:
        """Joules since this counter was created (monotone)."""
        for i, d in enumerate(self.domains):
            now = d.read_uj()
            self._total_uj += wrap_delta(self._last[i], now, d.max_range_uj)
            self._last[i] = now
        return self._total_uj * 1e-6


def find_rapl(root: str | Path = RAPL_ROOT) -> tuple[RaplCounter | None, list[str]]:
    """The package-level RAPL counter of this machine, or None and the reasons there is none."""
    root = Path(root)
    if not root.is_dir():
        return None, [f"RAPL: {root} does not exist (no powercap driver: not an Intel/AMD "
                      "host with RAPL exposed, or a container/VM without it)"]
    tops = sorted((p for p in root.iterdir() if _TOP.match(p.name)), key=lambda p: p.name)
    if not tops:
        return None, [f"RAPL: no intel-rapl:N domain under {root}"]
    domains, reasons = [], []
    for p in tops:
        try:
            name = (p / "name").read_text().strip()
            max_range = int((p / "max_energy_range_uj").read_text().strip())
            (p / "energy_uj").read_text()
        except PermissionError:
            reasons.append(f"RAPL: permission denied reading {p / 'energy_uj'} (root-only since "
                           "Linux 5.10; run as root or grant read access to that file)")
            continue
        except (OSError, ValueError) as e:
            reasons.append(f"RAPL: cannot read {p}: {e}")
            continue
        domains.append(RaplDomain(p, name, max_range))
    packages = [d for d in domains if d.name != "psys"]
    chosen = packages or domains  # psys contains the packages: never add both
    if not chosen:
        return None, reasons
    return RaplCounter(chosen), reasons

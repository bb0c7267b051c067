"""Energy over a run's measured part: the physical cost per output token, beside MBU.

On a GPU it is the difference of NVML's total-energy counter (millijoules since the driver loaded, Volta and later)
over the run, summed over the GPUs the server computes on, never every GPU of the host (another tenant's would
count). On a CPU it is RAPL's package counters under /sys/class/powercap where the machine exposes them: they count
the whole package, this suite's client included, which the note says. Elsewhere the figure is "not measured", with
the reason, and a bound on it fails as missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

POWERCAP = Path("/sys/class/powercap")


@dataclass
class EnergyReading:
    """Joules over ``seconds`` of the measured part; ``joules`` None with the reason in ``note``."""

    joules: float | None
    seconds: float
    source: str  # "nvml", "rapl" or "" (not measured)
    note: str = ""


class _Counter:
    """One way of reading a cumulative energy counter, in joules, with its wrap range (0: does not wrap)."""

    source = ""

    def read(self) -> list[float]:
        raise NotImplementedError

    def wraps(self) -> list[float]:
        return [0.0 for _ in self.read()]


class NvmlCounter(_Counter):
    source = "nvml"

    def __init__(self, nvml: Any, indices: Sequence[int]) -> None:
        self.nvml = nvml
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]

    def read(self) -> list[float]:
        return [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0 for h in self.handles]


class RaplCounter(_Counter):
    """The package zones (``intel-rapl:N``, also what AMD's Zen exposes through the same driver); their sub-zones
    (core, uncore, dram) are parts of a package and would count twice."""

    source = "rapl"

    def __init__(self, root: Path = POWERCAP) -> None:
        self.zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)

    def read(self) -> list[float]:
        return [int((z / "energy_uj").read_text()) / 1e6 for z in self.zones]

    def wraps(self) -> list[float]:
        out = []
        for z in self.zones:
            try:
                out.append(int((z / "max_energy_range_uj").read_text()) / 1e6)
            except (OSError, ValueError):
                out.append(0.0)
        return out


def open_counter(gpus: Sequence[int], nvml: Any | None = None, root: Path = POWERCAP) -> tuple[_Counter | None, str]:
    """The counter for a server on ``gpus`` (NVML indices; empty: a CPU server), or None and why not."""
    if gpus:
        if nvml is None:
            from servingbench.measure.telemetry import _nvml

            nvml = _nvml()
        if nvml is None:
            return None, "energy not measured: NVML is not available (no driver library) to read the GPUs' counters"
        try:
            counter = NvmlCounter(nvml, gpus)
            counter.read()
            return counter, ""
        except Exception as e:  # noqa: BLE001 - NVMLError_NotSupported on pre-Volta GPUs, and the like
            return None, (f"energy not measured: NVML cannot read the total-energy counter of GPU(s) "
                          f"{list(gpus)} ({type(e).__name__}: {e}); it needs a Volta or newer GPU")
    if not root.is_dir():
        return None, (f"energy not measured: this machine exposes no RAPL counters ({root} is absent: a VM or "
                      "container without powercap); run on bare metal with the intel_rapl driver to measure it")
    rapl = RaplCounter(root)
    if not rapl.zones:
        return None, f"energy not measured: {root} has no package zone (intel-rapl:N)"
    try:
        rapl.read()
    except PermissionError:
        return None, (f"energy not measured: {rapl.zones[0]}/energy_uj is readable by root only (Linux 5.10 and "
                      "later); allow it with `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj`")
    except (OSError, ValueError) as e:
        return None, f"energy not measured: RAPL counter unreadable ({type(e).__name__}: {e})"
    return rapl, ""


def difference(before: Sequence[float], after: Sequence[float], wraps: Sequence[float]) -> float:
    """Joules counted between two reads of each counter, across one wrap where the counter has a range."""
    total = 0.0
    for b, a, w in zip(before, after, wraps):
        d = a - b
        if d < 0 and w > 0:
            d += w
        if d < 0:
            raise ValueError(f"energy counter went back ({b:.3f} J -> {a:.3f} J) with no known wrap range")
        total += d
    return total


class EnergyMeter:
    """Reads a counter at ``start`` (right before the measured part) and at ``stop``."""

    def __init__(self, gpus: Sequence[int] = (), nvml: Any | None = None, root: Path = POWERCAP) -> None:
        self.counter, self.note = open_counter(gpus, nvml, root)
        self._before: list[float] | None = None
        self._t0 = 0.0

    def start(self) -> None:
        if self.counter is None:
            return
        try:
            self._before, self._t0 = self.counter.read(), time.perf_counter()
        except Exception as e:  # noqa: BLE001 - a failed read costs the figure, never the run
            self.counter, self.note = None, f"energy not measured: the counter failed at the start ({e})"

    def stop(self) -> EnergyReading:
        if self.counter is None or self._before is None:
            return EnergyReading(None, 0.0, "", self.note or "energy not measured: the meter was never started")
        seconds = time.perf_counter() - self._t0
        try:
            joules = difference(self._before, self.counter.read(), self.counter.wraps())
        except Exception as e:  # noqa: BLE001
            return EnergyReading(None, seconds, self.counter.source, f"energy not measured: {e}")
        note = ("RAPL counts the whole CPU package: this suite's client and anything else on the host are in it"
                if self.counter.source == "rapl" else "")
        return EnergyReading(joules, seconds, self.counter.source, note)

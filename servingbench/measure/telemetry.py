"""Telemetry: GPU memory and utilization (pynvml), process-tree memory (psutil), vLLM's Prometheus /metrics.

Sampling runs on a background thread during a load run so that memory and utilization are what the server
reached under load, not at rest.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

GIB = 1024**3


def _nvml() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver, no library, no GPU: all mean "no GPU telemetry"
        return None


def gpu_count() -> int:
    nvml = _nvml()
    return nvml.nvmlDeviceGetCount() if nvml else 0


def gpu_info() -> list[dict[str, Any]]:
    """Name, total memory and driver of each visible GPU ([] without one)."""
    nvml = _nvml()
    if not nvml:
        return []
    out = []
    driver = nvml.nvmlSystemGetDriverVersion()
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        name = nvml.nvmlDeviceGetName(h)
        out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total_gib": nvml.nvmlDeviceGetMemoryInfo(h).total / GIB,
                    "driver": driver.decode() if isinstance(driver, bytes) else driver})
    return out


def gpu_memory_used() -> list[int]:
    nvml = _nvml()
    if not nvml:
        return []
    return [nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).used
            for i in range(nvml.nvmlDeviceGetCount())]


def wait_for_gpu_memory_release(threshold_gib: float = 2.0, timeout: float = 120.0) -> float:
    """Block until every GPU uses less than ``threshold_gib`` (a stopped server's memory has come back).

    Returns the seconds waited; raises TimeoutError naming the GPU and the memory still held.
    """
    t0 = time.monotonic()
    while True:
        used = gpu_memory_used()
        busy = [(i, u / GIB) for i, u in enumerate(used) if u / GIB >= threshold_gib]
        if not busy:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            held = ", ".join(f"GPU {i}: {g:.1f} GiB" for i, g in busy)
            raise TimeoutError(f"GPU memory not released after {timeout:.0f} s ({held}); "
                               "another process holds it: see nvidia-smi")
        time.sleep(1.0)


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants ([] if it is gone): vLLM runs its engine in child processes."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, bytes."""
    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


@dataclass
class TelemetrySummary:
    samples: int = 0
    rss_peak_gib: float = 0.0
    rss_mean_gib: float = 0.0
    gpu_memory_used_peak_gib: list[float] = field(default_factory=list)
    gpu_memory_total_gib: list[float] = field(default_factory=list)
    gpu_memory_utilization_peak: list[float] = field(default_factory=list)  # used / total, 0..1
    gpu_utilization_mean: list[float] = field(default_factory=list)  # percent, while sampling
    gpu_utilization_max: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sampler:
    """Samples a process tree's RSS and every GPU's memory and utilization at ``interval`` seconds."""

    def __init__(self, pid: int | None, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self._rss: list[int] = []
        self._gpu_mem: list[list[int]] = []
        self._gpu_util: list[list[int]] = []
        self._gpu_total: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def _run(self) -> None:
        nvml = _nvml()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())] if nvml else []
        self._gpu_total = [nvml.nvmlDeviceGetMemoryInfo(h).total for h in handles] if nvml else []
        while not self._stop.is_set():
            if self.pid:
                self._rss.append(tree_rss(self.pid))
            if handles:
                self._gpu_mem.append([nvml.nvmlDeviceGetMemoryInfo(h).used for h in handles])
                self._gpu_util.append([nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles])
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> TelemetrySummary:
        s = TelemetrySummary(samples=max(len(self._rss), len(self._gpu_mem)))
        if self._rss:
            s.rss_peak_gib = max(self._rss) / GIB
            s.rss_mean_gib = sum(self._rss) / len(self._rss) / GIB
        if self._gpu_mem:
            cols = list(zip(*self._gpu_mem))
            utils = list(zip(*self._gpu_util))
            s.gpu_memory_used_peak_gib = [max(c) / GIB for c in cols]
            s.gpu_memory_total_gib = [t / GIB for t in self._gpu_total]
            s.gpu_memory_utilization_peak = [max(c) / t for c, t in zip(cols, self._gpu_total)]
            s.gpu_utilization_mean = [sum(u) / len(u) for u in utils]
            s.gpu_utilization_max = [float(max(u)) for u in utils]
        return s


_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)')
_PROM_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for every sample line of a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        m = _PROM_LINE.match(line)
        if m:
            labels = dict(_PROM_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def fetch_metrics(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> list[tuple[str, dict[str, str], float]]:
    from servingbench.measure.http import open_url

    with open_url(base_url.rstrip("/") + "/metrics", timeout=timeout, api_key=api_key) as resp:
        return parse_prometheus(resp.read().decode("utf-8", errors="replace"))


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str) -> float | None:
    """Sum of a metric over its label sets (``_total`` suffix optional); None if the server lacks it."""
    vals = [v for n, _, v in samples if n in (name, name + "_total")]
    return sum(vals) if vals else None


def metric_labels(samples: list[tuple[str, dict[str, str], float]], name: str) -> dict[str, str]:
    for n, labels, _ in samples:
        if n == name:
            return labels
    return {}

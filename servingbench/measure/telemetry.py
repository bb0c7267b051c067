"""Telemetry: GPU memory and utilization (pynvml), process-tree memory (psutil), vLLM's Prometheus /metrics.

Sampling runs on a background thread during a load run so that memory and utilization are what the server
reached under load, not at rest.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import psutil

GIB = 1024**3


def _nvml() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver, no library, no GPU: all mean "no GPU telemetry"
        return None


class GpuSelectionError(ValueError):
    """The GPUs a server was given cannot be mapped to NVML's (the message says why and what to do)."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


def host_gpus() -> list[dict[str, Any]]:
    """Every GPU NVML sees on the host, index and UUID ([] without NVML). NVML ignores CUDA_VISIBLE_DEVICES."""
    nvml = _nvml()
    if not nvml:
        return []
    return [{"index": i, "uuid": _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)))}
            for i in range(nvml.nvmlDeviceGetCount())]


def visible_nvml_indices(value: str | None, gpus: Sequence[Mapping[str, Any]]) -> list[int]:
    """NVML indices of the GPUs ``CUDA_VISIBLE_DEVICES`` = ``value`` lets a process see, in CUDA's order (its
    device 0 first); every GPU when unset. Read as CUDA reads it: indices or (prefixes of) GPU UUIDs, up to the
    first invalid entry (unknown, ambiguous, repeated, negative). An index is NVML's, which is CUDA's order on a
    host of like GPUs (CUDA_DEVICE_ORDER=PCI_BUS_ID makes it so on any). A MIG instance raises GpuSelectionError."""
    if value is None:
        return [int(g["index"]) for g in gpus]
    by_index = {str(g["index"]): int(g["index"]) for g in gpus}
    out: list[int] = []
    for entry in (e.strip() for e in value.split(",")):
        if entry.startswith("MIG-"):
            raise GpuSelectionError(
                f"CUDA_VISIBLE_DEVICES names MIG instance {entry}: NVML's memory and utilization of its parent GPU "
                "include the other instances, so the server's own cannot be read; run on a whole GPU for GPU "
                "telemetry")
        if entry.startswith("GPU-"):
            found = [int(g["index"]) for g in gpus if str(g.get("uuid", "")).startswith(entry)]
            index = found[0] if len(found) == 1 else None
        else:
            index = by_index.get(entry)
        if index is None or index in out:
            break  # CUDA stops at the first invalid entry
        out.append(index)
    return out


def server_gpu_indices(env: Mapping[str, str], count: int,
                       gpus: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
    """NVML indices of the ``count`` GPUs a server started with ``env`` computes on: the first ``count`` it sees
    (vLLM's tensor-parallel ranks 0..count-1, the HF engine's cuda:0). [] on a host without GPUs."""
    gpus = host_gpus() if gpus is None else gpus
    if not gpus:
        return []
    value = env.get("CUDA_VISIBLE_DEVICES")
    visible = visible_nvml_indices(value, gpus)
    if len(visible) < count:
        raise GpuSelectionError(f"tensor parallel size {count} needs {count} GPUs, but CUDA_VISIBLE_DEVICES="
                                f"{value!r} lets the server see {len(visible)} of the host's {len(gpus)}: list "
                                f"{count} GPUs in CUDA_VISIBLE_DEVICES or lower the tensor parallel size")
    return visible[:count]


def _visible_here() -> list[int]:
    """NVML indices of the GPUs this process (and a server it starts) may use; every GPU where that cannot be
    mapped (a MIG instance: the whole GPU is what NVML can name)."""
    gpus = host_gpus()
    try:
        return visible_nvml_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus)
    except GpuSelectionError:
        return [int(g["index"]) for g in gpus]


def gpu_count() -> int:
    """GPUs visible to this process."""
    return len(_visible_here())


def gpu_info() -> list[dict[str, Any]]:
    """Name, total memory and driver of each GPU visible to this process, in CUDA's order ([] without one)."""
    nvml = _nvml()
    if not nvml:
        return []
    out = []
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    for i in _visible_here():
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        out.append({"index": i, "name": _text(nvml.nvmlDeviceGetName(h)),
                    "memory_total_gib": nvml.nvmlDeviceGetMemoryInfo(h).total / GIB, "driver": driver})
    return out


def gpu_memory_used() -> list[int]:
    """Bytes used on each GPU visible to this process, in CUDA's order: another tenant's GPUs are not waited on."""
    nvml = _nvml()
    if not nvml:
        return []
    return [nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).used for i in _visible_here()]


def wait_for_gpu_memory_release(threshold_gib: float = 2.0, timeout: float = 120.0) -> float:
    """Block until every GPU visible to this process uses less than ``threshold_gib`` (a stopped server's memory
    has come back); GPUs CUDA_VISIBLE_DEVICES hides may be other tenants' and are not waited on.

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
    # energy over the measured part (measure/energy.py): None with the reason in energy_note where not measured
    energy_j: float | None = None
    energy_s: float = 0.0
    energy_source: str = ""  # "nvml" (the server's GPUs) or "rapl" (the CPU packages)
    energy_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sampler:
    """Samples a process tree's RSS, and the memory and utilization of the GPUs it computes on (``gpus``: NVML
    indices, from ``server_gpu_indices``; none by default: other GPUs of the host may be other tenants'), at
    ``interval`` seconds."""

    def __init__(self, pid: int | None, interval: float = 0.25, gpus: Sequence[int] = ()) -> None:
        self.pid = pid
        self.interval = interval
        self.gpus = list(gpus)
        self._rss: list[int] = []
        self._gpu_mem: list[list[int]] = []
        self._gpu_util: list[list[int]] = []
        self._gpu_total: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def _run(self) -> None:
        nvml = _nvml()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in self.gpus] if nvml else []
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

"""The expected-performance table: data, not code.

``perf/expected_performance.toml`` holds ``[workloads]``, ``[configs]`` and ``[[expect]]`` entries. An entry names
a hardware profile, a model and a config, and carries bounds: ``output_throughput = { min = 400 }``. A bound
on ``"METRIC/OTHER"`` is a ratio of this config's metric over config OTHER's, measured in the same session
(``"output_throughput/hf" = { min = 5 }``). Every bound becomes one test; a failure names the measured value,
the bound and the file and line it lives on.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from servingbench.load.workload import ConfigError, Workload, single_stream, workload_from

if TYPE_CHECKING:
    from servingbench.measure.measurement import Measurement

ENTRY_KEYS = {"hardware", "model", "config", "workload", "source", "note"}


@dataclass(frozen=True)
class Bound:
    hardware: str
    model: str
    config: str
    metric: str  # a Measurement metric name, or "metric/other_config" for a ratio
    min: float | None
    max: float | None
    workload: str
    source: str
    location: str  # "perf/expected_performance.toml:42"

    @property
    def ratio_over(self) -> str | None:
        return self.metric.split("/", 1)[1] if "/" in self.metric else None

    @property
    def base_metric(self) -> str:
        return self.metric.split("/", 1)[0]

    @property
    def test_id(self) -> str:
        return f"{self.config}:{self.metric}"

    def describe(self) -> str:
        lo = f">= {self.min:g}" if self.min is not None else ""
        hi = f"<= {self.max:g}" if self.max is not None else ""
        return " and ".join(x for x in (lo, hi) if x)

    def violation(self, value: float) -> str | None:
        """None when ``value`` is within the bound, else the message a failed test prints."""
        if (self.min is None or value >= self.min) and (self.max is None or value <= self.max):
            return None
        return (f"{self.hardware} / {self.model} / {self.config}: {self.metric} = {value:.4g}, expected "
                f"{self.describe()} (threshold at {self.location}; source: {self.source})")


@dataclass
class ExpectationTable:
    path: Path
    workloads: dict[str, dict[str, Workload]]  # name -> {"cpu": ..., "gpu": ...}
    configs: dict[str, dict[str, Any]]
    bounds: list[Bound] = field(default_factory=list)

    def for_run(self, hardware: str, model: str) -> list[Bound]:
        return [b for b in self.bounds if b.hardware == hardware and b.model == model]

    def hardware_profiles(self) -> list[str]:
        return sorted({b.hardware for b in self.bounds})

    def workload(self, name: str, gpu: bool, engine: str | None = None) -> Workload:
        """The cpu or gpu variant of a workload; a "gpu-hf"-style variant, when present, is that engine's."""
        if name not in self.workloads:
            raise ConfigError(f"unknown workload {name!r} in {self.path}; known: {sorted(self.workloads)}")
        variants = self.workloads[name]
        key = "gpu" if gpu else "cpu"
        if engine and f"{key}-{engine}" in variants:
            return variants[f"{key}-{engine}"]
        if key not in variants:
            raise ConfigError(f"workload {name!r} in {self.path} has no {key} variant")
        return variants[key]


def _entry_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if re.match(r"^\s*\[\[\s*expect\s*\]\]", line)]


def load_table(path: Path | str) -> ExpectationTable:
    path = Path(path)
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    workloads = {
        name: {variant: workload_from(f"{name}", spec) for variant, spec in variants.items()}
        for name, variants in raw.get("workloads", {}).items()
    }
    configs = raw.get("configs", {})
    table = ExpectationTable(path, workloads, configs)
    lines = _entry_lines(text)
    for i, entry in enumerate(raw.get("expect", [])):
        where = f"{path}:{lines[i] if i < len(lines) else '?'}"
        for key in ("hardware", "model", "config"):
            if key not in entry:
                raise ConfigError(f"{where}: [[expect]] entry has no {key!r}")
        if entry["config"] not in configs:
            raise ConfigError(f"{where}: config {entry['config']!r} is not defined under [configs]")
        workload = entry.get("workload", "lab")
        if workload not in workloads:
            raise ConfigError(f"{where}: workload {workload!r} is not defined under [workloads]")
        for metric, spec in entry.items():
            if metric in ENTRY_KEYS:
                continue
            if not isinstance(spec, dict) or not set(spec) <= {"min", "max"} or not spec:
                raise ConfigError(f"{where}: bound {metric!r} must be a table with min and/or max, got {spec!r}")
            if "/" in metric and metric.split("/", 1)[1] not in configs:
                raise ConfigError(f"{where}: ratio {metric!r} names config {metric.split('/', 1)[1]!r}, "
                                  "which is not defined under [configs]")
            table.bounds.append(Bound(entry["hardware"], entry["model"], entry["config"], metric,
                                      spec.get("min"), spec.get("max"), workload,
                                      entry.get("source", "unspecified"), where))
    return table


def bound_value(bound: Bound, measure: Callable[[str, Workload], "Measurement"],
                workload_for: Callable[[str], Workload]) -> float:
    """The measured figure a bound is checked against (measurements come from the session's cache).

    ``workload_for(config)`` gives the workload a config runs (engines may have their own variant)."""

    def value(config: str) -> float:
        workload = workload_for(config)
        if bound.base_metric == "batch_efficiency":
            loaded, single = measure(config, workload), measure(config, single_stream(workload))
            c = workload.concurrency or workload.num_requests
            return loaded.value("output_throughput") / (c * single.value("output_throughput"))
        return measure(config, workload).value(bound.base_metric)

    mine = value(bound.config)
    return mine / value(bound.ratio_over) if bound.ratio_over else mine

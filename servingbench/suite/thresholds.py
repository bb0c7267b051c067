"""The expected-performance table: data, not code, in two tiers.

``perf/expected_performance.toml`` holds ``[workloads]``, ``[configs]`` and ``[[expect]]`` entries. An entry names a
hardware, a model and a config, and carries bounds: ``output_throughput = { min = 400 }``. A bound on
``"METRIC/OTHER"`` is a ratio of this config's metric over config OTHER's, measured in the same session
(``"output_throughput/hf" = { min = 5 }``). Every bound becomes one test; a failure names the measured value, the
bound, its tier and the file and line it lives on.

* **exact** tier: ``hardware`` is a hardware key (or a list of them): absolute figures calibrated on that machine.
* **portable** tier: ``hardware = "any-cpu"``, ``"any-gpu"`` or ``"any"``: bounds that hold on any machine of that
  device class because they are ratios measured in the same session or fractions of the physical limit (MBU against
  the hardware's peak bandwidth, from ``hardware_peaks.toml`` or measured at session start).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from servingbench.errors import ConfigError
from servingbench.load.workload import Workload, single_stream, workload_from
from servingbench.measure import catalog
from servingbench.measure.metrics import batch_efficiency
from servingbench.measure.measurement import MissingFigure

if TYPE_CHECKING:
    from servingbench.measure.environment import Hardware
    from servingbench.measure.measurement import Measurement
    from servingbench.suite.capacity import Capacity
    from servingbench.suite.efficiency import DevicePeaks

ENTRY_KEYS = {"hardware", "model", "config", "workload", "source", "note"}
PORTABLE = {"any": ("cpu", "gpu"), "any-cpu": ("cpu",), "any-gpu": ("gpu",)}
ANY_MODEL = "*"
# Figures computed from two runs of the same config (the workload and its single-stream variant), against the
# hardware's peak bandwidth or over a capacity sweep, beside every field a measurement has (Measurement.value).
DERIVED: set[str] = catalog.derived_for_bounds()


@dataclass(frozen=True)
class Bound:
    hardware: str  # a hardware key, or a portable class ("any-cpu", "any-gpu", "any")
    model: str  # a model name, or "*" (portable rows only)
    config: str
    metric: str  # a Measurement metric name, a DERIVED one, or "metric/other_config" for a ratio
    min: float | None
    max: float | None
    workload: str
    source: str
    location: str  # "perf/expected_performance.toml:42"

    @property
    def tier(self) -> str:
        return "portable" if self.hardware in PORTABLE else "exact"

    @property
    def ratio_over(self) -> str | None:
        return self.metric.split("/", 1)[1] if "/" in self.metric else None

    @property
    def base_metric(self) -> str:
        return self.metric.split("/", 1)[0]

    @property
    def test_id(self) -> str:
        return f"{self.hardware}:{self.config}:{self.metric}" + ("" if self.workload == "lab" else f"@{self.workload}")

    def applies_to(self, hardware: "Hardware", model: str) -> bool:
        if self.tier == "portable":
            return hardware.device_class in PORTABLE[self.hardware] and self.model in (model, ANY_MODEL)
        return self.hardware == hardware.key and self.model == model

    def describe(self) -> str:
        lo = f">= {self.min:g}" if self.min is not None else ""
        hi = f"<= {self.max:g}" if self.max is not None else ""
        return " and ".join(x for x in (lo, hi) if x)

    def where(self) -> str:
        return f"{self.tier} tier, {self.hardware} / {self.model} / {self.config}"

    def violation(self, value: float) -> str | None:
        """None when ``value`` is within the bound, else the message a failed test prints."""
        if (self.min is None or value >= self.min) and (self.max is None or value <= self.max):
            return None
        return (f"[{self.where()}] {self.metric} = {value:.4g}, expected {self.describe()} "
                f"(threshold at {self.location}; source: {self.source})")

    def missing(self, why: str) -> str:
        """The message of a bound whose figure the run does not have (it fails, it never passes)."""
        return f"[{self.where()}] {self.metric}: no value to check against {self.describe()}: {why} " \
               f"(threshold at {self.location})"


@dataclass
class ExpectationTable:
    path: Path
    workloads: dict[str, dict[str, Workload]]  # name -> {"cpu": ..., "gpu": ..., "gpu-hf": ...}
    configs: dict[str, dict[str, Any]]
    bounds: list[Bound] = field(default_factory=list)

    def for_run(self, hardware: "Hardware", model: str) -> list[Bound]:
        """Every bound that applies to this hardware and model: its exact rows and the portable tier."""
        return [b for b in self.bounds if b.applies_to(hardware, model)]

    def hardware_keys(self) -> list[str]:
        return sorted({b.hardware for b in self.bounds if b.tier == "exact"})

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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_table(path: Path | str) -> ExpectationTable:
    """Parse and check the whole table; a ConfigError lists every problem found, each with its file and line."""
    from servingbench.suite.run_settings import ENGINES  # the engines a config may name

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the expectations table: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    problems: list[str] = []
    workloads: dict[str, dict[str, Workload]] = {}
    for name, variants in (raw.get("workloads") or {}).items():
        if not isinstance(variants, dict):
            problems.append(f"{path}: [workloads.{name}] must be a table of cpu/gpu variants")
            continue
        for variant, spec in variants.items():
            try:
                if not isinstance(spec, dict):
                    raise ConfigError(f"workload {name!r}: variant {variant!r} must be a table, got {spec!r}")
                workloads.setdefault(name, {})[variant] = workload_from(name, spec, base_dir=path.parent)
            except ConfigError as e:
                problems.append(f"{path}: {e}")
    configs = raw.get("configs") or {}
    for name, entry in configs.items():
        engine = entry.get("engine") if isinstance(entry, dict) else None
        if engine not in ENGINES:
            problems.append(f"{path}: [configs.{name}] engine = {engine!r}: use one of {sorted(ENGINES)}")
    table = ExpectationTable(path, workloads, configs)
    lines = _entry_lines(text)
    for i, entry in enumerate(raw.get("expect", [])):
        where = f"{path}:{lines[i] if i < len(lines) else '?'}"
        problems += _check_entry(entry, where, table)
        if any(p.startswith(where + ":") for p in problems):
            continue
        hardware = entry["hardware"] if isinstance(entry["hardware"], list) else [entry["hardware"]]
        for hw in hardware:
            for metric, spec in entry.items():
                if metric in ENTRY_KEYS:
                    continue
                table.bounds.append(Bound(hw, entry["model"], entry["config"], metric, spec.get("min"),
                                          spec.get("max"), entry.get("workload", "lab"),
                                          entry.get("source", "unspecified"), where))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the expectations table:\n  " + "\n  ".join(problems))
    return table


def _check_entry(entry: dict[str, Any], where: str, table: ExpectationTable) -> list[str]:
    out = []
    for key in ("hardware", "model", "config"):
        if key not in entry:
            out.append(f"{where}: [[expect]] entry has no {key!r}")
    hw = entry.get("hardware")
    if hw is not None and not (isinstance(hw, str) or (isinstance(hw, list) and hw and all(isinstance(h, str) for h in hw))):
        out.append(f"{where}: hardware must be a key, a list of keys, or one of {sorted(PORTABLE)}; got {hw!r}")
    for key in ("model", "config", "workload", "source", "note"):
        if key in entry and not isinstance(entry[key], str):
            out.append(f"{where}: {key} must be a string, got {entry[key]!r}")
    if entry.get("model") == ANY_MODEL and hw not in PORTABLE:
        out.append(f"{where}: model = \"*\" is for portable rows only (hardware = {sorted(PORTABLE)})")
    if isinstance(entry.get("config"), str) and entry["config"] not in table.configs:
        out.append(f"{where}: config {entry['config']!r} is not defined under [configs] "
                   f"(defined: {', '.join(sorted(table.configs)) or 'none'})")
    workload = entry.get("workload", "lab")
    if isinstance(workload, str) and workload not in table.workloads:
        out.append(f"{where}: workload {workload!r} is not defined under [workloads] "
                   f"(defined: {', '.join(sorted(table.workloads)) or 'none'})")
    for metric, spec in entry.items():
        if metric in ENTRY_KEYS:
            continue
        if not isinstance(spec, dict) or not spec or not set(spec) <= {"min", "max"}:
            out.append(f"{where}: bound {metric!r} must be a table with min and/or max, got {spec!r}")
        elif not all(_is_number(v) for v in spec.values()):
            out.append(f"{where}: bound {metric!r}: min and max must be numbers, got {spec!r}")
        elif "min" in spec and "max" in spec and spec["min"] > spec["max"]:
            out.append(f"{where}: bound {metric!r}: min {spec['min']} > max {spec['max']}")
        if "/" in metric and metric.split("/", 1)[1] not in table.configs:
            out.append(f"{where}: ratio {metric!r} names config {metric.split('/', 1)[1]!r}, which is not defined "
                       "under [configs]")
    return out


def bound_value(bound: Bound, measure: Callable[[str, Workload], "Measurement"],
                workload_for: Callable[[str], Workload],
                peaks: Callable[["Measurement"], "DevicePeaks | None"] | None = None,
                on_capacity: Callable[[str, Workload, "Capacity"], None] | None = None) -> float:
    """The measured figure a bound is checked against (measurements come from the session's cache).

    ``workload_for(config)`` gives the workload a config runs (engines may have their own variant); ``peaks(m)``
    the hardware's peaks for MBU; ``on_capacity`` receives a capacity search's curve (the report draws it).
    Raises ``MissingFigure`` when the run has no such figure (no successful
    request, no peak bandwidth known)."""

    def mbu(m: "Measurement") -> float:
        from servingbench.suite.efficiency import EfficiencyError, measurement_efficiency

        try:
            e = measurement_efficiency(m, peaks(m) if peaks else None)
        except EfficiencyError as err:  # what the run lacks for MBU: the bound fails saying so
            raise MissingFigure(f"mbu: {err}") from None
        if e.mbu is None:
            raise MissingFigure("mbu: no peak memory bandwidth is known for this hardware")
        return e.mbu

    def valid(config: str, workload: Workload) -> "Measurement":
        return measure(config, workload).require_valid(bound.metric)

    def value(config: str) -> float:
        workload = workload_for(config)
        metric = bound.base_metric
        if metric == "batch_efficiency":
            loaded, single = valid(config, workload), valid(config, single_stream(workload))
            eff = batch_efficiency(loaded.value("output_throughput"), single.value("output_throughput"),
                                   workload.concurrency or workload.num_requests)
            if eff is None:
                raise MissingFigure("batch_efficiency: undefined for a workload at concurrency 1")
            return eff
        if metric == "capacity_rps":
            from servingbench.suite.capacity import find_capacity

            cap = find_capacity(workload, lambda w: measure(config, w))
            if on_capacity is not None:  # saved first: an invalid run's curve is kept, then the figure is missing
                on_capacity(config, workload, cap)
            return cap.figure()
        if metric == "single_stream_mbu":
            return mbu(valid(config, single_stream(workload)))
        if metric == "mbu":
            return mbu(valid(config, workload))
        return valid(config, workload).value(metric)

    mine = value(bound.config)
    if not bound.ratio_over:
        return mine
    other = value(bound.ratio_over)
    if not other:
        raise MissingFigure(f"{bound.metric}: {bound.base_metric} of {bound.ratio_over} is 0")
    return mine / other


def check(bound: Bound, measure: Callable[[str, Workload], "Measurement"], workload_for: Callable[[str], Workload],
          peaks: Callable[["Measurement"], "DevicePeaks | None"] | None = None,
          on_capacity: Callable[[str, Workload, "Capacity"], None] | None = None) -> str | None:
    """None when the bound holds, else why not: a violation, or a figure the run does not have."""
    try:
        return bound.violation(bound_value(bound, measure, workload_for, peaks, on_capacity))
    except MissingFigure as e:
        return bound.missing(str(e))

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

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from servingbench.errors import ConfigError
from servingbench.load.workload import Workload, single_stream, workload_from
from servingbench.measure import catalog
from servingbench.measure.metrics import batch_efficiency
from servingbench.measure.measurement import MissingFigure, _one_run_figures, known_figure
from servingbench.errors import TableLines
from servingbench.expect.schema import ENTRY_KEYS, config_problems, row_problems

if TYPE_CHECKING:
    from servingbench.measure.environment import Hardware
    from servingbench.measure.measurement import Measurement
    from servingbench.figures.capacity import Capacity
    from servingbench.figures.efficiency import DevicePeaks

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


def load_table(path: Path | str) -> ExpectationTable:
    """Parse and check the whole table; a ConfigError lists every problem found, each with its file and line.

    Each part is typed (``table_schema``: rows, bounds and configs; ``load/workload_schema``: workloads), so a
    misspelt config field, ``concurrency = 0`` or ``top_p = 7`` fails here, not when a test runs."""
    from servingbench.servers.engines import ENGINES  # the engines a config may name

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the expectations table: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    lines = TableLines(path, text)
    problems: list[str] = []
    workloads: dict[str, dict[str, Workload]] = {}
    for name, variants in (raw.get("workloads") or {}).items():
        if not isinstance(variants, dict):
            problems.append(f"{lines.at('workloads', name)}: [workloads.{name}] must be a table of cpu/gpu variants")
            continue
        for variant, spec in variants.items():
            where = lines.at("workloads", name, variant)
            try:
                if not isinstance(spec, dict):
                    raise ConfigError(f"workload {name!r}: variant {variant!r} must be a table, got {spec!r}")
                workloads.setdefault(name, {})[variant] = workload_from(name, spec, base_dir=path.parent)
            except ConfigError as e:
                problems.append(f"{where}: {e}")
    configs = raw.get("configs") or {}
    for name, entry in configs.items():
        problems += [f"{lines.at('configs', *key)}: {problem}" for key, problem in config_problems(name, entry, ENGINES)]
    table = ExpectationTable(path, workloads, configs)
    for i, entry in enumerate(raw.get("expect", [])):
        where = lines.row(i)
        row, mine = row_problems(entry)
        mine += _references(entry, table, set(raw.get("workloads") or {}))
        if mine or row is None:
            problems += [f"{where}: {p}" for p in mine]
            continue
        for hw in row.hardware:
            for metric, spec in row.bounds.items():
                table.bounds.append(Bound(hw, row.model, row.config, metric, spec.min, spec.max, row.workload,
                                          row.source, where))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the expectations table:\n  " + "\n  ".join(problems))
    return table


def _references(entry: dict[str, Any], table: ExpectationTable, workloads: set[str]) -> list[str]:
    """What a row names that the table must define: its config, workload (one of ``workloads``, broken or not:
    its own problems are reported at its line) and ratio configs; model "*" on portable rows only."""
    out = []
    hw = entry.get("hardware")
    hardware = hw if isinstance(hw, list) else [hw]
    if entry.get("model") == ANY_MODEL and not all(isinstance(h, str) and h in PORTABLE for h in hardware):
        out.append(f"model = \"*\" is for portable rows only (hardware = {sorted(PORTABLE)})")
    if isinstance(entry.get("config"), str) and entry["config"] not in table.configs:
        out.append(f"config {entry['config']!r} is not defined under [configs] "
                   f"(defined: {', '.join(sorted(table.configs)) or 'none'})")
    workload = entry.get("workload", "lab")
    if isinstance(workload, str) and workload not in workloads:
        out.append(f"workload {workload!r} is not defined under [workloads] "
                   f"(defined: {', '.join(sorted(workloads)) or 'none'})")
    for metric in entry:
        base = metric.split("/", 1)[0]
        if metric not in ENTRY_KEYS and not (known_figure(base) or base in DERIVED):
            near = difflib.get_close_matches(base, sorted(_one_run_figures() | DERIVED), n=1)
            out.append(f"bound {metric!r}: no metric {base!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                       + f" (a measurement's figures, README \"Metric definitions\", or {sorted(DERIVED)})")
        if metric not in ENTRY_KEYS and "/" in metric and metric.split("/", 1)[1] not in table.configs:
            out.append(f"ratio {metric!r} names config {metric.split('/', 1)[1]!r}, which is not defined "
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
        from servingbench.figures.efficiency import EfficiencyError, measurement_efficiency

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
                                   workload.load.concurrency or workload.source.num_requests)
            if eff is None:
                raise MissingFigure("batch_efficiency: undefined for a workload at concurrency 1")
            return eff
        if metric == "capacity_rps":
            from servingbench.figures.capacity import find_capacity

            cap = find_capacity(workload, lambda w: measure(config, w))
            if on_capacity is not None:  # saved first: an invalid run's curve is kept, then the figure is missing
                on_capacity(config, workload, cap)
            # a capacity known only from below settles a min, and a max it already exceeds; never a ratio
            exceeds = bound.max is not None and cap.capacity_rps is not None and cap.capacity_rps > bound.max
            return cap.figure(lower_bound_decides=not bound.ratio_over and (bound.max is None or exceeds))
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

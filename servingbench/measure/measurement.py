"""Typed results of a measurement, written atomically as JSON in the run's results directory.

One file per measurement: vLLM's saved-result fields (``completed``, ``output_throughput``, ``median_ttft_ms``,
...) at the top level, then the config, workload, telemetry, environment and every request record, so a report
or a later comparison can recompute anything from raw observations.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from servingbench.measure import catalog
from servingbench.measure.files import atomic_write_json
from servingbench.measure.metrics import BenchmarkMetrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary

SCHEMA = "servingbench.measurement/1"
STUDY_SCHEMA = "servingbench.study/1"  # a study's rows and findings (studies/common.py writes them)


class MissingFigure(LookupError):
    """A figure the run does not have: no successful request measured it. Every bound on it fails."""


class InvalidRun(MissingFigure):
    """A run whose preconditions broke (the client fell behind, queued or saturated; the deadline passed): its
    figures describe the client, not the server, so every bound on it fails with the reason."""


# Figures that stay meaningful when no request succeeded: counts, and the engine's KV layout. What telemetry saw
# of the server is not among them: the memory a server reaches under load is unknown when nothing loaded it.
_WITHOUT_SUCCESS = catalog.without_success()
# Telemetry figures: missing, not 0.0, where nothing sampled what they read (a max bound would pass a zero)
TELEMETRY_FIGURES = ("memory_utilization", "gpu_memory_used_gib", "memory_gib", "gpu_utilization", "rss_peak_gib")
# Energy over the measured part (measure/energy.py): missing, with the meter's reason, where it was not measured
ENERGY_FIGURES = ("energy_j", "mean_power_w", "joules_per_output_token", "output_tokens_per_joule")

# Figures a workload kind adds (figures/workload.py): a run without them has them missing, not unknown
_TURN_FIGURE = re.compile(r"(median|p99)_ttft_ms_turn(\d+)")
_SPEC_FIGURES = {"spec_acceptance_rate", "spec_mean_accepted_length", "spec_drafts", "spec_draft_tokens",
                 "spec_accepted_tokens"}
_REASONING_FIGURES = {"median_ttfat_ms", "p99_ttfat_ms", "unanswered_requests", "mean_reasoning_chunks"}
_PREFIX_FIGURES = {"prefix_cache_hit_rate", "prefix_cache_queries", "prefix_cache_hits", "expected_prefix_hit_rate",
                   "expected_prefix_hit_rate_low", "expected_prefix_hit_rate_high"}


def absent_workload_figure(name: str, records: Sequence[RequestRecord]) -> str | None:
    """Why a run lacks the workload figure ``name`` (None: ``name`` is no workload figure)."""
    turns = sorted({r.turn for r in records if r.turn is not None and r.success})
    served = f"turns with a successful request: {', '.join(map(str, turns))}" if turns else "not a multi-turn run"
    turn = _TURN_FIGURE.fullmatch(name)
    if turn:
        return f"{name}: no successful request at turn {turn.group(2)} ({served})"
    if name == "ttft_last_over_first_turn":
        return f"{name}: needs successful requests at two turns or more ({served})"
    if name in _PREFIX_FIGURES:
        return (f"{name}: the server's /metrics gave no prefix-cache counters over the measured part (not a vLLM "
                "server, /metrics unreachable, or a workload kind that does not read them: only conversation, "
                "shared-prefix and trace do" + ("; the expected figures need a multi-turn run or a trace"
                                                if "expected" in name else "")
                + ")")
    if name in _SPEC_FIGURES:
        return (f"{name}: the server drafted nothing over the run (no vllm:spec_decode counters in /metrics, or "
                "none moved): not a speculative config; give the config a speculative method, e.g. extra_args = "
                "[\"--speculative-config\", '{\"method\": \"ngram\", \"num_speculative_tokens\": 3}']")
    if name in _REASONING_FIGURES:
        if not any(r.reasoning_chunks for r in records if r.success):
            return (f"{name}: no stream carried reasoning (delta.reasoning or reasoning_content), so TTFT is "
                    "already the time to the first answer token; bound median_ttft_ms instead")
        return f"{name}: no request reached its answer past the reasoning; raise the workload's output_len"
    return None


def known_figure(name: str) -> bool:
    """Whether ``Measurement.value`` knows ``name`` (a run may still lack it): a vLLM-style field, a telemetry or
    derived one-run figure, or a workload figure. The table checks its bounds' metrics with it at load."""
    return name in _one_run_figures() or absent_workload_figure(name, []) is not None


@functools.cache
def _one_run_figures() -> frozenset[str]:
    from servingbench.measure.metrics import compute_metrics

    flat = compute_metrics([], 1.0).to_vllm_json()
    return frozenset({k for k, v in flat.items() if not isinstance(v, dict)} | set(TELEMETRY_FIGURES)
                     | set(ENERGY_FIGURES)
                     | {"seconds_per_output_token", "failure_rate", "kv_capacity_tokens"})


@dataclass
class Measurement:
    """One load run against one server config: what the assertions, baselines and report read."""

    key: str
    engine: str
    config_name: str
    config: dict[str, Any]
    workload: dict[str, Any]
    metrics: BenchmarkMetrics
    telemetry: TelemetrySummary
    records: list[RequestRecord]
    started_at: float
    server_startup_s: float | None = None
    server_url: str = ""
    server_started_at: float | None = None  # wall clock of the server's launch: which lifetime ran it (None: unknown)
    memory_total_gib: float = 0.0  # host RAM, for CPU memory utilization
    kv_cache: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    loop_lag_ms_p99: float = 0.0
    invalid: list[str] = field(default_factory=list)  # broken preconditions (generator.preconditions)
    figures: dict[str, float] = field(default_factory=dict)  # workload-specific: per-turn TTFT, prefix hit rate

    def value(self, name: str) -> float:
        """A flat figure by name: any vLLM-style metric field, or a telemetry-derived one.

        Raises ``MissingFigure`` for a figure no successful request measured (an all-failed run has no TTFT, not a
        TTFT of 0), and KeyError for an unknown name. The figure of an invalid run is still given (the summary
        and report show it, marked); what asserts on it calls ``require_valid`` first."""
        if name in self.figures:
            return float(self.figures[name])
        if name in ENERGY_FIGURES:
            return self._energy_figure(name)
        flat = self.metrics.to_vllm_json()
        derived: dict[str, Any] = {name: None for name in TELEMETRY_FIGURES}
        derived.update({
            "seconds_per_output_token": 1.0 / flat["output_throughput"] if flat["output_throughput"] else None,
            "failure_rate": flat["failed"] / max(1, flat["completed"] + flat["failed"]),
            # what the memory the engine was given holds: a bound on it checks the engine's layout, not the
            # gpu_memory_utilization the suite itself passes (memory_utilization reads that back)
            "kv_capacity_tokens": self.kv_cache.get("capacity_tokens"),
        })
        absent = absent_workload_figure(name, self.records)
        if absent:
            raise MissingFigure(absent)
        if name not in derived and not (name in flat and (flat[name] is None or isinstance(flat[name], (int, float)))):
            raise KeyError(f"unknown metric {name!r}; known: "
                           f"{sorted(k for k, v in flat.items() if v is None or isinstance(v, (int, float)))}"
                           f" and {sorted(derived) + sorted(self.figures)}")
        v = derived[name] if name in derived else flat[name]
        if name in TELEMETRY_FIGURES and self.metrics.completed:
            return self._telemetry_figure(name)
        if v is None and name == "kv_capacity_tokens":
            raise MissingFigure("kv_capacity_tokens: the server's /metrics gave no vllm:cache_config_info block "
                                "count (not a vLLM server, or /metrics was unreachable)")
        if v is None and self.metrics.completed:
            why = " (TPOT and ITL need two or more output tokens)" if "tpot" in name or "itl" in name else ""
            raise MissingFigure(f"{name}: none of the {self.metrics.completed} successful requests measured it{why}")
        if v is None or (self.metrics.completed == 0 and name not in _WITHOUT_SUCCESS):
            errors = ", ".join(f"{k} x{n}" for k, n in self.metrics.errors.items()) or "none recorded"
            raise MissingFigure(f"{name}: no successful requests ({self.metrics.completed} completed, "
                                f"{self.metrics.failed} failed; errors: {errors})")
        return float(v)

    def _telemetry_figure(self, name: str) -> float:
        """What the sampler saw of the server; MissingFigure naming what was not sampled."""
        t = self.telemetry
        gpu_mem, gpu_util = max(t.gpu_memory_used_peak_gib, default=0.0), max(t.gpu_utilization_mean, default=None)
        rss = t.rss_peak_gib or None  # 0: no process of the server was sampled (remote, or it was gone)
        values: dict[str, float | None] = {
            "memory_utilization": (max(t.gpu_memory_utilization_peak) if t.gpu_memory_utilization_peak
                                   else rss / self.memory_total_gib if rss and self.memory_total_gib else None),
            "gpu_memory_used_gib": gpu_mem if t.gpu_memory_used_peak_gib else None,
            "memory_gib": (gpu_mem if t.gpu_memory_used_peak_gib else None) or rss,
            "gpu_utilization": gpu_util,
            "rss_peak_gib": rss,
        }
        v = values[name]
        if v is not None:
            return float(v)
        if name.startswith("gpu_") and rss:
            raise MissingFigure(f"{name}: no GPU of the server was sampled (a CPU server)")
        raise MissingFigure(f"{name}: nothing sampled the server's memory ({t.samples} samples; a --server-url "
                            "deployment is not a process of this machine, or the server had exited); it is "
                            "missing, not 0")

    def _energy_figure(self, name: str) -> float:
        """Energy over the measured part, per output token where asked; MissingFigure with the meter's reason."""
        t = self.telemetry
        if t.energy_j is None:
            raise MissingFigure(f"{name}: {t.energy_note or 'energy not measured (a run saved before the meter)'}")
        tokens = self.metrics.total_output_tokens
        if name == "energy_j":
            return float(t.energy_j)
        if name == "mean_power_w":
            if t.energy_s <= 0:
                raise MissingFigure(f"{name}: the energy window has no duration")
            return t.energy_j / t.energy_s
        if not tokens:
            raise MissingFigure(f"{name}: no output tokens over the measured part ({self.metrics.completed} "
                                "successful requests)")
        if name == "joules_per_output_token":
            return t.energy_j / tokens
        if t.energy_j <= 0:
            raise MissingFigure(f"{name}: the counter did not move ({t.energy_j} J over {t.energy_s:.1f} s)")
        return tokens / t.energy_j

    def require_valid(self, name: str) -> "Measurement":
        """This measurement, or ``InvalidRun`` naming ``name`` and every broken precondition."""
        if self.invalid:
            raise InvalidRun(f"{name}: the run is invalid: " + "; ".join(self.invalid))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            **self.metrics.to_vllm_json(),
            "key": self.key, "engine": self.engine, "config_name": self.config_name, "config": self.config,
            "workload": self.workload, "telemetry": self.telemetry.to_dict(), "started_at": self.started_at,
            "server_startup_s": self.server_startup_s, "server_url": self.server_url,
            "server_started_at": self.server_started_at,
            "memory_total_gib": self.memory_total_gib, "kv_cache": self.kv_cache, "warnings": self.warnings,
            "environment": self.environment, "loop_lag_ms_p99": self.loop_lag_ms_p99,
            "invalid": self.invalid, "figures": self.figures,
            "records": [r.to_dict() for r in self.records],
        }

    def save(self, results_dir: Path | str) -> Path:
        path = Path(results_dir) / "measurements" / f"{self.key}.json"
        atomic_write_json(path, self.to_dict())
        return path


def measurement_from_dict(d: dict[str, Any]) -> Measurement:
    """A saved measurement back as a ``Measurement``; its metrics are recomputed from its raw records."""
    from servingbench.measure.metrics import compute_metrics

    records = [RequestRecord.from_dict(r) for r in d["records"]]
    return Measurement(
        key=d["key"], engine=d["engine"], config_name=d["config_name"], config=d["config"], workload=d["workload"],
        metrics=compute_metrics(records, d["duration"]), telemetry=TelemetrySummary(**d["telemetry"]),
        records=records, started_at=d["started_at"], server_startup_s=d.get("server_startup_s"),
        server_url=d.get("server_url", ""), server_started_at=d.get("server_started_at"), memory_total_gib=d.get("memory_total_gib", 0.0),
        kv_cache=d.get("kv_cache", {}), warnings=d.get("warnings", []), environment=d.get("environment", {}),
        loop_lag_ms_p99=d.get("loop_lag_ms_p99", 0.0), invalid=d.get("invalid", []), figures=d.get("figures", {}))


def find_measurement_files(results_dir: Path | str) -> list[Path]:
    """Measurement JSON files under a results directory (``measurements/`` or anywhere below)."""
    return sorted(p for p in Path(results_dir).rglob("*.json") if _is_measurement(p))


def _is_measurement(path: Path) -> bool:
    try:
        with open(path) as fh:
            return f'"schema": "{SCHEMA}"' in fh.read(200)
    except OSError:
        return False


def replay_environment(results_dir: Path | str) -> dict[str, Any]:
    """The environment (hardware, model, GPUs, versions) of the run that wrote ``results_dir``."""
    files = find_measurement_files(results_dir)
    if not files:
        raise ValueError(f"no servingbench measurement JSON under {results_dir}")
    return load_measurement(files[0]).get("environment", {})


def load_measurement(path: Path | str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a servingbench measurement (schema {data.get('schema')!r})")
    return data


def measured_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A study's rows that were measured (not skipped or refused); a row without a status was measured."""
    return [r for r in rows if r.get("status", "measured") == "measured"]

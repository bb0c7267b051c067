"""The metric catalog: one entry per named metric, the single place its unit, direction and uses are declared.

The lists that must agree read from here: the gate's metrics and minimum effects (``measure/rounds.GATED``,
``gate/judge.MIN_EFFECT``), the samples stored as pytest-benchmark stats (``plugin/samples.METRICS``), the
report's comparison rows (``report/build.COMPARE``), the figures a bound derives beyond one run
(``expect/bounds.DERIVED``), the figures kept when no request succeeded (``measure/measurement``) and every
study row's serving fields (``studies/common.SERVING_FIELDS``). Adding a metric is one entry here plus its
computation (``Measurement.value`` for a one-run figure, ``expect/bounds.bound_value`` for a derived one).

This module imports nothing of the suite: ``measure/measurement.py`` reads it, so the sample getters take the
measurement by duck type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:
    from servingbench.measure.measurement import Measurement

Direction = Literal["higher", "lower"]
# How a figure is derived: from one run, against the same config's single-stream run, against the hardware's peak
# (bandwidth or FLOPs), or over a sweep of runs (a capacity search).
Derivation = Literal["run", "single-stream", "peak", "sweep"]
DERIVATIONS: tuple[str, ...] = ("run", "single-stream", "peak", "sweep")


@dataclass(frozen=True)
class Samples:
    """Measured samples a metric is a statistic of, in seconds, as stored as pytest-benchmark rounds."""

    name: str
    description: str
    get: Callable[["Measurement"], list[float]]
    per_request: bool = True  # one sample per request (or gap); False: one sample per run


def _ok(m: "Measurement") -> list[Any]:
    return [r for r in m.records if r.success]


SAMPLES: dict[str, Samples] = {s.name: s for s in (
    Samples("ttft", "time to first token, one sample per request (s)", lambda m: [r.ttft for r in _ok(m)]),
    Samples("tpot", "time per output token after the first, (E2EL-TTFT)/(N-1), one sample per request (s)",
            lambda m: [t for t in (r.tpot for r in _ok(m)) if t is not None]),
    Samples("itl", "inter-token latency, gaps between content chunks pooled over requests (s)",
            lambda m: [g for r in _ok(m) for g in r.itls]),
    Samples("e2el", "end-to-end latency, send to last content chunk, one sample per request (s)",
            lambda m: [r.e2el for r in _ok(m)]),
    # Throughput is higher-is-better and compare-fail flags increases only: store its reciprocal. Run-level
    # (duration / output tokens), one sample: per-request e2el/N would miss losses of batching across requests.
    Samples("s_per_output_token", "run duration / output tokens = 1 / output throughput, one sample per run (s)",
            lambda m: [m.value("seconds_per_output_token")], per_request=False),
)}


@dataclass(frozen=True)
class Metric:
    """One named figure: what it measures in, which way is better, how it is derived and who uses it."""

    name: str
    unit: str
    better: Direction | None  # None: a figure to read, not to rank (counts, memory)
    derived: Derivation = "run"
    min_effect: float | None = None  # the gate's smallest change worth failing a run for; None: not gated
    samples: str | None = None  # the SAMPLES it is a statistic of
    quantile: float | None = None  # which quantile of them (None: not a quantile)
    label: str | None = None  # its row in the report's engine comparison (None: not compared)
    fmt: str = "{:.3g}"  # how the report writes it
    without_success: bool = False  # still meaningful when no request succeeded (counts, the engine's KV layout)
    study: bool = False  # a serving field of every study row
    bound: bool = True  # an [[expect]] bound may name it (False: the report computes it, no bound can)

    @property
    def gated(self) -> bool:
        return self.min_effect is not None

    @property
    def higher_is_better(self) -> bool:
        return self.better == "higher"

    @property
    def bound_side(self) -> str:
        """The side a calibrated bound holds it from: a floor under a higher-is-better figure, else a ceiling."""
        return "min" if self.better == "higher" else "max"


# Order is the report's comparison order and the gate's; the rounds file lists the gated metrics in it.
# The gate's minimum effects (fractions): below these a shift is "unchanged" at most. TTFT's are wider because a
# server restart alone moves it: on the H200, lifetime against lifetime (3 rounds each), TTFT p50 moved +5.6% with
# a confidence interval clear of zero; throughput, TPOT and E2EL moved under 0.3%.
CATALOG: dict[str, Metric] = {m.name: m for m in (
    Metric("completed", "requests", None, without_success=True, study=True),
    Metric("failed", "requests", "lower", without_success=True, study=True),
    Metric("failure_rate", "fraction", "lower", without_success=True),
    Metric("duration", "s", None, without_success=True, study=True),
    Metric("output_throughput", "tok/s", "higher", min_effect=0.02, label="output throughput (tok/s)",
           fmt="{:.1f}", study=True),
    Metric("request_throughput", "req/s", "higher", label="request throughput (req/s)", fmt="{:.3f}", study=True),
    Metric("total_token_throughput", "tok/s", "higher", study=True),
    Metric("seconds_per_output_token", "s", "lower", samples="s_per_output_token"),
    Metric("median_ttft_ms", "ms", "lower", min_effect=0.10, samples="ttft", quantile=0.5, label="TTFT p50 (ms)",
           fmt="{:.1f}", study=True),
    Metric("p90_ttft_ms", "ms", "lower", samples="ttft", quantile=0.9, study=True),
    Metric("p99_ttft_ms", "ms", "lower", min_effect=0.15, samples="ttft", quantile=0.99, label="TTFT p99 (ms)",
           fmt="{:.1f}", study=True),
    Metric("median_tpot_ms", "ms", "lower", min_effect=0.02, samples="tpot", quantile=0.5, label="TPOT p50 (ms)",
           fmt="{:.2f}", study=True),
    Metric("p90_tpot_ms", "ms", "lower", samples="tpot", quantile=0.9, study=True),
    Metric("p99_tpot_ms", "ms", "lower", min_effect=0.05, samples="tpot", quantile=0.99, label="TPOT p99 (ms)",
           fmt="{:.2f}", study=True),
    Metric("median_itl_ms", "ms", "lower", min_effect=0.02, samples="itl", quantile=0.5, label="ITL p50 (ms)",
           fmt="{:.2f}", study=True),
    Metric("median_e2el_ms", "ms", "lower", min_effect=0.02, samples="e2el", quantile=0.5,
           label="E2E latency p50 (ms)", fmt="{:.0f}", study=True),
    Metric("p90_e2el_ms", "ms", "lower", samples="e2el", quantile=0.9, label="E2E latency p90 (ms)", fmt="{:.0f}",
           study=True),
    Metric("p99_e2el_ms", "ms", "lower", min_effect=0.05, samples="e2el", quantile=0.99,
           label="E2E latency p99 (ms)", fmt="{:.0f}", study=True),
    Metric("max_concurrent_requests", "requests", None, without_success=True, study=True),
    # what the memory the engine was given holds: a bound on it checks the engine's layout
    Metric("kv_capacity_tokens", "tokens", "higher", without_success=True),
    Metric("memory_gib", "GiB", None, label="peak memory (GiB; GPU, else server RSS)", fmt="{:.2f}"),
    Metric("memory_utilization", "fraction", None, label="memory utilization (of GPU, else host RAM)",
           fmt="{:.1%}"),
    Metric("gpu_utilization", "%", None, label="GPU utilization, mean (%)", fmt="{:.0f}"),
    # energy over the measured part (NVML on the server's GPUs, RAPL on a CPU; measure/energy.py)
    Metric("energy_j", "J", None),
    Metric("mean_power_w", "W", None, label="power over the run, mean (W)", fmt="{:.0f}"),
    Metric("joules_per_output_token", "J/tok", "lower", label="energy per output token (J)", fmt="{:.3g}"),
    Metric("output_tokens_per_joule", "tok/J", "higher"),
    Metric("batch_efficiency", "fraction", "higher", derived="single-stream",
           label="batch efficiency: T(C) / (C x T(1))", fmt="{:.3f}"),
    # goodput and MFU are the report's: no bound reads them
    Metric("goodput", "req/s", "higher", label="goodput within the SLO (req/s)", fmt="{:.3f}", bound=False),
    Metric("mbu", "fraction", "higher", derived="peak", label="MBU (memory bandwidth utilization)", fmt="{:.1%}"),
    Metric("mfu", "fraction", "higher", derived="peak", label="MFU (decode FLOPs utilization)", fmt="{:.2%}",
           bound=False),
    Metric("single_stream_mbu", "fraction", "higher", derived="peak"),  # MBU of the single-stream run
    Metric("capacity_rps", "req/s", "higher", derived="sweep"),
)}


def gated() -> list[Metric]:
    """The metrics the regression gate judges, in catalog order."""
    return [m for m in CATALOG.values() if m.gated]


def min_effect() -> dict[str, float]:
    """metric -> the gate's minimum effect."""
    return {m.name: m.min_effect for m in gated() if m.min_effect is not None}


def compared() -> list[Metric]:
    """The report's engine-comparison rows, in catalog order."""
    return [m for m in CATALOG.values() if m.label is not None]


def derived_for_bounds() -> set[str]:
    """Figures a bound may name that are not one run's (``Measurement.value`` does not know them)."""
    return {m.name for m in CATALOG.values() if m.derived != "run" and m.bound}


def without_success() -> set[str]:
    """Figures that stay meaningful when no request succeeded."""
    return {m.name for m in CATALOG.values() if m.without_success}


def study_fields() -> tuple[str, ...]:
    """The serving fields every study row carries, in catalog order."""
    return tuple(m.name for m in CATALOG.values() if m.study)

"""Latency limits and goodput, recomputed from a measurement's request records: what the recommendations and the
report judge a run by. The defaults are MLPerf Inference's Llama-2-70B server-scenario limits (TTFT p99 <= 2 s,
TPOT p99 <= 200 ms); goodput is vLLM's definition (requests per second that met every limit).
"""

from __future__ import annotations

from dataclasses import dataclass

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import SLO, compute_metrics
from servingbench.studies.sampling import percentile_field, percentile_label

MLPERF_SOURCE = "MLPerf Inference v4 Llama-2-70B server scenario limits"


def figure(m: Measurement, name: str) -> float | None:
    """``m.value(name)``, or None where the run has no such figure (an unknown name, or one that no successful
    request measured)."""
    try:
        return m.value(name)
    except LookupError:  # KeyError: unknown name; MissingFigure: nothing measured it
        return None


@dataclass(frozen=True)
class SLOLimits:
    """Latency limits: a request meets them if its own TTFT and TPOT do; a run if its p99s do."""

    ttft_p99_ms: float = 2000.0
    tpot_p99_ms: float = 200.0
    source: str = MLPERF_SOURCE

    def request_slo(self) -> SLO:
        return SLO(ttft_ms=self.ttft_p99_ms, tpot_ms=self.tpot_p99_ms)

    def describe(self) -> str:
        return f"TTFT p99 <= {self.ttft_p99_ms:g} ms and TPOT p99 <= {self.tpot_p99_ms:g} ms ({self.source})"

    def run_violations(self, m: Measurement, q: float = 0.99) -> list[str]:
        """The run-level limits a measurement's q-percentiles (p99 unless its sample supports less) break, e.g.
        ["p99 TTFT 2503 ms > 2000 ms"]."""
        out, p = [], percentile_label(q)
        for metric, label, limit in (("ttft", "TTFT", self.ttft_p99_ms), ("tpot", "TPOT", self.tpot_p99_ms)):
            value = figure(m, percentile_field(q, metric))
            if value is None or value > limit:
                out.append(f"{p} {label} {num(value)} ms > {limit:g} ms" if value is not None
                           else f"{p} {label} not measured")
        return out


@dataclass(frozen=True)
class Goodput:
    key: str
    config: str
    concurrency: int | None
    request_goodput: float | None  # req/s meeting the SLO; None without records
    good_share: float | None  # of completed requests
    good_output_tokens_per_s: float | None
    run_violations: tuple[str, ...]

    @property
    def run_meets(self) -> bool:
        return not self.run_violations


def goodput(m: Measurement, slo: SLOLimits) -> Goodput:
    """Per-request goodput recomputed from the records (the measurement's own ``request_goodput`` had no SLO)."""
    records, duration, request_slo = m.records, m.metrics.duration, slo.request_slo()
    rg = share = good_tps = None
    if records and duration:
        metrics = compute_metrics(records, duration, request_slo)
        good = [r for r in records if r.success and request_slo.met_by(r)]
        rg = metrics.request_goodput
        share = len(good) / metrics.completed if metrics.completed else 0.0
        good_tps = sum(r.output_token_count for r in good) / duration
    return Goodput(m.key, m.config_name, m.workload.get("concurrency"), rg, share, good_tps,
                   tuple(slo.run_violations(m)))


def num(x: float | None) -> str:
    """A measured figure at a precision that reads: 79,546 / 130.5 / 7.6 / 0.00408."""
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"

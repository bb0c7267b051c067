"""Serving metrics from request records, with vLLM's ``vllm bench serve`` definitions and field names.

Definitions (see README, "Metric definitions"): TTFT is the first token chunk minus the send time; ITL the
gaps between token chunks, pooled over requests; E2EL the last token chunk minus the send time; TPOT per
request (E2EL - TTFT) / (N - 1) for N > 1; token counts come from the server's ``usage`` (prompt and completion);
where a server sent no usage, output tokens are estimated as token chunks and counted in
``estimated_output_tokens``, and those requests' TPOT divides by the chunk count (``tpot_estimated`` of them); throughputs divide by the wall-clock duration of the run; goodput counts requests
per second that met every SLO given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from servingbench.measure.records import RequestRecord

PERCENTILES = (50, 90, 95, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in milliseconds; None means no limit on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def met_by(self, r: RequestRecord) -> bool:
        checks = [(self.ttft_ms, r.ttft), (self.e2el_ms, r.e2el)]
        tpot = r.tpot
        checks.append((self.tpot_ms, tpot if tpot is not None else 0.0))
        return all(limit is None or value * 1000.0 <= limit for limit, value in checks)


@dataclass
class Distribution:
    """Summary of one latency metric in milliseconds."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentiles: dict[int, float]
    count: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Distribution":
        """An empty sample is missing (NaN, count 0), never zeros: zeros would pass every ``max`` bound."""
        if len(seconds) == 0:
            nan = math.nan
            return cls(nan, nan, nan, nan, nan, {p: nan for p in PERCENTILES}, 0)
        ms = np.asarray(seconds, dtype=float) * 1000.0
        return cls(float(ms.mean()), float(np.median(ms)), float(ms.std()), float(ms.min()), float(ms.max()),
                   {p: float(np.percentile(ms, p)) for p in PERCENTILES}, int(ms.size))


@dataclass
class BenchmarkMetrics:
    """One run's figures. ``to_vllm_json`` flattens them with vLLM's saved-result field names."""

    duration: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    request_goodput: float | None
    max_concurrent_requests: int
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    queue_time: Distribution
    errors: dict[str, int] = field(default_factory=dict)
    estimated_output_tokens: int = 0  # requests without usage.completion_tokens: their count is the chunk count
    tpot_estimated: int = 0  # requests whose TPOT divides by that chunk count (0: every TPOT from usage)

    def to_vllm_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: v for k, v in asdict(self).items() if k not in LATENCY_METRICS + ("queue_time",)
        }
        for name in LATENCY_METRICS + ("queue_time",):
            d: Distribution = getattr(self, name)
            missing = d.count == 0  # JSON has no NaN: an empty distribution is written as null
            out[f"mean_{name}_ms"] = None if missing else d.mean
            out[f"median_{name}_ms"] = None if missing else d.median
            out[f"std_{name}_ms"] = None if missing else d.std
            for p, v in d.percentiles.items():
                out[f"p{p}_{name}_ms"] = None if missing else v
        return out


def max_in_flight(records: Iterable[RequestRecord]) -> int:
    """Most requests open at once: sweep over (start, +1) and (end, -1) events."""
    events: list[tuple[float, int]] = []
    for r in records:
        if r.start <= 0:
            continue
        end = r.chunk_times[-1] if r.chunk_times else r.start
        events += [(r.start, 1), (end, -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant closes before a start opens
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def compute_metrics(records: Sequence[RequestRecord], duration: float, slo: SLO | None = None) -> BenchmarkMetrics:
    """Aggregate records of one run whose wall-clock length was ``duration`` seconds."""
    ok = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    errors: dict[str, int] = {}
    for r in failed:
        key = (r.error or "no content received").split(":")[0][:80]
        errors[key] = errors.get(key, 0) + 1
    out_tokens = [r.output_token_count for r in ok]
    in_tokens = sum(r.input_tokens for r in ok)
    with_tpot = [r for r in ok if r.tpot is not None]
    tpots = [r.tpot for r in with_tpot]
    dur = duration if duration > 0 else float("nan")
    goodput = None if slo is None else sum(slo.met_by(r) for r in ok) / dur
    return BenchmarkMetrics(
        duration=duration,
        completed=len(ok),
        failed=len(failed),
        total_input_tokens=in_tokens,
        total_output_tokens=sum(out_tokens),
        request_throughput=len(ok) / dur,
        output_throughput=sum(out_tokens) / dur,
        total_token_throughput=(sum(out_tokens) + in_tokens) / dur,
        request_goodput=goodput,
        max_concurrent_requests=max_in_flight(records),
        ttft=Distribution.of([r.ttft for r in ok]),
        tpot=Distribution.of(tpots),
        itl=Distribution.of([g for r in ok for g in r.itls]),
        e2el=Distribution.of([r.e2el for r in ok]),
        queue_time=Distribution.of([r.queue_time for r in records if r.start > 0]),
        errors=errors,
        estimated_output_tokens=sum(r.output_tokens_estimated for r in ok),
        tpot_estimated=sum(r.output_tokens_estimated for r in with_tpot),
    )


def batch_efficiency(loaded_throughput: float, single_throughput: float, concurrency: int) -> float | None:
    """Throughput at concurrency C over C x single-stream throughput: 1.0 is perfect batching, 1/C none at all.

    None when it is undefined (no single-stream throughput, or C < 2)."""
    if concurrency < 2 or not single_throughput:
        return None
    return loaded_throughput / (concurrency * single_throughput)

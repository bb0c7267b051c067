"""Capacity under an SLO: the highest open-loop request rate whose p99 TTFT and p99 TPOT meet the workload's SLO.

A bounded search over the workload's ``rates`` (ascending): every listed rate up to the first that misses, then
``capacity_steps`` bisections (geometric) between the last rate that met the SLO and the first that did not.
Each point is one measurement of the session (cached like any other), so a rate's figures and the curve of goodput
against offered rate come from the same runs.

A run whose preconditions broke (the client fell behind its schedule) is not a miss of the server: it is not
judged, and the rates from it up are out of the client's reach on this machine. The search goes on below it, so
the capacity is then known only from below (``bounded_by = "client"``: at least the highest rate that met the
SLO). That answers a ``min`` bound, which is what capacity is asserted with; a ``max`` bound or a ratio stays
undecided, as with ``top``. On a 2-core box the client shares the cores with vLLM's CPU engine, which keeps 1.8
of them busy near its capacity: one CI run fell behind at 8 req/s (p90 138 ms late) after 16 req/s had been
valid, so a search that stopped there left a table with no figure. Only when the lowest rate is invalid is there
no figure (``bounded_by = "invalid"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from servingbench.load.workload import Workload
from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import SLO, compute_metrics

CAPACITY_SCHEMA = "servingbench.capacity/1"  # results/capacity/*.json: a search's points and its capacity


@dataclass(frozen=True)
class RatePoint:
    rate: float  # offered, requests per second
    request_throughput: float  # achieved
    goodput: float  # requests per second that met the SLO
    p99_ttft_ms: float
    p99_tpot_ms: float
    failed: int
    meets: bool | None  # None: the run was invalid, so it neither met nor missed the SLO
    invalid: tuple[str, ...] = ()  # why the run does not measure the server (generator.preconditions)
    requests: int = 0  # measured at this rate: the p99s are over this many


# How a search ended: between a met and a missed rate; every rate met (capacity at least the top); the lowest rate
# missed; below a rate the client could not offer (at least the highest met); or the lowest rate invalid (no figure).
BOUNDED_BY = ("search", "top", "bottom", "client", "invalid")
AT_LEAST = ("top", "client")  # the capacity is a lower bound only
# Requests at a rate below which its p99 verdict is noted as resting on near-maximum values: a p99 of n requests
# interpolates between the top two of them only from n = 100. It is a point estimate either way; MLPerf's
# early-stopping rule, which gives one a confidence, needs several hundred at a 1% tail.
P99_REQUESTS = 100


@dataclass
class Capacity:
    capacity_rps: float | None  # 0.0 when even the lowest rate missed; None when the lowest rate was invalid
    bounded_by: str  # one of BOUNDED_BY
    slo: dict[str, float | None]
    points: list[RatePoint] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Where a verdict rests on a p99 of few requests: below ``P99_REQUESTS`` it is near their maximum."""
        few = sorted(p.rate for p in self.points if p.meets is not None and p.requests < P99_REQUESTS)
        return [f"the p99s at {', '.join(f'{r:g}' for r in few)} req/s are over fewer than {P99_REQUESTS} requests, "
                "where a p99 is close to the maximum; raise num_requests or rate_seconds"] if few else []

    @property
    def stopped_by(self) -> RatePoint | None:
        """The lowest invalid run: the rate from which the client could not offer the load, if one could not."""
        return min((p for p in self.points if p.invalid), key=lambda p: p.rate, default=None)

    @property
    def at_least(self) -> bool:
        """True when the capacity is known only from below (every rate met, or the client could go no higher)."""
        return self.bounded_by in AT_LEAST

    def figure(self, lower_bound_decides: bool = True) -> float:
        """The capacity, or MissingFigure where the search has none or where a lower bound cannot decide.

        ``lower_bound_decides``: False for a check that a lower bound cannot settle (a ``max`` it does not exceed,
        a ratio); then a capacity known only from below is missing, with the reason."""
        bad = self.stopped_by
        if self.capacity_rps is None:
            assert bad is not None, "only an invalid lowest rate leaves a search without a capacity"
            raise MissingFigure(f"capacity_rps: the run at the lowest rate, {bad.rate:g} req/s, is invalid, so the "
                                "search has no capacity: " + "; ".join(bad.invalid))
        if self.at_least and not lower_bound_decides:
            why = (f"the client could not offer {bad.rate:g} req/s on this machine ({'; '.join(bad.invalid)})"
                   if bad is not None and self.bounded_by == "client" else "every swept rate met the SLO")
            raise MissingFigure(f"capacity_rps: known only to be at least {self.capacity_rps:g} req/s, since {why}; "
                                "a maximum or a ratio needs the capacity itself")
        return self.capacity_rps

    def to_dict(self) -> dict[str, Any]:
        return {"capacity_rps": self.capacity_rps, "bounded_by": self.bounded_by, "slo": self.slo, "notes": self.notes,
                "points": [{**asdict(p), "invalid": list(p.invalid)}
                           for p in sorted(self.points, key=lambda p: p.rate)]}


def point(m: Measurement, rate: float, slo: SLO) -> RatePoint:
    """One rate's figures; a run with failures misses the SLO whatever its latencies, an invalid run is not judged."""
    metrics = compute_metrics(m.records, m.metrics.duration, slo)
    ttft, tpot = metrics.ttft.percentiles[99], metrics.tpot.percentiles[99]
    meets = (metrics.failed == 0 and metrics.completed > 0
             and (slo.ttft_ms is None or ttft <= slo.ttft_ms) and (slo.tpot_ms is None or tpot <= slo.tpot_ms))
    return RatePoint(rate, metrics.request_throughput, metrics.request_goodput or 0.0, ttft, tpot, metrics.failed,
                     None if m.invalid else bool(meets), tuple(m.invalid), metrics.completed + metrics.failed)


def find_capacity(workload: Workload, measure: Callable[[Workload], Measurement]) -> Capacity:
    """Search ``workload.sweep.rates``; ``measure(w)`` runs one rate's workload (the session caches it)."""
    if not workload.sweep.rates:
        raise MissingFigure(f"capacity_rps: workload {workload.name!r} has no rates to sweep")
    slo = SLO(ttft_ms=workload.sweep.slo_ttft_ms, tpot_ms=workload.sweep.slo_tpot_ms)
    points: list[RatePoint] = []
    slo_d = {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms}

    def at(rate: float) -> bool | None:
        p = point(measure(workload.at_rate(rate)), rate, slo)
        points.append(p)
        return p.meets

    met: float | None = None
    missed: float | None = None  # lowest rate that missed the SLO
    unreachable: float | None = None  # lowest rate the client could not offer (an invalid run)
    for rate in workload.sweep.rates:
        verdict = at(rate)
        if verdict is None:
            unreachable = rate
            break
        if not verdict:
            missed = rate
            break
        met = rate
    if met is None:  # the lowest rate missed, or was invalid
        return Capacity(0.0 if missed is not None else None, "bottom" if missed is not None else "invalid", slo_d,
                        points)
    if missed is None and unreachable is None:
        return Capacity(float(met), "top", slo_d, points)
    for _ in range(workload.sweep.capacity_steps):
        upper = min(x for x in (missed, unreachable) if x is not None)
        mid = round(math.sqrt(met * upper), 3)
        if not met < mid < upper:
            break
        verdict = at(mid)
        if verdict is None:
            unreachable = mid
        elif verdict:
            met = mid
        else:
            missed = mid
    by_miss = missed is not None and (unreachable is None or missed <= unreachable)
    return Capacity(float(met), "search" if by_miss else "client", slo_d, points)

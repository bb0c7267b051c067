"""Capacity under an SLO: the highest open-loop request rate whose p99 TTFT and p99 TPOT meet the workload's SLO.

A bounded search over the workload's ``rates`` (ascending): every listed rate up to the first that misses, then
``capacity_steps`` bisections (geometric) between the last rate that met the SLO and the first that did not.
Each point is one measurement of the session (cached like any other), so a rate's figures and the curve of goodput
against offered rate come from the same runs. A run whose preconditions broke (the client fell behind its
schedule) is not a miss of the server: the search stops there, the curve keeps every point measured with the
invalid one and its reasons (``bounded_by = "invalid"``), and the capacity figure is missing, with the reason.
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


# How a search ended: between a met and a missed rate; every rate met (capacity at least the top); the lowest rate
# missed; or a run that broke its preconditions stopped it (no capacity figure).
BOUNDED_BY = ("search", "top", "bottom", "invalid")


@dataclass
class Capacity:
    capacity_rps: float | None  # 0.0 when even the lowest rate missed; None when an invalid run stopped the search
    bounded_by: str  # one of BOUNDED_BY
    slo: dict[str, float | None]
    points: list[RatePoint] = field(default_factory=list)

    @property
    def stopped_by(self) -> RatePoint | None:
        """The invalid run that stopped the search, if one did."""
        return next((p for p in self.points if p.invalid), None)

    def figure(self) -> float:
        """The capacity, or MissingFigure naming the invalid run that left the search without one."""
        bad = self.stopped_by
        if bad is not None:
            raise MissingFigure(f"capacity_rps: the run at {bad.rate:g} req/s is invalid, so the search cannot go "
                                "on: " + "; ".join(bad.invalid))
        assert self.capacity_rps is not None, "only an invalid run leaves a search without a capacity"
        return self.capacity_rps

    def to_dict(self) -> dict[str, Any]:
        return {"capacity_rps": self.capacity_rps, "bounded_by": self.bounded_by, "slo": self.slo,
                "points": [{**asdict(p), "invalid": list(p.invalid)}
                           for p in sorted(self.points, key=lambda p: p.rate)]}


def point(m: Measurement, rate: float, slo: SLO) -> RatePoint:
    """One rate's figures; a run with failures misses the SLO whatever its latencies, an invalid run is not judged."""
    metrics = compute_metrics(m.records, m.metrics.duration, slo)
    ttft, tpot = metrics.ttft.percentiles[99], metrics.tpot.percentiles[99]
    meets = (metrics.failed == 0 and metrics.completed > 0
             and (slo.ttft_ms is None or ttft <= slo.ttft_ms) and (slo.tpot_ms is None or tpot <= slo.tpot_ms))
    return RatePoint(rate, metrics.request_throughput, metrics.request_goodput or 0.0, ttft, tpot, metrics.failed,
                     None if m.invalid else bool(meets), tuple(m.invalid))


def find_capacity(workload: Workload, measure: Callable[[Workload], Measurement]) -> Capacity:
    """Search ``workload.rates``; ``measure(w)`` runs one rate's workload (the session caches it)."""
    if not workload.rates:
        raise MissingFigure(f"capacity_rps: workload {workload.name!r} has no rates to sweep")
    slo = SLO(ttft_ms=workload.slo_ttft_ms, tpot_ms=workload.slo_tpot_ms)
    points: list[RatePoint] = []

    class Stopped(Exception):
        """An invalid run: the search ends with the points measured so far."""

    def at(rate: float) -> bool:
        p = point(measure(workload.at_rate(rate)), rate, slo)
        points.append(p)
        if p.meets is None:
            raise Stopped
        return p.meets

    met: float | None = None
    missed: float | None = None
    slo_d = {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms}
    try:
        for rate in workload.rates:
            if at(rate):
                met = rate
            else:
                missed = rate
                break
        if missed is None:
            return Capacity(float(met or 0.0), "top", slo_d, points)
        if met is None:
            return Capacity(0.0, "bottom", slo_d, points)
        for _ in range(workload.capacity_steps):
            mid = round(math.sqrt(met * missed), 3)
            if not met < mid < missed:
                break
            if at(mid):
                met = mid
            else:
                missed = mid
    except Stopped:
        return Capacity(None, "invalid", slo_d, points)
    return Capacity(float(met), "search", slo_d, points)

"""One clock across hosts: a worker's monotonic clock mapped onto the coordinator's by round trips, as NTP does.

Each host's ``time.perf_counter()`` (CLOCK_MONOTONIC) counts from its own boot, so a worker on another host can
neither be told "start at t" in the coordinator's clock nor hand back timestamps the coordinator can compare. The
coordinator reads its clock ``t0``, asks the worker for its clock ``w``, reads ``t1``. The worker read its clock at
some coordinator instant inside [t0, t1] (it answered after the question and before the answer came back), so
``offset = (t0 + t1) / 2 - w`` is wrong by at most ``(t1 - t0) / 2`` whatever the two legs' delays were: the bound
holds by causality, not by an assumption that the legs are equal. Of several round trips the shortest gives the
tightest bound (queueing only ever lengthens a round trip), so that one is kept.

What the offset is used for, and so what its error costs: the start instant sent to each worker (hosts start
within 2 x uncertainty of each other), and the merged records' timestamps (the run's throughput window, from the
shared start to the last completion, is off by at most one uncertainty). Latencies (TTFT, ITL, TPOT, E2EL) are
differences of one host's clock and carry no offset error at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

# The most a run may leave the worker clocks uncertain, in ms (half the shortest round trip). 5 ms: hosts then start
# within 10 ms of each other, a tenth of the open loop's 100 ms schedule-lag bound (max_schedule_lag_ms) and under
# half the 25 ms TTFT error the self-test allows the client (max_client_ttft_error_ms); the throughput window of
# a run of 10 s or more moves by at most 0.05%, against the gate's 2% minimum effect on throughput. A Ray round trip
# took 0.7-1 ms between two nodes on one host here and is a few ms at most inside one data centre: a minimum over
# 20 round trips above 10 ms means a far or overloaded coordinator, whose starts and windows would not line up.
MAX_CLOCK_UNCERTAINTY_MS = 5.0
ROUND_TRIPS = 20  # ~20 ms at 1 ms a trip; enough that one of them meets an idle path on a busy host

# The timestamps of a record (RequestRecord.to_dict()), all perf_counter seconds: shifted together. An unset one
# (None, or 0.0 for a request never taken up or never sent: preconditions() counts sent requests by start > 0)
# stays unset.
RECORD_TIMES = ("queued_at", "start", "scheduled_at", "first_answer_at")


@dataclass(frozen=True)
class ClockOffset:
    """coordinator clock = worker clock + ``offset_s``, good to +-``uncertainty_s`` (half the shortest round
    trip). ``round_trips`` is how many were taken, ``rtt_s`` the shortest."""

    offset_s: float
    uncertainty_s: float
    rtt_s: float
    round_trips: int

    @property
    def offset_ms(self) -> float:
        return self.offset_s * 1000.0

    @property
    def uncertainty_ms(self) -> float:
        return self.uncertainty_s * 1000.0

    def to_worker(self, coordinator_t: float) -> float:
        """A coordinator instant (a start) in the worker's clock."""
        return coordinator_t - self.offset_s

    def problem(self, bound_ms: float = MAX_CLOCK_UNCERTAINTY_MS) -> str | None:
        """A sentence for the run's invalid reasons when the offset is known too loosely, else None."""
        if self.uncertainty_ms <= bound_ms:
            return None
        return (f"clock: the offset to the coordinator's clock is known only to +-{self.uncertainty_ms:.1f} ms "
                f"(shortest of {self.round_trips} round trips {self.rtt_s * 1000:.1f} ms) > {bound_ms:g} ms, so "
                "the hosts' start instants and the throughput window do not line up: run the coordinator near "
                "the client nodes (same data centre) or on a less loaded host")


def estimate_offset(samples: Iterable[tuple[float, float, float]]) -> ClockOffset:
    """From (t0, w, t1) round trips (coordinator before, worker's reading, coordinator after): the offset of the
    shortest one and half its length as the bound. Not the mean of all: with unequal legs every sample is biased
    the same way, and a mean keeps the bias while the shortest sample bounds it."""
    rows = list(samples)
    if not rows:
        raise ValueError("estimate_offset needs at least one round trip")
    bad = [r for r in rows if r[2] < r[0]]
    if bad:
        raise ValueError(f"a round trip ends before it begins: {bad[0]}")
    t0, w, t1 = min(rows, key=lambda r: r[2] - r[0])
    return ClockOffset((t0 + t1) / 2.0 - w, (t1 - t0) / 2.0, t1 - t0, len(rows))


def measure_offset(read_worker_clock: Callable[[], float], round_trips: int = ROUND_TRIPS,
                   clock: Callable[[], float] = time.perf_counter) -> ClockOffset:
    """``round_trips`` round trips through ``read_worker_clock`` (a blocking call that returns the worker's
    ``perf_counter``), then ``estimate_offset``."""
    samples = []
    for _ in range(round_trips):
        t0 = clock()
        w = read_worker_clock()
        samples.append((t0, w, clock()))
    return estimate_offset(samples)


def shift_record(d: dict[str, Any], offset_s: float) -> dict[str, Any]:
    """A record's dict (``RequestRecord.to_dict``) with every timestamp moved by ``offset_s``; a new dict."""
    out = dict(d)
    for key in RECORD_TIMES:
        if out.get(key):
            out[key] = out[key] + offset_s
    out["chunk_times"] = [t + offset_s for t in d.get("chunk_times", ())]
    return out


def shift_records(records: Sequence[dict[str, Any]], offset_s: float) -> list[dict[str, Any]]:
    return [shift_record(d, offset_s) for d in records]

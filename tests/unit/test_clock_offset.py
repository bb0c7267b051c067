"""The clock-offset estimator (load/clock.py) on simulated round trips whose true offset is known.

The simulated legs are unequal on purpose (the way out is fast, the way back queues behind other replies and has
a heavy tail): an estimator that averaged the samples, or assumed equal legs, would be off by more than the bound
it states. Seeded, so a failure reproduces."""

from __future__ import annotations

import numpy as np
import pytest

from servingbench.load.clock import (MAX_CLOCK_UNCERTAINTY_MS, ClockOffset, estimate_offset, measure_offset,
                                     shift_record)


def simulated_round_trips(rng: np.random.Generator, offset_s: float, n: int) -> list[tuple[float, float, float]]:
    """(t0, w, t1) with coordinator time t and worker clock t - offset_s: out 0.2 ms + Exp(1 ms), the worker
    answers 0.05-0.3 ms after reading its clock, back 0.3 ms + lognormal (median 2 ms, heavy tail)."""
    rows, t = [], float(rng.uniform(1e3, 1e6))
    for _ in range(n):
        t += float(rng.uniform(0.001, 0.05))
        out = 0.0002 + rng.exponential(0.001)
        answer = rng.uniform(0.00005, 0.0003)
        back = 0.0003 + rng.lognormal(np.log(0.002), 1.0)
        rows.append((t, t + out - offset_s, t + out + answer + back))
    return rows


@pytest.mark.parametrize("seed", range(200))
def test_the_estimate_lies_within_its_stated_uncertainty(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = float(rng.uniform(-5e4, 5e4))  # another host's monotonic clock: its own boot, hours apart
    est = estimate_offset(simulated_round_trips(rng, true, 20))
    assert abs(est.offset_s - true) <= est.uncertainty_s
    assert est.uncertainty_s == pytest.approx(est.rtt_s / 2) and est.round_trips == 20


def test_the_shortest_round_trip_beats_the_mean_under_unequal_legs() -> None:
    """With the way back slower, every sample's midpoint is late: the mean keeps that bias, the shortest
    round trip bounds it. Over 100 seeds the mean is outside the min-RTT bound most of the time."""
    outside = 0
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        rows = simulated_round_trips(rng, 12.5, 20)
        est = estimate_offset(rows)
        mean = float(np.mean([(t0 + t1) / 2 - w for t0, w, t1 in rows]))
        outside += abs(mean - 12.5) > est.uncertainty_s
        assert abs(est.offset_s - 12.5) <= est.uncertainty_s
    assert outside >= 50, outside


def test_more_round_trips_never_loosen_the_bound() -> None:
    rows = simulated_round_trips(np.random.default_rng(7), -3.0, 40)
    bounds = [estimate_offset(rows[:k]).uncertainty_s for k in range(1, 41)]
    assert all(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:]))
    assert bounds[-1] < bounds[0]


def test_measure_offset_reads_both_clocks_around_each_call() -> None:
    """A coordinator clock that advances 1 ms a reading, a worker 100 s behind it: the worker is read between
    t0 and t1, so the estimate is exact to half a round trip (1 ms here)."""
    now = [500.0]

    def coordinator() -> float:
        now[0] += 0.001
        return now[0]

    est = measure_offset(lambda: now[0] - 100.0, round_trips=5, clock=coordinator)
    assert est.offset_s == pytest.approx(100.0 + 0.0005) and est.uncertainty_s == pytest.approx(0.0005)
    assert est.to_worker(1000.0) == pytest.approx(900.0 - 0.0005)


def test_an_uncertainty_over_the_bound_is_a_problem_naming_the_fix() -> None:
    assert ClockOffset(1.0, MAX_CLOCK_UNCERTAINTY_MS / 1000 * 0.9, 0.009, 20).problem() is None
    problem = ClockOffset(1.0, 0.012, 0.024, 20).problem()
    assert problem is not None and problem.startswith("clock: ") and "+-12.0 ms" in problem
    assert "coordinator" in problem
    with pytest.raises(ValueError, match="at least one"):
        estimate_offset([])
    with pytest.raises(ValueError, match="ends before it begins"):
        estimate_offset([(2.0, 1.0, 1.0)])


def test_a_shifted_record_lands_on_the_coordinators_clock() -> None:
    """A record taken on a worker whose clock is 100 s behind: every timestamp moves by the offset; unset ones
    (None; 0.0 for a request never sent) stay unset, so the count of sent requests does not change."""
    d = {"request_id": "req-3", "queued_at": 10.0, "start": 10.5, "chunk_times": [10.6, 10.7],
         "scheduled_at": None, "first_answer_at": 10.6, "output_tokens": 2}
    out = shift_record(d, 100.0)
    assert (out["queued_at"], out["start"], out["chunk_times"], out["first_answer_at"]) == (110.0, 110.5,
                                                                                           [110.6, 110.7], 110.6)
    assert out["scheduled_at"] is None and out["output_tokens"] == 2 and d["start"] == 10.5  # a copy
    unsent = shift_record({"request_id": "req-4", "queued_at": 0.0, "start": 0.0, "chunk_times": []}, 100.0)
    assert unsent["queued_at"] == 0.0 and unsent["start"] == 0.0

"""Measured samples stored as pytest-benchmark stats, exactly: the metrics kept, and the clock that stores them.

``store_samples`` runs ``benchmark.pedantic`` with one round per measured sample under ``SAMPLE_CLOCK``, a timer
that the round's setup resets to 0 and the target moves forward by exactly that sample (the test module sets it
with ``@pytest.mark.benchmark(timer=SAMPLE_CLOCK)``). pytest-benchmark stores ``end - start = sample - 0.0``, so
its stats (min, max, mean, median, ...) are those of the measured values, in seconds; ``store_samples`` checks
that against numpy and fails otherwise. The plugin that keeps and compares them is ``servingbench.plugin.baselines``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytest

from servingbench.measure import catalog
from servingbench.measure.measurement import Measurement


@dataclass(frozen=True)
class Metric:
    """One stored figure: its samples (seconds, lower is better) as read from a measurement."""

    name: str
    description: str
    samples: Callable[[Measurement], list[float]]


# The catalog's samples (throughput is stored as its reciprocal, s_per_output_token: compare-fail flags increases)
METRICS: dict[str, Metric] = {s.name: Metric(s.name, s.description, s.get) for s in catalog.SAMPLES.values()}


class SampleClock:
    """A pytest-benchmark timer that reads back measured samples instead of a clock (see module docstring)."""

    __name__ = "servingbench_sample_clock"  # pytest-benchmark writes the timer's name into the JSON

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


SAMPLE_CLOCK = SampleClock()


def store_samples(benchmark: Any, samples: Sequence[float], *, group: str | None = None,
                  extra_info: dict[str, Any] | None = None) -> None:
    """Store ``samples`` (seconds) as this benchmark's rounds, exactly; fails the test if they do not come back."""
    values = [float(x) for x in samples]
    if not values:
        pytest.fail("no samples to store: the measurement has no successful requests", pytrace=False)
    bad = [x for x in values if not math.isfinite(x) or x < 0]
    if bad:
        pytest.fail(f"{len(bad)} samples are negative or not finite (first: {bad[0]!r})", pytrace=False)
    if group is not None:
        benchmark.group = group
    benchmark.extra_info.update(extra_info or {})
    pending: Iterator[float] = iter(values)

    def setup() -> None:
        SAMPLE_CLOCK.now = 0.0

    def target() -> None:
        SAMPLE_CLOCK.now = next(pending)

    benchmark.pedantic(target, setup=setup, rounds=len(values), iterations=1, warmup_rounds=0)
    SAMPLE_CLOCK.now = 0.0
    meta = getattr(benchmark, "stats", None)
    if meta is None:  # --benchmark-disable / --benchmark-skip: nothing is stored, nothing to check
        return
    stored = meta.stats
    if stored.data != values:
        pytest.fail("the stored rounds are not the measured samples: the test needs "
                    "@pytest.mark.benchmark(timer=servingbench.plugin.samples.SAMPLE_CLOCK)", pytrace=False)
    arr = np.asarray(values)
    checks = {"min": (stored.min, arr.min()), "max": (stored.max, arr.max()), "mean": (stored.mean, arr.mean()),
              "median": (stored.median, np.median(arr))}
    off = {k: v for k, v in checks.items() if not math.isclose(v[0], float(v[1]), rel_tol=1e-12, abs_tol=0.0)}
    assert not off, f"stored stats differ from the samples' (stored, numpy): {off}"


def record_measurement(benchmark: Any, m: Measurement, metric: str) -> list[float]:
    """Store one metric of one measurement, with what it was measured on in ``extra_info``. An invalid run (its
    client fell behind, queued or saturated; the deadline passed) measured the client, not the server: it is
    neither stored as a baseline nor compared with one."""
    if m.invalid:
        pytest.fail(f"{m.config_name} ({m.key}): the run is invalid: {'; '.join(m.invalid)}: its figures describe "
                    "the client, so it is not stored as a baseline or compared with one; rerun it with the "
                    "precondition met (more client workers or a lower load)", pytrace=False)
    if m.metrics.failed:
        pytest.fail(f"{m.metrics.failed} of {m.metrics.completed + m.metrics.failed} requests failed "
                    f"({m.metrics.errors}): not a run to store or compare", pytrace=False)
    spec = METRICS[metric]
    samples = spec.samples(m)
    store_samples(benchmark, samples, group=metric, extra_info={
        "metric": metric, "unit": "s", "description": spec.description, "samples": len(samples),
        "config_name": m.config_name, "engine": m.engine, "engine_config": m.config, "workload": m.workload,
        "measurement": m.key, "started_at": m.started_at, "environment": m.environment})
    return samples

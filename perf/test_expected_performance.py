"""Perf tests generated from perf/expected_performance.toml: one test per bound, for this run's hardware and model.

Each test measures (once per session, shared with every other test on the same config and workload) and fails
with the measured value, the bound and the file:line where the bound lives.
"""

from __future__ import annotations

from servingbench.suite.thresholds import Bound, bound_value


def test_expectation(bound: Bound, bench, expectations, measure_or_skip) -> None:
    value = bound_value(bound, measure_or_skip, lambda config: bench.workload(expectations, bound.workload, config))
    problem = bound.violation(value)
    assert problem is None, problem

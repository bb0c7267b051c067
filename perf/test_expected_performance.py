"""Perf tests generated from perf/expected_performance.toml: one test per bound that applies to this run.

The bounds are this hardware key's exact rows and the portable tier of its device class (ratios measured in the
same session, fractions of the peak bandwidth), so a machine with no rows of its own still asserts something. Each
test measures (once per session, shared with every other test on the same config and workload) and fails with the
measured value, the bound, its tier and the file:line where it lives. A run with no successful request fails every
bound on its latencies: an empty distribution is missing, never zero.
"""

from __future__ import annotations

from servingbench.suite.thresholds import Bound, check


def test_expectation(bound: Bound, bench, expectations, measure_or_skip, hardware_peaks) -> None:
    problem = check(bound, measure_or_skip, lambda config: bench.workload(expectations, bound.workload, config),
                    hardware_peaks, on_capacity=bench.record_capacity)
    assert problem is None, problem

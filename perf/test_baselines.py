"""Stored baselines: each latency metric and the seconds per output token of the lab load, per server config.

One test per (config, metric) over the session's cached measurement of the lab load (the same run that
test_lab_load and the expectation tests read), so the load runs once per config. Each test stores the measured
samples as its pytest-benchmark rounds (servingbench/plugin/samples.py says how), so ``--benchmark-save`` records a
baseline and ``--benchmark-compare`` with ``--benchmark-compare-fail`` (or ``--baseline-compare``) catches a
regression against the one recorded for this hardware profile under baselines/.

    make baselines    record (or refresh) the baseline of this machine's hardware profile
    make compare      compare with it, failing on a median regression beyond the default tolerance
"""

from __future__ import annotations

import pytest

from servingbench.plugin.samples import METRICS, SAMPLE_CLOCK, record_measurement

CONFIGS = ["vllm", "hf"]

# Each round's duration is one measured sample, read from this clock (not a real timer).
pytestmark = pytest.mark.benchmark(timer=SAMPLE_CLOCK)


@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("config_name", CONFIGS)
def test_baseline(config_name: str, metric: str, benchmark, bench, expectations, measure_or_skip) -> None:
    workload = bench.workload(expectations, "lab", config_name)
    m = measure_or_skip(config_name, workload)
    record_measurement(benchmark, m, metric)

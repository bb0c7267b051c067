"""The lab's load against each engine: the measurement every threshold reads must itself be sound.

These run on any hardware (with or without table entries), so an unknown machine still gets its figures.
"""

from __future__ import annotations

import pytest

from servingbench.measure.soundness import served_problems

ENGINES = ["vllm", "hf"]


@pytest.mark.parametrize("config_name", ENGINES)
def test_lab_load_is_served_exactly(config_name: str, bench, expectations, measure_or_skip) -> None:
    workload = bench.workload(expectations, "lab", config_name)
    m = measure_or_skip(config_name, workload)
    assert m.metrics.failed == 0, f"{m.metrics.failed} requests failed: {m.metrics.errors}"
    counts = {r.output_tokens for r in m.records}
    want = workload.source.output_len
    assert counts == {want}, f"output token counts {sorted(counts)} != {want}"
    # what a broken client or server would get wrong (servingbench/measure/soundness.py): usage against the lengths
    # sent and asked for, content chunks against completion tokens, the stamps against the run's own clock
    problems = served_problems(m.records, m.metrics.duration, exact_output=workload.load.ignore_eos,
                               exact_prompt=not workload.sends_text)
    assert not problems, "; ".join(problems)
    assert m.metrics.max_concurrent_requests == workload.load.concurrency
    assert not [w for w in m.warnings if "client saturated" in w], m.warnings


@pytest.mark.parametrize("config_name", ENGINES)
def test_batch_efficiency_is_measured(config_name: str, bench, expectations, measure_or_skip) -> None:
    """Throughput at the lab's concurrency over C x single-stream throughput, on the same server."""
    from servingbench.load.workload import single_stream

    workload = bench.workload(expectations, "lab", config_name)
    loaded = measure_or_skip(config_name, workload)
    single = measure_or_skip(config_name, single_stream(workload))
    efficiency = loaded.metrics.output_throughput / (workload.load.concurrency * single.metrics.output_throughput)
    assert 0 < efficiency <= 1.25, f"batch efficiency {efficiency:.3f} is outside (0, 1.25]: a measurement is off"

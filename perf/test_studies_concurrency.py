"""Concurrency sweep: throughput and latency percentiles per level, the knee, the throughput-latency curve.

Levels 1, 2, 4, ..., 64 on the lab-load server (config "vllm"), closed loop, with short prompts and outputs on the
CPU (perf/studies.toml). Requests per level follow ``sampling.requests_for``: enough for the study's percentile (a
p99 needs >= 100 samples), capped by the profile's ``max_requests`` (the CPU's wall time), never fewer than
2 x level; each row records the percentile its sample supports (``latency_percentile``: p90 at the CPU's low
levels), which the report's recommendation judges the level at. The knee (servingbench.studies.common.find_knee) is the
first level where p50 E2EL or p50 TPOT grows by more, relatively, than output throughput does over the previous
level; the level before it is the recommended operating point. Writes studies/concurrency.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servingbench.load.workload import Workload
from servingbench.studies.common import StudyParams, load_study_params, record_rows, serving_row, sweep_findings
from servingbench.studies.runs import REFERENCE, require_local
from servingbench.studies.sampling import requests_for, row_labels, samples

pytestmark = pytest.mark.study  # an experiment: runs with --studies (make studies), not in the default gate

STUDY = "concurrency"
PARAMS = Path(__file__).with_name("studies.toml")
CONFIG = REFERENCE


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "level" not in metafunc.fixturenames:
        return
    p = load_study_params(PARAMS, STUDY, metafunc.config.getoption("--gpu"))
    metafunc.parametrize("level", p["levels"], ids=[f"c{c}" for c in p["levels"]])
    metafunc.parametrize("config_name", [CONFIG])


@pytest.fixture(scope="session")
def params(pytestconfig: pytest.Config) -> StudyParams:
    return load_study_params(PARAMS, STUDY, pytestconfig.getoption("--gpu"))


def level_workload(params: StudyParams, level: int) -> Workload:
    n = requests_for(level, params["percentile"], per_level=params["requests_per_level"],
                     min_requests=params["min_requests"], max_requests=params.get("max_requests"))
    return params.workload(num_requests=n, concurrency=level)


def measure_level(bench, params: StudyParams, level: int) -> dict:
    require_local(bench)
    workload = level_workload(params, level)
    m = bench.measure(CONFIG, workload)
    row = {"key": f"c{level}", "concurrency": level, "num_requests": workload.source.num_requests, "status": "measured",
           "prompt_len": workload.source.prompt_len, "output_len": workload.source.output_len,
           **row_labels(samples(m), params["percentile"]), **serving_row(m)}
    record_rows(bench, STUDY, [row], sweep_findings, sort_key=lambda r: r["concurrency"])
    return row


def test_concurrency_level(level: int, config_name: str, bench, params: StudyParams) -> None:
    row = measure_level(bench, params, level)
    m = bench.measurements[row["measurement"]]
    assert m.metrics.failed == 0, f"{m.metrics.failed} requests failed: {m.metrics.errors}"
    assert {r.output_tokens for r in m.records} == {m.workload["output_len"]}
    assert row["max_concurrent_requests"] == min(level, row["num_requests"]), (
        f"level {level}: at most {row['max_concurrent_requests']} requests were in flight")
    assert not [w for w in m.warnings if "client saturated" in w], m.warnings


@pytest.mark.servers(CONFIG)
def test_concurrency_knee(bench, params: StudyParams) -> None:
    rows = [measure_level(bench, params, c) for c in params["levels"]]
    findings = sweep_findings(rows)
    single = next(r for r in rows if r["concurrency"] == 1)
    top = rows[-1]
    assert findings["speedup_over_single_stream"] >= params["min_peak_speedup"], (
        f"batching does not pay: peak output throughput {findings['peak_throughput']} is only "
        f"{findings['speedup_over_single_stream']:.2f}x single-stream ({single['output_throughput']:.1f} tok/s); "
        f"expected >= {params['min_peak_speedup']}x ({PARAMS})")
    assert top["median_e2el_ms"] > single["median_e2el_ms"], (
        f"p50 E2EL at concurrency {top['concurrency']} ({top['median_e2el_ms']:.1f} ms) is not above single-stream "
        f"({single['median_e2el_ms']:.1f} ms): the top level did not load the server")

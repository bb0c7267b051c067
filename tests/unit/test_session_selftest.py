"""A client self-test that fails does not lose the run it checks (#28 item 10).

The session ran the self-test (a peer server and client worker processes) before saving the measurement, so a peer
that would not start, or a WorkerError, threw the measured run away. Now the run is saved first; the self-test's
result, or its failure as the run's invalid reason, is attached and saved again.

No server: the session measures a --server-url on a closed port (its /metrics and KV facts come back empty), its
load generator returns records whose timings are known, and the self-test is replaced by one that fails or that
looks for the saved file, so the real peer (processes, ports) is not started on this shared machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from servingbench.load import run as load_run
from servingbench.load.generator import LoadResult
from servingbench.load.workers import WorkerError
from servingbench.load.workload import Workload
from servingbench.measure.environment import Hardware
from servingbench.measure.records import RequestRecord
from servingbench.servers.process import ServerStartError
from servingbench.suite import bench as bench_mod
from servingbench.servers.models import get_model
from servingbench.suite.run_settings import RunSettings
from servingbench.suite.selftest import ErrorPercentiles, SelfTest

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, every request is refused at once
WORKLOAD = Workload.of("lab", 4, 2, prompt_len=8, output_len=5, warmup_requests=0)


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bench_mod.Bench:
    async def load(url, model, specs, shape, **kwargs):  # type: ignore[no-untyped-def]
        records = [RequestRecord(f"r{i}", s.prompt_len, s.max_tokens, start=1.0,
                                 chunk_times=[1.1 + 0.01 * k for k in range(s.max_tokens)], output_tokens=s.max_tokens,
                                 prompt_tokens=s.prompt_len) for i, s in enumerate(specs)]
        return LoadResult(records, 1.0, shape, time.time())

    monkeypatch.setattr(load_run, "run_load", load)  # the one door every kind goes through (load/run.py)
    monkeypatch.setattr(bench_mod, "SELF_TEST_CONCURRENCY", 2)  # the workload's concurrency takes a self-test
    monkeypatch.setattr(bench_mod.Bench, "_remote_model", lambda self, url: "m")
    settings = RunSettings(Hardware("cpu-2c-test", False, cores=2), get_model("cpu-llama-36m"), "/m")
    return bench_mod.Bench(settings, tmp_path / "results", {"vllm": {"engine": "vllm"}}, server_url=CLOSED)


def saved(bench: bench_mod.Bench) -> dict:
    (path,) = (bench.results_dir / "measurements").glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("failure", [
    WorkerError("client worker 2 exited with code -9 (killed) before reporting"),
    ServerStartError("sse-peer exited with code 1 during start-up: OSError: [Errno 98] Address already in use"),
], ids=["worker-error", "peer-start"])
def test_a_failed_self_test_keeps_the_run_and_marks_it_invalid(bench, monkeypatch, failure: Exception) -> None:
    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise failure

    monkeypatch.setattr(bench_mod, "self_test", fail)
    m = bench.measure("vllm", WORKLOAD)
    assert m.metrics.completed == 4 and bench.measurements[m.key] is m
    assert len(m.invalid) == 1 and m.invalid[0].startswith("client self-test failed") and str(failure) in m.invalid[0]
    on_disk = saved(bench)
    assert on_disk["completed"] == 4 and on_disk["invalid"] == m.invalid


def test_the_run_is_saved_before_the_self_test_runs(bench, monkeypatch) -> None:
    seen: list[int] = []

    def look(concurrency: int, *, workers: int | None = None) -> SelfTest:
        seen.append(saved(bench)["completed"])  # the file is there while the self-test runs
        return SelfTest(concurrency, workers or 1, 1, 50.0, 20.0, 64, 4, 100.0, 100.0,
                        ErrorPercentiles(900.0, 950.0), ErrorPercentiles(0.1, 0.5))

    monkeypatch.setattr(bench_mod, "self_test", look)
    m = bench.measure("vllm", WORKLOAD)
    assert seen == [4]
    assert any("adds 900.0 ms to the median TTFT" in p for p in m.invalid)  # its verdict, attached afterwards
    assert saved(bench)["invalid"] == m.invalid and any("self-test against a peer" in w for w in saved(bench)["warnings"])


def test_a_self_test_over_its_allowance_names_the_fields_that_fix_it() -> None:
    """The message names the workload's field (client_workers, with the count used) and the Ray option, not just
    'more worker processes' (the H200's c512 run, 72 ms over 4 workers, left the user to find the field)."""
    st = SelfTest(512, 4, 4, 50.0, 20.0, 64, 1024, 24000.0, 25000.0, ErrorPercentiles(72.4, 221.1),
                  ErrorPercentiles(0.1, 1.0))
    problem = st.check(25.0)
    assert problem is not None and "adds 72.4 ms" in problem and "over the 25 ms allowed" in problem
    assert "client_workers (above 4)" in problem and 'client_hosts = "ray"' in problem
    within = SelfTest(512, 4, 4, 50.0, 20.0, 64, 1024, 24755.0, 25014.0, ErrorPercentiles(2.4, 7.8),
                      ErrorPercentiles(0.1, 1.0))
    assert within.check(25.0) is None  # the H100's measured c512 point (2026-12-06) passes

"""The pytest plugin in real inner pytest sessions: tests generated from a table, their failure messages, server
ordering and stopping, remote mode and option errors. Servers are real HF servers (they start in
seconds); the table is a small one written for each test."""

from __future__ import annotations

import json
import re

import pytest

from servingbench.servers.process import ServerProcess

pytest_plugins = ["pytester"]

TABLE = """
[workloads.tiny]
cpu = {{ num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }}
gpu = {{ num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }}

[configs.hf]
engine = "hf"

[configs.hf-b2]
engine = "hf"
max_batch_size = 2

[configs.vllm]
engine = "vllm"

{entries}
"""

TESTS = ""  # the plugin collects the table: a project needs no test file for its bounds


def project(pytester: pytest.Pytester, entries: str, tests: str = TESTS) -> None:
    pytester.makefile(".toml", expected=TABLE.format(entries=entries))
    if tests:
        pytester.makepyfile(test_perf=tests)
    pytester.makeini("[pytest]\n")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    results = pytester.path / "results"
    return pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                         "--expectations", "expected.toml", "--profile", "test-hw",
                                         "--results-dir", str(results), "-rs", "-v", *args, timeout=600)


def entry(config: str, bounds: str, hardware: str = "test-hw") -> str:
    return (f'[[expect]]\nhardware = "{hardware}"\nmodel = "cpu-llama-36m"\nconfig = "{config}"\n'
            f'workload = "tiny"\nsource = "test"\n{bounds}\n')


def test_one_test_per_bound_failure_names_value_bound_and_location(pytester: pytest.Pytester) -> None:
    project(pytester, entry("hf", "output_throughput = { min = 0.001 }\nfailure_rate = { max = 0 }")
            + entry("hf-b2", "output_throughput = { min = 1e9 }")
            + entry("hf-b2", '"output_throughput/hf" = { min = 0.01 }'))
    result = run(pytester)
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    for test_id in ("hf:output_throughput", "hf:failure_rate", "hf-b2:output_throughput", "hf-b2:output_throughput/hf"):
        assert f"test_expectation[test-hw:{test_id}@tiny]" in out  # the hardware key (or tier) leads the id
    lines = (pytester.path / "expected.toml").read_text().splitlines()
    bound_line = next(i for i, l in enumerate(lines) if "1e9" in l)
    line = max(i for i in range(bound_line) if lines[i] == "[[expect]]") + 1  # that entry's header, 1-based
    assert re.search(rf"\[exact tier, test-hw / cpu-llama-36m / hf-b2\] output_throughput = [0-9.]+, expected >= 1e\+09 "
                     rf"\(threshold at expected.toml:{line}; source: test\)", out), out
    # the session summary lists every measured config, and the results are on disk
    assert re.search(r"^hf\s+tiny n4 c2 16/4\s+4/0", out, re.M) and re.search(r"^hf-b2\s+tiny", out, re.M)
    summary = json.loads((pytester.path / "results" / "summary.json").read_text())
    assert {m["config_name"] for m in summary["measurements"]} == {"hf", "hf-b2"}
    assert len(list((pytester.path / "results" / "measurements").glob("*.json"))) == 2
    # --replay: the same assertions from the saved measurements, on the recorded run's hardware, no server started
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--expectations",
                                             "expected.toml", "--replay", str(pytester.path / "results"),
                                             "--results-dir", str(pytester.path / "replayed"), "-v", timeout=120)
    replayed.assert_outcomes(passed=3, failed=1)
    assert "servingbench: test-hw / cpu-llama-36m" in replayed.stdout.str()
    assert not (pytester.path / "replayed" / "logs").exists()


def test_servers_run_one_at_a_time_in_config_order(pytester: pytest.Pytester) -> None:
    """Tests interleaved by config in the file run grouped; a server is stopped before the next one starts."""
    tests = '''
import pytest
from servingbench.servers.process import ServerProcess

@pytest.mark.parametrize("config_name", ["hf", "hf-b2", "hf", "hf-b2"])
def test_measure(config_name, bench, expectations):
    m = bench.measure(config_name, bench.workload(expectations, "tiny", config_name))
    assert m.metrics.failed == 0
    live = [s.config.max_batch_size for s in ServerProcess.live]
    assert len(live) == 1, live
    print("ORDER", config_name, m.config["max_batch_size"])
'''
    project(pytester, "", tests)
    result = run(pytester, "-s")
    result.assert_outcomes(passed=4, skipped=1)  # the table, with no bound, is one skip that says so
    order = re.findall(r"ORDER (\S+)", result.stdout.str())
    assert order == ["hf", "hf", "hf-b2", "hf-b2"], order
    logs = sorted((pytester.path / "results" / "logs").glob("hf-*.log"))
    assert len(logs) == 2, logs  # each distinct config started once


def test_hardware_without_entries_measures_and_says_no_thresholds_apply(pytester: pytest.Pytester) -> None:
    tests = TESTS + '''
def test_measured(bench, expectations):
    assert bench.measure("hf", bench.workload(expectations, "tiny", "hf")).metrics.completed == 4
'''
    project(pytester, entry("hf", "output_throughput = { min = 1 }", hardware="other-hw"), tests)
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=1)
    out = result.stdout.str()
    assert ("no thresholds apply: hardware test-hw with model cpu-llama-36m: 0 exact bound(s), 0 portable bound(s) "
            "(any-cpu); the table has no exact rows for test-hw (it has: other-hw); to add them, run "
            "`servingbench calibrate`") in out
    assert "note: thresholds: hardware test-hw with model cpu-llama-36m: 0 exact bound(s)" in out


def test_server_url_mode_measures_the_deployment_and_skips_other_configs(
        pytester: pytest.Pytester, hf_server: ServerProcess) -> None:
    project(pytester, entry("vllm", "failure_rate = { max = 0 }") + entry("hf-b2", "failure_rate = { max = 0 }"))
    result = run(pytester, "--server-url", hf_server.url)
    result.assert_outcomes(passed=1, skipped=1)
    out = result.stdout.str()
    assert "--server-url mode measures the given deployment only; config 'hf-b2' (hf) needs a server" in out
    results = pytester.path / "results"
    assert (results / "summary.json").is_file(), list(results.rglob("*"))  # the session measured and wrote its summary
    assert not list(results.rglob("*.log")), "a server was started in --server-url mode"


def test_gpu_without_cuda_stops_at_once(pytester: pytest.Pytester) -> None:
    project(pytester, "")
    result = run(pytester, "--gpu")
    assert result.ret != 0
    assert "--gpu needs CUDA, but torch" in result.stderr.str() + result.stdout.str()
    assert "passed" not in result.stdout.str()


def test_bad_table_and_bad_model_are_usage_errors(pytester: pytest.Pytester) -> None:
    project(pytester, entry("no-such-config", "output_throughput = { min = 1 }"))
    result = run(pytester)
    assert result.ret != 0 and "config 'no-such-config' is not defined under [configs]" in result.stderr.str()
    project(pytester, "")
    result = run(pytester, "--model", "/nonexistent/model")
    assert result.ret != 0 and "unknown model '/nonexistent/model'" in result.stderr.str()


def test_bound_violation_messages() -> None:
    from servingbench.expect.bounds import Bound

    b = Bound("H100-80GB", "llama-2-7b", "vllm", "median_ttft_ms", None, 200.0, "lab", "lab", "perf/x.toml:12")
    assert b.violation(150.0) is None
    msg = b.violation(250.0)
    assert msg == ("[exact tier, H100-80GB / llama-2-7b / vllm] median_ttft_ms = 250, expected <= 200 "
                   "(threshold at perf/x.toml:12; source: lab)")
    r = Bound("h", "m", "vllm", "output_throughput/hf", 5.0, None, "lab", "s", "f:1")
    assert r.ratio_over == "hf" and r.base_metric == "output_throughput" and r.violation(4.9) is not None

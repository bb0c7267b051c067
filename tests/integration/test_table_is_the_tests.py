"""The expectations table is the tests: a user's project holding only ``perf/expected_performance.toml`` (no test
file, no conftest) asserts every bound of it, and a bound added to the table fails when the deployment cannot meet
it. The deployment is the session's HF server at ``--server-url``, the workload four short requests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from servingbench.servers.process import ServerProcess

TABLE = """
[workloads.tiny]
cpu = { num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }
gpu = { num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }

[configs.vllm]
engine = "vllm"
"""

ENTRY = """
[[expect]]
hardware = "any-cpu"
model = "*"
config = "vllm"
workload = "tiny"
source = "{source}"
{bounds}
"""


def outcomes(out: str, outcome: str) -> list[str]:
    return re.findall(rf"^{outcome} perf/expected_performance.toml::test_expectation\[(.+?)\]", out, re.M)


def test_a_bound_added_to_a_table_without_test_files_fails_when_it_should(
        tmp_path: Path, hf_server: ServerProcess, table_project: Any) -> None:
    args = ("--server-url", hf_server.url, "--profile", "test-hw")
    table = TABLE + ENTRY.format(source="first", bounds="failure_rate = { max = 0 }")
    first = table_project(tmp_path, table, *args, timeout=300)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-3000:]
    assert not [p for p in tmp_path.rglob("*.py")], "the project must hold no test file and no conftest"
    assert outcomes(out, "PASSED") == ["any-cpu:vllm:failure_rate@tiny"], out[-3000:]
    # the summary counts exactly the bounds asserted
    assert "note: thresholds: hardware test-hw with model cpu-llama-36m: 0 exact bound(s), 1 portable bound(s)" in out

    table += ENTRY.format(source="added", bounds="output_throughput = { min = 1e9 }")
    second = table_project(tmp_path, table, *args, "--results-dir", str(tmp_path / "second"), timeout=300)
    out = second.stdout + second.stderr
    assert second.returncode == 1, out[-3000:]
    assert outcomes(out, "PASSED") == ["any-cpu:vllm:failure_rate@tiny"], out[-3000:]
    assert outcomes(out, "FAILED") == ["any-cpu:vllm:output_throughput@tiny"], out[-3000:]
    lines = table.splitlines()
    added = lines.index('source = "added"')
    line = max(i for i in range(added) if lines[i] == "[[expect]]") + 1  # the added entry's header, 1-based
    where = tmp_path / "perf" / "expected_performance.toml"
    assert re.search(rf"\[portable tier, any-cpu / \* / vllm\] output_throughput = [0-9.e+]+, expected >= 1e\+09 "
                     rf"\(threshold at {re.escape(str(where))}:{line}; source: added\)", out), out[-3000:]
    assert "0 exact bound(s), 2 portable bound(s)" in out, out[-3000:]

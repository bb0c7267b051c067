"""Bad workloads as a user meets them, in an inner pytest session on the real HF server: bad dataset
files name the file, the line and the fix; a run past its deadline fails with the reason instead of waiting out
ceil(N / C) request timeouts."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from servingbench.load.dataset_files import write_jsonl


TABLE = """
[workloads.missing-field]
cpu = { kind = "dataset", dataset = "data/missing.jsonl", num_requests = 2, concurrency = 1 }
[workloads.wrong-type]
cpu = { kind = "dataset", dataset = "data/wrong.jsonl", num_requests = 2, concurrency = 1 }
[workloads.empty]
cpu = { kind = "dataset", dataset = "data/empty.jsonl", num_requests = 2, concurrency = 1 }
[workloads.too-long]
cpu = { kind = "dataset", dataset = "data/long.jsonl", num_requests = 1, concurrency = 1 }
[workloads.absent]
cpu = { kind = "dataset", dataset = "data/no-such-file.jsonl", num_requests = 1, concurrency = 1 }
[workloads.wedged]
cpu = { num_requests = 6, concurrency = 2, prompt_len = 8, output_len = 40, warmup_requests = 0, deadline_s = 3 }

[configs.hf]
engine = "hf"
[configs.hf-slow]
engine = "hf"
step_delay_ms = 250.0
"""

ENTRY = """
[[expect]]
hardware = "any-cpu"
model = "*"
config = "{config}"
workload = "{workload}"
failure_rate = {{ max = 0 }}
"""

CASES = {  # workload -> what its failure must say
    "missing-field": [r"missing\.jsonl:2: ", r"prompt"],
    "wrong-type": [r"wrong\.jsonl:1: ", r"output_len"],
    "empty": [r"empty\.jsonl", r"no requests|empty"],
    "too-long": [r"long\.jsonl:1: ", r"max_model_len", r"1024"],
    "absent": [r"no-such-file\.jsonl"],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, table_project: Any) -> subprocess.CompletedProcess[str]:
    root = tmp_path_factory.mktemp("errors")
    data = root / "perf" / "data"
    write_jsonl(data / "missing.jsonl", [{"prompt": "ba be", "output_len": 4}, {"output_len": 4}])
    write_jsonl(data / "wrong.jsonl", [{"prompt": "ba be", "output_len": "four"}, {"prompt": "bi", "output_len": 4}])
    (data / "empty.jsonl").write_text("\n")
    write_jsonl(data / "long.jsonl", [{"prompt": " ".join(["ba"] * 1100), "output_len": 8}])
    entries = "".join(ENTRY.format(config="hf", workload=w) for w in CASES)
    entries += ENTRY.format(config="hf-slow", workload="wedged")
    return table_project(root, TABLE + entries)


def _failure_of(out: str, workload: str) -> str:
    """The failure section of the test whose id names ``workload``."""
    sections = re.split(r"\n_{3,} (test_expectation\[[^\]]+\]) _{3,}\n", out)
    for name, body in zip(sections[1::2], sections[2::2]):
        if f"@{workload}]" in name:
            return body
    raise AssertionError(f"no failure section for {workload}:\n{out[-4000:]}")


def test_every_bad_workload_fails_alone_with_a_clear_reason(run: subprocess.CompletedProcess[str]) -> None:
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-4000:]
    assert "6 failed" in out, out[-2000:]
    assert "INTERNALERROR" not in out and "Traceback (most recent call last)" not in out, out[-4000:]
    for workload, patterns in CASES.items():
        body = _failure_of(out, workload)
        for p in patterns:
            assert re.search(p, body), (workload, p, body[-1500:])


def test_a_run_past_its_deadline_fails_naming_it(run: subprocess.CompletedProcess[str]) -> None:
    body = _failure_of(run.stdout + run.stderr, "wedged")
    assert "the run is invalid: deadline: the run passed its deadline of 3 s" in body, body[-1500:]
    assert "raise the workload's deadline_s" in body

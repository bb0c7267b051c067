"""A user's project as pytest sees it, without servers (collection only): the table is collected as one test per
bound, a table named on the command line is the session's, a leftover ``bound`` test says what to do, and
pytest-asyncio's loop scope needs no ini line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TABLE = """
[workloads.tiny]
cpu = {{ num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4 }}
gpu = {{ num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4 }}

[configs.vllm]
engine = "vllm"

[[expect]]
hardware = "{hardware}"
model = "{model}"
config = "vllm"
workload = "tiny"
failure_rate = {{ max = 0 }}
output_throughput = {{ min = 1 }}
"""


def pytest_in(root: Path, *args: str, ini: str = "[pytest]\n") -> subprocess.CompletedProcess[str]:
    (root / "pytest.ini").write_text(ini)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--hardware-key", "test-hw", *args],
                          cwd=root, capture_output=True, text=True, timeout=120)


def table(root: Path, rel: str, hardware: str = "any-cpu") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TABLE.format(hardware=hardware, model="*" if hardware.startswith("any") else "cpu-llama-36m"))
    return path


def test_the_table_alone_is_collected_one_test_per_bound(tmp_path: Path) -> None:
    table(tmp_path, "perf/expected_performance.toml")
    table(tmp_path, "perf/other.toml")  # not the session's table: not collected
    done = pytest_in(tmp_path, "--collect-only", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert ids == ["perf/expected_performance.toml::test_expectation[any-cpu:vllm:failure_rate@tiny]",
                   "perf/expected_performance.toml::test_expectation[any-cpu:vllm:output_throughput@tiny]"], ids


def test_a_table_without_bounds_for_this_run_is_one_skip_that_says_why(tmp_path: Path) -> None:
    table(tmp_path, "perf/expected_performance.toml", hardware="other-hw")
    done = pytest_in(tmp_path, "-rs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout, done.stdout
    assert ("no thresholds apply: hardware test-hw with model cpu-llama-36m: 0 exact bound(s), 0 portable bound(s) "
            "(any-cpu); the table has no exact rows for test-hw (it has: other-hw); to add them, run "
            "`servingbench calibrate`") in done.stdout, done.stdout


def test_a_table_named_on_the_command_line_is_the_sessions(tmp_path: Path) -> None:
    table(tmp_path, "perf/expected_performance.toml")
    table(tmp_path, "tables/mine.toml", hardware="test-hw")
    done = pytest_in(tmp_path, "tables/mine.toml", "--collect-only", "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert ids == ["tables/mine.toml::test_expectation[test-hw:vllm:failure_rate@tiny]",
                   "tables/mine.toml::test_expectation[test-hw:vllm:output_throughput@tiny]"], ids
    both = pytest_in(tmp_path, "tables/mine.toml", "--expectations", "perf/expected_performance.toml",
                     "--collect-only")
    assert both.returncode != 0 and "a session asserts one table; name only one of them" in both.stderr, both.stderr


def test_a_leftover_test_asking_for_bound_says_to_delete_it(tmp_path: Path) -> None:
    table(tmp_path, "perf/expected_performance.toml", hardware="other-hw")
    (tmp_path / "test_old.py").write_text("def test_expectation(bound):\n    assert bound\n")
    done = pytest_in(tmp_path, "test_old.py")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "asks for the `bound` fixture, which only the expectations table's own items have" in done.stdout
    assert "delete this test, a copy of the old test_expected_performance.py under perf" in done.stdout


def test_pytest_asyncio_needs_no_ini_line_and_a_projects_choice_is_kept(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    assert True\n")
    plain = pytest_in(tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "PytestDeprecationWarning" not in plain.stdout + plain.stderr, plain.stdout + plain.stderr
    assert "asyncio_default_fixture_loop_scope=function" in plain.stdout, plain.stdout
    chosen = pytest_in(tmp_path, ini="[pytest]\nasyncio_default_fixture_loop_scope = module\n")
    assert "asyncio_default_fixture_loop_scope=module" in chosen.stdout, chosen.stdout

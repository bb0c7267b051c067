"""The regression gate end to end, on real HF servers and a tiny lab load: calibration writes the rounds
baseline and proposed rows; the gate compares against it; an A/B of two Python environments runs interleaved; a
planted slowdown (every decode step made slower, real server behaviour) is caught as "regressed"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TABLE = """
[workloads.lab]
cpu = { num_requests = 6, concurrency = 2, prompt_len = 16, output_len = 12, warmup_requests = 1 }

[configs.hf]
engine = "hf"

[configs.vllm]
engine = "vllm"

[configs.hf-slow]
engine = "hf"
step_delay_ms = 60.0
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "expected_performance.toml").write_text(TABLE)
    shutil.copy(REPO / "perf" / "test_gate.py", tmp_path / "perf" / "test_gate.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = session\n")
    return tmp_path


def pytest_run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "perf/test_gate.py", "-p", "no:cacheprovider", "-rs",
                           "--profile", "test-hw", "--results-dir", str(project / "results"), "--gate",
                           "--gate-rounds", "2", "-k", "hf", *args], cwd=project, capture_output=True, text=True,
                          timeout=600)


def test_calibrate_then_gate_against_the_stored_rounds(project: Path) -> None:
    cal = subprocess.run([sys.executable, "-m", "servingbench.cli", "calibrate", "--profile", "test-hw",
                          "--configs", "hf", "--rounds", "2", "--lifetimes", "2", "--results-dir",
                          str(project / "cal")], cwd=project, capture_output=True, text=True, timeout=600)
    assert cal.returncode == 0, cal.stdout + cal.stderr
    rounds = json.loads((project / "baselines" / "test-hw" / "rounds.json").read_text())
    assert [r["lifetime"] for r in rounds["rounds"]] == [0, 0, 1, 1]
    assert rounds["spread"]["hf"]["output_throughput"] > 0
    table = (project / "perf" / "expected_performance.toml").read_text()
    assert "# >>> servingbench calibrate: test-hw / cpu-llama-36m" in table and 'config = "hf"' in table

    # untouched code: at the default 5% a run, this test would fail one CI run in twenty by design (CI failed on
    # p99 TPOT so, +7.7% at df 2); the rate itself is proved on simulated data (tests/unit/test_gate_power.py)
    same = pytest_run(project, "--gate-alpha", "0.001")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "servingbench regression gate" in same.stdout and "stored baseline" in same.stdout
    gate = json.loads((project / "results" / "gate.json").read_text())
    statuses = {v["metric"]: v["status"] for v in gate["reports"][0]["verdicts"]}
    assert set(statuses) >= {"output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms"}
    assert "regressed" not in statuses.values(), statuses


def test_ab_of_two_environments_is_interleaved_and_a_planted_slowdown_regresses(project: Path) -> None:
    same = pytest_run(project, "--ab-python", sys.executable, "--gate-alpha", "0.001")
    assert same.returncode == 0, same.stdout + same.stderr
    assert f"A/B: this environment against {sys.executable}" in same.stdout
    runs = [json.loads(p.read_text()) for p in (project / "results" / "measurements").glob("*.json")]
    order = [(d["config_name"], d["key"].rsplit("--r", 1)[1]) for d in sorted(runs, key=lambda d: d["started_at"])]
    # 2 lifetimes of 2 rounds a side, in ABBA order, a fresh server for each lifetime
    assert order == [("hf", "0"), ("hf", "1"), ("hf@B", "0"), ("hf@B", "1"), ("hf@B", "2"), ("hf@B", "3"),
                     ("hf", "2"), ("hf", "3")], order
    assert len(list((project / "results" / "logs").glob("hf-*.log"))) == 4

    slow = pytest_run(project, "--ab-config", "hf-slow")
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "A/B: hf against hf-slow" in slow.stdout
    assert "regressed:" in slow.stdout and "output_throughput: regressed" in slow.stdout

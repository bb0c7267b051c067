"""Stored baselines, end to end through pytest itself: record, then compare, in a temporary project.

Each test builds a project holding the real perf/test_baselines.py and expectations table, with a conftest that
replaces ``measure_or_skip`` by synthetic measurements (and ``bench`` by a stub that only picks the workload):
constructed request records with planted changes (TTFT 10% slower, ITL faster, a longer run), fed through the same
``Measurement``/metrics code as a real run. So the whole machinery (sample clock, storage folder, machine info,
guards, pytest-benchmark's compare) runs, without servers and in seconds.

The inner runs are in-process, and pytester drops the modules they imported afterwards: torch imported for the
first time inside one and again in the next crashes the interpreter, so the ``project`` fixture imports it first.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servingbench.plugin.options import DEFAULT_TOLERANCE
from servingbench.plugin.samples import METRICS

# Here rather than in tests/conftest.py: a non-root conftest defining pytest_plugins fails `pytest .`.
pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
PROFILE = "test-hw-a"

BUILDER = '''
import random

from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.measurement import Measurement
from servingbench.measure.telemetry import TelemetrySummary


def synthetic(config_name, workload, ttft=1.0, itl=1.0, duration=1.0, n=24, tokens=12, invalid=()):
    """Seeded records of a closed-loop run; ``ttft``/``itl``/``duration`` scale those parts of it; ``invalid``: the
    run's broken preconditions."""
    rng = random.Random(config_name)
    base = {"vllm": 0.05, "hf": 0.2}.get(config_name, 0.1)
    records = []
    for i in range(n):
        start = 0.25 * i
        times = [start + base * (1 + 0.5 * rng.random()) * ttft]
        for _ in range(tokens - 1):
            times.append(times[-1] + base / 5 * (1 + 0.5 * rng.random()) * itl)
        records.append(RequestRecord(f"r{i}", 8, tokens, queued_at=start, start=start, chunk_times=times,
                                     output_tokens=tokens))
    span = max(r.chunk_times[-1] for r in records) - min(r.start for r in records)
    return Measurement(key=f"{config_name}--{workload.label}", engine=config_name, config_name=config_name,
                       config={"engine": config_name}, workload=workload.to_dict(),
                       metrics=compute_metrics(records, span * duration), telemetry=TelemetrySummary(),
                       records=records, started_at=0.0, environment={"hardware": "synthetic"},
                       invalid=list(invalid))
'''

CONFTEST = '''
import json
from pathlib import Path

import pytest

''' + BUILDER + '''

class StubBench:
    """Bench's workload choice without its model build and server pool."""

    def workload(self, table, name, config_name):
        return table.workload(name, False, table.configs[config_name]["engine"])


@pytest.fixture(scope="session")
def bench():
    return StubBench()


@pytest.fixture
def measure_or_skip():
    """Synthetic measurements instead of servers; plan.json plants changes per config."""
    plan_file = Path(__file__).parent / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    return lambda config_name, workload: synthetic(config_name, workload, **plan.get(config_name, {}))
'''

INI = """[pytest]
addopts = -ra --benchmark-disable-gc --benchmark-sort=name --import-mode=importlib -p no:cacheprovider
asyncio_default_fixture_loop_scope = function
markers =
    servers(*configs): server configs
    slow: slow
"""


class Project:
    """A temporary project with the real baseline tests over synthetic measurements."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        pytester.makeini(INI)
        pytester.makeconftest(CONFTEST)
        (self.path / "perf").mkdir()
        for name in ("test_baselines.py", "expected_performance.toml"):
            shutil.copy(REPO / "perf" / name, self.path / "perf" / name)

    def plan(self, **configs: dict[str, float]) -> None:
        (self.path / "plan.json").write_text(json.dumps(configs))

    def run(self, *args: str, profile: str = PROFILE) -> pytest.RunResult:
        """The baseline tests only: the table beside them (their configs) would be collected as tests too."""
        return self.pytester.runpytest_inprocess("perf/test_baselines.py", "--profile", profile, *args)

    def record(self, *args: str, profile: str = PROFILE) -> Path:
        result = self.run("--benchmark-save=base", *args, profile=profile)
        assert result.ret == 0, result.stdout.str()
        files = sorted((self.path / "baselines" / profile).glob("*_base.json"))
        assert files, f"nothing saved under baselines/{profile}: {list(self.path.rglob('*.json'))}"
        return files[-1]

    def compare(self, *args: str, fail: str = "median:5%", profile: str = PROFILE) -> pytest.RunResult:
        return self.run("--benchmark-compare", f"--benchmark-compare-fail={fail}", *args, profile=profile)


@pytest.fixture(scope="session")
def torch_loaded() -> None:
    """Import torch before any pytester snapshot of sys.modules (see the module docstring)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


@pytest.fixture
def project(torch_loaded: None, pytester: pytest.Pytester) -> Project:
    return Project(pytester)


def regressions(result: pytest.RunResult) -> list[str]:
    """The ids pytest-benchmark reported as regressed."""
    text = result.stdout.str() + result.stderr.str()
    return re.findall(r"^ +(test_baseline\[[\w-]+\]) \(\S+\) - Field 'median'", text, re.M)


ALL_IDS = [f"test_baseline[{c}-{m}]" for c in ("vllm", "hf") for m in METRICS]


def test_recorded_baseline_holds_the_samples_and_the_environment(project: Project) -> None:
    saved = project.record("--benchmark-save-data")
    assert saved.parent == project.path / "baselines" / PROFILE  # top of the profile's folder, no OS/Python key
    data = json.loads(saved.read_text())
    info = data["machine_info"]["servingbench"]
    assert info["hardware_profile"] == PROFILE and info["model_profile"] == "cpu-llama-36m"
    for key in ("gpu_name", "gpu_count", "driver", "cuda", "torch", "vllm", "transformers"):
        assert key in info
    assert data["servingbench"]["metrics"].keys() == METRICS.keys()
    benches = {b["name"]: b for b in data["benchmarks"]}
    assert sorted(benches) == sorted(ALL_IDS)
    ns: dict[str, Any] = {}
    exec(BUILDER, ns)
    from servingbench.expect.bounds import load_table

    table = load_table(REPO / "perf" / "expected_performance.toml")
    for config in ("vllm", "hf"):
        workload = table.workload("lab", False, table.configs[config]["engine"])
        m = ns["synthetic"](config, workload)
        for metric, spec in METRICS.items():
            b = benches[f"test_baseline[{config}-{metric}]"]
            samples = np.asarray(spec.samples(m))
            stats = b["stats"]
            assert stats["data"] == samples.tolist()  # the rounds are the measured samples, exactly
            assert stats["rounds"] == samples.size and stats["min"] == samples.min() and stats["max"] == samples.max()
            assert stats["mean"] == pytest.approx(samples.mean(), rel=1e-12)
            assert stats["median"] == pytest.approx(np.median(samples), rel=1e-12)
            assert b["extra_info"]["workload"]["num_requests"] == workload.source.num_requests
            assert b["extra_info"]["engine_config"] == {"engine": config} and b["group"] == metric
            assert b["options"]["timer"] == "servingbench_sample_clock"
    spt = benches["test_baseline[vllm-s_per_output_token]"]["stats"]
    assert spt["rounds"] == 1


def test_an_invalid_run_is_refused_as_a_baseline_saying_why(project: Project) -> None:
    """A run whose client saturated measured the client: stored, it would be the figure every later run is
    compared with (#28 item 12)."""
    reason = "client saturated: event-loop lag p90 41.0 ms over the 20 ms allowed"
    project.plan(vllm={"invalid": [reason]})
    result = project.run("--benchmark-save=base")
    assert result.ret != 0
    result.assert_outcomes(passed=len(METRICS), failed=len(METRICS))  # hf's stored, every vllm metric refused
    result.stdout.fnmatch_lines([f"*vllm*invalid*{reason}*not stored as a baseline*"])
    stored = [b["name"] for f in (project.path / "baselines" / PROFILE).glob("*_base.json")
              for b in json.loads(f.read_text())["benchmarks"]]
    assert stored and not [n for n in stored if "[vllm-" in n]


def test_a_save_that_fails_mid_write_leaves_the_baselines_as_they_were(project: Project,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-benchmark opens the baseline file and then serializes into it: a failure on the way (a value JSON
    cannot hold, a full disk, a kill) left an empty or truncated JSON that every later compare fails to load.
    Here the file goes through a temporary file and a rename."""
    first = project.record()
    folder, before = first.parent, first.read_bytes()
    assert first.stat().st_mode & 0o777 == 0o644

    def unserializable(*args: Any, **kwargs: Any) -> str:
        raise TypeError("Object of type Decimal is not JSON serializable")

    with monkeypatch.context() as m:  # not monkeypatch.undo(): pytester's chdir is on the same monkeypatch
        m.setattr("pytest_benchmark.utils.safe_dumps", unserializable)
        m.setattr("pytest_benchmark.storage.file.safe_dumps", unserializable)
        try:
            assert project.run("--benchmark-save=base").ret != 0
        except TypeError:
            pass
    assert [p.name for p in folder.iterdir()] == [first.name]  # no second file, empty or partial; no temporary
    assert first.read_bytes() == before
    assert project.compare().ret == 0  # and the baseline still loads


def test_identical_run_passes(project: Project) -> None:
    project.record()
    result = project.compare()
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=len(ALL_IDS))
    assert regressions(result) == []


def test_ttft_slowdown_of_10_percent_fails_and_names_the_metric(project: Project) -> None:
    project.record()
    project.plan(vllm={"ttft": 1.10})
    result = project.compare()
    assert result.ret == 1, result.stdout.str()
    assert "FAILED: performance has regressed beyond median:5%" in result.stdout.str()
    assert regressions(result) == ["test_baseline[vllm-ttft]"]


def test_faster_run_passes(project: Project) -> None:
    project.record()
    project.plan(vllm={"ttft": 0.8, "itl": 0.8}, hf={"duration": 0.7})
    result = project.compare()
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=len(ALL_IDS))


def test_throughput_regression_is_caught(project: Project) -> None:
    """Same latencies, a run 20% longer: output throughput fell, seconds per output token rose."""
    project.record()
    project.plan(hf={"duration": 1.2})
    result = project.compare()
    assert result.ret == 1, result.stdout.str()
    assert regressions(result) == ["test_baseline[hf-s_per_output_token]"]


def test_default_tolerance_shorthand(project: Project) -> None:
    pct = int(DEFAULT_TOLERANCE.split(":")[1].rstrip("%"))
    project.record()
    project.plan(vllm={"itl": 1 + pct / 100 / 2})  # half the tolerance: passes
    ok = project.run("--baseline-compare")
    assert ok.ret == 0, ok.stdout.str()
    assert f"fail threshold: {DEFAULT_TOLERANCE}" in ok.stdout.str()
    project.plan(vllm={"itl": 1 + 2 * pct / 100})  # twice the tolerance: fails
    bad = project.run("--baseline-compare")
    tight = project.run("--baseline-compare", "--baseline-tolerance=median:1%")
    assert tight.ret == 1 and "fail threshold: median:1%" in tight.stdout.str()
    assert bad.ret == 1 and "test_baseline[vllm-itl]" in regressions(bad), bad.stdout.str()


def test_benchmark_without_baseline_fails(project: Project) -> None:
    project.record("-k", "not hf-itl")
    result = project.compare()
    assert result.ret == 1
    result.assert_outcomes(passed=len(ALL_IDS) - 1, failed=1)
    result.stdout.fnmatch_lines(["*no baseline for perf/test_baselines.py::test_baseline[[]hf-itl[]]*"])
    result.stdout.fnmatch_lines(["*the run has benchmarks the baseline lacks*hf-itl*"])


def test_no_baseline_file_at_all_stops_before_measuring(project: Project) -> None:
    result = project.compare()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no baseline to compare with in" in result.stderr.str() and "--benchmark-save=baseline" in result.stderr.str()
    assert " passed" not in result.stdout.str()  # stopped before any test ran: no server would have started


def test_baseline_from_other_hardware_is_refused(project: Project) -> None:
    saved = project.record(profile="test-hw-a")
    result = project.compare("--benchmark-storage", str(saved.parent), profile="test-hw-b")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert "refusing to compare" in text and "'test-hw-a'" in text and "'test-hw-b'" in text


def test_default_storage_is_per_profile(project: Project) -> None:
    """Profile b's compare does not see profile a's baseline; an explicit --benchmark-storage is kept."""
    project.record(profile="test-hw-a")
    result = project.compare(profile="test-hw-b")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "baselines/test-hw-b" in result.stderr.str()
    project.run("--benchmark-save=mine", "--benchmark-storage", "elsewhere")
    assert list((project.path / "elsewhere").rglob("*_mine.json"))


def test_renamed_tests_fail_in_both_directions(project: Project) -> None:
    project.record()
    module = project.path / "perf" / "test_baselines.py"
    module.write_text(module.read_text().replace("def test_baseline(", "def test_baseline_renamed("))
    result = project.compare()
    assert result.ret == 1
    result.assert_outcomes(failed=len(ALL_IDS))
    out = result.stdout.str()
    assert "the run has benchmarks the baseline lacks" in out and "test_baseline_renamed[vllm-ttft]" in out
    assert "the baseline has benchmarks this run lacks" in out
    assert "perf/test_baselines.py::test_baseline[hf-e2el]" in out


def test_baseline_with_extra_benchmark_fails_the_run(project: Project) -> None:
    saved = project.record()
    data = json.loads(saved.read_text())
    ghost = dict(data["benchmarks"][0], fullname="perf/test_baselines.py::test_baseline[vllm-removed_metric]",
                 name="test_baseline[vllm-removed_metric]")
    data["benchmarks"].append(ghost)
    saved.write_text(json.dumps(data))
    result = project.compare()
    assert result.ret == 1, result.stdout.str()
    result.assert_outcomes(passed=len(ALL_IDS))
    result.stdout.fnmatch_lines(
        ["*FAILED: the baseline has benchmarks this run lacks*test_baseline[[]vllm-removed_metric[]]*"])


def test_deselected_tests_are_not_missing(project: Project) -> None:
    project.record()
    result = project.compare("-k", "vllm")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=len(METRICS))

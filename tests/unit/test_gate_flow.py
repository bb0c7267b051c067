"""perf/test_gate.py's flow with stub fixtures (no server starts): restarts between lifetimes, ABBA order, the
provenance refusal, and the deployments' A/B without a stored lifetime spread."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from servingbench.gate.judge import DEFAULT_LIFETIMES, DEFAULT_ROUNDS, alpha_per_test
from servingbench.measure.rounds import GATED, Round, RoundsFile

REPO = Path(__file__).resolve().parents[2]
KEY = "test-hw"
PROVENANCE = {"model": "cpu-llama-36m", "versions": {"vllm": "0.32.0", "torch": "2.13", "transformers": "5.19"}}
WORKLOAD = {"name": "lab", "num_requests": 100, "concurrency": 10}


def gate_module() -> Any:
    spec = importlib.util.spec_from_file_location("perf_test_gate", REPO / "perf" / "test_gate.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class Bench:
    """What the gate test asks of ``bench``: settings, workload, config, a pool to stop; it logs the order."""

    def __init__(self, remote: bool = False) -> None:
        self.log: list[str] = []
        self.remote = remote
        self.pool = SimpleNamespace(stop=lambda: self.log.append("restart"))
        self.settings = SimpleNamespace(hardware=SimpleNamespace(key=KEY, device_class="cpu"),
                                        provenance=lambda: PROVENANCE)

    def workload(self, table: Any, name: str, config: str) -> Any:
        return SimpleNamespace(to_dict=lambda: WORKLOAD, label="lab")

    def config(self, name: str) -> Any:
        return SimpleNamespace(engine="hf" if name.startswith("hf") else "vllm")


def measurement(name: str, key: str, scale: float) -> Any:
    figures = {g.name: (1000.0 / scale if g.higher_is_better else 100.0 * scale) for g in GATED}
    m = SimpleNamespace(config_name=name, key=key, records=[], server_startup_s=30.0,
                        metrics=SimpleNamespace(completed=100, failed=0, duration=20.0))
    m.require_valid = lambda metric: m
    m.value = lambda metric: figures[metric]
    return m


def run_gate(tmp_path: Path, bench: Bench, options: dict[str, Any], slow: float = 1.0) -> tuple[Any, list]:
    rng = np.random.default_rng(0)

    def measure_or_skip(name: str, workload: Any, round: int, **kw: Any) -> Any:
        bench.log.append(f"{name}#{round}")
        return measurement(name, f"{name}--r{round}", math.exp(rng.normal(0, 0.01)) * (slow if "@B" in name or
                                                                                          name == "hf-slow" else 1))

    opts = {"--gate": True, "--gate-rounds": None, "--gate-lifetimes": None, "--gate-alpha": None,
            "--baseline-dir": str(tmp_path), "--gate-allow-mismatch": [], "--ab-config": None,
            "--ab-server-url": None, "--ab-python": None, "--server-url": None, **options}
    config = SimpleNamespace(getoption=opts.__getitem__, rootpath=tmp_path)
    items = [SimpleNamespace(originalname="test_no_regression")] * 2
    reports: list = []
    gate_module().test_no_regression("hf", bench, None, measure_or_skip, config, reports,
                                     SimpleNamespace(session=SimpleNamespace(items=items)))
    return reports[0], bench.log


def store(tmp_path: Path, provenance: dict[str, Any] = PROVENANCE) -> None:
    rng = np.random.default_rng(1)
    rounds = []
    for lt in range(6):
        a = rng.normal(0, 0.01)
        for i in range(3):
            f = math.exp(a + rng.normal(0, 0.01))
            rounds.append(Round("hf", lt, i, f"hf-{lt}-{i}", {g.name: (1000.0 / f if g.higher_is_better else 100.0 * f)
                                                               for g in GATED}, {}, 100, 0))
    (tmp_path / KEY).mkdir()
    RoundsFile(provenance, {"hf": WORKLOAD}, rounds).save(tmp_path / KEY)


def test_stored_baseline_restarts_before_each_lifetime(tmp_path: Path) -> None:
    store(tmp_path)
    report, log = run_gate(tmp_path, Bench(), {})
    assert log.count("restart") == DEFAULT_LIFETIMES and len(log) == DEFAULT_LIFETIMES * (DEFAULT_ROUNDS + 1)
    assert log[:2] == ["restart", "hf#0"] and log[DEFAULT_ROUNDS + 1] == "restart"
    assert report.lifetimes == DEFAULT_LIFETIMES and report.alpha == pytest.approx(alpha_per_test(2))
    assert not report.regressed and report.verdicts[0].df == 6 + DEFAULT_LIFETIMES - 2


def test_a_baseline_of_another_engine_version_is_refused_unless_allowed(tmp_path: Path) -> None:
    store(tmp_path, {**PROVENANCE, "versions": {**PROVENANCE["versions"], "transformers": "4.56"}})
    with pytest.raises(pytest.fail.Exception, match="versions.transformers: baseline '4.56', run '5.19'"):
        run_gate(tmp_path, Bench(), {})
    report, _ = run_gate(tmp_path, Bench(), {"--gate-allow-mismatch": ["versions"]})
    assert any("allowed: versions.transformers" in n for n in report.notes)


def test_ab_of_configs_runs_abba_and_catches_a_slowdown(tmp_path: Path) -> None:
    bench = Bench()
    with pytest.raises(AssertionError, match="regressed"):
        run_gate(tmp_path, bench, {"--ab-config": "hf-slow", "--gate-lifetimes": 4}, slow=1.5)
    starts = [bench.log[i + 1].split("#")[0] for i, e in enumerate(bench.log) if e == "restart"]
    assert starts == ["hf", "hf-slow", "hf-slow", "hf", "hf", "hf-slow", "hf-slow", "hf"]


def test_gate_alpha_sets_the_level_of_every_test(tmp_path: Path) -> None:
    """--gate-alpha A: each of a run's tests is one-sided at A / tests (2 configs here), in the report and the CI."""
    from servingbench.gate.judge import alpha_per_test

    store(tmp_path)
    default, _ = run_gate(tmp_path, Bench(), {})
    strict, _ = run_gate(tmp_path, Bench(), {"--gate-alpha": 0.001})
    assert default.alpha == pytest.approx(alpha_per_test(2)) and strict.alpha == pytest.approx(alpha_per_test(2, 0.001))
    assert strict.alpha == pytest.approx(default.alpha / 50)
    # a stricter level widens the interval each verdict prints around the same change
    wide = {v.metric: v.ci_high - v.ci_low for v in strict.verdicts if math.isfinite(v.ci_low)}
    narrow = {v.metric: v.ci_high - v.ci_low for v in default.verdicts if math.isfinite(v.ci_low)}
    assert wide and all(wide[m] > narrow[m] for m in wide)


def test_ab_of_deployments_without_stored_spread_is_inconclusive_with_the_fix(tmp_path: Path) -> None:
    bench = Bench(remote=True)
    gate = gate_module()
    rng_log: list[str] = []

    def measure_or_skip(name: str, workload: Any, round: int, **kw: Any) -> Any:
        rng_log.append(name)
        return measurement(name, f"{name}--r{round}", 1.0 + 0.01 * len(rng_log) % 3)

    opts = {"--gate": True, "--gate-rounds": None, "--gate-lifetimes": None, "--gate-alpha": None,
            "--baseline-dir": str(tmp_path), "--gate-allow-mismatch": [], "--ab-config": None,
            "--ab-server-url": "http://b", "--ab-python": None, "--server-url": "http://a"}
    reports: list = []
    gate.test_no_regression("vllm", bench, None, measure_or_skip, SimpleNamespace(getoption=opts.__getitem__,
                            rootpath=tmp_path), reports, SimpleNamespace(session=SimpleNamespace(items=[])))
    report = reports[0]
    assert "restart" not in bench.log and report.lifetimes == 1
    assert rng_log == ["vllm", "vllm@B", "vllm@B", "vllm", "vllm", "vllm@B"]  # rounds in ABBA order
    assert all(v.status == "inconclusive" and "servingbench calibrate" in v.note for v in report.verdicts[:-1])


def test_a_missing_baseline_fails_with_its_one_line_not_a_chained_exception(tmp_path: Path) -> None:
    """Seen on the H100 (2026-12-06): the failure printed the message, 'During handling of the above exception,
    another exception occurred', and the message again, because pytest.fail was called inside the except clause."""
    bench = Bench()
    with pytest.raises(pytest.fail.Exception, match="no rounds baseline at .*servingbench calibrate") as info:
        run_gate(tmp_path, bench, {})
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert bench.log == []  # refused before any server starts or round runs

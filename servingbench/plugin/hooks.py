"""The plugin's hooks: configure, test generation and ordering, server stops, the baseline store, the summary.

Thin by design: each hook reads the one ``PluginState`` (``plugin/state.py``) and hands the work to the module
that owns it. Items are ordered so that all tests of one server config run together, and the pool stops a server
as soon as no remaining test needs it.
"""

from __future__ import annotations

import atexit
import signal
from pathlib import Path
from typing import Any, Generator, Sequence

import pytest

from servingbench.plugin import baselines
from servingbench.plugin.options import add_options
from servingbench.plugin.state import STATE, resolve, state_of
from servingbench.report.summary import text_table, write_summary
from servingbench.servers.process import ServerProcess
from servingbench.suite.thresholds import Bound

NEEDS = pytest.StashKey[tuple[str, ...]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """First of all configure hooks: pytest-benchmark's (trylast) opens the baseline storage this one chooses."""
    config.addinivalue_line("markers", "gpu: needs --gpu (a CUDA GPU and vLLM's CUDA build)")
    config.addinivalue_line("markers", "perf: starts servers and measures them")
    config.addinivalue_line("markers", "study: an experiment, run with --studies (not part of the default gate)")
    config.addinivalue_line("markers", "servers(*configs): the named server configs a test measures (for "
                            "ordering and server stops)")
    config.addinivalue_line("markers", "slow: takes minutes (real servers under sustained load)")
    state = config.stash[STATE] = resolve(config)
    baselines.choose_storage(config, state)
    atexit.register(ServerProcess.stop_all)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM behaves like Ctrl-C: pytest unwinds, fixtures tear down, servers stop."""
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    baselines.check_before_start(session, state_of(session.config))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bound" not in metafunc.fixturenames:
        return
    state = state_of(metafunc.config)
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
    if "config_name" in params:
        return (params["config_name"],)
    marker = item.get_closest_marker("servers")
    return tuple(marker.args) if marker else ()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests by the server config they need (one heavy server alive at a time); gpu tests need --gpu; tests
    that measure are marked ``perf``."""
    state = state_of(config)
    skip_gpu = pytest.mark.skip(reason="needs --gpu (a CUDA GPU and vLLM's CUDA build)")
    skip_study = pytest.mark.skip(reason="a study: run with --studies (make studies)")
    studies = config.getoption("--studies")
    order: dict[str, int] = {}
    for item in items:
        if "gpu" in item.keywords and not state.gpu:
            item.add_marker(skip_gpu)
        if "study" in item.keywords and not studies:
            item.add_marker(skip_study)
        item.stash[NEEDS] = _needs(item)
        if item.stash[NEEDS] or "bench" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.perf)
        for name in item.stash[NEEDS][:1]:
            order.setdefault(name, len(order))
    items.sort(key=lambda it: (len(it.stash[NEEDS]) > 1, order.get(it.stash[NEEDS][0], -1) if it.stash[NEEDS] else -1))
    state.items = list(items)


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    if items:
        state_of(items[0].config).baselines.deselected.update(i.nodeid for i in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    state_of(session.config).baselines.collected = {i.nodeid for i in session.items}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    return baselines.check_report(item, call, report)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the running server once no remaining test needs its config."""
    state = state_of(item.config)
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


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    baselines.update_machine_info(config, state_of(config), machine_info)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession: Any,
                                          machine_info: dict[str, Any], compared_benchmark: dict[str, Any]) -> None:
    baselines.check_machine_info(config, state_of(config), benchmarksession, machine_info, compared_benchmark)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]) -> None:
    baselines.update_json(config, state_of(config), benchmarks, output_json)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_benchmark_scale_unit(config: pytest.Config, unit: str, benchmarks: list[Any], best: dict[str, Any],
                                worst: dict[str, Any], sort: str) -> tuple[str, float] | None:
    return baselines.scale_unit(config, unit, benchmarks, best, worst, sort)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    baselines.check_after_run(session, state_of(session.config))


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's table
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    _session_summary(terminalreporter, config)
    baselines.write_terminal_summary(terminalreporter, config, state)


def _session_summary(tr: Any, config: pytest.Config) -> None:
    state = state_of(config)
    session = state.session
    if session is None or not (session.measurements or session.errors):
        return
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
    table = state_of(config).table
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

"""The plugin's hooks: configure, test ordering, server stops, the baseline store, the summary.

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

from servingbench.plugin import baselines, ci
from servingbench.plugin.options import add_options
from servingbench.plugin.state import STATE, check_gpu_engines, resolve, state_of
from servingbench.plugin.table import BoundItem, asserted_bounds, summary_text
from servingbench.report.summary import hf_lines, text_table, write_summary
from servingbench.servers.process import LEAKED, ServerProcess
from servingbench.gate.judge import save_reports
from servingbench.expect.bounds import Bound

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
    _asyncio_loop_scope(config)
    state = config.stash[STATE] = resolve(config)
    baselines.choose_storage(config, state)
    atexit.register(ServerProcess.stop_all)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate)


ASYNCIO_LOOP_SCOPE = "asyncio_default_fixture_loop_scope"


def _asyncio_loop_scope(config: pytest.Config) -> None:
    """pytest-asyncio warns (PytestDeprecationWarning) in every session whose ini file leaves its fixture loop scope
    unset, and a user's project has no reason to set it: unless the project chose one, use "function", the default
    pytest-asyncio announces. ``getini`` has no public setter, so this fills its cache before pytest-asyncio's
    configure hook (not tryfirst) reads it."""
    try:
        if config.getini(ASYNCIO_LOOP_SCOPE):
            return
    except ValueError:  # pytest-asyncio is not installed: nothing to set
        return
    config._inicache[ASYNCIO_LOOP_SCOPE] = "function"


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM behaves like Ctrl-C: pytest unwinds, fixtures tear down, servers stop."""
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    baselines.check_before_start(session, state_of(session.config))


def _needs(item: pytest.Item) -> tuple[str, ...]:
    bound = _bound_of(item)
    if isinstance(bound, Bound):
        return (bound.config,) + ((bound.ratio_over,) if bound.ratio_over else ())
    params = getattr(item, "callspec", None)
    if params and "config_name" in params.params:
        return (params.params["config_name"],)
    marker = item.get_closest_marker("servers")
    return tuple(marker.args) if marker else ()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests by the server config they need (one heavy server alive at a time); gpu tests need --gpu; tests
    that measure are marked ``perf``."""
    state = state_of(config)
    skip_gpu = pytest.mark.skip(reason="needs --gpu (a CUDA GPU and vLLM's CUDA build)")
    skip_study = pytest.mark.skip(reason="a study: run with --studies")
    studies = config.getoption("--studies")
    order: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("gpu") and not state.gpu:  # a marker, not a keyword: a param id "gpu" is none
            item.add_marker(skip_gpu)
        if item.get_closest_marker("study") and not studies:
            item.add_marker(skip_study)
        item.stash[NEEDS] = _needs(item)
        if item.stash[NEEDS] or "bench" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.perf)
        for name in item.stash[NEEDS][:1]:
            order.setdefault(name, len(order))
    grouped = {it.stash[NEEDS][0] for it in items if len(it.stash[NEEDS]) == 1}

    def key(it: pytest.Item) -> tuple[bool, int, bool]:
        """A test that needs several configs runs at the end (their measurements are cached by then), unless its
        other configs have no group of their own: then it runs at the end of its first config's group, while that
        server is still up (the prefix-caching ratio measures vllm, then starts vllm-no-prefix)."""
        needs = it.stash[NEEDS]
        if not needs:
            return (False, -1, False)
        late = len(needs) > 1 and any(n in grouped for n in needs[1:])
        return (late, order.get(needs[0], -1), len(needs) > 1)

    items.sort(key=key)
    state.items = list(items)


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    if items:
        state_of(items[0].config).baselines.deselected.update(i.nodeid for i in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note what was collected (the baseline store checks it); under --gpu, stop now if a selected config needs
    vLLM and it is missing; measure the peak bandwidth now, before any server holds the machine, when a selected MBU
    bound needs it and no datasheet figure is known."""
    state = state_of(session.config)
    state.baselines.collected = {i.nodeid for i in session.items}
    state.asserted = asserted_bounds(session.items)
    if session.config.option.collectonly:
        return
    starting = {n for i in session.items if not i.get_closest_marker("skip") for n in i.stash.get(NEEDS, ())}
    check_gpu_engines(state, starting, session.config.getoption("--server-url", default=None))
    wanted = {b.base_metric for i in session.items if isinstance(b := _bound_of(i), Bound)}
    if wanted & {"mbu", "single_stream_mbu"}:
        state.peaks(state.tensor_parallel_size if state.gpu else 1)


def _bound_of(item: pytest.Item) -> Bound | None:
    return item.bound if isinstance(item, BoundItem) else None


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
    tr = terminalreporter
    markdown = _session_summary(tr, config)
    baselines.write_terminal_summary(tr, config, state)
    if state.gate_reports:
        tr.section("servingbench regression gate")
        for report in state.gate_reports:
            tr.write_line(report.table())
        if state.session is not None:
            tr.write_line(f"verdicts: {save_reports(state.session.results_dir, state.gate_reports)}")
        markdown += ci.gate_markdown(state.gate_reports)
    try:
        written = ci.append_step_summary(markdown)
    except OSError as e:  # the results are on disk; CI's page just lacks the summary
        tr.write_line(f"job summary: not written to ${ci.STEP_SUMMARY}: {e}", red=True)
    else:
        if written is not None:
            tr.write_line(f"job summary: appended to {written}")


def _session_summary(tr: Any, config: pytest.Config) -> str:
    """Print the session summary and write it to the results directory; returns it as Markdown for CI."""
    state = state_of(config)
    session = state.session
    if session is None or not (session.measurements or session.errors):
        return ""
    p = session.settings
    title = f"servingbench: {p.hardware.key} / {p.model.name}"
    tr.section(title)
    measured = list(session.measurements.values())
    if measured:
        tr.write_line(text_table(measured))
    ratios = hf_lines(measured)  # vLLM over hf and, where measured, over hf-batch8
    for line in ratios:
        tr.write_line(line)
    notes = [w for m in measured for w in m.warnings]
    notes.append(f"thresholds: {summary_text(state, state.asserted)}")
    notes += [f"{key}: {err.splitlines()[0]}" for key, err in session.errors.items()]
    notes += [f"leaked: {leak}" for leak in LEAKED]  # a server that outlived SIGKILL may skew what came after
    for n in notes:
        tr.write_line(f"note: {n}")
    write_summary(session.results_dir, measured, {"hardware": p.hardware.key, "model": p.model.name,
                                                   "results_dir": str(session.results_dir)}, notes)
    tr.write_line(f"results: {session.results_dir}")
    if config.getoption("--report") or config.getoption("--report-dir"):
        _write_report(config, session.results_dir, tr)
    return ci.session_markdown(title, measured, ratios + [f"note: {n}" for n in notes]
                               + [f"results: {session.results_dir}"])


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

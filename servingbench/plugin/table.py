"""The expectations table is the tests: ``pytest_collect_file`` turns the session's table into one item per bound.

A collector rather than a test module, so that a user's project needs only its table: nothing is copied into it,
and the bounds the session summary counts are exactly the items collected from the table the session uses
(``--expectations PATH``, a ``.toml`` named on the command line, else ``perf/expected_performance.toml`` under
the rootdir). Ids stay those of the generated tests before: ``<table>::test_expectation[<hardware>:<config>:
<metric>[@<workload>]]``. Each item measures (once per session, shared with every other item on the same config and
workload), records its figures as JUnit properties, and fails with the measured value, the bound, its tier and the
file:line where it lives. A run with no successful request fails every bound on its latencies: an empty
distribution is missing, never zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from servingbench.measure.measurement import MissingFigure
from servingbench.plugin.state import STATE, PluginState, state_of
from servingbench.expect.bounds import Bound, bound_value

TEST_NAME = "test_expectation"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> "TableFile | None":
    """The session's table, wherever pytest meets it (a directory it walks, or the file named)."""
    state = parent.config.stash.get(STATE, None)
    if state is None or state.table is None or file_path.suffix != ".toml":
        return None
    if not _same_file(file_path, state.table_path):
        return None
    return TableFile.from_parent(parent, path=file_path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


class TableFile(pytest.File):
    """The session's expectations table: one ``BoundItem`` per bound that applies to this run."""

    def collect(self) -> Iterator[pytest.Item]:
        state = state_of(self.config)
        bounds = state.bounds()
        if not bounds:  # one visible skip that says why, rather than a table that silently yields nothing
            item = BoundItem.from_parent(self, name=f"{TEST_NAME}[none]", callobj=test_expectation, bound=None)
            item.add_marker(pytest.mark.skip(reason=f"no thresholds apply: {no_bounds_reason(state)}; the "
                                                     "measurements still run and are reported"))
            yield item
            return
        for b in bounds:
            yield BoundItem.from_parent(self, name=f"{TEST_NAME}[{b.test_id}]", callobj=test_expectation, bound=b)


class BoundItem(pytest.Function):
    """One bound of the table as a test: a ``pytest.Function`` so that fixtures, marks, ``-k`` and the report
    work as for any test; it reports the table's file and the line of its ``[[expect]]`` entry."""

    def __init__(self, *, bound: Bound | None, **kw: Any) -> None:
        self.bound = bound
        super().__init__(**kw)  # the id is the name, "test_expectation[<bound's id>]", as parametrize made it
        self.originalname = TEST_NAME

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.bound.location.rsplit(":", 1)[-1] if self.bound else ""
        return self.path, int(line) - 1 if line.isdigit() else 0, self.name  # a skip report needs a line


@pytest.fixture
def bound(request: pytest.FixtureRequest) -> Bound:
    """The bound a table item asserts. Only the plugin's table items have one: a test module asking for it is a
    copy of the old generated tests, which would assert every bound a second time."""
    node = request.node
    if isinstance(node, BoundItem) and node.bound is not None:
        return node.bound
    pytest.fail(f"{node.nodeid} asks for the `bound` fixture, which only the expectations table's own items "
                "have: the plugin now collects the table itself (one test per bound, e.g. "
                "perf/expected_performance.toml::test_expectation[...]); delete this test, a copy of the old "
                "test_expected_performance.py under perf", pytrace=False)


def test_expectation(bound: Bound, bench: Any, expectations: Any, measure_or_skip: Callable[..., Any],
                     hardware_peaks: Any, record_property: Callable[[str, object], None]) -> None:
    """Measure the bound's figure and check it; the figures go to ``--junitxml`` before the verdict."""
    for name, value in properties(bound).items():
        record_property(name, value)
    try:
        value = bound_value(bound, measure_or_skip, lambda config: bench.workload(expectations, bound.workload,
                                                                                 config),
                            hardware_peaks, on_capacity=bench.record_capacity)
    except MissingFigure as e:
        record_property("measured", "missing")
        problem: str | None = bound.missing(str(e))
    else:
        record_property("measured", f"{value:.6g}")
        problem = bound.violation(value)
    assert problem is None, problem


def properties(bound: Bound) -> dict[str, str]:
    """What a bound's JUnit properties say beside the measured value: which bound, where it lives, its tier."""
    return {"metric": bound.metric, "config": bound.config, "workload": bound.workload, "tier": bound.tier,
            "bound": bound.describe(), "hardware": bound.hardware, "location": bound.location}


def no_bounds_reason(state: PluginState) -> str:
    """Which tiers of the table apply to this run, and how to add exact rows where there are none."""
    return tiers_text(state, state.bounds())


def tiers_text(state: PluginState, bounds: list[Bound]) -> str:
    """How many of ``bounds`` are exact and portable; where the table itself has no exact row for this hardware and
    model (not merely none selected: the summary's deselected count says that), why, and how to add them."""
    exact = sum(b.tier == "exact" for b in bounds)
    portable = len(bounds) - exact
    hw, model = state.hardware, state.model.name
    text = (f"hardware {hw.key} with model {model}: {exact} exact bound(s), {portable} portable bound(s) "
            f"(any-{hw.device_class})")
    if state.table is not None and not any(b.tier == "exact" for b in state.bounds()):
        models = sorted({b.model for b in state.table.bounds if b.tier == "exact" and b.hardware == hw.key})
        keys = ", ".join(state.table.hardware_keys()) or "none"
        where = (f"the table's exact rows for {hw.key} are for model(s) {', '.join(models)}, not {model}" if models
                 else f"the table has no exact rows for {hw.key} (it has: {keys})")
        text += (f"; {where}; to add them, run `servingbench calibrate` on a quiet machine and review the [[expect]] "
                 f"rows it proposes in {state.table.path}")
    return text


def asserted_bounds(items: list[pytest.Item]) -> list[Bound]:
    """The bounds this session's selected items assert (what the summary counts)."""
    return [i.bound for i in items if isinstance(i, BoundItem) and i.bound is not None]


def summary_text(state: PluginState, asserted: list[Bound]) -> str:
    """The summary's thresholds line: the bounds asserted, and those of the table that apply but were not."""
    text = tiers_text(state, asserted)
    left = len(state.bounds()) - len(asserted)
    if left > 0 and state.table is not None:
        text += (f"; {left} more bound(s) of {state.table.path} apply to this run but were not collected or "
                 f"were deselected: to assert them, run pytest on that file (or the folder that holds it) "
                 f"without -k/-m filters that drop them")
    return text

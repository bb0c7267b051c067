"""Stored baselines that catch regressions: measured samples stored as pytest-benchmark stats, and the guards.

Why this module exists: ``pytest --benchmark-compare`` is what users know, but pytest-benchmark times a callable
itself, keys its storage by OS and Python only, compares whatever baseline it finds, and passes silently when a
test has no baseline. Here:

* **Samples, not timings.** ``servingbench.plugin.samples`` stores each measured value as one round, exactly.
* **One storage folder per hardware profile.** Unless ``--benchmark-storage`` is given, it defaults to
  ``baselines/<hardware-profile>`` (``--baseline-dir`` moves the parent), and files are saved at the top of that
  folder, not in pytest-benchmark's ``<OS>-<Python>`` subfolder, so a CI on another Python finds them.
* **Guards.** Comparing against a baseline of another hardware profile (or model profile) is refused at start-up;
  under ``--benchmark-compare-fail`` a benchmark with no baseline fails, and so does a run whose baseline names
  tests that no longer exist. ``--baseline-compare`` is the one-flag form of compare + fail threshold
  (``--baseline-tolerance``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servingbench.plugin.samples import METRICS
from servingbench.measure.files import atomic_write_text
from servingbench.measure.environment import software_versions
from servingbench.plugin.state import PluginState

BENCHMARK_STORAGE_DEFAULT = "file://./.benchmarks"  # pytest-benchmark's own default: "not set by the user"
INFO_KEY = "servingbench"
SCHEMA = "servingbench.baselines/1"
RECORD_HINT = "record one with `pytest perf/test_baselines.py --benchmark-save=baseline`"


def choose_storage(config: pytest.Config, state: PluginState) -> None:
    """Before pytest-benchmark's pytest_configure (trylast), which opens the storage and loads the baseline:
    choose the storage folder and apply the compare shorthand."""
    opt = config.option
    if config.getoption("--baseline-compare", default=False) and hasattr(opt, "benchmark_compare"):
        from pytest_benchmark.utils import parse_compare_fail

        tolerance = config.getoption("--baseline-tolerance")
        opt.benchmark_compare = opt.benchmark_compare or True
        try:
            opt.benchmark_compare_fail = opt.benchmark_compare_fail or [parse_compare_fail(tolerance)]
        except Exception as e:
            raise pytest.UsageError(f"--baseline-tolerance {tolerance!r}: {e}") from None
    stores = any(getattr(opt, k, None) for k in ("benchmark_save", "benchmark_autosave", "benchmark_compare"))
    if stores and getattr(opt, "benchmark_storage", None) == BENCHMARK_STORAGE_DEFAULT:
        root = Path(config.getoption("--baseline-dir") or Path(config.rootpath) / "baselines")
        opt.benchmark_storage = f"file://{root.resolve() / state.hardware.key}"
        state.baselines.storage_defaulted = True


def check_before_start(session: pytest.Session, state: PluginState) -> None:
    """Stop before any server starts when there is no baseline to compare with; save at the top of the profile's
    folder, not in pytest-benchmark's <OS>-<Python> subfolder (loading looks at the top too)."""
    bs = getattr(session.config, "_benchmarksession", None)
    if _compare_fail_active(session.config) is not None and not bs.compared_mapping:
        raise pytest.UsageError(f"--benchmark-compare-fail: no baseline to compare with in {bs.storage}"
                                + (f" (hardware profile {state.hardware.key})" if
                                   state.baselines.storage_defaulted else "") + f"; {RECORD_HINT}")
    if state.baselines.storage_defaulted and bs is not None and hasattr(bs.storage, "default_machine_id"):
        bs.storage.default_machine_id = None
    if bs is not None and hasattr(bs.storage, "get") and hasattr(bs.storage, "_next_num"):
        save_atomically(bs.storage)


def save_atomically(storage: Any) -> None:
    """pytest-benchmark's file storage writes a baseline in place: a run killed mid-write would leave a truncated
    JSON that every later compare fails to load. Write it beside and rename instead (the temporary name does not
    end in ``.json``, so no load ever globs it)."""
    from pytest_benchmark.utils import safe_dumps

    def save(output_json: dict[str, Any], save: str) -> None:
        path = storage.get(f"{storage._next_num}_{save}.json")
        if path.exists():
            raise FileExistsError(f"baseline {path} exists: pytest-benchmark numbers files, this should not happen")
        atomic_write_text(path, safe_dumps(output_json, ensure_ascii=True, indent=4))
        path.chmod(0o644)  # as a plain write would leave it (the temporary file is private)
        storage.logger.info(f"Saved benchmark data in: {path}")

    storage.save = save


def _servingbench_info(config: pytest.Config, state: PluginState) -> dict[str, Any]:
    """What a baseline was measured on: hardware and model profiles, GPUs, driver and software versions."""
    if state.baselines.info is not None:
        return state.baselines.info
    from servingbench.measure import telemetry

    hardware, model, replay = state.hardware, state.model, state.replay_env
    if replay is not None:  # --replay: the recorded run's machine, not this one
        gpus, versions = replay.get("gpus") or [], replay.get("versions") or {}
    else:
        gpus = telemetry.gpu_info() if hardware.gpu else []
        versions = software_versions(load_torch=False)
    state.baselines.info = {
        "hardware_profile": hardware.key, "model_profile": model.name,
        "tensor_parallel_size": config.getoption("--tensor-parallel-size", default=1),
        "cpu": hardware.cpu, "cores": hardware.cores, "identity": hardware.identity(),
        "gpu_name": gpus[0]["name"] if gpus else None, "gpu_count": len(gpus),
        "gpu_memory_gib": round(gpus[0]["memory_total_gib"], 1) if gpus else None,
        "driver": gpus[0]["driver"] if gpus else None,
        **{k: versions.get(k) for k in ("cuda", "torch", "vllm", "transformers", "python", "servingbench")},
    }
    return state.baselines.info


def update_machine_info(config: pytest.Config, state: PluginState, machine_info: dict[str, Any]) -> None:
    machine_info[INFO_KEY] = _servingbench_info(config, state)


def check_machine_info(config: pytest.Config, state: PluginState, benchmarksession: Any,
                       machine_info: dict[str, Any], compared_benchmark: dict[str, Any]) -> None:
    """Refuse a baseline from other hardware or another model profile; note software version changes."""
    ours = machine_info.get(INFO_KEY) or {}
    theirs = (compared_benchmark.get("machine_info") or {}).get(INFO_KEY)
    where = str(benchmarksession.storage)
    if theirs is None:
        raise pytest.UsageError(f"the baseline in {where} has no machine_info.{INFO_KEY}: it was not recorded by "
                                f"servingbench, so its hardware profile is unknown; {RECORD_HINT}")
    for key, what in (("hardware_profile", "hardware profile"), ("model_profile", "model profile")):
        if theirs.get(key) != ours.get(key):
            raise pytest.UsageError(
                f"refusing to compare: the baseline in {where} was recorded on {what} {theirs.get(key)!r}, this run "
                f"is {what} {ours.get(key)!r}; its numbers are no expectation for this run. Compare against "
                f"baselines/{ours.get('hardware_profile')} (the default without --benchmark-storage; {RECORD_HINT}), "
                f"or pass --hardware-key {theirs.get('hardware_profile')} if this machine is that profile")
    mine, recorded = ours.get("identity"), theirs.get("identity")
    if recorded is None:
        state.baselines.notes.append(f"the baseline in {where} records no hardware identity (made before it was "
                                     "kept): compared by hardware key alone")
    elif recorded != mine:
        differs = ", ".join(f"{k} {recorded.get(k)!r} -> {mine.get(k)!r}" for k in sorted(set(recorded) | set(mine))
                            if recorded.get(k) != mine.get(k))
        if not config.getoption("--hardware-key", default=None):
            raise pytest.UsageError(
                f"refusing to compare: the baseline in {where} has this hardware key but was recorded on other "
                f"hardware ({differs}); figures of one are no expectation for the other. Record a baseline here "
                f"({RECORD_HINT}), or pass --hardware-key {ours.get('hardware_profile')} to compare anyway")
        state.baselines.notes.append(f"--hardware-key given: compared with a baseline of other hardware ({differs})")
    changed = [f"{k} {theirs.get(k)} -> {ours.get(k)}" for k in ("vllm", "torch", "transformers", "cuda", "driver")
               if theirs.get(k) != ours.get(k)]
    if changed:
        state.baselines.notes.append("software differs from the baseline's: " + ", ".join(changed))


def update_json(config: pytest.Config, state: PluginState, benchmarks: list[Any], output_json: dict[str, Any]) -> None:
    """Say in the file itself what the numbers are and what they were measured with."""
    runs: dict[str, Any] = {}
    for b in benchmarks:
        info = b.extra_info
        if "config_name" in info:
            runs.setdefault(info["config_name"], {"engine_config": info.get("engine_config"),
                                                  "workload": info.get("workload")})
    output_json[INFO_KEY] = {"schema": SCHEMA, **{k: _servingbench_info(config, state)[k] for k in
                                                  ("hardware_profile", "model_profile")},
                             "unit": "seconds (lower is better; throughput stored as seconds per output token)",
                             "metrics": {name: m.description for name, m in METRICS.items()}, "configs": runs}


def scale_unit(config: pytest.Config, unit: str, benchmarks: list[Any], best: dict[str, Any],
               worst: dict[str, Any], sort: str) -> tuple[str, float] | None:
    """Scale the table by the median, not the min: one ITL sample of 0 s (two chunks read at once) would pick ns."""
    if unit != "seconds" or config.getoption("benchmark_time_unit", default="auto") not in ("auto", None):
        return None
    from pytest_benchmark.utils import time_unit

    return time_unit(best.get("median") or benchmarks[0]["median"])


def _compare_fail_active(config: pytest.Config) -> Any | None:
    bs = getattr(config, "_benchmarksession", None)
    return bs if bs is not None and bs.compare and bs.compare_fail and not bs.disabled else None


def _baseline_ids(bs: Any) -> set[str]:
    return {name for mapping in (bs.compared_mapping or {}).values() for name in mapping}


def _sources(bs: Any) -> str:
    """The baseline files compared with, relative to the working directory where possible."""
    names = []
    for p in bs.compared_mapping or {}:
        full = Path(getattr(bs.storage, "path", "")) / p
        try:
            names.append(str(full.resolve().relative_to(Path.cwd())))
        except ValueError:
            names.append(str(full))
    return ", ".join(names) or f"no baseline file in {bs.storage}"


def check_report(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> pytest.TestReport:
    """A benchmark without a baseline fails under compare-fail; a failed benchmark is not saved as a baseline."""
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    if call.when != "call" or fixture is None or getattr(fixture, "stats", None) is None:
        return report
    if report.failed:
        fixture.has_error = True  # pytest-benchmark leaves benchmarks with errors out of saved files
        return report
    bs = _compare_fail_active(item.config)
    if report.passed and bs is not None and fixture.fullname not in _baseline_ids(bs):
        report.outcome = "failed"
        report.longrepr = (f"no baseline for {fixture.fullname} (compared with: {_sources(bs)}); a benchmark "
                           f"without a baseline cannot be checked for regressions: {RECORD_HINT}")
    return report


def check_after_run(session: pytest.Session, state: PluginState) -> None:
    """Under a fail threshold, fail the run on a regression and when the baseline and the run no longer name the
    same benchmarks; without one, note the mismatch."""
    config = session.config
    notes = state.baselines
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.compare or bs.disabled or not bs.compared_mapping:
        return
    strict = bool(bs.compare_fail)
    # pytest-benchmark raises its regressions out of the terminal summary (a traceback, and pytest_unconfigure,
    # which stops servers, never runs): report them here instead and fail the run with exit status 1.
    regressed = list(getattr(bs, "performance_regressions", None) or ())
    if regressed:
        checks = ", ".join(_describe_check(c) for c in bs.compare_fail)
        notes.problems.append(f"performance has regressed beyond {checks} against {_sources(bs)}:\n"
                              + "\n".join(f"    {name} - {why}" for name, why in regressed))
        bs.performance_regressions.clear()
    found = notes.problems if strict else notes.notes
    baseline = _baseline_ids(bs)
    ran = {b.fullname for b in bs.benchmarks if b}
    new = sorted(ran - baseline)
    if new:
        found.append(f"the run has benchmarks the baseline lacks ({_sources(bs)}): " + ", ".join(new))
    if any("::" in str(a) for a in config.args):
        notes.notes.append("tests were selected by node id: baseline benchmarks not selected were not checked "
                           "(select with -k to have them checked)")
    else:
        gone = sorted(baseline - ran - notes.collected - notes.deselected)
        if gone:
            found.append(f"the baseline has benchmarks this run lacks ({_sources(bs)}): " + ", ".join(gone)
                         + " (renamed or removed tests: record the baseline again on purpose)")
    if notes.problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _describe_check(check: Any) -> str:
    unit = "%" if "Percentage" in type(check).__name__ else "s"
    return f"{check.field}:{check.threshold}{unit}"


def write_terminal_summary(terminalreporter: Any, config: pytest.Config, state: PluginState) -> None:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not (bs.compare or bs.save or bs.autosave):
        return
    tr = terminalreporter
    tr.section("servingbench baselines")
    profile = f" (hardware profile {state.hardware.key})" if state.baselines.storage_defaulted else ""
    tr.write_line(f"storage: {bs.storage}{profile}")
    if bs.compare:
        checks = ", ".join(_describe_check(c) for c in bs.compare_fail or ()) or "none (report only)"
        tr.write_line(f"compared with: {_sources(bs)}; fail threshold: {checks}")
    for note in state.baselines.notes:
        tr.write_line(f"note: {note}")
    for problem in state.baselines.problems:
        tr.write_line(f"FAILED: {problem}", red=True, bold=True)

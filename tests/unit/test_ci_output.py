"""CI-native output without a session: the gate's verdicts as Markdown for GitHub's job summary (the same cells as
the terminal's table), and the job summary appended to, never overwritten, only where CI names it."""

from __future__ import annotations

import math
from pathlib import Path

from servingbench.measure.stats import Verdict
from servingbench.plugin import ci
from servingbench.gate.judge import GateReport


def verdict(metric: str, status: str, change: float, note: str = "") -> Verdict:
    return Verdict(metric=metric, status=status, change=change, ci_low=change - 0.02, ci_high=change + 0.02,
                   mdr=0.05, baseline=100.0, current=100.0 * (1 + change), n_baseline=6, n_current=6,
                   higher_is_better=True, method="Welch t", ci_level=0.9, lifetimes_baseline=2,
                   lifetimes_current=2, note=note)


def report() -> GateReport:
    return GateReport(config="vllm", mode="stored baseline baselines/x/rounds.json", rounds=3, lifetimes=2,
                      alpha=0.05, notes=["a note | with a pipe"],
                      verdicts=[verdict("output_throughput", "regressed", -0.12),
                                verdict("median_ttft_ms", "unchanged", 0.01, note="2 rounds left out")])


def test_the_gate_markdown_holds_every_verdict_in_the_terminals_cells() -> None:
    md = ci.gate_markdown([report()])
    lines = md.splitlines()
    assert lines[0] == "## servingbench regression gate"
    assert ("**vllm (stored baseline baselines/x/rounds.json, 2 lifetime(s) x 3 rounds a side, each test one-sided "
            "at 0.05)**") in lines
    head = lines.index("| metric | status | change | CI (90%) | MDR | baseline | current | method |")
    assert lines[head + 1] == "|---|---|---|---|---|---|---|---|"
    assert lines[head + 2] == ("| output_throughput | regressed | -12.0% | [-14.0%, -10.0%] | 5.0% | 100 | 88 | "
                               "Welch t (2 lifetimes/6 rounds vs 2/6) |")
    assert lines[head + 3].startswith("| median_ttft_ms | unchanged | +1.0% |")
    assert lines[head + 3].endswith("; 2 rounds left out |")
    assert "- note: a note \\| with a pipe" in lines  # a pipe would split the cell
    text = report().table()  # the terminal's table says the same
    assert "output_throughput  regressed" in text and "-12.0%" in text and not math.isnan(report().alpha)


def test_the_job_summary_is_appended_to_only_where_ci_names_it(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    path.write_text("an earlier step\n")
    assert ci.append_step_summary("## first", {}) is None and path.read_text() == "an earlier step\n"
    assert ci.append_step_summary("## first", {ci.STEP_SUMMARY: str(path)}) == path
    assert ci.append_step_summary("## second\n", {ci.STEP_SUMMARY: str(path)}) == path
    assert path.read_text() == "an earlier step\n## first\n\n## second\n\n"
    assert ci.append_step_summary("", {ci.STEP_SUMMARY: str(path)}) is None  # nothing measured: nothing added

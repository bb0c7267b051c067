"""CI-native output: the session summary and the gate's verdict tables as Markdown in GitHub's job summary.

Why: on a CI runner the terminal summary is buried in the log; GitHub renders the file ``$GITHUB_STEP_SUMMARY``
names on the run's page. Each session appends (never overwrites: other steps write there too). The per-bound
figures go to ``--junitxml`` as properties (``plugin/table.py`` records them), which CI test reporters show.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from servingbench.measure.measurement import Measurement
from servingbench.measure.stats import Verdict, verdict_rows
from servingbench.report.summary import markdown_table
from servingbench.gate.judge import GateReport

STEP_SUMMARY = "GITHUB_STEP_SUMMARY"


def session_markdown(title: str, measured: Sequence[Measurement], lines: Iterable[str]) -> str:
    """The session summary: the table of measured configs and the lines the terminal prints under it."""
    out = [f"## {_cell(title)}", ""]
    if measured:
        out += [markdown_table(measured), ""]
    out += [f"- {_cell(line)}" for line in lines]
    return "\n".join(out) + "\n"


def gate_markdown(reports: Sequence[GateReport]) -> str:
    """The gate's verdicts, one table per config, with its design and notes as the terminal prints them."""
    out = ["## servingbench regression gate", ""]
    for report in reports:
        out += [f"**{_cell(report.heading())}**", "", verdicts_markdown(report.verdicts), ""]
        out += [f"- note: {_cell(n)}" for n in report.notes]
        out += [""] if report.notes else []
    return "\n".join(out)


def verdicts_markdown(verdicts: Sequence[Verdict]) -> str:
    header, *rows = verdict_rows(verdicts)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows])


def _cell(text: str) -> str:
    """A pipe would end a Markdown table cell; a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def append_step_summary(markdown: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Append ``markdown`` to the job summary where CI names one; None where it does not (a local run).
    An unwritable path raises OSError: the caller reports it (the run's results are on disk already)."""
    path = environ.get(STEP_SUMMARY)
    if not path or not markdown:
        return None
    with open(path, "a", encoding="utf-8") as f:
        f.write(markdown.rstrip("\n") + "\n\n")
    return Path(path)

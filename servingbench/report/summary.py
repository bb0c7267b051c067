"""The end-of-session summary: one table of every measured config, as text and as files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from servingbench.measure.measurement import Measurement
from servingbench.measure.files import atomic_write_json, atomic_write_text

COLUMNS = [
    ("config", "{}"), ("workload", "{}"), ("ok/fail", "{}"), ("out tok/s", "{:.1f}"), ("req/s", "{:.2f}"),
    ("TTFT p50 ms", "{:.1f}"), ("TTFT p99 ms", "{:.1f}"), ("TPOT p50 ms", "{:.2f}"), ("ITL p50 ms", "{:.2f}"),
    ("E2EL p50 ms", "{:.0f}"), ("E2EL p99 ms", "{:.0f}"), ("mem util", "{:.1%}"), ("mem GiB", "{:.2f}"),
    ("GPU util %", "{:.0f}"), ("start s", "{:.0f}"),
]


def row(m: Measurement) -> list[str]:
    mem_gib = m.value("memory_gib")
    w = m.workload
    conc = w["concurrency"] or "inf"
    values = [
        m.config_name, f"{w['name']} n{w['num_requests']} c{conc} {w['prompt_len']}/{w['output_len']}",
        f"{m.metrics.completed}/{m.metrics.failed}", m.metrics.output_throughput, m.metrics.request_throughput,
        m.metrics.ttft.median, m.metrics.ttft.percentiles[99], m.metrics.tpot.median, m.metrics.itl.median,
        m.metrics.e2el.median, m.metrics.e2el.percentiles[99], m.value("memory_utilization"), mem_gib,
        m.value("gpu_utilization"), m.server_startup_s if m.server_startup_s is not None else float("nan"),
    ]
    return [fmt.format(v) for (_, fmt), v in zip(COLUMNS, values)]


def text_table(measurements: Iterable[Measurement]) -> str:
    rows = [[c for c, _ in COLUMNS]] + [row(m) for m in measurements]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(measurements: Iterable[Measurement]) -> str:
    rows = [row(m) for m in measurements]
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(r) + " |" for r in rows])


def write_summary(results_dir: Path, measurements: list[Measurement], header: dict[str, object],
                  notes: list[str]) -> None:
    atomic_write_json(results_dir / "summary.json", {
        **header, "notes": notes,
        "measurements": [{k: v for k, v in m.to_dict().items() if k != "records"} for m in measurements],
    })
    lines = ["# servingbench summary", ""] + [f"- {k}: {v}" for k, v in header.items()] + [""]
    lines += [markdown_table(measurements), ""] + [f"- {n}" for n in notes]
    atomic_write_text(results_dir / "summary.md", "\n".join(lines) + "\n")

"""The end-of-session summary: one table of every measured config, as text and as files, and vLLM's throughput
over each HF engine measured at the same load: the sequential one (``hf``: one request at a time, FIFO) and any
static-batch one (``hf-batch8``), so that the vLLM/HF ratio is seen beside what static batching alone recovers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.files import atomic_write_json, atomic_write_text

COLUMNS = [
    ("config", "{}"), ("workload", "{}"), ("ok/fail", "{}"), ("out tok/s", "{:.1f}"), ("req/s", "{:.2f}"),
    ("TTFT p50 ms", "{:.1f}"), ("TTFT p99 ms", "{:.1f}"), ("TPOT p50 ms", "{:.2f}"), ("ITL p50 ms", "{:.2f}"),
    ("E2EL p50 ms", "{:.0f}"), ("E2EL p99 ms", "{:.0f}"), ("mem util", "{:.1%}"), ("mem GiB", "{:.2f}"),
    ("GPU util %", "{:.0f}"), ("J/out tok", "{:.3g}"), ("start s", "{:.0f}"),
]


def _or_nan(m: Measurement, name: str) -> float:
    """A figure, or NaN (shown "nan", as a missing latency is) where nothing measured it."""
    try:
        return m.value(name)
    except MissingFigure:
        return float("nan")


def row(m: Measurement) -> list[str]:
    mem_gib = _or_nan(m, "memory_gib")
    w = m.workload
    conc = w["concurrency"] or "inf"
    values = [
        m.config_name, f"{w['name']} n{w['num_requests']} c{conc} {w['prompt_len']}/{w['output_len']}",
        f"{m.metrics.completed}/{m.metrics.failed}", m.metrics.output_throughput, m.metrics.request_throughput,
        m.metrics.ttft.median, m.metrics.ttft.percentiles[99], m.metrics.tpot.median, m.metrics.itl.median,
        m.metrics.e2el.median, m.metrics.e2el.percentiles[99], _or_nan(m, "memory_utilization"), mem_gib,
        _or_nan(m, "gpu_utilization"), _or_nan(m, "joules_per_output_token"), m.server_startup_s if m.server_startup_s is not None else float("nan"),
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


def batch_size(m: Measurement) -> int:
    """An HF engine's batch limit (1: one request at a time)."""
    return int(m.config.get("max_batch_size") or 1)


def describe_hf(m: Measurement) -> str:
    n = batch_size(m)
    return "one request at a time, FIFO" if n == 1 else f"static batches of up to {n}"


def _load(m: Measurement) -> str:
    w = m.workload
    return f"{w['name']} c{w.get('concurrency') or 'inf'} {w['prompt_len']}/{w['output_len']}"


def hf_ratios(measurements: Iterable[Measurement]) -> list[dict[str, Any]]:
    """Output throughput of each vLLM measurement over each HF measurement of the same load (workload name,
    concurrency, lengths; the HF run may have fewer requests), the sequential one first. Studies are left out."""
    groups: dict[str, list[Measurement]] = {}
    for m in measurements:
        if not str(m.workload["name"]).startswith("study-"):
            groups.setdefault(_load(m), []).append(m)
    out = []
    for load, ms in groups.items():
        hfs = sorted((m for m in ms if m.engine == "hf"), key=lambda m: (batch_size(m), m.config_name))
        for v in (m for m in ms if m.engine == "vllm"):
            for b in hfs:
                a, d = v.metrics.output_throughput, b.metrics.output_throughput
                out.append({"load": load, "config": v.config_name, "hf": b.config_name,
                            "hf_max_batch_size": batch_size(b), "hf_kind": describe_hf(b),
                            "output_throughput": a, "hf_output_throughput": d, "ratio": a / d if d else None})
    return out


def hf_lines(measurements: Iterable[Measurement]) -> list[str]:
    """One line per vLLM config and load: its output tok/s over each HF engine's; plus, per static-batch
    HF config, how much of the sequential ratio static batching recovers."""
    rows = hf_ratios(measurements)
    by_config: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_config.setdefault((r["load"], r["config"]), []).append(r)
    lines = []
    for (load, config), rs in by_config.items():
        parts = [f"{_x(r['ratio'])} {r['hf']} ({r['hf_output_throughput']:.1f}; {r['hf_kind']})"
                 for r in rs]
        lines.append(f"vLLM/HF output tok/s at {load}: {config} {rs[0]['output_throughput']:.1f} = "
                     + ", ".join(parts))
    for rs in by_config.values():
        seq = next((r for r in rs if r["hf_max_batch_size"] == 1), None)
        for r in rs:
            if seq is None or r["hf_max_batch_size"] == 1:
                continue
            s = seq["hf_output_throughput"]
            gain = r["hf_output_throughput"] / s if s else None
            lines.append(f"at {r['load']}: {r['config']}/{seq['hf']} {_x(seq['ratio'])} = {_x(gain)} from "
                         f"static batching alone ({r['hf']}/{seq['hf']}) x {_x(r['ratio'])} vLLM over "
                         f"static batching ({r['config']}/{r['hf']}: continuous batching, paged KV cache, "
                         "its kernels)")
    return lines


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}x"


def write_summary(results_dir: Path, measurements: list[Measurement], header: dict[str, object],
                  notes: list[str]) -> None:
    atomic_write_json(results_dir / "summary.json", {
        **header, "notes": notes, "hf_ratios": hf_ratios(measurements),
        "measurements": [{k: v for k, v in m.to_dict().items() if k != "records"} for m in measurements],
    })
    lines = ["# servingbench summary", ""] + [f"- {k}: {v}" for k, v in header.items()] + [""]
    lines += [markdown_table(measurements), ""] + [f"- {n}" for n in hf_lines(measurements)]
    lines += [f"- {n}" for n in notes]
    atomic_write_text(results_dir / "summary.md", "\n".join(lines) + "\n")

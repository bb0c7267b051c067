"""The report's workload-kind sections: capacity under the SLO (request-rate sweeps), multi-turn conversations,
trace replays, and the runs whose preconditions broke.

Capacity searches come from ``<results>/capacity/*.json`` (``RunData.capacities``); conversation figures from the
measurements' ``figures`` (``median_ttft_ms_turnN``, ``prefix_cache_hit_rate``, ...). A run listed as invalid
measured the client, not the server (it fell behind its schedule, ...): its figures are shown but marked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from servingbench.measure.measurement import Measurement
from servingbench.report import figures
from servingbench.report.data import RunData, workload_name
from servingbench.report.doc import Doc, fmt

Row = Mapping[str, Any]
TURN = re.compile(r"median_ttft_ms_turn(\d+)$")


def workload_sections(doc: Doc, data: RunData, figs: Path) -> None:
    """Capacity, conversations, trace replays and invalid runs, in that order."""
    capacity_section(doc, data, figs)
    conversation_section(doc, data)
    trace_section(doc, data)
    invalid_section(doc, data)


def slo_text(slo: Mapping[str, Any]) -> str:
    """"p99 TTFT <= 2000 ms and TPOT <= 100 ms" (the limits that are set)."""
    parts = [f"{name} <= {slo[k]:g} ms" for k, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"))
             if isinstance(slo.get(k), (int, float))]
    return "p99 " + " and ".join(parts) if parts else "no latency limit"


def capacity_sentence(cap: Row) -> str:
    """The search's capacity, the SLO, and how the search bounded it."""
    pts, rps, slo = cap["points"], cap["capacity_rps"], slo_text(cap.get("slo") or {})
    bound = cap["bounded_by"]
    bad = min((p for p in pts if p.get("invalid")), key=lambda p: p["rate"], default=None)
    where = f" at {bad['rate']:g} req/s: " + "; ".join(bad["invalid"]) if bad else ""
    if bound == "invalid":
        return f"no capacity under {slo}: the lowest rate's run was invalid{where}"
    if bound == "client":
        return f"capacity {rps:g} req/s under {slo} (at least: the client could not offer more{where})"
    if bound == "top":
        return f"capacity {rps:g} req/s under {slo} (at least: every swept rate met it)"
    if bound == "bottom":
        lowest = min((p["rate"] for p in pts), default=None)
        return (f"capacity {rps:g} req/s under {slo} (below the lowest rate"
                + (f", {lowest:g} req/s, which missed it)" if lowest is not None else ")"))
    missed = min((p["rate"] for p in pts if p["meets"] is False and p["rate"] > rps), default=None)
    return (f"capacity {rps:g} req/s under {slo} (between the last rate that met it, {rps:g} req/s, and the first "
            "that did not" + (f", {missed:g} req/s)" if missed is not None else ")"))


def rate_runs(cap: Row, ms: Sequence[Measurement]) -> dict[float, Measurement]:
    """The measurements of a search's points, by offered rate (same config and workload name)."""
    name = (cap.get("workload") or {}).get("name")
    return {float(m.workload["request_rate"]): m for m in ms
            if m.config_name == cap["config_name"] and workload_name(m) == name
            and isinstance(m.workload.get("request_rate"), (int, float))}


def capacity_section(doc: Doc, data: RunData, figs: Path) -> None:
    """Per capacity search: its sentence, its points as a table, and one figure of every search."""
    doc.h(2, "Capacity under the SLO (request-rate sweeps)")
    if not data.capacities:
        doc.p("not measured in this run (no capacity search: a workload with `rates` and an SLO)")
        return
    doc.p("Open-loop runs at rising offered request rates, up to the first rate whose p99 TTFT or p99 TPOT misses "
          "the SLO (or that has a failed request), then bisected (geometric) between the last rate that met it and "
          "the first that did not. Goodput: requests per second whose own TTFT and TPOT met the SLO.")
    doc.fig(figures.capacity_curve(data.capacities, figs / "capacity.png", f"{data.hardware} / {data.model}"),
            "Achieved request throughput and goodput against offered rate (grey: y = x), dotted: the capacity; "
            "right: p99 TTFT and TPOT against rate, red: the SLO. Hollow markers missed the SLO.")
    for cap in data.capacities:
        w = cap.get("workload") or {}
        doc.h(3, f"{cap['config_name']} · {w.get('name')} ({w.get('prompt_len')}/{w.get('output_len')} tokens)")
        doc.p(capacity_sentence(cap) + "".join(f" Note: {n}." for n in cap.get("notes") or ()))
        runs = rate_runs(cap, data.measurements)
        rows = []
        for p in cap["points"]:
            m = runs.get(float(p["rate"]))
            rows.append([fmt(p["rate"], "{:g}"), fmt(p["request_throughput"], "{:.3f}"), fmt(p["goodput"], "{:.3f}"),
                         fmt(p["p99_ttft_ms"]), fmt(p["p99_tpot_ms"], "{:.2f}"), fmt(p["failed"], "{:d}"),
                         "invalid run" if p["meets"] is None else ("yes" if p["meets"] else "no")
                         + (" (invalid run)" if m is not None and m.invalid else "")])
        doc.table(["offered req/s", "throughput req/s", "goodput req/s", "TTFT p99 ms", "TPOT p99 ms", "failed",
                   "meets SLO"], rows)
        bad = [f"{rate:g} req/s ({m.key}): " + "; ".join(m.invalid) for rate, m in sorted(runs.items()) if m.invalid]
        if bad:
            doc.p("**Invalid runs** (their figures measure the client, not the server): " + " | ".join(bad))


def turns_of(m: Measurement) -> list[int]:
    """The turn indices with a TTFT figure, ascending."""
    return sorted(int(g.group(1)) for g in map(TURN.match, m.figures) if g)


def hit_rate_line(f: Mapping[str, float]) -> str:
    """The measured prefix-cache hit rate beside the range the conversation histories imply."""
    hit, low, high = (f.get(k) for k in ("prefix_cache_hit_rate", "expected_prefix_hit_rate_low",
                                        "expected_prefix_hit_rate_high"))
    if hit is None:
        return "prefix-cache hit rate: not measured (the server's /metrics gave no prefix-cache counters)"
    if low is None or high is None:
        return f"prefix-cache hit rate {hit:.1%} (no expected range: the server's KV block size was not known)"
    verdict = "within" if low - 1e-9 <= hit <= high + 1e-9 else "outside"
    return (f"prefix-cache hit rate {hit:.1%}: {verdict} the expected range {low:.1%} to {high:.1%} (from the "
            "histories: at least the previous turn's full prompt blocks, at most the blocks it filled)")


def conversation_section(doc: Doc, data: RunData) -> None:
    """Per conversation measurement: TTFT p50/p99 by turn, last over first turn, hit rate against its range."""
    doc.h(2, "Multi-turn conversations")
    convs = [m for m in data.measurements if m.workload.get("kind") == "conversation"]
    if not convs:
        doc.p("not measured in this run (no conversation workload)")
        return
    doc.p("Each turn's prompt is the conversation so far plus the new user message, so later turns are longer; "
          "with prefix caching their TTFT grows less than their prompt does.")
    for m in convs:
        w = m.workload
        doc.h(3, f"{m.config_name} · {w.get('name')} ({w.get('num_requests')} conversations x {w.get('turns')} "
                 f"turns, c{w.get('concurrency') or 'inf'})")
        if m.invalid:
            doc.p("**Invalid run** (its figures measure the client, not the server): " + "; ".join(m.invalid))
        turns = turns_of(m)
        if turns:
            doc.table(["turn", "TTFT p50 ms", "TTFT p99 ms"],
                      [[str(t), fmt(m.figures.get(f"median_ttft_ms_turn{t}")),
                        fmt(m.figures.get(f"p99_ttft_ms_turn{t}"))] for t in turns])
        else:
            doc.p("no TTFT by turn recorded (no successful turn)")
        ratio = m.figures.get("ttft_last_over_first_turn")
        doc.ul([f"TTFT p50 of the last turn over the first: {fmt(ratio, '{:.2f}')}x"
                + (f" (turn {turns[-1]} vs turn {turns[0]})" if ratio is not None and turns else ""),
                hit_rate_line(m.figures)])


def trace_hit_cell(f: Mapping[str, float]) -> str:
    """The measured hit rate against the range the trace's blocks and the run's timing allow."""
    hit, low, high = (f.get(k) for k in ("prefix_cache_hit_rate", "expected_prefix_hit_rate_low",
                                        "expected_prefix_hit_rate_high"))
    if hit is None or low is None or high is None:
        return "not measured" if hit is None else f"{hit:.1%} (no expected range: KV block size unknown)"
    verdict = "within" if low - 1e-9 <= hit <= high + 1e-9 else "outside (evicted?)"
    return f"{hit:.1%}, {verdict} {low:.1%} to {high:.1%}"


def trace_section(doc: Doc, data: RunData) -> None:
    """Per trace replay: what was replayed, how fast, and the measured hit rate beside what the trace implies."""
    doc.h(2, "Trace replays")
    runs = [m for m in data.measurements if m.workload.get("kind") == "trace"]
    if not runs:
        doc.p("not measured in this run (no trace workload)")
        return
    doc.p("Each request was sent at its recorded offset times time_scale; prompts share blocks where the trace's "
          "hash_ids do. Implied: the prefix-cache hit rate the blocks imply at the server's block size with nothing "
          "evicted; the range: what the run's timing allows (a rate below it: the server evicted blocks).")
    rows = []
    for m in runs:
        w, f = m.workload, m.figures
        rows.append([m.config_name, str(w.get("name")), Path(str(w.get("dataset", ""))).name,
                     fmt(w.get("num_requests"), "{:d}"), fmt(w.get("time_scale"), "{:g}"),
                     fmt(m.metrics.to_vllm_json().get("p99_ttft_ms")),
                     fmt(f.get("expected_prefix_hit_rate"), "{:.1%}"), trace_hit_cell(f),
                     "invalid run" if m.invalid else "valid"])
    doc.table(["config", "workload", "trace", "requests", "time scale", "TTFT p99 ms", "hit rate implied",
               "hit rate measured", "run"], rows)


def invalid_section(doc: Doc, data: RunData) -> None:
    """Every measurement whose preconditions broke, with the reasons."""
    doc.h(2, "Invalid runs")
    bad = [m for m in data.measurements if m.invalid]
    if not bad:
        doc.p("none: every measurement's preconditions held")
        return
    doc.p("These runs' figures measure the client (it fell behind its schedule, ...), not the server; the tables "
          "above still show them, and every bound on them fails.")
    doc.table(["measurement", "why invalid"], [[m.key, "; ".join(m.invalid)] for m in bad])

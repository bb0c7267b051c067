"""The report's sections, assembled from a loaded run (``report.load_run``) into a ``report.Doc``.

Order: summary, engine comparison, expected-performance table, efficiency against the hardware limit, throughput
vs latency, recommendations, studies (``report_sections``), every measurement, hardware and software. Each section
computes from the data; a section without data says "not measured in this run".
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from servingbench.measure import catalog
from servingbench.measure.measurement import Measurement
from servingbench.figures import efficiency as eff
from servingbench.report import figures
from servingbench.report.goodput import figure, goodput
from servingbench.report.recommend import (Recommendation, block_size_advice, kv_demand_tokens, kv_quant_advice,
                                           prefix_cache_advice, recommend_concurrency, recommend_config, times,
                                           tput)
from servingbench.report.doc import Doc, fmt
from servingbench.report.data import (ReportOptions, RunData, batch_efficiency, conc, headlines, kv_limits, requests,
                                      static_hf_configs, sweep_groups, workload_name)
from servingbench.report.studies import study_sections
from servingbench.report.workloads import workload_sections

if TYPE_CHECKING:
    from servingbench.load.workload import Workload
    from servingbench.measure.environment import Hardware

# (key, label, format, better): the catalog's compared metrics; better "high"/"low" gives an improvement factor,
# None gives none
COMPARE: list[tuple[str, str, str, str | None]] = [
    (m.name, m.label or m.name, m.fmt, {"higher": "high", "lower": "low", None: None}[m.better])
    for m in catalog.compared()]


def label(m: Measurement) -> str:
    w = m.workload
    return f"{w.get('name')} c{w.get('concurrency') or 'inf'} n{w.get('num_requests')} " \
           f"{w.get('prompt_len')}/{w.get('output_len')}"


def reference_of(heads: dict[str, Measurement], wanted: str | None) -> str | None:
    if wanted:
        if wanted not in heads:
            raise ValueError(f"reference config {wanted!r} has no measurement (configs: {', '.join(heads) or 'none'})")
        return wanted
    if "hf" in heads:
        return "hf"
    return next((c for c, m in heads.items() if m.engine == "hf"), None) or (
        min(heads, key=lambda c: tput(heads[c])) if len(heads) > 1 else None)


def headline_values(m: Measurement, ms: Sequence[Measurement], e: eff.Efficiency | str,
                    slo: Any) -> dict[str, float | None]:
    values = {k: figure(m, k) for k, *_ in COMPARE}
    t = m.telemetry
    if not t.gpu_utilization_mean:  # no GPU sampled: not a utilization of 0
        values["gpu_utilization"] = None
    if not (t.gpu_memory_utilization_peak or m.memory_total_gib):  # neither GPU nor host memory size known
        values["memory_utilization"] = None
    values["batch_efficiency"] = batch_efficiency(m, ms)
    values["goodput"] = goodput(m, slo).request_goodput
    values["mbu"] = e.mbu if isinstance(e, eff.Efficiency) else None
    values["mfu"] = e.mfu if isinstance(e, eff.Efficiency) else None
    return values


def build(data: RunData, opts: ReportOptions, out: Path) -> tuple[Doc, dict[str, Any]]:
    doc, figs = Doc(), out / "figures"
    ms = data.measurements
    devices = eff.load_peak_table(opts.peaks)
    effs: dict[str, eff.Efficiency | str] = {}
    for m in ms:
        try:
            effs[m.key] = eff.measurement_efficiency(m, eff.peaks_for(m, devices))
        except eff.EfficiencyError as e:
            effs[m.key] = str(e)
    heads = headlines(ms, opts.workload)
    base = reference_of(heads, opts.reference)
    statics = static_hf_configs(heads, base)
    vals = {c: headline_values(m, ms, effs[m.key], opts.slo) for c, m in heads.items()}
    # ratio columns: every config over the reference, and each vLLM config over each static-batch HF engine
    pairs = [(c, base) for c in heads if base and c != base] + [
        (c, s) for s in statics for c in heads if heads[c].engine == "vllm"]
    groups = sweep_groups(ms, list(heads))
    recs = recommendations(data, opts, heads, groups, effs)

    doc.h(1, f"servingbench performance report: {data.hardware} / {data.model}")
    doc.p(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from {', '.join(data.sources)}: {len(ms)} measurements, "
          f"studies: {', '.join(sorted(data.studies)) or 'none'}. SLO: {opts.slo.describe()}.")
    doc.h(2, "Summary")
    doc.ul(summary_lines(heads, base, vals, effs, recs, statics))

    doc.h(2, "Engines compared at the same load")
    if len(heads) < 1:
        doc.p("not measured in this run (no loaded measurement outside the studies)")
    else:
        header = ["metric"] + [f"{c} ({label(heads[c])})" for c in heads] + [
            f"{c} vs {b} (x, >1 = better)" for c, b in pairs]
        rows = []
        for key, name, spec, better in COMPARE:
            row = [name] + [fmt(vals[c][key], spec) for c in heads]
            for c, b_ in pairs:
                a, b = vals[c][key], vals[b_][key]
                ratio = None if better is None or not a or not b else (a / b if better == "high" else b / a)
                row.append(times(ratio) if ratio else "n/a")
            rows.append(row)
        doc.table(header, rows)
        doc.p("Batch efficiency divides throughput at the run's concurrency C by C x the same config's single-stream "
              "throughput (n/a without a concurrency-1 run of the same lengths). Goodput counts requests per second "
              "whose own TTFT and TPOT met the SLO, recomputed from the request records.")
        if statics:
            doc.p(f"{', '.join(statics)}: the HF engine with static batches. vLLM's factor over {base} (one request "
                  "at a time, in arrival order) includes what any batching gains; its factor over a static-batch HF "
                  "config is what continuous batching, the paged KV cache and vLLM's kernels add beyond that.")
        items = [figures.ConfigBars(c, heads[c].engine, vals[c]) for c in heads]
        doc.fig(figures.comparison(items, [("output_throughput", "output throughput", "tokens/s"),
                                           ("p99_ttft_ms", "TTFT p99", "ms"),
                                           ("median_tpot_ms", "TPOT p50", "ms per output token"),
                                           ("memory_gib", "peak memory", "GiB")],
                                   figs / "comparison.png", f"{data.hardware} / {data.model}: loaded runs"),
                "Headline figures per config at the comparison load (log scale where they differ > 20x).")

    doc.h(2, "Expected performance (pass/fail per bound)")
    exp_rows, note = expectation_rows(opts.expectations, data, devices)
    doc.p(note)
    if exp_rows:
        doc.table(["config", "metric", "bound", "measured", "result", "threshold at"], exp_rows)

    efficiency_section(doc, data, effs, figs)
    sweep_section(doc, data, groups, opts, figs)
    workload_sections(doc, data, figs)
    doc.h(2, "Recommendations")
    for r in recs:
        doc.h(3, r.topic.replace("_", " "))
        doc.p(r.verdict)
        if r.evidence:
            doc.ul(r.evidence)
    study_sections(doc, data, figs)
    doc.h(2, "All measurements")
    doc.table(["key", "engine", "ok/fail", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "E2EL p99 ms",
               "MBU", "MFU"],
              [[m.key, m.engine, f"{m.metrics.completed}/{m.metrics.failed}", fmt(tput(m)),
                fmt(figure(m, "median_ttft_ms")), fmt(figure(m, "p99_ttft_ms")),
                fmt(figure(m, "median_tpot_ms"), "{:.2f}"), fmt(figure(m, "p99_e2el_ms"), "{:.0f}"),
                fmt(getattr(effs[m.key], "mbu", None), "{:.1%}"), fmt(getattr(effs[m.key], "mfu", None), "{:.2%}")]
               for m in ms])
    environment_section(doc, data, effs)
    if data.notes:
        doc.h(2, "Notes")
        doc.ul(data.notes)
    machine = {"hardware": data.hardware, "model": data.model, "sources": data.sources,
               "slo": {"ttft_p99_ms": opts.slo.ttft_p99_ms, "tpot_p99_ms": opts.slo.tpot_p99_ms},
               "reference": base, "static_hf_configs": statics, "headlines": {c: m.key for c, m in heads.items()},
               "comparison": vals, "output_throughput_ratios": {
                   f"{c}/{b}": (vals[c]["output_throughput"] / vals[b]["output_throughput"]
                                if vals[b]["output_throughput"] else None) for c, b in pairs},
               "recommendations": [r.to_dict() for r in recs],
               "efficiency": {k: (e if isinstance(e, str) else {f: getattr(e, f) for f in (
                   "batch", "context", "bytes_per_token", "achieved_gb_s", "mbu", "flops_per_token",
                   "achieved_tflops", "mfu", "mfu_all_tokens", "cores_counted")}) for k, e in effs.items()},
               "figures": [p.name for p in doc.figures]}
    return doc, machine


def summary_lines(heads: dict[str, Measurement], base: str | None, vals: dict[str, dict[str, float | None]],
                  effs: dict[str, Any], recs: Sequence[Recommendation], statics: Sequence[str] = ()) -> list[str]:
    lines = []
    for c, m in heads.items():
        if base and c != base and vals[base]["output_throughput"]:
            f = vals[c]["output_throughput"] / vals[base]["output_throughput"]
            lines.append(f"{c} delivers {times(f)} the output throughput of {base} ({vals[c]['output_throughput']:.1f} "
                         f"vs {vals[base]['output_throughput']:.1f} tok/s) at {label(m)}")
    base_tput = vals[base]["output_throughput"] if base else None
    for s in statics:  # vLLM against static batching: what remains of vLLM/hf once the HF engine batches too
        st = vals[s]["output_throughput"]
        for c in (c for c in heads if heads[c].engine == "vllm" and st):
            line = (f"{c} delivers {times(vals[c]['output_throughput'] / st)} the output throughput of {s} (HF with "
                    f"static batches of up to {heads[s].config.get('max_batch_size')}; {st:.1f} tok/s at "
                    f"{label(heads[s])})")
            if base_tput:  # an exact split: c/base = (s/base) x (c/s)
                line += (f"; {c}/{base} {times(vals[c]['output_throughput'] / base_tput)} = {times(st / base_tput)} "
                         f"from static batching alone ({s}/{base}) x {times(vals[c]['output_throughput'] / st)} "
                         "over static batching")
            lines.append(line)
    for c, m in heads.items():
        e = effs[m.key]
        if isinstance(e, eff.Efficiency) and e.mbu is not None:
            lines.append(f"{c} at {label(m)}: MBU {e.mbu:.1%} of {e.peaks.name}'s {e.peaks.memory_bandwidth_gb_s:g} "
                         f"GB/s x {e.peaks.count}, MFU {fmt(e.mfu, '{:.2%}')} (decode batch {e.batch:.1f})")
    lines += [f"{r.topic.replace('_', ' ')}: {r.verdict}" for r in recs if r.measured]
    lines += [f"not measured in this run: {', '.join(r.topic.replace('_', ' ') for r in recs if not r.measured)}"] \
        if any(not r.measured for r in recs) else []
    return lines


def recommendations(data: RunData, opts: ReportOptions, heads: dict[str, Measurement],
                    groups: dict[tuple[str, str], list[Measurement]], effs: dict[str, Any]) -> list[Recommendation]:
    recs = [recommend_config(list(heads.values()), opts.slo)]
    for c in dict.fromkeys([*heads, *(k[0] for k in groups)]):
        mine = [(k, v) for k, v in groups.items() if k[0] == c]
        if mine:
            _, pts = max(mine, key=lambda kv: (len(kv[1]), kv[0][1] == opts.workload))
            recs.append(recommend_concurrency(c, pts, opts.slo, opts.noise))
    vllm_head = next((m for m in heads.values() if m.engine == "vllm"), None)
    recs.append(prefix_cache_advice(data.studies.get("prefix_cache"), vllm_head, opts.noise))
    kv_study = data.studies.get("kv_cache_dtype")
    cap = (vllm_head.kv_cache.get("capacity_tokens") if vllm_head else None) or next(
        (r.get("kv_capacity_tokens") for r in (kv_study or {}).get("rows", []) if r.get("key") == "auto"), None)
    demand = [m for pts in groups.values() for m in pts if m.engine == "vllm"]
    heaviest = max(demand, key=kv_demand_tokens, default=None)
    e = effs.get(heaviest.key) if heaviest else None
    share = e.batch * e.kv_bytes_per_sequence / (e.weight_bytes + e.batch * e.kv_bytes_per_sequence) \
        if isinstance(e, eff.Efficiency) else None
    recs.append(kv_quant_advice(kv_study, int(cap) if cap else None, demand, *kv_limits(opts.expectations),
                                kv_byte_share=share))
    recs.append(block_size_advice(data.studies.get("block_size"), opts.noise))
    return recs


def efficiency_section(doc: Doc, data: RunData, effs: dict[str, Any], figs: Path) -> None:
    doc.h(2, "Efficiency against the physical limit (MBU, MFU)")
    doc.p("A decode step reads every weight once for the whole batch plus each sequence's KV cache, so per output "
          "token: bytes = W / B + KV(c), and MBU = output tok/s x bytes per token / peak memory bandwidth. "
          "FLOPs per output token = 2 x streamed parameters + 4 x layers x heads x head_dim x c, and MFU = output "
          "tok/s x FLOPs per token / peak FLOP/s of the model's dtype. W = (parameters - input embedding) x bytes "
          "per weight; B = time-averaged sequences in decode (from the request records); c = prompt + output/2 "
          "tokens of context; KV(c) = c x 2 x layers x kv_heads x head_dim x KV bytes. Throughput is over the "
          "whole run, so prefill time counts against it: these are end-to-end figures. 'MFU all' adds the prompt "
          "tokens' FLOPs, less those vLLM reports as prefix-cache hits. Peaks: servingbench/data/hardware_peaks.toml.")
    rows, bars = [], []
    peaks = {e.peaks.name: e.peaks for e in effs.values() if isinstance(e, eff.Efficiency) and e.peaks}
    for m in data.measurements:
        e = effs[m.key]
        if isinstance(e, str):
            rows.append([m.key, fmt(tput(m))] + ["n/a"] * 9 + [e])
            continue
        rows.append([m.key, fmt(tput(m)), fmt(e.batch, "{:.2f}"), fmt(e.context, "{:.0f}"),
                     fmt(e.bytes_per_token / 1e9, "{:.4g}"), fmt(e.achieved_gb_s, "{:.1f}"), fmt(e.mbu, "{:.1%}"),
                     fmt(e.flops_per_token / 1e9, "{:.4g}"), fmt(e.achieved_tflops, "{:.4g}"), fmt(e.mfu, "{:.2%}"),
                     fmt(e.mfu_all_tokens, "{:.2%}"), "" if e.peaks else f"no peaks for {data.hardware}"])
        if not workload_name(m).startswith("study-"):
            bars.append((f"{m.config_name} {workload_name(m)} c{conc(m)}", m.config_name, e.mbu, e.mfu))
    if not rows:
        doc.p("not measured in this run")
        return
    doc.ul([f"{p.name} (x{p.count}): {p.memory_bandwidth_gb_s:g} GB/s, "
            + ", ".join(f"{k} {v:g} TFLOP/s" for k, v in p.peak_tflops.items()) + f"; source: {p.source}"
            for p in peaks.values()] or [f"no peak figures for hardware {data.hardware}: add a [[device]] to "
                                         "servingbench/data/hardware_peaks.toml (or pass --peaks)"])
    doc.table(["measurement", "out tok/s", "batch B", "context c", "GB per token", "achieved GB/s", "MBU",
               "GFLOP per token", "TFLOP/s", "MFU", "MFU all", "note"], rows)
    if bars and any(b[2] is not None for b in bars):
        doc.fig(figures.efficiency([b[0] for b in bars], [b[1] for b in bars], [b[2] for b in bars],
                                   [b[3] for b in bars], figs / "efficiency.png",
                                   f"{data.hardware} / {data.model}: distance to the hardware limit"),
                "MBU and MFU per measurement (100% = the hardware's peak).")
    energy_table(doc, data)


def energy_table(doc: Doc, data: RunData) -> None:
    """Energy per output token beside MBU: the physical cost of each run, or why it was not measured."""
    rows = []
    for m in data.measurements:
        t = m.telemetry
        if t.energy_j is None:
            rows.append([m.key] + ["n/a"] * 4 + [t.energy_note or "not measured"])
            continue
        rows.append([m.key, fmt(t.energy_j, "{:.0f}"), fmt(figure(m, "mean_power_w"), "{:.0f}"),
                     fmt(figure(m, "joules_per_output_token"), "{:.3g}"),
                     fmt(figure(m, "output_tokens_per_joule"), "{:.3g}"),
                     f"{t.energy_source}; {t.energy_note}".rstrip("; ")])
    doc.p("Energy over each run's measured part: NVML's total-energy counter of the server's own GPUs (a "
          "difference over the run), or RAPL's CPU package counters where the machine exposes them.")
    doc.table(["measurement", "energy J", "mean W", "J per output token", "output tokens per J", "source / note"],
              rows)


def sweep_section(doc: Doc, data: RunData, groups: dict[tuple[str, str], list[Measurement]], opts: ReportOptions,
                  figs: Path) -> None:
    doc.h(2, "Throughput vs latency")
    curves = []
    for (config, wname), pts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        engine = pts[0].engine
        name = f"{config} · {wname}" if config == engine else f"{config} ({engine}) · {wname}"
        curves.append(figures.Curve(name, config, engine, [conc(m) for m in pts], [tput(m) for m in pts],
                                    [_or_nan(figure(m, "median_tpot_ms")) for m in pts],
                                    [_or_nan(figure(m, "p99_ttft_ms")) for m in pts]))
    if not any(len(c.concurrency) > 1 for c in curves):
        doc.p("not measured in this run (no config was measured at two or more concurrency levels)")
        return
    doc.fig(figures.throughput_latency(curves, figs / "throughput_latency.png",
                                       opts.slo.ttft_p99_ms, opts.slo.tpot_p99_ms, f"{data.hardware} / {data.model}"),
            "Output throughput against p50 TPOT and p99 TTFT, one line per config and workload, points labelled "
            "with their concurrency; red: the SLO.")
    rows = []
    for (config, wname), pts in sorted(groups.items()):
        for m in pts:
            g = goodput(m, opts.slo)
            rows.append([config, wname, str(conc(m)), str(requests(m)), fmt(tput(m)),
                         fmt(figure(m, "median_ttft_ms")), fmt(figure(m, "p99_ttft_ms")),
                         fmt(figure(m, "median_tpot_ms"), "{:.2f}"), fmt(figure(m, "p99_tpot_ms"), "{:.2f}"),
                         fmt(figure(m, "p99_e2el_ms"), "{:.0f}"), fmt(g.request_goodput, "{:.3f}"),
                         "yes" if g.run_meets else "no"])
    doc.table(["config", "workload", "concurrency", "requests", "out tok/s", "TTFT p50 ms", "TTFT p99 ms",
               "TPOT p50 ms", "TPOT p99 ms", "E2EL p99 ms", "goodput req/s", "p99s within SLO"], rows)
    knee = ((data.studies.get("concurrency") or {}).get("findings") or {})
    if knee:
        k = knee.get("knee")
        doc.p(f"Concurrency study: {knee.get('knee_definition', '')}. "
              + (f"Knee at c={k['concurrency']} (vs c={k['previous']}: {k['metric']} +{k['latency_increase']:.0%}, "
                 f"throughput +{k['throughput_increase']:.0%}); the study recommends c="
                 f"{knee.get('recommended_concurrency')}." if k else
                 f"No knee within the sweep; peak {fmt((knee.get('peak_throughput') or {}).get('output_throughput'))} "
                 f"tok/s at c={(knee.get('peak_throughput') or {}).get('concurrency')}."))


def environment_section(doc: Doc, data: RunData, effs: dict[str, Any]) -> None:
    doc.h(2, "Hardware and software")
    rows: list[list[str]] = [["hardware profile", data.hardware], ["model", data.model]]
    seen: dict[str, set[str]] = {}
    for m in data.measurements:
        env = m.environment
        for g in env.get("gpus") or []:
            seen.setdefault("GPU", set()).add(f"{g.get('name')} ({g.get('memory_total_gib', 0):.1f} GiB, driver "
                                              f"{g.get('driver')})")
        for k, v in (env.get("versions") or {}).items():
            seen.setdefault(k, set()).add("not recorded" if v is None else str(v))
        if m.memory_total_gib:
            seen.setdefault("host RAM (GiB)", set()).add(f"{m.memory_total_gib:.1f}")
        seen.setdefault(f"{m.engine} dtype", set()).add(str(m.config.get("dtype")))
    for s in data.studies.values():
        hw = s.get("hardware") or {}
        if hw.get("cpu"):
            seen.setdefault("CPU", set()).add(f"{hw['cpu']} ({hw.get('cores')} cores)")
    rows += [[k, ", ".join(sorted(v))] for k, v in seen.items()]
    peaks = {e.peaks.name for e in effs.values() if isinstance(e, eff.Efficiency) and e.peaks}
    rows.append(["peak figures used", ", ".join(sorted(peaks)) or "none found"])
    doc.table(["item", "value"], rows)


def _or_nan(v: float | None) -> float:
    return float("nan") if v is None else v


def run_hardware(data: RunData) -> "Hardware":
    """The hardware the run's bounds apply to: as its measurements recorded it, with the servers' device class."""
    from servingbench.measure.environment import Hardware, from_environment

    env = next((m.environment for m in data.measurements if m.environment.get("hardware")), None)
    hw = from_environment(env) if env else Hardware(data.hardware, data.gpu)
    return dataclasses.replace(hw, key=data.hardware, gpu=data.gpu)


def expectation_rows(table_path: Path | None, data: RunData,
                     devices: Sequence[Mapping[str, Any]] | None = None) -> tuple[list[list[str]], str]:
    """(rows, note): each bound of this hardware+model with the measured value and pass/fail, computed as the
    perf session checks it (``expect/bounds.bound_value``); ``devices``: the peak table MBU bounds divide by."""
    if table_path is None or not Path(table_path).is_file():
        return [], "no expected-performance table found (pass --expectations PATH)"
    from servingbench.measure.measurement import MissingFigure
    from servingbench.expect.bounds import bound_value, load_table

    table = load_table(table_path)
    bounds = table.for_run(run_hardware(data), data.model)
    if not bounds:
        return [], (f"{table_path} has no entries for hardware {data.hardware} with model {data.model} "
                    f"(it has: {', '.join(table.hardware_keys()) or 'none'})")
    by_key = {m.key: m for m in data.measurements}
    peak_table = eff.load_peak_table() if devices is None else devices

    def measure(config: str, workload: "Workload") -> Measurement:
        return by_key[f"{config}--{workload.label}"]  # KeyError: not measured in this run

    def workloads(name: str) -> Callable[[str], "Workload"]:  # a config's variant of the bound's workload
        return lambda config: table.workload(name, data.gpu, table.configs[config].get("engine"))

    def peaks(m: Measurement) -> eff.DevicePeaks | None:
        return eff.peaks_for(m, peak_table)

    rows = []
    for b in bounds:
        try:
            v = bound_value(b, measure, workloads(b.workload), peaks=peaks)
            verdict = "pass" if b.violation(v) is None else "**FAIL**"
        except MissingFigure:  # measured, but without the figure (no successful request): the bound fails
            v, verdict = None, "**FAIL**"
        except (KeyError, eff.EfficiencyError):
            v, verdict = None, "not measured"
        rows.append([b.config, b.metric, b.describe(), fmt(v, "{:.4g}"), verdict, b.location.split("/")[-1]])
    return rows, f"bounds of {table_path} for {data.hardware} / {data.model}; sources: " + "; ".join(
        sorted({b.source for b in bounds}))

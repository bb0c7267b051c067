"""Recommendations computed from the measured data: which config, at which concurrency, and whether prefix
caching, KV-cache quantization and a non-default block size pay off for this workload.

Every verdict is a function of the numbers it cites, so a different run gives a different text; when the data a
verdict needs is absent, it says "not measured in this run" rather than guessing. The SLO and goodput it judges by
are ``report/goodput.py``'s.

Sample sizes and noise follow ``servingbench/studies/sampling.py``: a level is judged at the highest percentile
its sample supports (a p99 needs >= 100 requests; fewer give a p90 or p50, and the verdict says so), and a
difference counts as noise within the machine's measured run-to-run spread (``baselines/<key>/rounds.json``),
else within a stated default that the verdict names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from servingbench.measure.measurement import Measurement, measured_rows
from servingbench.report.goodput import SLOLimits, figure, goodput, num
from servingbench.studies.sampling import (DEFAULT_NOISE, Noise, hardware_of, level_percentile, machine_noise,
                                           min_samples, percentile_field, percentile_label, samples)

Row = Mapping[str, Any]  # a study file, or one of its rows (JSON by design)


def tput(m: Measurement) -> float:
    """Output tokens per second over the run."""
    return m.metrics.output_throughput


@dataclass
class Recommendation:
    """One verdict: ``choice`` is what it picks (a config, a level, True/False, or None), for machines and tests."""

    topic: str
    verdict: str
    evidence: list[str] = field(default_factory=list)
    choice: Any = None
    measured: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "verdict": self.verdict, "evidence": self.evidence, "choice": self.choice,
                "measured": self.measured}


def not_measured(topic: str, what: str) -> Recommendation:
    return Recommendation(topic, f"not measured in this run ({what})", choice=None, measured=False)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def times(x: float | None) -> str:
    """A ratio as a factor: 41.4x, 1,240x."""
    return "n/a" if x is None else (f"{x:,.0f}x" if x >= 100 else f"{x:.3g}x")


def recommend_config(headlines: Sequence[Measurement], slo: SLOLimits) -> Recommendation:
    """The config with the highest goodput at the comparison load."""
    topic = "config"
    if not headlines:
        return not_measured(topic, "no loaded measurement per config")
    scored = [(goodput(m, slo), m) for m in headlines]
    evidence = [f"{g.config} ({_load(m)}): goodput {num(g.request_goodput)} req/s, "
                f"{_pct(g.good_share)} of requests within the SLO, {num(g.good_output_tokens_per_s)} "
                f"good output tok/s; run p99 TTFT {num(figure(m, 'p99_ttft_ms'))} ms, p99 TPOT "
                f"{num(figure(m, 'p99_tpot_ms'))} ms" for g, m in scored]
    shapes = {(m.workload.get("prompt_len"), m.workload.get("output_len")) for _, m in scored}
    if len(shapes) > 1:
        evidence.append(f"caution: the configs ran different prompt/output lengths {sorted(shapes)}")
    ranked = sorted((x for x in scored if x[0].request_goodput is not None),
                    key=lambda x: (x[0].request_goodput or 0.0, tput(x[1])), reverse=True)
    if not ranked:
        return Recommendation(topic, "goodput not computable: the measurements carry no request records", evidence)
    best, bm = ranked[0]
    if not best.request_goodput:
        return Recommendation(topic, f"no config served any request within {slo.describe()}", evidence, None)
    verdict = (f"{best.config}: the highest goodput within the SLO, {num(best.request_goodput)} req/s "
               f"({_pct(best.good_share)} of its requests within the limits) at {_load(bm)}")
    if len(ranked) > 1:
        second = ranked[1][0]
        verdict += (f"; next is {second.config} with {num(second.request_goodput)} req/s"
                    + (f" ({times(best.request_goodput / second.request_goodput)} less)" if second.request_goodput
                       else ""))
    return Recommendation(topic, verdict, evidence, best.config)


def _load(m: Measurement) -> str:
    w = m.workload
    return f"{w.get('name')} c{w.get('concurrency')} n{w.get('num_requests')} {w.get('prompt_len')}/{w.get('output_len')}"


def _c(m: Measurement) -> int | None:
    return m.workload.get("concurrency")


def sweep_levels(points: Sequence[Measurement]) -> list[Measurement]:
    """One measurement per concurrency level (the one with most requests), in ascending order."""
    by: dict[int, Measurement] = {}
    for m in points:
        c = _c(m)
        if c and (c not in by or m.workload.get("num_requests", 0) > by[c].workload.get("num_requests", 0)):
            by[c] = m
    return [by[c] for c in sorted(by)]


def recommend_concurrency(config: str, points: Sequence[Measurement], slo: SLOLimits,
                          noise: float = DEFAULT_NOISE, baselines: Path | None = None,
                          percentile: float = 0.99) -> Recommendation:
    """The level to run at: of the levels whose latency percentiles meet the SLO, the lowest concurrency whose
    throughput is within noise of the best one (more concurrency that adds no throughput only adds latency).

    Each level is judged at ``percentile`` where its samples support it, else at the highest percentile they do
    (``sampling.supported_percentile``; named in the evidence and the verdict). Noise is the machine's measured
    throughput spread (``sampling.machine_noise`` from ``<baselines>/<hardware>/rounds.json``), else ``noise``,
    the stated default the verdict names. Says whether the SLO bound within the sweep, and where."""
    topic = f"concurrency ({config})"
    levels = sweep_levels(points)
    if len(levels) < 2:
        return not_measured(topic, f"{config}: fewer than 2 concurrency levels of one workload")
    nz = machine_noise(hardware_of(levels), config, baselines=baselines, default=noise)
    q = {_c(m): level_percentile(m, percentile) for m in levels}

    def lat(m: Measurement, metric: str) -> float | None:
        return figure(m, percentile_field(q[_c(m)], metric))

    def at(m: Measurement) -> str:
        p = percentile_label(q[_c(m)])
        return f"{p} TTFT {num(lat(m, 'ttft'))} ms and {p} TPOT {num(lat(m, 'tpot'))} ms"

    def breaks(m: Measurement) -> list[str]:
        return slo.run_violations(m, q[_c(m)])

    evidence = []
    for m in levels:
        v = breaks(m)
        p, n = percentile_label(q[_c(m)]), samples(m)
        basis = f"{p} from {n} samples" + (f"; a {percentile_label(percentile)} needs >= {min_samples(percentile)}"
                                            if q[_c(m)] < percentile else "")
        evidence.append(f"c={_c(m)}: {tput(m):.1f} tok/s, {at(m)} ({basis}): "
                        + ("within the SLO" if not v else "breaks it (" + "; ".join(v) + ")"))
    evidence.append(f"noise: {nz.describe()}")
    ok = [m for m in levels if not breaks(m)]
    if not ok:
        ttft = lambda m: lat(m, "ttft")  # noqa: E731
        least = min(levels, key=lambda m: math.inf if ttft(m) is None else ttft(m))
        where = (f"the lowest {percentile_label(q[_c(least)])} TTFT was at c={_c(least)} ({num(ttft(least))} ms)"
                 if ttft(least) is not None else "no level served a request successfully")
        return Recommendation(topic, f"no measured level meets the SLO; {where}", evidence, None)
    fastest = max(ok, key=tput)
    best = next(m for m in ok if tput(m) >= (1 - nz.threshold) * tput(fastest))
    c, top_c = _c(best), _c(levels[-1])
    single = next((m for m in levels if _c(m) == 1), None)
    gain = f", {times(tput(best) / tput(single))} the single-stream throughput" \
        if single and tput(single) and best is not single else ""
    verdict = f"run at concurrency {c}: {tput(best):.1f} output tok/s with {at(best)}{gain}"
    if q[c] < percentile:
        verdict += (f" (judged by {percentile_label(q[c])}: its {samples(best)} requests support no "
                    f"{percentile_label(percentile)}, which needs >= {min_samples(percentile)}; a lower bar than "
                    f"the SLO's {percentile_label(percentile)} limits)")
    broken = [m for m in levels if breaks(m) and _c(m) > c]
    if fastest is not best:
        verdict += f"; c={_c(fastest)} gave {tput(fastest):.1f} tok/s, within noise, at {at(fastest)}"
    if c == top_c:
        verdict += (f"; the SLO did not bind up to the highest level measured (c={top_c}), so a higher level may "
                    "give more: extend the sweep")
    elif broken:
        verdict += f"; c={_c(broken[0])} breaks the SLO ({'; '.join(breaks(broken[0]))})"
    elif fastest is best:
        verdict += "; higher levels met the SLO but gave less throughput"
    verdict += f"; {_noise_clause(nz)}"
    return Recommendation(topic, verdict, evidence, c)


def _noise_clause(nz: Noise) -> str:
    """How a verdict cites its noise threshold: the measured one briefly, the default with its reason."""
    if nz.measured:
        return f"noise threshold {nz.threshold:.0%} from the measured run-to-run spread"
    return f"noise threshold {nz.threshold:.0%}: {nz.source}"


def _study_noise(study: Mapping[str, Any] | None, metric: str, default: float,
                 baselines: Path | None) -> Noise:
    """The noise of ``metric`` on the hardware a study file ran on (the reference config "vllm")."""
    hw = (study or {}).get("hardware") or {}
    return machine_noise([hw.get("key") or hw.get("profile")], "vllm", metric, baselines, default)


def prefix_cache_advice(study: Mapping[str, Any] | None, loaded: Measurement | None,
                        noise: float = DEFAULT_NOISE, baselines: Path | None = None) -> Recommendation:
    """Pays off when caching lowers TTFT or raises throughput beyond noise on the shared-prefix load; the loaded
    run's own hit rate says whether the lab's load would see any of it."""
    topic = "prefix_caching"
    rows = {r["key"]: r for r in measured_rows((study or {}).get("rows", []))}
    on, off = rows.get("on"), rows.get("off")
    lab_rate = loaded.kv_cache.get("prefix_cache_hit_rate_cumulative") if loaded is not None else None
    lab_line = (f"on the comparison load ({_load(loaded)}) vLLM reported a prefix-cache hit rate of {lab_rate:.1%}"
                if loaded is not None and lab_rate is not None else None)
    if not (on and off):
        rec = not_measured(topic, "prefix-caching study: needs both the 'on' and 'off' rows")
        if lab_line:
            rec.evidence.append(lab_line)
        return rec
    speedup = off["median_ttft_ms"] / on["median_ttft_ms"] if on["median_ttft_ms"] else float("inf")
    gain = on["output_throughput"] / off["output_throughput"] if off["output_throughput"] else float("nan")
    nt, nx = _study_noise(study, "median_ttft_ms", noise, baselines), \
        _study_noise(study, "output_throughput", noise, baselines)
    pays = speedup >= 1 + nt.threshold or gain >= 1 + nx.threshold
    evidence = [f"shared-prefix load ({on.get('prefix_len')} of {on.get('prompt_len')} prompt tokens shared, "
                f"{on.get('num_requests')} requests): p50 TTFT {num(off['median_ttft_ms'])} ms off -> "
                f"{num(on['median_ttft_ms'])} ms on ({times(speedup)}), output {off['output_throughput']:.1f} -> "
                f"{on['output_throughput']:.1f} tok/s ({times(gain)})",
                f"hit rate measured {_pct(on.get('hit_rate'))}, expected from the prompt mix "
                f"{_pct(on.get('expected_hit_rate'))}; KV blocks spared {on.get('blocks_saved')}"]
    if lab_line:
        evidence.append(lab_line)
    verdict = ("pays off" if pays else "does not pay off beyond noise") + (
        f" on prompts that share a prefix: {times(speedup)} lower p50 TTFT, {times(gain)} throughput "
        f"(noise thresholds: TTFT {nt.threshold:.0%}, throughput {nx.threshold:.0%}"
        + ("" if nt.measured else f"; {nt.source}") + ")")
    evidence += [f"noise: TTFT {nt.describe()}", f"noise: throughput {nx.describe()}"]
    if lab_rate is not None:
        verdict += (f"; the comparison load itself shares no prefix (hit rate {lab_rate:.1%}), so it gains nothing"
                    if lab_rate < 0.01 else f"; the comparison load hits the cache for {lab_rate:.1%} of prompt tokens")
    return Recommendation(topic, verdict, evidence, pays)


def _per_sequence(m: Measurement) -> int:
    """KV tokens one sequence of the load holds at its end: prompt + output."""
    return int(m.workload.get("prompt_len", 0)) + int(m.workload.get("output_len", 0))


def kv_demand_tokens(m: Measurement) -> int:
    """Most KV tokens a closed-loop load holds at once: concurrency x (prompt + output)."""
    return (_c(m) or int(m.workload.get("num_requests", 0))) * _per_sequence(m)


def kv_quant_advice(study: Mapping[str, Any] | None, capacity_tokens: int | None, demand: Sequence[Measurement],
                    min_top1: float, max_mae: float, kv_byte_share: float | None = None) -> Recommendation:
    """Pays off only if KV capacity binds (some measured load needs more KV than the auto cache holds) and the
    quantized cache's accuracy stays within the study's limits. ``kv_byte_share``: the KV cache's share of the
    bytes a decode step reads at the heaviest load (efficiency's bandwidth model), which bounds the speed a
    smaller KV dtype could add even where capacity does not bind."""
    topic = "kv_quantization"
    heaviest = max(demand, key=kv_demand_tokens, default=None)
    need = (kv_demand_tokens(heaviest), heaviest) if heaviest is not None else None
    evidence = []
    binds = None
    if need and capacity_tokens:
        tokens, m = need
        binds = tokens > capacity_tokens
        per_seq = _per_sequence(m)
        evidence.append(f"heaviest measured load {_load(m)} holds up to {tokens} tokens of KV "
                        f"(concurrency x (prompt + output)): {tokens / capacity_tokens:.1%} of the auto cache's "
                        f"{capacity_tokens} tokens; capacity binds from concurrency {capacity_tokens // per_seq + 1}")
    quant = [r for r in measured_rows((study or {}).get("rows", [])) if r.get("key") != "auto"]
    shrink = max((r.get("expected_capacity_gain") or 0 for r in quant), default=0) or 2.0
    speed = ""
    if kv_byte_share is not None and need:
        saved = kv_byte_share * (1 - 1 / shrink)
        speed = (f"at {_load(need[1])} the KV cache is {kv_byte_share:.0%} of the bytes a decode step reads "
                 f"(bandwidth model), so a {shrink:g}x smaller KV element could make bandwidth-bound decode steps up "
                 f"to {times(1 / (1 - saved))} faster; this speed was not measured")
        evidence.append(speed)
    for r in quant:
        top1, mae = r.get("prompt_top1_agreement"), r.get("prompt_logprob_mae")
        evidence.append(f"{r['key']} ({r.get('kv_cache_dtype')}): {times(r.get('capacity_gain'))} tokens per GiB, "
                        f"top-1 agreement {'n/a' if top1 is None else f'{top1:.3f}'}, mean |logprob diff| "
                        f"{'n/a' if mae is None else f'{mae:.4f}'}")
    for key, reason in ((study or {}).get("findings") or {}).get("refused", {}).items():
        evidence.append(f"{key} refused by the engine: {reason}")
    if not quant:
        rec = not_measured(topic, "KV-cache dtype study: no quantized dtype measured")
        rec.evidence = evidence
        if binds is False:
            rec.verdict += "; capacity does not bind at the measured loads, so quantization would buy no batch room"
        if speed:
            rec.verdict += f"; {speed.split(', so ')[1]}"
        return rec
    if all(r.get("prompt_top1_agreement") is None for r in quant):  # e.g. dummy weights: nothing to score
        gain = times(max(r.get("capacity_gain") or 0 for r in quant))
        return Recommendation(topic, f"undecided: up to {gain} tokens per GiB measured, but not the accuracy cost; "
                                     "measure it on real weights (--model llama-2-7b-seeded or a checkpoint) before "
                                     "choosing a quantized cache", evidence, None)
    accurate = [r for r in quant if (r.get("prompt_top1_agreement") or 0) >= min_top1
                and (r.get("prompt_logprob_mae") if r.get("prompt_logprob_mae") is not None else math.inf) <= max_mae]
    acc = (f"{len(accurate)} of {len(quant)} quantized dtypes stay within top-1 agreement >= {min_top1} and mean "
           f"|logprob diff| <= {max_mae}")
    if binds is None:
        return Recommendation(topic, f"capacity need unknown (no KV capacity or load recorded); {acc}", evidence)
    if not binds:
        return Recommendation(topic, f"does not pay off in capacity for this workload: KV capacity does not bind at "
                                     f"any measured load, so the extra tokens per GiB buy no batch room ({acc})"
                              + (f"; {speed.split(', so ')[1]}" if speed else ""), evidence, False)
    if not accurate:
        return Recommendation(topic, f"capacity binds, but no quantized dtype is accurate enough ({acc})", evidence,
                              False)
    pick = max(accurate, key=lambda r: (r.get("capacity_gain") or 0, -(r.get("prompt_logprob_mae") or 0)))
    return Recommendation(topic, f"pays off: capacity binds at the measured load; {pick['key']} gives "
                                 f"{times(pick.get('capacity_gain'))} tokens per GiB within the accuracy limits ({acc})",
                          evidence, pick["key"])


def block_size_advice(study: Mapping[str, Any] | None, noise: float = DEFAULT_NOISE,
                      baselines: Path | None = None) -> Recommendation:
    """Keep the engine's default unless another measured block size is faster beyond noise."""
    topic = "block_size"
    rows = [r for r in measured_rows((study or {}).get("rows", [])) if r.get("output_throughput")]
    if not rows:
        return not_measured(topic, "block-size study")
    default = next((r for r in rows if r.get("config_name") == "vllm"), None)
    best = max(rows, key=lambda r: r["output_throughput"])
    evidence = [f"block {r['block_size']}: {r['output_throughput']:.1f} tok/s, p50 TTFT {num(r.get('median_ttft_ms'))} "
                f"ms, p50 TPOT {num(r.get('median_tpot_ms'))} ms, KV capacity {r.get('kv_capacity_tokens')} tokens"
                for r in rows]
    if default is None:
        return Recommendation(topic, f"block {best['block_size']} was fastest ({best['output_throughput']:.1f} "
                                     "tok/s); the engine default was not among the measured rows", evidence,
                              best["block_size"])
    gain = best["output_throughput"] / default["output_throughput"]
    nz = _study_noise(study, "output_throughput", noise, baselines)
    evidence.append(f"noise: {nz.describe()}")
    if best is default:
        return Recommendation(topic, f"keep the default block size {default['block_size']}: it was the fastest "
                                     f"measured ({default['output_throughput']:.1f} tok/s)", evidence,
                              default["block_size"])
    if gain < 1 + nz.threshold:
        return Recommendation(topic, f"keep the default block size {default['block_size']}: the fastest "
                                     f"(block {best['block_size']}) gives {times(gain)} its throughput, within "
                                     f"noise ({_noise_clause(nz)})", evidence, default["block_size"])
    return Recommendation(topic, f"use block size {best['block_size']}: {times(gain)} the default "
                                 f"{default['block_size']}'s throughput", evidence, best["block_size"])

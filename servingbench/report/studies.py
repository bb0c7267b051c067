"""The study sections of the report: concurrency sampling, block size, KV-cache dtype, prefix caching, tensor
parallelism, offline.

Each reads ``<results>/studies/<study>.json`` (servingbench/studies/common.py writes them: rows plus findings) through
``row.get``, so a study file with fewer or extra fields still renders; a missing study prints "not measured in
this run". Skipped rows keep the engine's own reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from servingbench.measure.measurement import measured_rows
from servingbench.report import figures

if TYPE_CHECKING:
    from servingbench.report.doc import Doc
    from servingbench.report.data import RunData

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], Any], str]  # header, getter, format


def _fmt(v: Any, spec: str) -> str:
    from servingbench.report.doc import fmt

    return fmt(v, spec)


def _get(key: str) -> Callable[[Row], Any]:
    return lambda r: r.get(key)


def _memory(r: Row) -> Any:
    return r.get("gpu_memory_used_gib") or r.get("rss_peak_gib")


def _table(doc: "Doc", rows: Sequence[Row], columns: Sequence[Column]) -> None:
    doc.table([c[0] for c in columns], [[_fmt(get(r), spec) for _, get, spec in columns] for r in rows])


def _why(r: Row) -> str:
    return str(r.get("reason") or r.get("note") or "")


SERVING: list[Column] = [
    ("out tok/s", _get("output_throughput"), "{:.1f}"), ("TTFT p50 ms", _get("median_ttft_ms"), "{:.1f}"),
    ("TTFT p99 ms", _get("p99_ttft_ms"), "{:.1f}"), ("TPOT p50 ms", _get("median_tpot_ms"), "{:.2f}"),
    ("TPOT p99 ms", _get("p99_tpot_ms"), "{:.2f}"), ("peak memory GiB", _memory, "{:.2f}"),
]


def study_sections(doc: "Doc", data: "RunData", figs: Path) -> None:
    doc.h(2, "Studies")
    concurrency(doc, data.studies.get("concurrency"), figs)
    block_size(doc, data.studies.get("block_size"), figs)
    kv_dtype(doc, data.studies.get("kv_cache_dtype"), figs)
    prefix_cache(doc, data.studies.get("prefix_cache"), figs)
    tensor_parallel(doc, data.studies.get("tensor_parallel"), figs)
    offline(doc, data.studies.get("offline"), figs)
    speculative(doc, data.studies.get("speculative"))


def _absent(doc: "Doc", title: str, study: Row | None) -> bool:
    doc.h(3, title)
    if not study or not study.get("rows"):
        doc.p("not measured in this run")
        return True
    doc.p(_provenance(study))
    return False


def _provenance(study: Row) -> str:
    """Where a study ran: a report can gather studies of other runs (e.g. KV accuracy on seeded weights)."""
    hw, model, versions = study.get("hardware") or {}, study.get("model") or {}, study.get("versions") or {}
    where = hw.get("gpu_name") or hw.get("cpu") or hw.get("profile") or "unknown hardware"
    engine = f", vLLM {versions['vllm']}" if versions.get("vllm") else ""
    return f"Measured on {where} with model {model.get('name', 'unknown')}{engine}."


def _percentile(r: Row) -> str:
    """The percentile a sweep row supports: as recorded, else (an older file) from its request count."""
    from servingbench.studies.sampling import percentile_label, supported_percentile

    return r.get("latency_percentile") or percentile_label(supported_percentile(int(r.get("num_requests") or 0)))


def _at_percentile(metric: str) -> Callable[[Row], Any]:
    """A row's ``metric`` at the percentile its sample supports."""
    def get(r: Row) -> Any:
        p = _percentile(r)
        return r.get(f"median_{metric}_ms" if p == "p50" else f"{p}_{metric}_ms")
    return get


def concurrency(doc: "Doc", study: Row | None, figs: Path) -> None:
    """Per level: the requests measured and the latency percentile they support, with the figures at it."""
    if _absent(doc, "Concurrency sweep: samples per level", study):
        return
    _table(doc, measured_rows(study["rows"]), [
        ("concurrency", _get("concurrency"), "{}"), ("requests", _get("num_requests"), "{}"),
        ("percentile", _percentile, "{}"),
        ("out tok/s", _get("output_throughput"), "{:.1f}"), ("TTFT ms", _at_percentile("ttft"), "{:.1f}"),
        ("TPOT ms", _at_percentile("tpot"), "{:.2f}"),
        ("samples", lambda r: r.get("latency_percentile_note") or f"{r.get('num_requests')} requests", "{}")])
    doc.p("A q-percentile needs 1 / (1 - q) samples (a p99 100, a p90 10): each level is reported, and judged "
          "against the SLO's limits by the recommendation, at the highest percentile its requests support.")


def block_size(doc: "Doc", study: Row | None, figs: Path) -> None:
    if _absent(doc, "KV block size: capacity, memory and speed", study):
        return
    rows = study["rows"]
    _table(doc, rows, [("block size", _get("block_size"), "{}"), ("status", _get("status"), "{}"),
                       ("KV capacity tokens", _get("kv_capacity_tokens"), "{:,}"),
                       ("KV cache GiB", _get("kv_cache_gib"), "{:.2f}"),
                       ("tokens per GiB", _get("tokens_per_gib"), "{:,.0f}"), *SERVING, ("reason", _why, "{}")])
    ok = [r for r in measured_rows(rows) if r.get("output_throughput")]
    if ok:
        default = next((i for i, r in enumerate(ok) if r.get("config_name") == "vllm"), None)
        doc.fig(figures.study_panels([str(r["block_size"]) for r in ok], [
            ("KV capacity", "tokens", [r.get("kv_capacity_tokens") for r in ok]),
            ("output throughput", "tokens/s", [r.get("output_throughput") for r in ok]),
            ("TTFT p50", "ms", [r.get("median_ttft_ms") for r in ok]),
            ("TPOT p50", "ms per output token", [r.get("median_tpot_ms") for r in ok])],
            figs / "block_size.png", "KV block size sweep", "block size (tokens)", highlight=default),
            "Per block size: KV capacity, throughput and latency (orange: the engine's default).")


def kv_dtype(doc: "Doc", study: Row | None, figs: Path) -> None:
    if _absent(doc, "KV-cache dtype: capacity gained, accuracy lost", study):
        return
    rows = study["rows"]
    _table(doc, rows, [("requested", _get("requested"), "{}"), ("engine dtype", _get("kv_cache_dtype"), "{}"),
                       ("status", _get("status"), "{}"), ("KV capacity tokens", _get("kv_capacity_tokens"), "{:,}"),
                       ("tokens per GiB", _get("tokens_per_gib"), "{:,.0f}"),
                       ("capacity gain", _get("capacity_gain"), "{:.2f}x"),
                       ("expected gain", _get("expected_capacity_gain"), "{:.2f}x"),
                       ("top-1 agreement", _get("prompt_top1_agreement"), "{:.3f}"),
                       ("mean abs logprob diff", _get("prompt_logprob_mae"), "{:.4f}"),
                       ("greedy exact match", _get("greedy_exact_match"), "{:.2f}"), ("reason / note", _why, "{}")])
    doc.p("Accuracy is against the auto (model dtype) cache on the same prompts: next-token top-1 agreement and mean "
          "absolute difference of the prompt tokens' log-probabilities.")
    ok = measured_rows(rows)
    if ok:
        doc.fig(figures.study_panels([str(r.get("key")) for r in ok], [
            ("KV capacity per GiB", "tokens per GiB", [r.get("tokens_per_gib") for r in ok]),
            ("top-1 agreement with auto", "share of positions", [r.get("prompt_top1_agreement", 1.0 if r.get("key") == "auto" else None) for r in ok]),
            ("mean abs logprob diff vs auto", "nats", [r.get("prompt_logprob_mae", 0.0 if r.get("key") == "auto" else None) for r in ok])],
            figs / "kv_dtype.png", "KV-cache dtype: capacity vs accuracy", "KV cache dtype", pct=(False, True, False)),
            "Capacity and accuracy cost per KV-cache dtype (auto = the model's dtype, the reference).")


def prefix_cache(doc: "Doc", study: Row | None, figs: Path) -> None:
    if _absent(doc, "Prefix caching: off vs on", study):
        return
    rows = sorted(study["rows"], key=lambda r: r.get("key") != "off")
    _table(doc, rows, [("caching", _get("key"), "{}"), ("config", _get("config_name"), "{}"),
                       ("hit rate", _get("hit_rate"), "{:.1%}"), ("expected hit rate", _get("expected_hit_rate"), "{:.1%}"),
                       ("shared prefix / prompt", lambda r: f"{r.get('prefix_len')}/{r.get('prompt_len')}", "{}"),
                       *SERVING, ("KV blocks saved", _get("blocks_saved"), "{:.0f}"),
                       ("KV GiB saved", _get("kv_gib_saved"), "{:.3f}")])
    f = study.get("findings") or {}
    if f.get("ttft_speedup") is not None:
        doc.p(f"TTFT p50 speed-up from caching: {f['ttft_speedup']:.3g}x; throughput gain "
              f"{_fmt(f.get('throughput_gain'), '{:.3g}x')}; hit rate within tolerance "
              f"({_fmt(f.get('hit_rate_tolerance'), '{:g}')}): {f.get('hit_rate_within_tolerance')}.")
    ok = measured_rows(rows)
    if ok:
        doc.fig(figures.study_panels([str(r.get("key")) for r in ok], [
            ("TTFT p50", "ms", [r.get("median_ttft_ms") for r in ok]),
            ("TTFT p99", "ms", [r.get("p99_ttft_ms") for r in ok]),
            ("output throughput", "tokens/s", [r.get("output_throughput") for r in ok])],
            figs / "prefix_cache.png", "Prefix caching on a shared-prefix load", "prefix caching"),
            "Latency and throughput with prefix caching off and on.")


def tensor_parallel(doc: "Doc", study: Row | None, figs: Path) -> None:
    if _absent(doc, "Tensor parallelism: scaling", study):
        return
    rows = study["rows"]
    eff = (study.get("findings") or {}).get("scaling_efficiency") or {}
    _table(doc, rows, [("TP size", _get("tensor_parallel_size"), "{}"), ("status", _get("status"), "{}"),
                       ("scaling efficiency", lambda r: eff.get(str(r.get("tensor_parallel_size"))), "{:.1%}"),
                       *SERVING, ("reason", _why, "{}")])
    ok = [r for r in measured_rows(rows) if r.get("output_throughput")]
    if len(ok) >= 2:
        doc.fig(figures.scaling([r["tensor_parallel_size"] for r in ok], [r["output_throughput"] for r in ok],
                                figs / "tensor_parallel.png", "Tensor-parallel scaling"),
                "Throughput per TP size against linear scaling; labels: scaling efficiency.")


def offline(doc: "Doc", study: Row | None, figs: Path) -> None:
    if _absent(doc, "Offline throughput: vLLM vs HF", study):
        return
    rows = study["rows"]
    _table(doc, rows, [("run", _get("label"), "{}"), ("engine", _get("engine"), "{}"),
                       ("block size", _get("block_size"), "{}"), ("prompts", _get("num_prompts"), "{}"),
                       ("output tok/s", _get("output_tokens_per_s"), "{:.1f}"),
                       ("total tok/s", _get("total_tokens_per_s"), "{:.1f}"),
                       ("peak RSS GiB", _get("peak_rss_gib"), "{:.2f}"),
                       ("peak GPU GiB", _get("peak_gpu_memory_gib"), "{:.2f}"), ("init s", _get("init_s"), "{:.0f}")])
    ratio = (study.get("findings") or {}).get("vllm_over_hf_output_tokens_per_s")
    doc.p(f"vLLM over HF, output tokens/s: {_fmt(ratio, '{:.3g}x')}.")
    ok = [r for r in measured_rows(rows) if r.get("output_tokens_per_s")]
    if ok:
        doc.fig(figures.study_panels([str(r.get("label", r.get("key"))).split("-n")[0] for r in ok], [
            ("output throughput", "tokens/s", [r.get("output_tokens_per_s") for r in ok]),
            ("peak memory", "GiB", [r.get("peak_gpu_memory_gib") or r.get("peak_rss_gib") for r in ok])],
            figs / "offline.png", "Offline generation", "engine / block size",
            highlight=next((i for i, r in enumerate(ok) if r.get("engine") == "hf"), None)),
            "Offline throughput and peak memory per engine (orange: HF).")


def speculative(doc: "Doc", study: Row | None) -> None:
    if _absent(doc, "Speculative decoding: plain vs drafted", study):
        return
    rows = sorted(study["rows"], key=lambda r: r.get("key") != "plain")
    _table(doc, rows, [("mode", _get("key"), "{}"), ("config", _get("config_name"), "{}"),
                       ("acceptance", _get("spec_acceptance_rate"), "{:.1%}"),
                       ("mean accepted length", _get("spec_mean_accepted_length"), "{:.2f}"),
                       ("tokens per chunk", _get("tokens_per_chunk"), "{:.2f}"), *SERVING])
    f = study.get("findings") or {}
    if f.get("tpot_speedup") is not None:
        doc.p(f"TPOT p50 speed-up from drafting: {f['tpot_speedup']:.3g}x; throughput gain "
              f"{_fmt(f.get('throughput_gain'), '{:.3g}x')}; the client's tokens per chunk agree with the "
              f"server's accepted length: {f.get('views_agree')}.")

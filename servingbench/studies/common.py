"""The optimization studies' shared logic: their parameters, their result files, and the math they report.

Each study (block size, KV dtype, prefix caching, concurrency sweep, offline throughput, tensor parallelism) is a
parametrized perf test in ``perf/test_studies_*.py``; each test adds its row to ``<results>/studies/<study>.json``
and the file's ``findings`` are recomputed from all rows on every write, so the file is whole after any subset
of the tests ran. One stable shape for every study (README "Studies"):

    {"schema": "servingbench.study/1", "study": NAME, "hardware": {...}, "model": {...}, "versions": {...},
     "updated_at": EPOCH_S, "rows": [{"key": ..., ...}, ...], "findings": {...}}

Rows whose setting the engine refused have ``"status": "skipped"`` and the engine's own ``"reason"``.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from servingbench.load.workload import Workload, workload_from
from servingbench.studies.kv_cache import KVCapacity
from servingbench.studies.params_schema import study_problems
from servingbench.measure import catalog
from servingbench.measure.files import atomic_write_json
from servingbench.measure.measurement import STUDY_SCHEMA as SCHEMA
from servingbench.measure.measurement import measured_rows

if TYPE_CHECKING:
    from servingbench.measure.measurement import Measurement
    from servingbench.suite.bench import Bench

KNEE_METRICS = ("median_e2el_ms", "median_tpot_ms")
SERVING_FIELDS = catalog.study_fields()  # vLLM's field names, in every study row


class StudyConfigError(ValueError):
    """A study parameter that is missing or unusable; the message names the file, the key and the fix."""


# ---- parameters --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyParams:
    """One study's parameters for one profile: shared keys overlaid with the ``cpu`` or ``gpu`` ones."""

    study: str
    variant: str  # "cpu" | "gpu": the table of studies.toml that overlays the shared keys
    values: Mapping[str, Any]
    source: str

    def __getitem__(self, key: str) -> Any:
        if key not in self.values:
            raise StudyConfigError(f"{self.source}: [{self.study}] has no {key!r} for the {self.variant} profile; "
                                   f"add {self.variant}.{key} (or {key}) there")
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def workload(self, key: str = "workload", **overrides: Any) -> Workload:
        return workload_from(f"study-{self.study.replace('_', '-')}", {**self[key], **overrides})


def load_study_params(path: Path | str, study: str, gpu: bool) -> StudyParams:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise StudyConfigError(f"cannot read study parameters {path}: {e}") from None
    if study not in raw:
        raise StudyConfigError(f"{path} has no [{study}] section (it has: {', '.join(sorted(raw))})")
    section = raw[study]
    variant = "gpu" if gpu else "cpu"
    shared = {k: v for k, v in section.items() if k not in ("cpu", "gpu")}
    values = {**shared, **section.get(variant, {})}
    problems = study_problems(study, values)
    if problems:
        raise StudyConfigError(f"{path}: [{study}] for the {variant} profile: " + "; ".join(problems))
    return StudyParams(study, variant, values, str(path))


# ---- result files ----------------------------------------------------------------------------------------------

def study_path(results_dir: Path, study: str) -> Path:
    return Path(results_dir) / "studies" / f"{study}.json"


def record_rows(bench: "Bench", study: str, rows: Iterable[dict[str, Any]],
                findings: Callable[[list[dict[str, Any]]], dict[str, Any]],
                sort_key: Callable[[dict[str, Any]], Any] = lambda r: r["key"]) -> dict[str, Any]:
    """Add (or replace, by ``key``) rows in the study's file, recompute its findings, write it atomically."""
    path = study_path(bench.results_dir, study)
    existing: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("schema") == SCHEMA:
            existing = old.get("rows", [])
    by_key = {r["key"]: r for r in existing}
    for row in rows:
        if "key" not in row:
            raise ValueError(f"study {study}: a row needs a 'key', got {sorted(row)}")
        by_key[row["key"]] = row
    ordered = sorted(by_key.values(), key=sort_key)
    prov = bench.settings.provenance()
    hw = prov["hardware_identity"]
    doc = {
        "schema": SCHEMA, "study": study,
        # "profile" is the hardware key under the name earlier study files used (the report reads both)
        "hardware": {"profile": hw["key"], **hw}, "model": prov["model_spec"],
        "versions": prov["versions"], "updated_at": time.time(), "rows": ordered,
        "findings": findings(ordered),
    }
    atomic_write_json(path, doc)
    return doc


def sampled(m: "Measurement", name: str) -> float | None:
    """A telemetry figure of the row, or None where nothing sampled it (a zero would read as measured)."""
    from servingbench.measure.measurement import MissingFigure

    try:
        return m.value(name)
    except MissingFigure:
        return None


def serving_row(m: "Measurement") -> dict[str, Any]:
    """The serving figures every study row carries (vLLM's field names), plus memory and KV capacity."""
    flat = m.metrics.to_vllm_json()
    return {**{k: flat[k] for k in SERVING_FIELDS}, "rss_peak_gib": sampled(m, "rss_peak_gib"),
            "gpu_memory_used_gib": sampled(m, "gpu_memory_used_gib"), "measurement": m.key,
            "server_startup_s": m.server_startup_s, "client_loop_lag_ms_p99": m.loop_lag_ms_p99}


# ---- concurrency sweep: the knee --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepPoint:
    concurrency: int
    throughput: float  # output tokens/s
    latencies: Mapping[str, float]  # KNEE_METRICS, ms


@dataclass(frozen=True)
class Knee:
    """The first level where latency grows faster than throughput (relative to the previous level)."""

    concurrency: int
    previous: int
    metric: str
    latency_increase: float  # L(c) / L(previous) - 1
    throughput_increase: float  # T(c) / T(previous) - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_knee(points: Sequence[SweepPoint], metrics: Sequence[str] = KNEE_METRICS) -> Knee | None:
    """Between consecutive levels c' < c, relative increases are T(c)/T(c') - 1 and L(c)/L(c') - 1 for each latency
    metric L (p50 E2EL, p50 TPOT). The knee is the first c where some L's increase exceeds T's; the metric with
    the larger increase is named. None if latency never outgrows throughput over the sweep."""
    pts = sorted(points, key=lambda p: p.concurrency)
    if len(pts) < 2:
        raise ValueError(f"a knee needs at least 2 sweep levels, got {len(pts)}")
    if len({p.concurrency for p in pts}) != len(pts):
        raise ValueError(f"sweep levels repeat: {[p.concurrency for p in pts]}")
    for p in pts:
        values = [p.throughput] + [p.latencies.get(m, math.nan) for m in metrics]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"level {p.concurrency}: throughput and {', '.join(metrics)} must be positive and "
                             f"finite, got throughput={p.throughput} latencies={dict(p.latencies)}")
    for prev, cur in zip(pts, pts[1:]):
        tp = cur.throughput / prev.throughput - 1
        lat = {m: cur.latencies[m] / prev.latencies[m] - 1 for m in metrics}
        worst = max(lat, key=lambda m: lat[m])
        if lat[worst] > tp:
            return Knee(cur.concurrency, prev.concurrency, worst, lat[worst], tp)
    return None


def sweep_findings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = measured_rows(rows)
    out: dict[str, Any] = {
        "knee_definition": "first level c (vs the previous level c') where p50 E2EL or p50 TPOT grows by more, "
                           "relatively, than output throughput: L(c)/L(c') - 1 > T(c)/T(c') - 1",
        "curve": [{"concurrency": r["concurrency"], "output_throughput": r["output_throughput"],
                   "median_e2el_ms": r["median_e2el_ms"], "median_tpot_ms": r["median_tpot_ms"],
                   "latency_percentile": r.get("latency_percentile")} for r in rows],
        "percentile_rule": "a q-percentile needs 1 / (1 - q) samples (p99: 100, p90: 10); each level's "
                           "latency_percentile is the highest its requests support (servingbench/studies/sampling.py)",
        "knee": None, "peak_throughput": None, "speedup_over_single_stream": None,
    }
    if not rows:
        return out
    peak = max(rows, key=lambda r: r["output_throughput"])
    out["peak_throughput"] = {"concurrency": peak["concurrency"], "output_throughput": peak["output_throughput"]}
    single = next((r for r in rows if r["concurrency"] == 1), None)
    if single:
        out["speedup_over_single_stream"] = peak["output_throughput"] / single["output_throughput"]
    if len(rows) >= 2:
        knee = find_knee([SweepPoint(r["concurrency"], r["output_throughput"], {m: r[m] for m in KNEE_METRICS})
                          for r in rows])
        out["knee"] = knee.to_dict() if knee else None
        out["recommended_concurrency"] = knee.previous if knee else peak["concurrency"]
    return out


def kv_saving(hit_tokens: float, capacity: KVCapacity) -> dict[str, float | None]:
    """KV blocks that sharing spared: each hit token is one not written again; blocks of ``block_size`` tokens."""
    if not capacity.block_size:
        return {"blocks_saved": None, "kv_gib_saved": None}
    blocks = hit_tokens / capacity.block_size
    per_block = (capacity.kv_cache_bytes / capacity.num_blocks
                 if capacity.kv_cache_bytes and capacity.num_blocks else None)
    return {"blocks_saved": blocks, "kv_gib_saved": blocks * per_block / 1024**3 if per_block else None}


def prefix_findings(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    by = {r["key"]: r for r in measured_rows(rows)}
    out: dict[str, Any] = {"hit_rate_tolerance": tolerance}
    on, off = by.get("on"), by.get("off")
    if on:
        out.update(hit_rate_expected=on["expected_hit_rate"], hit_rate_measured=on["hit_rate"],
                   hit_rate_within_tolerance=(on["hit_rate"] is not None
                                              and abs(on["hit_rate"] - on["expected_hit_rate"]) <= tolerance),
                   blocks_saved=on["blocks_saved"], kv_gib_saved=on["kv_gib_saved"])
    if on and off:
        out["median_ttft_ms"] = {"off": off["median_ttft_ms"], "on": on["median_ttft_ms"]}
        out["ttft_speedup"] = off["median_ttft_ms"] / on["median_ttft_ms"] if on["median_ttft_ms"] else None
        out["throughput_gain"] = (on["output_throughput"] / off["output_throughput"]
                                  if off["output_throughput"] else None)
    return out


# ---- block size, KV dtype, offline, TP: the derived figures -----------------------------------------------------

def best(rows: Sequence[dict[str, Any]], field: str, key: str, higher: bool = True) -> Any:
    rows = [r for r in measured_rows(rows) if r.get(field) is not None]
    if not rows:
        return None
    pick = max(rows, key=lambda r: r[field]) if higher else min(rows, key=lambda r: r[field])
    return pick[key]


def block_size_findings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"best_output_throughput_block_size": best(rows, "output_throughput", "block_size"),
            "best_median_ttft_block_size": best(rows, "median_ttft_ms", "block_size", higher=False),
            "measured": [r["block_size"] for r in measured_rows(rows)],
            "skipped": {str(r["block_size"]): r["reason"] for r in rows if r.get("status") == "skipped"}}


def kv_dtype_findings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    quantized = [r for r in measured_rows(rows) if r["key"] != "auto"]
    return {"reference": "auto",
            "names": {r["requested"]: r["kv_cache_dtype"] for r in rows if r.get("kv_cache_dtype")},
            "notes": [r["note"] for r in rows if r.get("note")],
            "largest_tokens_per_gib": best(rows, "tokens_per_gib", "key"),
            "most_accurate_quantized": best(quantized, "prompt_logprob_mae", "key", higher=False),
            "refused": {r["key"]: r["reason"] for r in rows if r.get("status") == "skipped"},
            "undeclared_by_backend": {r["key"]: r["backend_doubt"] for r in rows if r.get("backend_doubt")}}


def offline_findings(rows: list[dict[str, Any]], reference_block_size: int | None) -> dict[str, Any]:
    ok = measured_rows(rows)
    hf = next((r for r in ok if r["engine"] == "hf"), None)
    vllm = [r for r in ok if r["engine"] == "vllm"]
    ref = next((r for r in vllm if r["block_size"] == reference_block_size), None)
    return {"reference_block_size": reference_block_size,
            "vllm_over_hf_output_tokens_per_s": (ref["output_tokens_per_s"] / hf["output_tokens_per_s"]
                                                 if ref and hf else None),
            "best_block_size": best(vllm, "output_tokens_per_s", "block_size")}

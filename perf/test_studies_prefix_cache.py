"""Prefix caching study: a shared system prompt with distinct user queries, caching off against on.

"on" is the lab-load server (config "vllm": vLLM enables prefix caching by default, checked against /metrics);
"off" is the same config with --no-enable-prefix-caching. The hit rate is the delta of vLLM's
prefix_cache_hits / prefix_cache_queries counters over the measured run (snapshots right before and after), and
is checked against what the prompt mix implies (``expected_prefix_hit_rate``: every request after the first
reuses the prefix's full blocks). The workload has no warm-up requests, so none of them enter the counters.
Memory saved: the KV blocks the hits spared (hit tokens / block size), and their GiB. Writes
studies/prefix_cache.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servingbench.load.synthetic import expected_prefix_hit_rate
from servingbench.studies.common import StudyParams, kv_saving, load_study_params, prefix_findings, record_rows, serving_row
from servingbench.studies.runs import REFERENCE, ServedRun, require_local, served_run, variant

pytestmark = pytest.mark.study  # an experiment: runs with --studies (make studies), not in the default gate

STUDY = "prefix_cache"
PARAMS = Path(__file__).with_name("studies.toml")
CONFIGS = {"on": REFERENCE, "off": "vllm-no-prefix-cache"}
OVERRIDES = {"on": {}, "off": {"enable_prefix_caching": False}}


@pytest.fixture(scope="session")
def params(pytestconfig: pytest.Config) -> StudyParams:
    return load_study_params(PARAMS, STUDY, pytestconfig.getoption("--gpu"))


def run(bench, params: StudyParams, mode: str) -> tuple[ServedRun, dict[str, Any]]:
    """Measure one mode (once per session) and write its row."""
    require_local(bench)
    workload = params.workload()
    if workload.source.warmup_requests:
        raise AssertionError(f"{PARAMS} [{STUDY}]: warmup_requests must be 0 (warm-ups would enter the hit rate)")
    r = served_run(bench, CONFIGS[mode], workload, variant(bench, **OVERRIDES[mode]))
    assert r.capacity is not None and r.capacity.block_size, f"{CONFIGS[mode]}: no block size in /metrics"
    specs = workload.specs(bench.settings.vocab_size, seed=0)  # the mix, not the token values, sets the rate
    counters = r.counters
    row = {"key": mode, "config_name": CONFIGS[mode], "status": "measured",
           "enable_prefix_caching": r.labels.get("enable_prefix_caching"), "block_size": r.capacity.block_size,
           "num_requests": workload.source.num_requests, "prefix_len": workload.source.prefix_len,
           "prompt_len": workload.source.prompt_len, "num_prefixes": workload.source.num_prefixes,
           "prefix_cache_queries": counters.queries if counters else None,
           "prefix_cache_hits": counters.hits if counters else None,
           "hit_rate": counters.hit_rate if counters else None,
           "expected_hit_rate": expected_prefix_hit_rate(specs, r.capacity.block_size, workload.source.num_prefixes)
           if mode == "on" else 0.0,
           **kv_saving(counters.hits if counters else 0.0, r.capacity), "notes": r.notes,
           **serving_row(r.measurement)}
    record_rows(bench, STUDY, [row], lambda rows: prefix_findings(rows, params["hit_rate_tolerance"]))
    return r, row


@pytest.mark.parametrize("config_name", list(CONFIGS.values()), ids=list(CONFIGS))
def test_prefix_cache_run(config_name: str, bench, params: StudyParams) -> None:
    mode = next(k for k, v in CONFIGS.items() if v == config_name)
    r, row = run(bench, params, mode)
    m = r.measurement
    assert m.metrics.failed == 0, f"{m.metrics.failed} requests failed: {m.metrics.errors}"
    assert row["enable_prefix_caching"] == ("True" if mode == "on" else "False"), (
        f"config {config_name} reports enable_prefix_caching={row['enable_prefix_caching']}, expected caching "
        f"{mode}: if vLLM's default changed, set enable_prefix_caching = true on the 'on' config")
    assert r.counters is not None, f"prefix-cache counters not captured around the run: {r.notes}"


@pytest.mark.servers(*CONFIGS.values())
def test_prefix_cache_lowers_ttft_and_hits_as_the_mix_implies(bench, params: StudyParams) -> None:
    (_, on), (_, off) = run(bench, params, "on"), run(bench, params, "off")
    tol = params["hit_rate_tolerance"]
    assert on["median_ttft_ms"] < off["median_ttft_ms"], (
        f"prefix caching did not lower median TTFT on the shared-prefix load: on {on['median_ttft_ms']:.1f} ms, "
        f"off {off['median_ttft_ms']:.1f} ms")
    assert on["hit_rate"] is not None and abs(on["hit_rate"] - on["expected_hit_rate"]) <= tol, (
        f"prefix-cache hit rate {on['hit_rate']} vs {on['expected_hit_rate']:.4f} implied by the prompt mix "
        f"(tolerance {tol}, {PARAMS})")
    assert not off["prefix_cache_hits"], f"caching off, yet {off['prefix_cache_hits']} prefix-cache hit tokens"

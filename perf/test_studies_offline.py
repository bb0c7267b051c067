"""Offline throughput, the lab's Parts 1 and 3: vLLM's LLM.generate against the HF engine's static batches.

Same prompts (random token ids), same lengths, EOS ignored, greedy: like ``vllm bench throughput`` with
``--backend vllm`` and ``--backend hf``. Each engine runs in its own subprocess (servingbench/studies/offline.py); the
block-size sweep runs this way too (CPU 32/64/128). Tokens/s and peak memory per run. Writes studies/offline.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servingbench.suite.run_settings import CPU_KV_CACHE_GIB, GPU_MEMORY_UTILIZATION
from servingbench.studies.offline import OfflineResult, OfflineSpec, run_offline
from servingbench.studies.common import StudyParams, load_study_params, offline_findings, record_rows

pytestmark = pytest.mark.study  # an experiment: runs with --studies (make studies), not in the default gate

STUDY = "offline"
PARAMS = Path(__file__).with_name("studies.toml")
_RESULTS: dict[str, OfflineResult] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" not in metafunc.fixturenames:
        return
    p = load_study_params(PARAMS, STUDY, metafunc.config.getoption("--gpu"))
    cases = [pytest.param("vllm", b, id=f"vllm-block{b}") for b in p["block_sizes"]]
    metafunc.parametrize(("engine", "block_size"), cases + [pytest.param("hf", None, id="hf")])


@pytest.fixture(scope="session")
def params(pytestconfig: pytest.Config) -> StudyParams:
    return load_study_params(PARAMS, STUDY, pytestconfig.getoption("--gpu"))


@pytest.fixture(scope="session")
def reference_block_size(pytestconfig: pytest.Config) -> int:
    """The engine's default block size (block_size study's engine_default): the vLLM row compared with HF."""
    return load_study_params(PARAMS, "block_size", pytestconfig.getoption("--gpu"))["engine_default"]


def spec_for(bench, params: StudyParams, engine: str, block_size: int | None) -> OfflineSpec:
    p = bench.settings
    gpu = p.hardware.gpu
    return OfflineSpec(
        engine=engine, model=p.model_path, dtype=p.model.dtype,  # resolved once: both engines, one precision
        num_prompts=params["num_prompts"], input_len=params["input_len"], output_len=params["output_len"],
        vocab_size=p.vocab_size, max_model_len=p.model.max_model_len, load_format=p.model.load_format,
        device="cuda" if gpu else "cpu", block_size=block_size,
        kv_cache_space_gib=None if gpu else CPU_KV_CACHE_GIB,
        gpu_memory_utilization=GPU_MEMORY_UTILIZATION if gpu and engine == "vllm" else None,
        tensor_parallel_size=p.tensor_parallel_size, hf_max_batch_size=params["hf_max_batch_size"])


def measure(bench, params: StudyParams, engine: str, block_size: int | None, reference: int) -> OfflineResult:
    spec = spec_for(bench, params, engine, block_size)
    if spec.label not in _RESULTS:
        if bench.remote:
            pytest.skip("offline throughput runs engines in process; --server-url mode measures a deployment only")
        bench.pool.stop()  # one engine at a time: a live server would share the cores and memory
        result = run_offline(spec, bench.results_dir / "offline")
        _RESULTS[spec.label] = result
        row: dict[str, Any] = {"key": spec.label, "status": "measured", "input_len": spec.input_len,
                               "output_len": spec.output_len, "hf_max_batch_size": spec.hf_max_batch_size
                               if engine == "hf" else None, **result.to_dict()}
        record_rows(bench, STUDY, [row], lambda rows: offline_findings(rows, reference),
                    sort_key=lambda r: (r["engine"], r["block_size"] or 0))
    return _RESULTS[spec.label]


def test_offline_throughput(engine: str, block_size: int | None, bench, params: StudyParams,
                            reference_block_size: int) -> None:
    r = measure(bench, params, engine, block_size, reference_block_size)
    expected = params["num_prompts"] * params["output_len"]
    assert r.output_tokens == expected, f"{r.label}: {r.output_tokens} output tokens, expected {expected}"
    assert r.prompt_tokens == params["num_prompts"] * params["input_len"]
    if engine == "vllm":
        assert r.block_size == block_size, f"{r.label}: the engine ran block size {r.block_size}"
    assert r.peak_rss_gib > 0, "peak memory was not sampled"


def test_offline_vllm_over_hf(bench, params: StudyParams, reference_block_size: int) -> None:
    vllm = measure(bench, params, "vllm", reference_block_size, reference_block_size)
    hf = measure(bench, params, "hf", None, reference_block_size)
    ratio = vllm.output_tokens_per_s / hf.output_tokens_per_s
    assert ratio >= params["min_vllm_over_hf"], (
        f"offline vLLM {vllm.output_tokens_per_s:.1f} output tok/s is {ratio:.2f}x HF's static batches of "
        f"{params['hf_max_batch_size']} ({hf.output_tokens_per_s:.1f} tok/s); expected >= "
        f"{params['min_vllm_over_hf']}x ({PARAMS})")

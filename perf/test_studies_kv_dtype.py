"""KV-cache quantization study: capacity gained and accuracy lost, each quantized dtype against ``auto``.

``auto`` is the lab-load server (config "vllm"); each quantized dtype is the same config with --kv-cache-dtype.
Capacity: tokens of KV per GiB of KV cache (on CPU the space is fixed by VLLM_CPU_KVCACHE_SPACE). Accuracy: a
fixed prompt set scored by both servers through /v1/completions with prompt_logprobs and greedy continuations
(servingbench/studies/kv_accuracy.py); not on vLLM's dummy weights, whose flat logits make agreement noise (use
--model llama-2-7b-seeded on a GPU). The lab's "int8" is mapped to the name the installed vLLM accepts, and the row
says so. A dtype the hardware refuses is skipped with the server's own reason. Writes studies/kv_cache_dtype.json.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servingbench.studies.kv_accuracy import ScoredPrompt, compare, score_prompts, study_prompts
from servingbench.studies.kv_cache import (KVCapacity, accepted_kv_cache_dtypes, kv_element_bytes, probe_cpu_backend, resolve_kv_cache_dtype)
from servingbench.studies.common import StudyParams, kv_dtype_findings, load_study_params, record_rows
from servingbench.studies.runs import REFERENCE, Refused, cache_labels, capacity_of, require_local, start, variant

pytestmark = pytest.mark.study  # an experiment: runs with --studies (make studies), not in the default gate

STUDY = "kv_cache_dtype"
PARAMS = Path(__file__).with_name("studies.toml")
UNSCORED = ("accuracy not measured: vLLM's dummy weights (uniform +-1e-3, norms included) give near-flat logits, so "
            "agreement with auto would be noise; run this study with --model llama-2-7b-seeded (seeded weights, built "
            "here) or a checkpoint")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kv_dtype" not in metafunc.fixturenames:
        return
    p = load_study_params(PARAMS, STUDY, metafunc.config.getoption("--gpu"))
    metafunc.parametrize(("kv_dtype", "config_name"),
                         [pytest.param(d, f"vllm-kv-{d}", id=d) for d in p["dtypes"]])


@dataclass
class Scored:
    kv_cache_dtype: str
    capacity: KVCapacity
    scores: list[ScoredPrompt] | None  # None: dummy weights, nothing to score


@pytest.fixture(scope="session")
def params(pytestconfig: pytest.Config) -> StudyParams:
    return load_study_params(PARAMS, STUDY, pytestconfig.getoption("--gpu"))


@pytest.fixture(scope="session")
def prompts(params: StudyParams, bench) -> list[list[int]]:
    return study_prompts(params, bench.settings.vocab_size)


def study_config(bench, params: StudyParams, **overrides: Any):
    """The reference config with the settings this study gives all its servers (``server``) and ``overrides``."""
    return variant(bench, **{**params.get("server", {}), **overrides})


def model_dtype(bench, params: StudyParams) -> str:
    """The dtype the study's servers run the model in: the one ``auto`` KV stores."""
    dtype = params.get("server", {}).get("dtype", "auto")
    return bench.settings.model.dtype if dtype == "auto" else dtype


def has_real_weights(bench) -> bool:
    return bench.settings.model.load_format != "dummy"


def score(bench, config_name: str, config, params: StudyParams, prompts: list[list[int]]) -> Scored:
    server = start(bench, config_name, config)
    labels = cache_labels(server, bench.api_key)
    scores = (score_prompts(server.url, config.name, prompts, params["output_len"], bench.api_key)
              if has_real_weights(bench) else None)
    return Scored(labels.get("cache_dtype", config.kv_cache_dtype), capacity_of(server, labels), scores)


@pytest.fixture(scope="session")
def reference(bench, params: StudyParams, prompts: list[list[int]]) -> Scored:
    """``auto`` on the lab-load server (in the study's model dtype), scored twice: the second pass must read zero
    difference."""
    require_local(bench)
    config = study_config(bench, params)
    first = score(bench, REFERENCE, config, params, prompts)
    if first.scores is None:
        return first
    again = compare(first.scores, score(bench, REFERENCE, config, params, prompts).scores)
    assert again.prompt_logprob_mae < 1e-4 and again.greedy_exact_match == 1.0, (
        f"scoring the same prompts twice on the same server differs ({again}): the method cannot see KV effects")
    return first


def record(bench, row: dict[str, Any]) -> None:
    order = {"auto": 0}
    record_rows(bench, STUDY, [row], kv_dtype_findings, sort_key=lambda r: (order.get(r["key"], 1), r["key"]))


def capacity_fields(cap: KVCapacity) -> dict[str, Any]:
    return {"kv_capacity_tokens": cap.tokens, "kv_capacity_blocks": cap.num_blocks, "kv_cache_gib": cap.kv_cache_gib,
            "tokens_per_gib": cap.tokens_per_gib}


@pytest.mark.servers(REFERENCE)
def test_kv_auto_reference(bench, params: StudyParams, reference: Scored) -> None:
    assert reference.kv_cache_dtype == "auto", f"config {REFERENCE} serves kv_cache_dtype {reference.kv_cache_dtype}"
    record(bench, {"key": "auto", "requested": "auto", "kv_cache_dtype": "auto", "status": "measured",
                   "model_dtype": model_dtype(bench, params),
                   "reason": None, "note": None if reference.scores else UNSCORED,
                   **capacity_fields(reference.capacity), "capacity_gain": 1.0, "expected_capacity_gain": 1.0,
                   "num_prompts": len(reference.scores or [])})
    assert reference.capacity.tokens_per_gib, "no KV memory size known: tokens per GiB cannot be computed"


def test_kv_dtype(kv_dtype: str, config_name: str, bench, params: StudyParams, prompts: list[list[int]],
                  reference: Scored, request: pytest.FixtureRequest) -> None:
    choice = resolve_kv_cache_dtype(kv_dtype, accepted_kv_cache_dtypes())
    if choice.note:
        warnings.warn(choice.note, stacklevel=1)
    facts = None if bench.settings.hardware.gpu else probe_cpu_backend()
    doubt = facts.undeclared_kv_dtype(choice.engine_name) if facts else None
    if doubt:  # measured all the same; strict, so that a backend that gets it right shows as XPASS, not hidden
        request.applymarker(pytest.mark.xfail(reason=doubt, strict=True))
    row: dict[str, Any] = {"key": kv_dtype, "requested": kv_dtype, "kv_cache_dtype": choice.engine_name,
                           "note": choice.note, "backend_doubt": doubt}
    config = study_config(bench, params, kv_cache_dtype=choice.engine_name)
    try:
        scored = score(bench, config_name, config, params, prompts)
    except Refused as e:
        record(bench, {**row, "status": "skipped", "reason": e.reason})
        pytest.skip(str(e))
    assert scored.kv_cache_dtype == choice.engine_name, (
        f"{config_name}: the server reports cache_dtype {scored.kv_cache_dtype}, not {choice.engine_name}")
    cap, ref_cap = scored.capacity, reference.capacity
    assert cap.tokens_per_gib and ref_cap.tokens_per_gib, "KV memory size unknown: tokens per GiB not computable"
    gain = cap.tokens_per_gib / ref_cap.tokens_per_gib
    dtype = model_dtype(bench, params)
    expected = kv_element_bytes("auto", dtype) / kv_element_bytes(choice.engine_name, dtype)
    delta = compare(reference.scores, scored.scores) if reference.scores and scored.scores else None
    note = choice.note if delta else "; ".join(filter(None, [choice.note, UNSCORED]))
    record(bench, {**row, "note": note, "status": "measured", "reason": None, **capacity_fields(cap),
                   "capacity_gain": gain, "expected_capacity_gain": expected, **(delta.to_dict() if delta else {})})
    share = params["min_capacity_gain_share"]
    assert gain >= share * expected, (
        f"{choice.engine_name}: {gain:.2f}x the tokens per GiB of auto; its element size promises {expected:g}x "
        f"(at least {share:.0%} of it expected, {PARAMS} min_capacity_gain_share)")
    if delta is None:
        warnings.warn(UNSCORED, stacklevel=1)
        return
    assert delta.prompt_top1_agreement >= params["min_prompt_top1_agreement"], (
        f"{choice.engine_name}: next-token top-1 agreement with auto {delta.prompt_top1_agreement:.3f} < "
        f"{params['min_prompt_top1_agreement']} ({PARAMS})")
    assert delta.prompt_logprob_mae <= params["max_prompt_logprob_mae"], (
        f"{choice.engine_name}: mean |log-prob difference| from auto {delta.prompt_logprob_mae:.4f} > "
        f"{params['max_prompt_logprob_mae']} ({PARAMS})")

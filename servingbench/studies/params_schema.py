"""The typed form of ``perf/studies.toml``: one model per study, checked when the study's parameters are loaded.

A study's keys are its shared ones overlaid with its ``cpu`` or ``gpu`` table; each profile's overlay is checked
here, with ``extra="forbid"``, so a misspelt key or an out-of-range tolerance fails at load with the file, the
study and the fix, not as a KeyError mid-experiment. A workload mapping is checked by the table's own workload
schema (``load/workload_schema.py``); the count and concurrency a study sets per run may be left out of it.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from servingbench.load.workload_schema import describe, entry_problems

Count = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]


def _check_workload(v: Any) -> Any:
    """A study workload: the table's workload schema, with the per-run count and concurrency optional."""
    if not isinstance(v, Mapping):
        raise ValueError("must be an inline table of workload fields, e.g. { prompt_len = 64, output_len = 32 }")
    problems, _ = entry_problems({"num_requests": 1, "concurrency": 1, **v})
    if problems:
        raise ValueError("; ".join(problems))
    return v


class _Study(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("workload", mode="before", check_fields=False)
    @classmethod
    def _workload(cls, v: Any) -> Any:
        return _check_workload(v)


class BlockSize(_Study):
    sizes: list[Count] = Field(min_length=1)
    engine_default: Count
    workload: Mapping[str, Any]


class KvCacheDtype(_Study):
    dtypes: list[str] = Field(min_length=1)
    server: Mapping[str, Any] = {}  # ServerConfig overrides every server of the study gets
    num_prompts: Count
    prompt_len: Count
    output_len: Count
    seed: int
    min_prompt_top1_agreement: Share
    max_prompt_logprob_mae: Annotated[float, Field(ge=0)]
    min_capacity_gain_share: Share


class PrefixCache(_Study):
    workload: Mapping[str, Any]
    hit_rate_tolerance: Share


class Concurrency(_Study):
    levels: list[Count] = Field(min_length=1)
    percentile: Annotated[float, Field(gt=0, lt=1)]
    requests_per_level: Count
    min_requests: Count
    max_requests: Optional[Count] = None
    workload: Mapping[str, Any]
    min_peak_speedup: Positive


class Offline(_Study):
    num_prompts: Count
    input_len: Count
    output_len: Count
    hf_max_batch_size: Count
    block_sizes: list[Count] = Field(min_length=1)
    min_vllm_over_hf: Positive


class TensorParallel(_Study):
    sizes: list[Count] = Field(min_length=1)
    workload: Optional[Mapping[str, Any]] = None  # the GPU's: the CPU profile runs no tensor parallelism
    min_scaling_efficiency: Share


class Speculative(_Study):
    method: str
    num_speculative_tokens: Count
    prompt_lookup_max: Count
    prompt_lookup_min: Count
    workload: Mapping[str, Any]
    tokens_per_chunk_tolerance: Share


STUDIES: dict[str, type[_Study]] = {
    "block_size": BlockSize, "kv_cache_dtype": KvCacheDtype, "prefix_cache": PrefixCache,
    "concurrency": Concurrency, "offline": Offline, "tensor_parallel": TensorParallel, "speculative": Speculative,
}


def study_problems(study: str, values: Mapping[str, Any]) -> list[str]:
    """Every problem of one study's overlaid parameters, in the table's words ([] when they are usable)."""
    model = STUDIES.get(study)
    if model is None:
        return [f"[{study}] is no study (known: {', '.join(STUDIES)}): remove it or fix its name"]
    try:
        model.model_validate(dict(values))
    except ValidationError as e:
        return [describe(err) for err in e.errors()]
    return []

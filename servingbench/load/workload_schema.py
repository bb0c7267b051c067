"""The typed form of a workload entry, checked when a table is loaded: every field's type and range.

The entry stays flat; ``load/workload.py`` builds the ``Workload`` (a name and its parts: the request source, the
load shape, the rate sweep, the client topology; ``workload.FLAT`` routes each field to its part) from the entry's
own values once this model accepts them (a checked value is never coerced: a workload's label hashes them, and saved
measurements are found by that label), and the ``Workload`` adds the checks that span fields (a dataset kind needs
a file, a rate sweep needs an SLO).
A load-shape value out of range (``concurrency = 0``, ``top_p = 7``, a negative rate) fails here, at load, not
later in the load generator with a traceback. ``tests/unit/test_table_schema.py`` holds the fields equal to
those of ``Workload``'s parts.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

KINDS = ("random", "shared-prefix", "dataset", "conversation", "trace")
TRACE_FORMATS = ("mooncake", "azure", "burstgpt")
ENDPOINTS = ("completions", "chat")
CLIENT_HOSTS = ("local", "ray")  # where the client workers run: this host's processes, or Ray actors

Count = Annotated[int, Field(ge=1)]  # a number of things there must be at least one of
Rate = Annotated[float, Field(gt=0)]  # requests per second; inf (the default) sends all at once
Millis = Annotated[float, Field(gt=0)]


class WorkloadEntry(BaseModel):
    """One variant of a ``[workloads.NAME]`` entry. Strict: a string is no number and true is no count."""

    model_config = ConfigDict(extra="forbid", strict=True)

    num_requests: Count  # conversations, for kind "conversation"
    concurrency: Optional[Count]
    prompt_len: Count = 128
    output_len: Count = 128
    request_rate: Rate = math.inf  # "inf" reads as inf
    kind: Literal[KINDS] = "random"  # type: ignore[valid-type]
    prefix_len: Annotated[int, Field(ge=0)] = 0
    num_prefixes: Count = 1
    warmup_requests: Annotated[int, Field(ge=0)] = 2
    endpoint: Literal[ENDPOINTS] = "completions"  # type: ignore[valid-type]
    prompt_dist: Optional[Mapping[str, Any]] = None  # checked by lengths.LengthDist.parse, with its hints
    output_dist: Optional[Mapping[str, Any]] = None
    dataset: str = ""
    dataset_format: Optional[Literal["prompt", "chat", "sharegpt"]] = None
    ignore_eos: bool = True
    temperature: Annotated[float, Field(ge=0)] = 0.0
    top_p: Optional[Annotated[float, Field(gt=0, le=1)]] = None  # a probability mass: (0, 1]
    sampling_seed: Optional[int] = None
    burstiness: Annotated[float, Field(gt=0)] = 1.0  # the gamma shape of the gaps
    turns: Count = 1
    think_time_s: Annotated[float, Field(ge=0)] = 0.0
    rates: tuple[Rate, ...] = ()  # a TOML array
    slo_ttft_ms: Optional[Millis] = None
    slo_tpot_ms: Optional[Millis] = None
    capacity_steps: Annotated[int, Field(ge=0)] = 3
    rate_seconds: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = 30.0  # workload.RATE_SECONDS
    deadline_s: Optional[Annotated[float, Field(gt=0)]] = None
    max_schedule_lag_ms: Millis = 100.0
    max_queue_ms: Millis = 100.0
    client_workers: Optional[Count] = None
    client_hosts: Literal[CLIENT_HOSTS] = "local"  # type: ignore[valid-type]
    max_client_ttft_error_ms: Millis = 25.0
    trace_format: Optional[Literal[TRACE_FORMATS]] = None  # type: ignore[valid-type]
    time_scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0  # 0.5: the trace twice as fast
    trace_start: Annotated[int, Field(ge=0)] = 0
    block_tokens: Count = 512  # trace.MOONCAKE_BLOCK_TOKENS
    trace_block_tokens: Count = 512

    @field_validator("request_rate", mode="before")
    @classmethod
    def _inf(cls, v: Any) -> Any:
        return math.inf if v == "inf" else v

    @field_validator("rates", mode="before")
    @classmethod
    def _array(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("rates", mode="after")
    @classmethod
    def _finite(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(r) for r in v):
            raise ValueError("a sweep's rates must be finite numbers of requests per second")
        return v


def entry_problems(entry: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """Every problem of one entry, as "field = value: what is wrong" lines, and the fields they are on."""
    try:
        WorkloadEntry.model_validate(dict(entry))
    except ValidationError as e:
        return [describe(err) for err in e.errors()], {str(err["loc"][0]) for err in e.errors() if err["loc"]}
    return [], set()


def describe(err: Any) -> str:
    """A pydantic error in the table's words: the key, the value given, and what it must be instead."""
    key = ".".join(str(x) for x in err["loc"] if isinstance(x, str)) or "?"  # rates[1] is "rates"
    if err["type"] == "extra_forbidden":
        return f"unknown field {key!r}: remove it or fix its spelling"
    if err["type"] == "missing":
        return f"{key} is required: add {key} = ..."
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key} = {value!r}: {msg[0].lower()}{msg[1:]}"

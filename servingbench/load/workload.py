"""A workload: what requests to send and how, as the table's ``[workloads]`` entries declare it.

The same entry means the same thing on any hardware; its requests come from ``load/datasets.py`` with a seed the
session derives, and its load shape goes to the generator.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from servingbench.load.datasets import RequestSpec, random_token_prompts, shared_prefix_prompts
from servingbench.load.generator import LoadShape


class ConfigError(ValueError):
    """A config or workload entry that cannot be used; the message names the entry and the fix."""


@dataclass(frozen=True)
class Workload:
    name: str
    num_requests: int
    concurrency: int | None
    prompt_len: int
    output_len: int
    request_rate: float = math.inf
    kind: str = "random"  # "random" | "shared-prefix"
    prefix_len: int = 0
    num_prefixes: int = 1
    warmup_requests: int = 2
    endpoint: str = "completions"

    def specs(self, vocab_size: int, seed: int) -> list[RequestSpec]:
        if self.kind == "shared-prefix":
            return shared_prefix_prompts(self.num_requests, self.prefix_len, self.prompt_len - self.prefix_len,
                                         self.output_len, vocab_size, seed, self.num_prefixes)
        return random_token_prompts(self.num_requests, self.prompt_len, self.output_len, vocab_size, seed)

    def warmup_specs(self, vocab_size: int, seed: int) -> list[RequestSpec]:
        if not self.warmup_requests:
            return []
        return random_token_prompts(self.warmup_requests, self.prompt_len, min(self.output_len, 8), vocab_size,
                                    seed + 1_000_003)

    def shape(self, seed: int, timeout_s: float) -> LoadShape:
        return LoadShape(concurrency=self.concurrency, request_rate=self.request_rate, timeout_s=timeout_s,
                         seed=seed, endpoint=self.endpoint)

    def replace(self, **changes: Any) -> "Workload":
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        rate = "" if math.isinf(self.request_rate) else f"-rate{self.request_rate:g}"
        conc = f"c{self.concurrency}" if self.concurrency else "cinf"
        return f"{self.name}-n{self.num_requests}-{conc}{rate}-p{self.prompt_len}-o{self.output_len}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["request_rate"] = None if math.isinf(self.request_rate) else self.request_rate
        return d


def workload_from(name: str, entry: Mapping[str, Any]) -> Workload:
    fields = {f.name for f in dataclasses.fields(Workload)}
    unknown = set(entry) - fields
    if unknown:
        raise ConfigError(f"workload {name!r}: unknown field(s) {sorted(unknown)}; known: {sorted(fields - {'name'})}")
    try:
        return Workload(name=name, **entry)
    except TypeError as e:
        raise ConfigError(f"workload {name!r}: {e}") from None


def single_stream(workload: Workload) -> Workload:
    """The same requests one at a time: the denominator of batch efficiency."""
    return workload.replace(concurrency=1, num_requests=min(8, workload.num_requests), request_rate=float("inf"))



"""From names to runnable things: the run's profile, named server configs and workloads.

A named config ("vllm", "hf", "vllm-block64", ...) holds only what differs from the engine's defaults; what
depends on the hardware and model (model path, dtype, context length, load format, memory settings) comes from
the ``RunProfile``. So the same table entry means the same thing on the CPU and on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .datasets import RequestSpec, random_token_prompts, shared_prefix_prompts
from .hardware import Hardware
from .load import LoadShape
from .profiles import ModelProfile
from .server import HFConfig, ServerConfig, VLLMConfig
from .tensor_parallel import NO_MULTICAST_ENV

ENGINES: dict[str, type[ServerConfig]] = {"vllm": VLLMConfig, "hf": HFConfig}
CPU_KV_CACHE_GIB = 2  # VLLM_CPU_KVCACHE_SPACE: 65,536 tokens of the CPU profile's model, 64 full-length sequences
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default, stated so that it is recorded with every result


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


@dataclass(frozen=True)
class RunProfile:
    """Everything a run's configs inherit: the hardware, the model and where it lives."""

    hardware: Hardware
    model: ModelProfile
    model_path: str
    tensor_parallel_size: int = 1

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.get("vocab_size", 32000))

    def server_config(self, engine: str, **overrides: Any) -> ServerConfig:
        """The engine's config for this run's model and hardware, with ``overrides`` applied."""
        if engine not in ENGINES:
            raise ConfigError(f"unknown engine {engine!r}: use one of {sorted(ENGINES)}")
        gpu = self.hardware.gpu
        base: dict[str, Any] = {
            "model": self.model_path, "served_model_name": self.model.name,
            "dtype": self.model.dtype if self.model.kind != "checkpoint" else "auto",
            "max_model_len": self.model.max_model_len, "load_format": self.model.load_format,
        }
        if engine == "vllm":
            base["tensor_parallel_size"] = self.tensor_parallel_size
            if gpu:
                base["gpu_memory_utilization"] = GPU_MEMORY_UTILIZATION
            else:
                base["env"] = (("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB)),)
        else:
            base["device"] = "cuda" if gpu else "cpu"
        cls = ENGINES[engine]
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ConfigError(f"{engine} config: unknown field(s) {sorted(unknown)}; known: {sorted(fields)}")
        merged = {**base, **overrides}
        if "extra_args" in merged:
            merged["extra_args"] = tuple(merged["extra_args"])
        if "env" in overrides:
            merged["env"] = tuple(dict(base.get("env", ()), **dict(overrides["env"])).items())
        if engine == "vllm" and gpu and merged["tensor_parallel_size"] > 1:
            merged["env"] = tuple({**dict(NO_MULTICAST_ENV), **dict(merged.get("env", ()))}.items())
        return cls(**merged)

    def named_config(self, name: str, configs: Mapping[str, Mapping[str, Any]]) -> ServerConfig:
        if name not in configs:
            raise ConfigError(f"unknown config {name!r}: define it under [configs.{name}] in the expectations "
                              f"table (known: {', '.join(sorted(configs))})")
        entry = dict(configs[name])
        engine = entry.pop("engine", None)
        if engine is None:
            raise ConfigError(f"config {name!r} has no engine; add engine = \"vllm\" or \"hf\"")
        return self.server_config(engine, **entry)

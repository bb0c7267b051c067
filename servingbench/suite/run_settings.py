"""From names to runnable things: the run's profile, named server configs and workloads.

A named config ("vllm", "hf", "vllm-block64", ...) holds only what differs from the engine's defaults; what
depends on the hardware and model (model path, dtype, context length, load format, memory settings) comes from
the ``RunSettings``. So the same table entry means the same thing on the CPU and on a GPU.

A checkpoint's dtype is resolved once, here, for the run's hardware (``models.serving_dtype``: vLLM's rule for
``auto``, so an fp32 checkpoint is served in bfloat16 on an Ampere+ GPU or a CPU, float16 on older GPUs), and
both engines receive that concrete dtype: "auto" would let vLLM downcast while the HF engine stays in fp32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from servingbench.errors import ConfigError
from servingbench.measure.environment import Hardware
from servingbench.servers.models import ModelSpec, platform_dtypes, serving_dtype
from servingbench.servers.engines import ENGINES
from servingbench.servers.process import ServerConfig
from servingbench.servers.vllm import NO_MULTICAST_ENV, VLLMConfig

CPU_KV_CACHE_GIB = 2  # VLLM_CPU_KVCACHE_SPACE: 65,536 tokens of the CPU profile's model, 64 full-length sequences
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default, stated so that it is recorded with every result


@dataclass(frozen=True)
class RunSettings:
    """Everything a run's configs inherit: the hardware, the model and where it lives.

    For a checkpoint, ``model.dtype`` becomes the dtype it is served in on this hardware (``model.checkpoint_dtype``
    keeps config.json's); built-in models keep their profile's dtype."""

    hardware: Hardware
    model: ModelSpec
    model_path: str
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        m = self.model
        if m.kind == "checkpoint":
            served = serving_dtype(m.checkpoint_dtype or m.dtype, m.config.get("model_type"),
                                   platform_dtypes(self.hardware.gpu, self.hardware.gpu_name))
            object.__setattr__(self, "model", dataclasses.replace(m, dtype=served,
                                                                  checkpoint_dtype=m.checkpoint_dtype or m.dtype))

    def provenance(self) -> dict[str, Any]:
        """What a figure was measured on, as every result file records it (measurements, studies, calibration)."""
        from servingbench.measure import telemetry
        from servingbench.measure.environment import software_versions

        m = self.model
        return {"hardware": self.hardware.key, "hardware_identity": self.hardware.to_dict(), "model": m.name,
                "model_spec": {"name": m.name, "dtype": m.dtype, "num_parameters": m.num_parameters,
                               "max_model_len": m.max_model_len, "checkpoint_dtype": m.checkpoint_dtype,
                               "hub_id": m.hub_id},
                "tensor_parallel_size": self.tensor_parallel_size, "versions": software_versions(),
                "gpus": telemetry.gpu_info() if self.hardware.gpu else []}

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
            "dtype": self.model.dtype,  # concrete for every kind (a checkpoint's: resolved in __post_init__)
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
            if not gpu:  # the compute threads vLLM's CPU build uses here, so that the baseline is not handicapped
                base["threads"] = self.hardware.engine_threads
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

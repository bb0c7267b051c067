"""vLLM's OpenAI-compatible server: its config, the environment it starts with, and what its /metrics say.

The multicast variables live here because every multi-GPU vLLM process this suite starts (servers and offline
runs) must start with them; the /metrics readers because the session, the studies and the fidelity check all
read the same counters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from servingbench.measure import telemetry
from servingbench.servers.process import ServerConfig

# Every multi-GPU server starts with NVLink multicast (NVLS) off, in NCCL, PyTorch's symmetric memory, NVSHMEM and
# vLLM's symmetric-memory all-reduce: on a shared host, a program that uses it can put every GPU of the host out of
# service (the lent H200 hosts require these). A config entry's own `env` can set them back on owned hardware.
NO_MULTICAST_ENV = (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                    ("NVSHMEM_DISABLE_NVLS", "1"), ("VLLM_ALLREDUCE_USE_SYMM_MEM", "0"))


@dataclass(frozen=True)
class VLLMConfig(ServerConfig):
    gpu_memory_utilization: float | None = None
    block_size: int | None = None
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool | None = None  # None: the engine's default
    tensor_parallel_size: int = 1
    load_format: str = "auto"  # "dummy": random weights of the model's shape
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    engine: ClassVar[str] = "vllm"
    needs: ClassVar[tuple[str, str] | None] = ("the vLLM engine", "vllm")

    def command(self, host: str, port: int) -> list[str]:
        args = [self.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--host", host, "--port", str(port), *self._common_args(),
                "--kv-cache-dtype", self.kv_cache_dtype, "--load-format", self.load_format,
                "--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.block_size is not None:
            args += ["--block-size", str(self.block_size)]
        if self.enable_prefix_caching is not None:
            args.append("--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching")
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.max_num_seqs:
            args += ["--max-num-seqs", str(self.max_num_seqs)]
        return args + list(self.extra_args)


@dataclass(frozen=True)
class PrefixCounters:
    queries: float  # prompt tokens looked up in the prefix cache
    hits: float  # of which found

    def __sub__(self, earlier: "PrefixCounters") -> "PrefixCounters":
        q, h = self.queries - earlier.queries, self.hits - earlier.hits
        if q < 0 or h < 0:
            raise ValueError(f"prefix-cache counters went backwards ({earlier} -> {self}): the server restarted "
                             "between the snapshots; measure again")
        return PrefixCounters(q, h)

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.queries if self.queries else None


def prefix_counters(samples: list[tuple[str, dict[str, str], float]]) -> PrefixCounters:
    """vLLM's cumulative ``prefix_cache_queries`` and ``prefix_cache_hits`` counters (token counts)."""
    q, h = telemetry.metric_sum(samples, "vllm:prefix_cache_queries"), telemetry.metric_sum(samples, "vllm:prefix_cache_hits")
    if q is None or h is None:
        raise ValueError("the server's /metrics has no vllm:prefix_cache_queries / vllm:prefix_cache_hits counters")
    return PrefixCounters(q, h)




@dataclass(frozen=True)
class SpecCounters:
    """vLLM's cumulative speculative-decoding counters: drafts proposed, their tokens, and the tokens accepted."""

    drafts: float
    draft_tokens: float
    accepted_tokens: float

    def __sub__(self, earlier: "SpecCounters") -> "SpecCounters":
        d = SpecCounters(self.drafts - earlier.drafts, self.draft_tokens - earlier.draft_tokens,
                         self.accepted_tokens - earlier.accepted_tokens)
        if min(d.drafts, d.draft_tokens, d.accepted_tokens) < 0:
            raise ValueError(f"speculative-decoding counters went backwards ({earlier} -> {self}): the server "
                             "restarted between the snapshots; measure again")
        return d

    def figures(self) -> dict[str, float]:
        """Acceptance over a run, as vLLM's own bench reports it: accepted / draft tokens, and the mean accepted
        length 1 + accepted / drafts (the verified token counts too); {} where nothing was drafted."""
        if not self.drafts or not self.draft_tokens:
            return {}
        return {"spec_acceptance_rate": self.accepted_tokens / self.draft_tokens,
                "spec_mean_accepted_length": 1.0 + self.accepted_tokens / self.drafts,
                "spec_drafts": self.drafts, "spec_draft_tokens": self.draft_tokens,
                "spec_accepted_tokens": self.accepted_tokens}


def spec_counters(samples: list[tuple[str, dict[str, str], float]]) -> SpecCounters | None:
    """The speculative-decoding counters; None where the server has none (not a speculative config)."""
    vals = [telemetry.metric_sum(samples, f"vllm:spec_decode_num_{n}")
            for n in ("drafts", "draft_tokens", "accepted_tokens")]
    return None if any(v is None for v in vals) else SpecCounters(*vals)  # type: ignore[arg-type]


def kv_cache_info(url: str, api_key: str | None = None) -> dict[str, Any]:
    """Block size, block count and cumulative prefix-cache hit rate from vLLM's /metrics; {} if unreachable."""
    try:
        samples = telemetry.fetch_metrics(url, api_key)
    except Exception:  # noqa: BLE001 - the measurement is kept; its KV facts are just unknown
        return {}
    info = telemetry.metric_labels(samples, "vllm:cache_config_info")
    out: dict[str, Any] = {k: info[k] for k in ("block_size", "num_gpu_blocks", "cache_dtype",
                                                 "enable_prefix_caching") if k in info}
    if "block_size" in out and "num_gpu_blocks" in out and out["num_gpu_blocks"] not in ("None", ""):
        out["capacity_tokens"] = int(out["block_size"]) * int(out["num_gpu_blocks"])
    try:
        counters = prefix_counters(samples)
    except ValueError:
        return out
    if counters.hit_rate is not None:
        out["prefix_cache_hit_rate_cumulative"] = counters.hit_rate
    return out

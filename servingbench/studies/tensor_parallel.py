"""Tensor parallelism: which TP sizes this machine can run, the server arguments, and the scaling efficiency.

The GPU count is what a started server would see: ``CUDA_VISIBLE_DEVICES`` (parsed as CUDA does: entries up to
the first invalid one; an empty value hides every GPU) capped by what NVML reports. A TP size is runnable when it
is at most that count and divides the model's attention heads (vLLM shards heads across GPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from servingbench.measure.measurement import measured_rows

TP_SIZES = (1, 2, 4)


@dataclass(frozen=True)
class TPPlan:
    size: int
    runnable: bool
    reason: str | None  # why not, when not runnable

    def to_dict(self) -> dict[str, Any]:
        return {"tensor_parallel_size": self.size, "runnable": self.runnable, "reason": self.reason}


def parse_visible_devices(value: str | None) -> int | None:
    """How many devices ``CUDA_VISIBLE_DEVICES`` lets through; None when unset (no restriction)."""
    if value is None:
        return None
    count = 0
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            break
        if entry.isdigit() or entry.startswith(("GPU-", "MIG-")):
            count += 1
            continue
        break  # CUDA stops at the first invalid entry ("-1" hides everything after it)
    return count


def visible_gpu_count(env: Mapping[str, str] | None = None, nvml_count: int | None = None) -> int:
    """GPUs a server started now would get."""
    env = os.environ if env is None else env
    if nvml_count is None:
        from servingbench.measure.telemetry import gpu_count

        nvml_count = gpu_count()
    allowed = parse_visible_devices(env.get("CUDA_VISIBLE_DEVICES"))
    return nvml_count if allowed is None else min(allowed, nvml_count)


def plan(size: int, gpu_count: int, num_attention_heads: int | None = None,
         num_key_value_heads: int | None = None) -> TPPlan:
    """Whether TP ``size`` can run here, and if not, the reason a skipped test shows."""
    if size < 1:
        raise ValueError(f"tensor parallel size must be >= 1, got {size}")
    if size > gpu_count:
        return TPPlan(size, False, f"tensor parallel size {size} needs {size} GPUs; {gpu_count} visible "
                                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    if num_attention_heads and num_attention_heads % size:
        return TPPlan(size, False, f"the model's {num_attention_heads} attention heads do not divide by tensor "
                                   f"parallel size {size} (vLLM shards heads evenly across GPUs)")
    if num_key_value_heads and num_key_value_heads % size and size % num_key_value_heads:
        return TPPlan(size, False, f"the model's {num_key_value_heads} KV heads neither divide by nor divide tensor "
                                   f"parallel size {size}")
    return TPPlan(size, True, None)


def server_overrides(size: int) -> dict[str, Any]:
    """What a TP config changes in the run's vLLM config (``--tensor-parallel-size N``)."""
    if size < 1:
        raise ValueError(f"tensor parallel size must be >= 1, got {size}")
    return {"tensor_parallel_size": size}


def scaling_efficiency(throughput: Mapping[int, float]) -> dict[int, float]:
    """Throughput at TP=n over n x throughput at TP=1, for every measured n (1.0 is linear scaling)."""
    if 1 not in throughput:
        raise ValueError(f"scaling efficiency needs the TP=1 throughput; measured sizes: {sorted(throughput)}")
    base = throughput[1]
    if not base > 0:
        raise ValueError(f"TP=1 throughput must be > 0, got {base}")
    return {n: t / (n * base) for n, t in sorted(throughput.items())}


def tp_findings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = {r["tensor_parallel_size"]: r["output_throughput"] for r in measured_rows(rows)}
    eff = scaling_efficiency(done) if 1 in done else {}
    return {"scaling_efficiency": {str(n): e for n, e in eff.items()},
            "definition": "output throughput at TP=n / (n x output throughput at TP=1)",
            "skipped": {str(r["tensor_parallel_size"]): r["reason"] for r in rows if r.get("status") == "skipped"}}

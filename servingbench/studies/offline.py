"""Offline throughput, the lab's Parts 1 and 3: vLLM's ``LLM.generate`` against the HF engine's static batches.

Both engines get the same prompts (random token ids of exactly ``input_len``), the same output length (EOS
ignored) and greedy decoding, as ``vllm bench throughput --backend vllm`` and ``--backend hf`` do. Each engine
runs in its own subprocess (``python -m servingbench.studies.offline``): vLLM spawns engine processes, so its entry needs
an ``if __name__ == "__main__":`` guard, and one process per engine makes its peak memory its own. The parent
samples the subprocess tree's resident memory (and GPU memory) with the same sampler as the serving tests.

Throughput follows ``vllm bench throughput``: requests/s, total tokens/s (prompt + output) and output tokens/s,
over the wall-clock time of the generate calls only (engine start-up and warm-up are timed separately).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from servingbench.extras import require
from servingbench.measure import telemetry
from servingbench.servers.process import die_with_parent
from servingbench.servers.vllm import NO_MULTICAST_ENV

ENGINES = ("vllm", "hf")


class OfflineError(RuntimeError):
    """The offline run failed; the message names the engine, the cause and the log."""


@dataclass(frozen=True)
class OfflineSpec:
    """One offline run: which engine, which model, which prompts."""

    engine: str  # "vllm" | "hf"
    model: str
    dtype: str
    num_prompts: int
    input_len: int
    output_len: int
    vocab_size: int
    seed: int = 0
    max_model_len: int | None = None
    load_format: str = "auto"
    device: str = "cpu"  # "cpu" | "cuda"
    block_size: int | None = None  # vLLM only; None: the engine's default
    kv_cache_space_gib: int | None = None  # vLLM on CPU: VLLM_CPU_KVCACHE_SPACE
    gpu_memory_utilization: float | None = None  # vLLM on a GPU
    tensor_parallel_size: int = 1
    hf_max_batch_size: int = 8  # HF only: static batch size (vllm bench throughput --hf-max-batch-size)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"offline engine must be one of {ENGINES}, got {self.engine!r}")
        for name in ("num_prompts", "input_len", "output_len", "hf_max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"offline {name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len and self.input_len + self.output_len > self.max_model_len:
            raise ValueError(f"input_len + output_len = {self.input_len + self.output_len} exceeds max_model_len "
                             f"{self.max_model_len}: shorten the prompts or the outputs")

    @property
    def label(self) -> str:
        block = f"-block{self.block_size}" if self.block_size else ""
        batch = f"-batch{self.hf_max_batch_size}" if self.engine == "hf" else ""
        return f"{self.engine}{block}{batch}-n{self.num_prompts}-p{self.input_len}-o{self.output_len}"


@dataclass
class OfflineResult:
    """What one offline run measured (written by the subprocess, completed with memory by the parent)."""

    engine: str
    label: str
    num_prompts: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float  # the generate calls only
    init_s: float  # engine construction and warm-up
    block_size: int | None = None
    kv_capacity_tokens: int | None = None
    peak_rss_gib: float = 0.0  # the subprocess tree, sampled by the parent
    peak_gpu_memory_gib: float = 0.0
    versions: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.num_prompts / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "requests_per_s": self.requests_per_s,
                "output_tokens_per_s": self.output_tokens_per_s, "total_tokens_per_s": self.total_tokens_per_s}


def offline_env(spec: OfflineSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The subprocess's environment: the CPU KV space, and NVLink multicast off for TP > 1 (as for servers)."""
    env = dict(os.environ if base is None else base)
    if spec.engine == "vllm" and spec.kv_cache_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.kv_cache_space_gib)
    if spec.engine == "vllm" and spec.tensor_parallel_size > 1:
        env.update(NO_MULTICAST_ENV)
    return env


def run_offline(spec: OfflineSpec, log_dir: Path, timeout_s: float = 900.0) -> OfflineResult:
    """Run ``spec`` in a subprocess and return its figures; raises OfflineError with the log's tail on failure,
    and MissingExtra (one line) before starting it when the engine is not installed here."""
    require(f"the offline study ({spec.engine})", "vllm" if spec.engine == "vllm" else "hf")
    log_dir.mkdir(parents=True, exist_ok=True)
    out = log_dir / f"offline-{spec.label}.json"
    log = log_dir / f"offline-{spec.label}.log"
    out.unlink(missing_ok=True)
    env = offline_env(spec)
    cmd = [sys.executable, "-m", "servingbench.studies.offline", "--spec", json.dumps(dataclasses.asdict(spec)),
           "--out", str(out)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(die_with_parent(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:  # the GPUs this run computes on, not other tenants' (NVML ignores CUDA_VISIBLE_DEVICES)
            gpus = (telemetry.server_gpu_indices(env, spec.tensor_parallel_size if spec.engine == "vllm" else 1)
                    if spec.device == "cuda" else [])
        except telemetry.GpuSelectionError:
            gpus = []  # a MIG slice: its GPU peak is left out (0.0), as on a CPU
        sampler = telemetry.Sampler(proc.pid, gpus=gpus)
        try:
            with sampler:
                code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise OfflineError(f"offline {spec.label} did not finish within {timeout_s:.0f} s; log: {log}") from None
        except BaseException:
            _kill_group(proc)
            raise
    if code != 0 or not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise OfflineError(f"offline {spec.label} exited with code {code}; log: {log}\n{tail}")
    result = OfflineResult(**json.loads(out.read_text()))
    summary = sampler.summary()
    result.peak_rss_gib = summary.rss_peak_gib
    result.peak_gpu_memory_gib = max(summary.gpu_memory_used_peak_gib, default=0.0)
    return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


# ---- the subprocess side ----------------------------------------------------------------------------------------

def _prompts(spec: OfflineSpec) -> list[list[int]]:
    from servingbench.load.synthetic import random_token_prompts

    specs = random_token_prompts(spec.num_prompts, spec.input_len, spec.output_len, spec.vocab_size, spec.seed)
    return [list(s.prompt) for s in specs]  # type: ignore[arg-type]


def _run_vllm(spec: OfflineSpec) -> OfflineResult:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = {"model": spec.model, "dtype": spec.dtype, "load_format": spec.load_format,
                              "tensor_parallel_size": spec.tensor_parallel_size, "seed": spec.seed}
    if spec.max_model_len:
        kwargs["max_model_len"] = spec.max_model_len
    if spec.block_size:
        kwargs["block_size"] = spec.block_size
    if spec.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = spec.gpu_memory_utilization
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    init_s = time.perf_counter() - t0
    prompts = [TokensPrompt(prompt_token_ids=p) for p in _prompts(spec)]
    params = SamplingParams(temperature=0.0, max_tokens=spec.output_len, ignore_eos=True)
    t1 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t1
    cache = llm.llm_engine.vllm_config.cache_config
    capacity = getattr(cache, "kv_cache_size_tokens", None)
    if capacity is None and cache.num_gpu_blocks:
        capacity = int(cache.num_gpu_blocks) * int(cache.block_size)
    return OfflineResult(
        engine="vllm", label=spec.label, num_prompts=len(outputs),
        prompt_tokens=sum(len(o.prompt_token_ids or []) for o in outputs),
        output_tokens=sum(len(o.outputs[0].token_ids) for o in outputs), elapsed_s=elapsed, init_s=init_s,
        block_size=int(cache.block_size), kv_capacity_tokens=capacity)


def _run_hf(spec: OfflineSpec) -> OfflineResult:
    from servingbench.servers.hf.engine import HFBaselineServer

    t0 = time.perf_counter()
    engine = HFBaselineServer(spec.model, dtype=spec.dtype, device=spec.device, load_format=spec.load_format,
                              max_model_len=spec.max_model_len)
    prompts = _prompts(spec)
    engine.generate([prompts[0][:8]], 2, ignore_eos=True)  # warm-up: first-call allocations are not throughput
    init_s = time.perf_counter() - t0
    prompt_tokens = output_tokens = 0
    t1 = time.perf_counter()
    for i in range(0, len(prompts), spec.hf_max_batch_size):
        for g in engine.generate(prompts[i:i + spec.hf_max_batch_size], spec.output_len, ignore_eos=True):
            prompt_tokens += g.prompt_tokens
            output_tokens += g.completion_tokens
    elapsed = time.perf_counter() - t1
    return OfflineResult(engine="hf", label=spec.label, num_prompts=len(prompts), prompt_tokens=prompt_tokens,
                         output_tokens=output_tokens, elapsed_s=elapsed, init_s=init_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servingbench.studies.offline",
                                     description="One offline throughput run (vLLM LLM.generate or HF generate).")
    parser.add_argument("--spec", required=True, help="OfflineSpec as JSON")
    parser.add_argument("--out", required=True, help="where to write the OfflineResult JSON")
    args = parser.parse_args(argv)
    spec = OfflineSpec(**json.loads(args.spec))
    result = _run_vllm(spec) if spec.engine == "vllm" else _run_hf(spec)
    from servingbench.measure.files import atomic_write_json
    from servingbench.measure.environment import software_versions

    result.versions = software_versions()
    atomic_write_json(args.out, dataclasses.asdict(result))
    return 0


if __name__ == "__main__":  # vLLM spawns engine processes: the entry must be guarded
    sys.exit(main())

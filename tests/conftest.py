"""Shared fixtures: the generated CPU model, and one HF baseline server on it for the whole session."""

from __future__ import annotations

from typing import Iterator

import pytest

from servingbench.profiles import get_profile, materialize
from servingbench.server import HFConfig, ServerProcess


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The seeded 36M Llama of the CPU profile, built on first use and cached (no download)."""
    return materialize(get_profile("cpu-llama-36m"))


@pytest.fixture(scope="session")
def hf_server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One HF baseline server (one request at a time), served as ``cpu-llama-36m``, shared by the session."""
    config = HFConfig(model=model_dir, served_model_name="cpu-llama-36m", dtype="float32", max_model_len=1024)
    server = ServerProcess(config, log_dir=tmp_path_factory.mktemp("logs"), startup_timeout=180).start()
    try:
        yield server
    finally:
        server.stop()

"""Shared fixtures: the generated CPU model, one HF server on it for the whole session, and a user's
project on disk for tests that run pytest the way a user does (in a subprocess, with the plugin registered)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from servingbench.servers.models import get_model, materialize
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.process import ServerProcess


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The seeded 36M Llama of the CPU profile, built on first use and cached (no download)."""
    return materialize(get_model("cpu-llama-36m"))


@pytest.fixture(scope="session")
def hf_server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One HF server (one request at a time), served as ``cpu-llama-36m``, shared by the session."""
    config = HFConfig(model=model_dir, served_model_name="cpu-llama-36m", dtype="float32", max_model_len=1024)
    server = ServerProcess(config, log_dir=tmp_path_factory.mktemp("logs"), startup_timeout=180).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def user_project(tmp_path: Path) -> Callable[[str], Path]:
    """Writes a user project with no conftest (the plugin loads from its entry point) and one test module of the given
    source, under ``tmp_path/proj``; returns its folder."""
    return lambda test_source: write_user_project(tmp_path / "proj", test_source)


def write_user_project(root: Path, test_source: str) -> Path:
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    (root / "test_inner.py").write_text(test_source)
    return root




@pytest.fixture(scope="session")
def table_project() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``table_project(root, table, *pytest_args, timeout=)``: see ``run_table``."""
    return run_table


def run_table(root: Path, table: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """A user's project that is only an expectations table, no test file (the plugin collects the table, one test
    per bound), run as a user runs it (its own pytest, the plugin from its entry point), with its results under
    ``root / "results"``."""
    (root / "perf").mkdir(parents=True, exist_ok=True)
    (root / "perf" / "expected_performance.toml").write_text(table)
    (root / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run([sys.executable, "-m", "pytest", "perf", "-p", "no:cacheprovider", "-q", "-rA",
                           "--results-dir", str(root / "results"), *args], cwd=root, capture_output=True,
                          text=True, timeout=timeout)

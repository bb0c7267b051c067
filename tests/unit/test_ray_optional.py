"""Ray is optional: nothing imports it unless a run asks for it, and each way of not having it is one line
that names the fix (the extra, the address). No cluster here: tests/integration/test_ray_workers.py has one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servingbench.errors import ConfigError
from servingbench.load import ray_workers
from servingbench.load.workload import Workload
from servingbench.load.workload_schema import entry_problems


def test_nothing_imports_ray_unless_asked() -> None:
    code = ("import sys, servingbench.plugin, servingbench.suite.bench, servingbench.load.ray_workers, "
            "servingbench.suite.selftest; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_a_missing_ray_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray gives: ImportError
    with pytest.raises(ray_workers.RayUnavailable) as e:
        ray_workers.RayHosts("127.0.0.1:6379")
    assert "\n" not in str(e.value) and "pip install 'servingbench[ray]'" in str(e.value)
    assert isinstance(e.value, ConfigError)  # fails the run in every mode, never a skip


def test_an_unreachable_address_is_one_line_naming_it_at_once() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ray_workers.RayUnavailable) as e:
        ray_workers.probe(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < ray_workers.PROBE_TIMEOUT_S + 1  # ray.init itself would retry for minutes
    assert f"Ray is not reachable at 127.0.0.1:{port}" in str(e.value) and "\n" not in str(e.value)


def test_no_address_and_no_local_cluster_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_workers.tempfile, "gettempdir", lambda: str(tmp_path))
    with pytest.raises(ray_workers.RayUnavailable, match="--ray-address"):
        ray_workers.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_workers.resolve_address("auto") == "10.0.0.5:6379"
    assert ray_workers.resolve_address("10.0.0.9:6379") == "10.0.0.9:6379"


def test_client_hosts_is_checked_by_the_schema_and_the_workload() -> None:
    assert entry_problems({"num_requests": 4, "concurrency": 2, "client_hosts": "ray"}) == ([], set())
    problems, fields = entry_problems({"num_requests": 4, "concurrency": 2, "client_hosts": "rays"})
    assert fields == {"client_hosts"} and "client_hosts = 'rays'" in problems[0]
    plain = Workload.of("w", 4, 2, prompt_len=8, output_len=4)
    assert plain.replace(client_hosts="ray").label != plain.label
    with pytest.raises(ConfigError, match="client_hosts 'cloud'"):
        Workload.of("w", 4, 2, prompt_len=8, output_len=4, client_hosts="cloud")
    with pytest.raises(ConfigError, match='does not apply to kind "conversation"'):
        Workload.of("w", 4, 2, prompt_len=8, output_len=4, kind="conversation", turns=2, client_hosts="ray")


def test_joining_an_unreachable_cluster_names_the_address() -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'servingbench[ray]'")
    if ray.is_initialized():
        pytest.skip("this process already joined a cluster")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ray_workers.RayUnavailable, match=f"^Ray is not reachable at 127.0.0.1:{port} "):
        ray_workers.RayHosts(f"127.0.0.1:{port}")
    assert not ray.is_initialized()

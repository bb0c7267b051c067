"""Server faults the happy path never shows: a port taken by another process between ``free_port`` and the
server's bind, a server that outlives SIGKILL, GPU memory that never comes back after a stop.

The port race is played for real (a stranger answering /health on the port, bound right after the free-port
check); the other two replay what cannot be caused on demand here (an unkillable process, a GPU) by taking away
the kill signals and by replacing the GPU wait and NVML's answers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Iterator

import psutil
import pytest

from servingbench.measure import telemetry
from servingbench.servers import process as server_mod
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.pool import ServerPool, ServerUnavailable
from servingbench.servers.process import (LOCALHOST, ServerConfig, ServerLeakWarning, ServerProcess,
                                          ServerStartError, free_port, tree_listens)

pytestmark = pytest.mark.timeout(300)

# A stand-in server that starts in a blink: answers 200 on /health after ``delay`` seconds.
TINY_SERVER = '''
import sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
host, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
time.sleep(delay)
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer((host, port), Health).serve_forever()
'''


@dataclass(frozen=True)
class TinyConfig(ServerConfig):
    script: str = ""
    delay_s: float = 0.0
    engine: ClassVar[str] = "tiny"

    def command(self, host: str, port: int) -> list[str]:
        return [sys.executable, self.script, host, str(port), str(self.delay_s)]


@pytest.fixture
def tiny(tmp_path: Path) -> TinyConfig:
    script = tmp_path / "tiny_server.py"
    script.write_text(TINY_SERVER)
    return TinyConfig(model="tiny-model", script=str(script))


class Stranger(ThreadingHTTPServer):
    """Another session's server on the port: answers 200 on /health, counts the probes it answered."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.probes = 0
        stranger = self

        class Health(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stranger.probes += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((LOCALHOST, port), Health)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def race(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """``free_port`` hands out a port that a stranger binds right after the free-port check: the race."""
    port = free_port()
    state: dict[str, Any] = {"port": port}
    real_check = server_mod.ensure_port_free

    def check_then_lose_the_race(host: str, p: int) -> None:
        real_check(host, p)
        state["stranger"] = Stranger(p)

    monkeypatch.setattr(server_mod, "free_port", lambda host=LOCALHOST: port)
    monkeypatch.setattr(server_mod, "ensure_port_free", check_then_lose_the_race)
    yield state
    if "stranger" in state:
        state["stranger"].shutdown()
        state["stranger"].server_close()


def assert_names_the_stranger(err: pytest.ExceptionInfo[ServerStartError], port: int) -> None:
    first = str(err.value).splitlines()[0]
    assert f"did not get port {port} on 127.0.0.1" in first, first
    assert f"by pid {os.getpid()}: " in first and "pytest" in first, first  # the holder: pid and command line
    assert "stop that process or run sessions on separate runners" in first, first  # the fix


# ---- 15: the port race --------------------------------------------------------------------------------------

def test_port_taken_after_the_free_port_check_fails_naming_the_holder(model_dir: str, tmp_path: Path,
                                                                       race: dict[str, Any]) -> None:
    """The real HF server loads for seconds; a stranger answers /health meanwhile: not counted as healthy."""
    server = ServerProcess(HFConfig(model=model_dir, served_model_name="cpu-llama-36m", dtype="float32",
                                    max_model_len=1024), tmp_path, startup_timeout=120)
    try:
        with pytest.raises(ServerStartError) as err:
            server.start()
    finally:
        server.stop()
    assert race["stranger"].probes >= 1  # the stranger did answer; its 200 was refused
    assert_names_the_stranger(err, race["port"])
    assert server.proc is None and server not in ServerProcess.live


@pytest.mark.parametrize("tables", ["per-process", "system-only"])
def test_stranger_on_the_port_is_found_from_either_table(tiny: TinyConfig, tmp_path: Path, race: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch, tables: str) -> None:
    """Where our processes' own socket tables cannot be read, the system's table tells whose the socket is."""
    if tables == "system-only":
        monkeypatch.setattr(psutil.Process, "net_connections", _denied)
    server = ServerProcess(TinyConfig(model="tiny-model", script=tiny.script, delay_s=3.0), tmp_path)
    try:
        with pytest.raises(ServerStartError) as err:
            server.start()
    finally:
        server.stop()
    assert_names_the_stranger(err, race["port"])


def test_own_servers_pass_the_listener_check(hf_server: ServerProcess, tiny: TinyConfig, tmp_path: Path) -> None:
    assert hf_server.proc is not None and hf_server.port is not None
    assert tree_listens(hf_server.proc.pid, hf_server.host, hf_server.port) is True
    with ServerProcess(tiny, tmp_path) as server:
        assert server.health()


def test_unreadable_socket_tables_fall_back_to_health(tiny: TinyConfig, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No table readable (a locked-down host): the check cannot tell, so /health decides, as before."""
    monkeypatch.setattr(psutil.Process, "net_connections", _denied)
    monkeypatch.setattr(psutil, "net_connections", lambda kind="inet": _denied(None))
    with ServerProcess(tiny, tmp_path) as server:
        assert server.proc is not None and server.port is not None
        assert server.health() and tree_listens(server.proc.pid, server.host, server.port) is None


def _denied(self: Any, kind: str = "inet") -> list[Any]:
    raise psutil.AccessDenied(pid=getattr(self, "pid", None))


# ---- 16: a server that outlives SIGKILL ---------------------------------------------------------------------

def test_server_that_outlives_sigkill_is_reported(tiny: TinyConfig, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server = ServerProcess(tiny, tmp_path).start()
    assert server.proc is not None
    proc, pid, port = server.proc, server.proc.pid, server.port
    monkeypatch.setattr(server_mod, "KILL_WAIT_S", 0.3)
    monkeypatch.setattr(server_mod.os, "killpg", lambda pgid, sig: None)  # the signals do not take: unkillable
    before = len(server_mod.LEAKED)
    try:
        with pytest.warns(ServerLeakWarning) as caught:
            server.stop(grace=0.3)
    finally:
        monkeypatch.undo()
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(server_mod.LEAKED) == before + 1 and server.leaked == server_mod.LEAKED[-1]
    report = server.leaked
    assert f"pid {pid} " in report and tiny.script in report, report  # which process, its command
    assert f"may still hold port {port} on 127.0.0.1 and its memory" in report, report
    assert str(caught[0].message) == report
    assert server.proc is None and server not in ServerProcess.live


def test_server_that_ends_is_not_reported(tiny: TinyConfig, tmp_path: Path) -> None:
    server = ServerProcess(tiny, tmp_path).start()
    before = len(server_mod.LEAKED)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ServerLeakWarning)
        server.stop()
    assert len(server_mod.LEAKED) == before and server.leaked is None


# ---- 17: GPU memory that does not come back ------------------------------------------------------------------

class Waits:
    """Stands in for the GPU memory wait: passes ``passes`` times, then times out as the real one does."""

    def __init__(self, passes: int = 0) -> None:
        self.calls = 0
        self.passes = passes

    def __call__(self, threshold_gib: float = 2.0, timeout: float = 120.0) -> float:
        self.calls += 1
        if self.calls > self.passes:
            raise TimeoutError(f"GPU memory not released after {timeout:.0f} s (GPU 0: 40.0 GiB); "
                               "another process holds it: see nvidia-smi")
        return 0.0


def fake_nvml(pids: list[int]) -> SimpleNamespace:
    procs = [SimpleNamespace(pid=p, usedGpuMemory=int(40 * telemetry.GIB)) for p in pids]
    return SimpleNamespace(nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
                           nvmlDeviceGetComputeRunningProcesses=lambda h: procs)


@pytest.mark.parametrize("nvml, holder", [
    ("holder", f"held by GPU 0: pid {os.getpid()}, 40.0 GiB: "),
    ("none listed", "NVML lists no compute process holding it"),
    ("no nvml", "NVML is not available"),
])
def test_gpu_memory_held_before_a_start_fails_once_then_at_once(tiny: TinyConfig, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, nvml: str,
                                                                holder: str) -> None:
    waits = Waits()
    monkeypatch.setattr(telemetry, "wait_for_gpu_memory_release", waits)
    answer = {"holder": fake_nvml([os.getpid()]), "none listed": fake_nvml([]), "no nvml": None}[nvml]
    monkeypatch.setattr(telemetry, "_nvml", lambda: answer)
    pool = ServerPool(tmp_path, gpu=True)
    with pytest.raises(ServerStartError) as first:
        pool.get(tiny)
    message = str(first.value)
    assert "GPU memory not released after 120 s" in message and holder in message, message
    if nvml == "holder":
        assert "pytest" in message, message  # the holder's command line
    with pytest.raises(ServerUnavailable) as later:
        pool.get(TinyConfig(model="another-model", script=tiny.script))
    assert str(later.value) == message and waits.calls == 1  # no second wait: it fails at once


def test_gpu_memory_held_after_a_stop_blocks_the_next_configs(tiny: TinyConfig, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait after stopping A times out while B starts: B fails once, naming the holder; C fails at once."""
    waits = Waits(passes=1)  # A's start passes; the wait after A's stop does not
    monkeypatch.setattr(telemetry, "wait_for_gpu_memory_release", waits)
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake_nvml([os.getpid()]))
    pool = ServerPool(tmp_path, gpu=True)
    a = pool.get(tiny)
    assert a.proc is not None
    a_proc = a.proc
    with pytest.raises(ServerStartError) as first:
        pool.get(TinyConfig(model="model-b", script=tiny.script))
    assert a_proc.poll() is not None and pool.current is None  # A was stopped all the same
    assert f"pid {os.getpid()}, 40.0 GiB" in str(first.value)
    with pytest.raises(ServerUnavailable) as later:
        pool.get(TinyConfig(model="model-c", script=tiny.script))
    assert str(later.value) == str(first.value) and waits.calls == 2

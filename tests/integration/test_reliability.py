"""Faults against real servers: a server killed or hung mid-run, servers that cannot start.

Nothing measured may be lost and nothing may hang: a dead server turns its in-flight and later requests into
failures with a reason, the measurement is still written (with the server's log tail), the next config's server
still starts; a server that cannot start fails within seconds of its process exiting, naming the cause.
The HF engine (healthy in ~5 s) stands in wherever the engine does not matter.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from servingbench.servers import process as server_mod
from servingbench.suite.run_settings import RunSettings
from servingbench.load.workload import Workload
from servingbench.load.synthetic import random_token_prompts
from servingbench.measure.environment import detect
from servingbench.load.generator import LoadShape, run_load
from servingbench.servers.models import get_model
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.process import ServerConfig, ServerProcess, ServerStartError
from servingbench.servers.vllm import VLLMConfig
from servingbench.suite.bench import Bench

pytestmark = pytest.mark.timeout(300)

MODEL = "cpu-llama-36m"
VOCAB = 8192
FIGURES: dict[str, float] = {}  # printed at the end of the module (run with -s to see them)


@pytest.fixture(scope="module", autouse=True)
def report_figures() -> Iterator[None]:
    yield
    for name, value in FIGURES.items():
        print(f"[reliability] {name}: {value:.2f}")


def hf_config(model_dir: str, **kw: Any) -> HFConfig:
    return HFConfig(model=model_dir, served_model_name=MODEL, dtype="float32", max_model_len=1024, **kw)


def completion(url: str, max_tokens: int = 2, timeout: float = 60) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": [101, 202, 303], "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def processes_with_port(port: int) -> list[psutil.Process]:
    """Processes whose command line names ``--port PORT``: what a start attempt may have left behind."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--port" in cmd and str(port) in cmd:
            found.append(p)
    return found


# ---- a server killed in the middle of a load run ---------------------------------------------------------

TIMEOUT_S = 60.0


@pytest.fixture
def bench(model_dir: str, tmp_path: Path) -> Iterator[Bench]:
    """A session with two HF configs; its pool's server is stopped whatever the test's outcome."""
    profile = RunSettings(detect(False), get_model(MODEL), model_dir)
    configs = {"hf": {"engine": "hf"}, "hf-batch2": {"engine": "hf", "max_batch_size": 2}}
    session = Bench(profile, tmp_path / "results", configs, request_timeout_s=TIMEOUT_S,
                           startup_timeout_s=120)
    try:
        yield session
    finally:
        session.close()


def test_server_killed_mid_run_loses_nothing_measured(bench: Bench, tmp_path: Path) -> None:
    """SIGKILL of the server's whole group while a measurement runs through ``Bench.measure``."""
    workload = Workload.of("killed", num_requests=40, concurrency=2, prompt_len=16, output_len=16, warmup_requests=0)
    killed: dict[str, Any] = {}

    def killer() -> None:
        """Once the load is flowing (a probe answered, then 3 s more), kill the server's process group."""
        deadline = time.monotonic() + 120
        while bench.pool.current is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if bench.pool.current is None:
            return
        server = bench.pool.current[1]
        completion(server.url)
        time.sleep(3.0)
        assert server.proc is not None
        killed["pid"] = server.proc.pid
        killed["at"] = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t0 = time.monotonic()
    m = bench.measure("hf", workload)
    elapsed = time.monotonic() - t0
    thread.join(timeout=10)
    assert "pid" in killed, "the server was never killed"
    FIGURES["killed run: seconds from kill to end of run"] = time.monotonic() - killed["at"]

    # every request is accounted for: the ones served before the kill, and failures with a reason after it
    assert len(m.records) == 40 and len({r.request_id for r in m.records}) == 40
    assert m.metrics.completed >= 1, "requests served before the kill were lost"
    assert m.metrics.failed >= 1 and m.metrics.completed + m.metrics.failed == 40
    for r in m.records:
        if not r.success:
            assert r.error and r.error.split(":")[0] in ("connection", "stream"), r.error
    assert elapsed < TIMEOUT_S, "the run waited for the request timeout instead of failing fast"
    # the run's measurement is on disk, with the failures counted and the log tail in a warning
    saved = json.loads((tmp_path / "results" / "measurements" / f"{m.key}.json").read_text())
    assert saved["completed"] == m.metrics.completed and saved["failed"] == m.metrics.failed
    assert sum(saved["errors"].values()) == m.metrics.failed
    assert len(saved["records"]) == 40
    warning = next(w for w in saved["warnings"] if "server exited during the run" in w)
    dead_server = bench.pool.current[1] if bench.pool.current else None
    assert dead_server is not None and not dead_server.is_running()
    assert dead_server.log_tail().splitlines()[-1] in warning
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE

    # the session goes on: the next config's server starts and measures cleanly
    nxt = bench.measure("hf-batch2", workload.replace(name="after-kill", num_requests=4))
    assert nxt.metrics.completed == 4 and nxt.metrics.failed == 0
    assert bench.pool.current is not None and bench.pool.current[0].max_batch_size == 2  # type: ignore[attr-defined]


def test_hung_server_requests_time_out_and_the_run_ends(hf_server: ServerProcess) -> None:
    """A frozen server (SIGSTOP): in-flight and later requests time out with a reason; the run ends on time,
    and after the server resumes it serves again."""
    specs = random_token_prompts(6, prompt_len=8, output_len=4, vocab_size=VOCAB, seed=3)
    assert hf_server.proc is not None
    pid = hf_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        result = asyncio.run(run_load(hf_server.url, MODEL, specs, LoadShape(concurrency=3, timeout_s=2.0)))
        elapsed = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    FIGURES["hung server: run of 2 waves x 2 s timeouts, seconds"] = elapsed
    assert all(r.error == "timeout: no complete response within 2 s" for r in result.records), \
        [r.error for r in result.records]
    metrics = result.metrics()
    assert metrics.failed == 6 and metrics.errors == {"timeout": 6}
    assert elapsed < 2 * 2.0 + 5  # two waves of timeouts, not a hang
    body = completion(hf_server.url, max_tokens=3)
    assert body["usage"]["completion_tokens"] == 3 and hf_server.is_running()


# ---- servers that cannot start ---------------------------------------------------------------------------

def _note_exit(server: ServerProcess, exited: list[float]) -> None:
    """Note when the server's process ends (a zombie, or gone), without reaping it: ``start`` must see it."""
    deadline = time.monotonic() + 600
    while server.proc is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc = server.proc
    if proc is None:
        return
    try:
        ps = psutil.Process(proc.pid)
        while time.monotonic() < deadline and ps.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.02)
    except psutil.NoSuchProcess:
        pass
    exited.append(time.monotonic())


def assert_fails_fast(config: ServerConfig, log_dir: Path, needle: str, *, startup_timeout: float = 600.0,
                      port: int | None = None, figure: str) -> str:
    """Start ``config``; it must raise a ServerStartError naming ``needle`` within seconds of the process
    exiting (never after ``startup_timeout``), with the log's tail, and leave no process behind."""
    server = ServerProcess(config, log_dir, startup_timeout=startup_timeout, port=port)
    exited: list[float] = []
    watcher = threading.Thread(target=_note_exit, args=(server, exited), daemon=True)
    watcher.start()
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        server.start()
    raised_at = time.monotonic()
    elapsed = raised_at - t0
    watcher.join(timeout=5)
    message = str(err.value)
    first_line = message.splitlines()[0]
    assert needle in first_line, message[-3000:]
    assert f"log: {server.log_path}" in message and "--- last" in message
    assert exited, "the server process was never seen to exit"
    FIGURES[f"{figure}: seconds to error"] = elapsed
    FIGURES[f"{figure}: seconds from process exit to error"] = raised_at - exited[0]
    assert raised_at - exited[0] < 3.0  # one 0.5 s poll and at most one 2 s health probe
    assert elapsed < startup_timeout / 2
    assert server.port is not None and not processes_with_port(server.port)
    assert server not in ServerProcess.live
    return message


@pytest.mark.parametrize("case, extra, needle", [
    ("unknown-flag", ("--no-such-flag",), "unrecognized arguments: --no-such-flag"),
    ("bad-value", ("--max-batch-size", "0"), "--max-batch-size: must be >= 1, got 0"),
])
def test_hf_bad_argument_fails_fast_naming_it(model_dir: str, tmp_path: Path, case: str,
                                              extra: tuple[str, ...], needle: str) -> None:
    assert_fails_fast(hf_config(model_dir, extra_args=extra), tmp_path, needle, figure=f"hf {case}")


def test_hf_missing_model_directory_fails_fast(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    assert_fails_fast(hf_config(missing), tmp_path, "no-such-model", figure="hf missing model dir")


def test_port_in_use_is_refused_before_starting(model_dir: str, tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = ServerProcess(hf_config(model_dir), tmp_path, port=port)
        t0 = time.monotonic()
        with pytest.raises(ServerStartError, match=f"port {port} on 127.0.0.1 is in use .by pid {os.getpid()}"):
            server.start()
        assert time.monotonic() - t0 < 2.0 and server.proc is None


def test_port_taken_during_start_is_named_from_the_servers_log(model_dir: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the pre-check cannot close: the port is taken after the check; the server's bind fails."""
    monkeypatch.setattr(server_mod, "ensure_port_free", lambda host, port: None)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        assert_fails_fast(hf_config(model_dir), tmp_path, "address already in use", port=port,
                          figure="hf port taken")


def test_server_never_healthy_is_stopped_at_the_startup_limit(model_dir: str, tmp_path: Path) -> None:
    """A start-up limit shorter than the load time: the error says so, and the half-started process is gone."""
    server = ServerProcess(hf_config(model_dir), tmp_path, startup_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="was not healthy after 1 s"):
        server.start()
    assert time.monotonic() - t0 < 1.0 + 2.5 + 25.0  # the limit, one health probe, and the stop's grace
    assert server.port is not None and not processes_with_port(server.port)


@pytest.mark.timeout(420)
def test_vllm_refused_block_size_and_missing_model_fail_naming_the_cause(model_dir: str, tmp_path: Path) -> None:
    """vLLM's CPU backend refuses block size 16 (it needs multiples of 32) only at KV-cache set-up, after
    loading: the error must name that cause, not vLLM's closing 'see root cause above' line."""
    env = (("VLLM_CPU_KVCACHE_SPACE", "1"),)
    refused = VLLMConfig(model=model_dir, served_model_name=MODEL, dtype="float32", max_model_len=1024,
                         block_size=16, enforce_eager=True, env=env)
    assert_fails_fast(refused, tmp_path, "No common block size for 16", figure="vllm block size 16")
    missing = VLLMConfig(model=str(tmp_path / "no-such-model"), served_model_name=MODEL, dtype="float32",
                         max_model_len=1024, env=env)
    assert_fails_fast(missing, tmp_path, "no-such-model", figure="vllm missing model dir")

"""Interrupting pytest must not leave servers behind.

Each test runs a real inner pytest session in a subprocess: a temporary project that loads the plugin the way a
user's does (its entry point, with no conftest) and starts a real HF server, through a fixture
or through ``bench.measure``. Once the server answers ``/health`` the outer test interrupts the session (Ctrl-C
to its process group, SIGTERM as a CI runner sends, ``kill -9``, a failing fixture, a second Ctrl-C during a slow
shutdown) and then reads the process table: the server and every child of it must be gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
INNER_TESTS = textwrap.dedent('''
    import json, os, pathlib, time
    import pytest
    from servingbench.load.workload import Workload
    from servingbench.servers.hf.config import HFConfig
    from servingbench.servers.process import ServerProcess

    STATE = pathlib.Path(os.environ["SB_STATE"])
    CONFIG = HFConfig(model=os.environ["SB_MODEL_DIR"], served_model_name="cpu-llama-36m", dtype="float32",
                      max_model_len=1024)

    def announce(server):
        STATE.write_text(json.dumps({"pid": server.proc.pid, "url": server.url}))

    @pytest.fixture
    def server(tmp_path):
        s = ServerProcess(CONFIG, tmp_path).start()
        yield s
        (STATE.parent / "stopping").touch()
        s.stop()

    @pytest.fixture
    def broken(tmp_path):
        s = ServerProcess(CONFIG, tmp_path).start()
        announce(s)
        time.sleep(1)
        raise RuntimeError("this fixture fails after starting its server and never stops it")

    def test_holds_a_server(server):
        announce(server)
        time.sleep(600)

    def test_measuring(bench):
        announce(bench.pool.get(bench.config("hf")))
        bench.measure("hf", Workload.of("long", num_requests=2000, concurrency=4, prompt_len=16, output_len=64,
                                     warmup_requests=0))

    def test_with_a_broken_fixture(broken):
        pass
''')


@pytest.fixture
def inner_project(user_project: Callable[[str], Path]) -> Path:
    return user_project(INNER_TESTS)


class InnerSession:
    """A real pytest run of one inner test, in its own process group (as a terminal's foreground job)."""

    def __init__(self, proj: Path, test: str, model_dir: str) -> None:
        self.state = proj / "state.json"
        self.output = proj / "pytest-output.txt"
        env = {**os.environ, "SB_STATE": str(self.state), "SB_MODEL_DIR": model_dir, "PYTHONUNBUFFERED": "1"}
        env.pop("PYTEST_ADDOPTS", None)
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", f"test_inner.py::{test}",
               "--expectations", str(REPO / "perf" / "expected_performance.toml"),
               "--results-dir", str(proj / "results")]
        with open(self.output, "wb") as out:
            # Ctrl-C as in a terminal: a runner that started us in the background (SIGINT ignored) must not pass
            # that on, or Python installs no KeyboardInterrupt handler in the inner session.
            self.proc = subprocess.Popen(cmd, cwd=proj, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.family: list[psutil.Process] = []
        self.server_pid = 0

    def wait_for_healthy_server(self, timeout: float = 150.0) -> dict[str, Any]:
        """The server the inner test announced, once it answers /health; records it and its children."""
        deadline = time.monotonic() + timeout
        while not self.state.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"inner pytest ended early ({self.proc.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no server announced in {timeout:.0f} s:\n{self.text()}")
            time.sleep(0.1)
        info = json.loads(self.state.read_text())
        with urllib.request.urlopen(info["url"] + "/health", timeout=10) as resp:
            assert resp.status == 200
        self.server_pid = info["pid"]
        root = psutil.Process(self.server_pid)
        self.family = [root, *root.children(recursive=True)]
        return info

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 90.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"inner pytest did not end within {timeout:.0f} s:\n{self.text()}") from None

    def text(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]

    def leftovers(self) -> list[psutil.Process]:
        """The recorded server processes still running (a zombie has ended: it only awaits its reaper)."""
        alive = []
        for p in self.family:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    def cleanup(self) -> None:
        """Whatever the outcome, leave nothing running: the inner pytest, then any server process left."""
        if self.proc.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(timeout=30)
        for p in self.leftovers():
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def session_factory(inner_project: Path, model_dir: str) -> Iterator[Any]:
    started: list[InnerSession] = []

    def start(test: str) -> InnerSession:
        s = InnerSession(inner_project, test, model_dir)
        started.append(s)
        return s

    yield start
    for s in started:
        s.cleanup()


def assert_all_gone(session: InnerSession, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while session.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [(p.pid, p.name()) for p in session.leftovers()]
    assert not left, f"left running: {left}\n{session.text()}"


@pytest.mark.parametrize("sig, test", [
    (signal.SIGINT, "test_holds_a_server"),  # Ctrl-C in a terminal, while a test sleeps with its server
    (signal.SIGTERM, "test_holds_a_server"),  # a CI runner cancelling the job
    (signal.SIGINT, "test_measuring"),  # Ctrl-C in the middle of a load run (inside asyncio.run)
    (signal.SIGTERM, "test_measuring"),
], ids=["sigint-fixture", "sigterm-fixture", "sigint-measuring", "sigterm-measuring"])
def test_interrupted_session_leaves_no_server(session_factory: Any, sig: int, test: str) -> None:
    session = session_factory(test)
    session.wait_for_healthy_server()
    if test == "test_measuring":
        time.sleep(3.0)  # let the load run get going
    session.signal_group(sig)
    code = session.wait()
    assert code == pytest.ExitCode.INTERRUPTED, session.text()
    assert_all_gone(session)


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")


@LINUX_ONLY
def test_killed_session_leaves_no_server(session_factory: Any) -> None:
    """``kill -9`` of pytest runs no handler at all: the kernel's parent-death signal must end the server."""
    session = session_factory("test_holds_a_server")
    session.wait_for_healthy_server()
    session.proc.kill()  # pytest only, not its group: the server has a session of its own anyway
    assert session.wait() == -signal.SIGKILL
    assert_all_gone(session, within=30.0)


@LINUX_ONLY
def test_only_the_main_thread_ties_a_server_to_its_life() -> None:
    """The parent-death signal follows the forking thread: a server started from a worker thread is not wrapped,
    or it would be stopped when that thread ends."""
    from servingbench.servers.process import die_with_parent

    wrapped = die_with_parent(["/bin/true"])
    assert wrapped[-1] == "/bin/true" and len(wrapped) > 1
    from_thread: list[list[str]] = []
    worker = threading.Thread(target=lambda: from_thread.append(die_with_parent(["/bin/true"])))
    worker.start()
    worker.join()
    assert from_thread == [["/bin/true"]]
    # the launcher itself: runs the command when its parent is the one named, refuses when that one has gone
    ok = subprocess.run(wrapped, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    gone = subprocess.run([*wrapped[:3], "1", "/bin/true"], capture_output=True, text=True)
    assert gone.returncode == 1 and "the starting process has ended" in gone.stderr


def test_failing_fixture_leaves_no_server(session_factory: Any) -> None:
    """A fixture that starts a server and then raises never reaches its own stop: the plugin's net catches it."""
    session = session_factory("test_with_a_broken_fixture")
    session.wait_for_healthy_server()
    code = session.wait()
    assert code == pytest.ExitCode.TESTS_FAILED, session.text()
    assert "this fixture fails" in session.text()
    assert_all_gone(session)


def test_second_ctrl_c_during_a_slow_shutdown_leaves_no_server(session_factory: Any) -> None:
    """A server slow to stop (frozen here, so that its SIGTERM waits) and an impatient user: the second Ctrl-C
    lands inside ``ServerProcess.stop``; the server must still be ended at interpreter exit."""
    session = session_factory("test_holds_a_server")
    session.wait_for_healthy_server()
    os.kill(session.server_pid, signal.SIGSTOP)  # its SIGTERM now stays pending until SIGCONT or SIGKILL
    session.signal_group(signal.SIGINT)
    stopping = session.state.parent / "stopping"
    deadline = time.monotonic() + 60
    while not stopping.exists():  # the fixture's teardown has begun
        assert session.proc.poll() is None and time.monotonic() < deadline, session.text()
        time.sleep(0.05)
    time.sleep(1.0)  # now inside stop(), waiting out the SIGTERM grace period (20 s) of a frozen server
    assert session.proc.poll() is None, session.text()
    session.signal_group(signal.SIGINT)
    session.wait(timeout=60)
    assert_all_gone(session, within=15.0)


# ---- GPU memory release after a stop (no GPU here: the waiting logic, with nvml's answers replayed) --------

def test_wait_for_gpu_memory_release_waits_until_memory_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    from servingbench.measure import telemetry

    gib = telemetry.GIB
    readings = iter([[int(70 * gib), int(0.1 * gib)], [int(30 * gib), 0], [int(1.5 * gib), 0]])
    naps: list[float] = []
    monkeypatch.setattr(telemetry, "gpu_memory_used", lambda: next(readings))
    monkeypatch.setattr(telemetry.time, "sleep", naps.append)
    telemetry.wait_for_gpu_memory_release(threshold_gib=2.0, timeout=60)
    assert len(naps) == 2  # two busy readings, then released


def test_wait_for_gpu_memory_release_names_the_gpu_still_held(monkeypatch: pytest.MonkeyPatch) -> None:
    from servingbench.measure import telemetry

    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(telemetry, "gpu_memory_used", lambda: [0, int(40 * telemetry.GIB)])
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(telemetry.time, "sleep", lambda s: None)
    with pytest.raises(TimeoutError, match=r"after 30 s \(GPU 1: 40\.0 GiB\)"):
        telemetry.wait_for_gpu_memory_release(threshold_gib=2.0, timeout=30)


def test_wait_for_gpu_memory_release_without_a_gpu_returns_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from servingbench.measure import telemetry

    naps: list[float] = []
    monkeypatch.setattr(telemetry, "gpu_memory_used", lambda: [])
    monkeypatch.setattr(telemetry.time, "sleep", naps.append)
    assert telemetry.wait_for_gpu_memory_release(timeout=60) < 1.0 and naps == []

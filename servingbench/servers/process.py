"""Server lifecycle: one small class owns a server's whole life, for vLLM and the HF engine alike.

A config dataclass builds the argument list; ``ServerProcess`` picks a free port on 127.0.0.1, starts the
process in its own process group with its log in the results directory, polls ``/health``, fails at once with
the log's tail if the process exits, fails after a start-up limit otherwise, and on stop ends the whole group
(children included). On a GPU it then waits for the device memory to come back before the next server starts.
A ``/health`` answer counts only once the socket listening on the port is the server's own (another session
on the runner may have taken the port between ``free_port`` and the server's bind), and a server that outlives
SIGKILL is reported (a warning and ``LEAKED``) rather than silently forgotten.
On Linux the server is also told to end when the process that started it dies, however it dies (``kill -9`` of
pytest included), so a killed run cannot leave a server holding its port and memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from servingbench.extras import require
from servingbench.measure import telemetry
from servingbench.measure.http import open_url
from servingbench.servers.logs import LOG_TAIL_LINES, cause_line

LOCALHOST = "127.0.0.1"
# Runs as the server's first image: asks the kernel for SIGTERM when the starting process dies
# (prctl PR_SET_PDEATHSIG = 1; kept across exec), checks that it has not died already, then execs the server.
# A launcher rather than subprocess's preexec_fn, which is unsafe in a process with threads (the samplers).
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
                    "os.getppid() == int(sys.argv[1]) or sys.exit('servingbench: the starting process has ended'); "
                    "os.execvp(sys.argv[2], sys.argv[2:])")
KILL_WAIT_S = 5.0  # how long stop() waits after SIGKILL before it reports the server as leaked
# Servers that outlived SIGKILL in this interpreter, one sentence each: a session reads them to report that a
# later measurement may share the machine with them.
LEAKED: list[str] = []
_log = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server did not become healthy; the message names the cause and ends with the log's tail."""


class ServerLeakWarning(RuntimeWarning):
    """A stopped server's process did not end: it may still hold its port and its (GPU) memory."""


@dataclass(frozen=True)
class ServerConfig:
    """What every engine's server takes. Secrets (the API key) are not part of a config: configs are saved."""

    model: str
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    python: str | None = None  # the interpreter (environment) the server runs in; None: this one. A/B of two vLLMs
    engine: ClassVar[str] = "base"
    # What the engine needs installed in this interpreter: (the feature as the error names it, a key of
    # servingbench.extras.EXTRAS). None: only the base install.
    needs: ClassVar[tuple[str, str] | None] = None

    def command(self, host: str, port: int) -> list[str]:
        raise NotImplementedError

    def check_installed(self) -> None:
        """``MissingExtra`` (one line: the extra and the command) when this engine's packages are not installed
        here, before a server is started that would only die with an ImportError in its log. A config with its
        own ``python`` runs in that environment, which its start-up checks."""
        if self.needs is not None and self.python is None:
            require(*self.needs)

    @property
    def name(self) -> str:
        """The model name clients put in requests."""
        return self.served_model_name or self.model

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, **dataclasses.asdict(self)}

    def _common_args(self) -> list[str]:
        args = ["--dtype", self.dtype]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        if self.max_model_len:
            args += ["--max-model-len", str(self.max_model_len)]
        return args


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ServerStartError(
                f"port {port} on {host} is in use{_port_owner(port, host)}; pick another port (or none, to get a "
                "free one) or stop the process that holds it") from None


def describe_process(pid: int) -> str:
    """A process's command line for an error message, or why it cannot be read (another container's pid)."""
    try:
        proc = psutil.Process(pid)
        try:
            cmd = " ".join(proc.cmdline()) or proc.name()
        except psutil.AccessDenied:
            cmd = f"{proc.name()} (command line not readable)"
    except psutil.NoSuchProcess:
        return "not visible here: ended, or in another container or PID namespace"
    except psutil.Error as e:
        return f"not readable: {type(e).__name__}"
    return cmd if len(cmd) <= 300 else cmd[:297] + "..."


def _listens(conns: list[Any], host: str, port: int) -> bool:
    """Whether one of ``conns`` listens where a client of ``host:port`` connects (the host or a wildcard)."""
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               and c.laddr.ip in (host, "0.0.0.0", "::") for c in conns)


def port_listeners(host: str, port: int) -> list[int | None] | None:
    """The pids listening on ``host:port`` from the system's table (None: another user's socket); None where
    the table cannot be read."""
    try:
        return [c.pid for c in psutil.net_connections(kind="tcp") if _listens([c], host, port)]
    except (psutil.Error, OSError):
        return None


def tree_listens(pid: int, host: str, port: int) -> bool | None:
    """Whether ``pid`` or a descendant listens on ``host:port``; None where that cannot be read.

    Per-process tables first (readable for one's own processes without privileges), then the system's."""
    tree = telemetry.process_tree(pid)
    denied = False
    for p in tree:
        try:
            conns = p.net_connections(kind="tcp") if hasattr(p, "net_connections") else p.connections(kind="tcp")
        except psutil.AccessDenied:
            denied = True
            continue
        except psutil.Error:
            continue
        if _listens(conns, host, port):
            return True
    if not denied:
        return False
    known = [p for p in port_listeners(host, port) or [] if p is not None]
    return any(p in {q.pid for q in tree} for p in known) if known else None


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds no port or memory)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _port_owner(port: int, host: str = LOCALHOST, exclude: frozenset[int] = frozenset()) -> str:
    """`` (by pid N: command line)`` for the process listening on ``port``, or '' where none can be named."""
    for pid in port_listeners(host, port) or []:
        if pid and pid not in exclude:
            return f" (by pid {pid}: {describe_process(pid)})"
    return ""


def die_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so that it gets SIGTERM when this process dies (Linux); elsewhere ``cmd`` as it is.

    The kernel ties the signal to the thread that forked, not the process: from any thread but the main one, a
    server would be stopped when that thread ends, so only the main thread's starts are wrapped."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return cmd
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


class ServerProcess:
    """A started server. Use as a context manager, or call ``start()`` and ``stop()``."""

    live: ClassVar[set["ServerProcess"]] = set()  # stopped at interpreter exit or on a signal

    def __init__(self, config: ServerConfig, log_dir: Path | str, *, host: str = LOCALHOST,
                 port: int | None = None, api_key: str | None = None, startup_timeout: float = 900.0,
                 gpu: bool = False, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.api_key = api_key
        self.startup_timeout = startup_timeout
        self.gpu = gpu
        self.extra_env = env or {}
        self.log_path = Path(log_dir) / f"{config.engine}-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd: list[str] = []
        self.startup_seconds: float | None = None
        self.started_at: float | None = None  # wall clock of the launch: names this server lifetime in saved runs
        self.leaked: str | None = None  # set by stop() when the server outlived SIGKILL: what may be left

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """The environment the server runs with (what its CUDA_VISIBLE_DEVICES lets it compute on)."""
        return {**os.environ, **dict(self.config.env), **self.extra_env}

    def gpu_indices(self) -> list[int]:
        """NVML indices of the GPUs this server computes on (its tensor-parallel size of them); [] for a CPU
        server. Raises telemetry.GpuSelectionError where they cannot be told apart."""
        if not self.gpu:
            return []
        count = int(getattr(self.config, "tensor_parallel_size", 1) or 1)
        return telemetry.server_gpu_indices(self.environment(), count)

    def start(self) -> "ServerProcess":
        self.config.check_installed()
        if self.port is None:
            self.port = free_port(self.host)
        ensure_port_free(self.host, self.port)
        if self.gpu:
            telemetry.wait_for_gpu_memory_release()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        if self.api_key:  # through the environment: never on a command line, in `ps` or in a log
            env["VLLM_API_KEY"] = env["SERVINGBENCH_API_KEY"] = self.api_key
        cmd = self.cmd = self.config.command(self.host, self.port)
        with open(self.log_path, "wb") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            t0, self.started_at = time.monotonic(), time.time()
            self.proc = subprocess.Popen(die_with_parent(cmd), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        ServerProcess.live.add(self)
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        """Poll /health until our own server answers it; fail at once if it exits or a stranger answers."""
        assert self.proc is not None and self.port is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"exited with code {code} during start-up"))
            if self.health():
                ours = tree_listens(self.proc.pid, self.host, self.port)
                if ours is None:  # neither our processes' sockets nor the system's table readable: trust /health
                    return
                foreign = self._foreign_holder(ours)
                if foreign is None:
                    return
                raise ServerStartError(self._failure(foreign))
            if time.monotonic() - t0 > self.startup_timeout:
                raise ServerStartError(self._failure(f"was not healthy after {self.startup_timeout:.0f} s"))
            time.sleep(0.5)

    def _foreign_holder(self, ours: bool) -> str | None:
        """Why the /health answer is not our server's (None: it is): the port was taken after ``free_port``.

        Ours only if our tree listens and no process outside it does (SO_REUSEPORT would share the port)."""
        assert self.proc is not None and self.port is not None
        tree = frozenset(p.pid for p in telemetry.process_tree(self.proc.pid))
        others = [p for p in port_listeners(self.host, self.port) or [] if p not in tree]
        if ours and not [p for p in others if p is not None]:
            return None
        holder = _port_owner(self.port, self.host, exclude=tree) or (
            " (by a process this user cannot see: `ss -ltnp 'sport = :%d'` names it)" % self.port)
        return (f"did not get port {self.port} on {self.host}: it is held{holder}, not by this server (pid "
                f"{self.proc.pid}), which answers /health in its place; it was taken between the free-port check "
                "and the server's bind (another session on this runner?). Measuring it would measure someone "
                "else's server: stop that process or run sessions on separate runners, then rerun")

    def health(self, timeout: float = 2.0) -> bool:
        try:
            with open_url(self.url + "/health", timeout=timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def cause(self) -> str | None:
        """The last line of the log that names an error: what the user needs to read first."""
        return cause_line(self.log_tail(200))

    def _failure(self, what: str) -> str:
        cause = self.cause()
        return (f"{self.config.engine} server for {self.config.model} {what}"
                + (f": {cause}" if cause else "")
                + f"\nlog: {self.log_path}\n--- last {LOG_TAIL_LINES} lines ---\n{self.log_tail()}")

    def stop(self, grace: float = 20.0) -> None:
        """End the server's whole process group and any child that left it; idempotent.

        The server leaves ``live`` only once it is ended: a stop interrupted by a second Ctrl-C leaves it there
        for ``stop_all`` at exit."""
        proc = self.proc
        if proc is None:
            ServerProcess.live.discard(self)
            return
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        alive: list[psutil.Process] = family
        ended = False
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT_S)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for child in family:
                try:
                    child.send_signal(sig)
                except psutil.Error:
                    pass
            try:
                proc.wait(timeout=wait)
                _, alive = psutil.wait_procs(family, timeout=wait)
                if not alive:
                    ended = True
                    break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None
        ServerProcess.live.discard(self)
        if not ended:
            self._report_leak(proc, alive)
        if self.gpu:
            telemetry.wait_for_gpu_memory_release()

    def _report_leak(self, proc: "subprocess.Popen[bytes]", family: list[psutil.Process]) -> None:
        """A server that outlived SIGKILL (stuck in the kernel: D state, a hung driver) is no longer tracked:
        say so loudly, with what it may still hold, instead of letting the next start collide with it."""
        pids = ([proc.pid] if proc.poll() is None else []) + [c.pid for c in family if _alive(c)]
        if not pids:  # it ended just after the last wait: nothing is left
            return
        self.leaked = (f"{self.config.engine} server for {self.config.model} did not end {KILL_WAIT_S:g} s "
                       f"after SIGKILL: pid {', '.join(map(str, pids))} "
                       f"($ {' '.join(self.cmd) or ' '.join(map(str, proc.args))}) may still hold port "
                       f"{self.port} on {self.host} and its memory (GPU memory too); it is no longer tracked: "
                       "check it with `ps -o pid,stat,cmd -p PID` and end it before the next run")
        LEAKED.append(self.leaked)
        _log.warning("%s", self.leaked)
        warnings.warn(self.leaked, ServerLeakWarning, stacklevel=3)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def stop_all(cls) -> None:
        for server in list(cls.live):
            server.stop(grace=5.0)

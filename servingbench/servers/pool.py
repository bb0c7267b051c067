"""The session's servers: each distinct config starts once, and at most one heavy server is alive at a time.

A 7B model leaves no room for two servers on one GPU, so ``ServerPool.get`` stops the running server before it
starts another, and remembers a config that failed to start so that later tests fail at once with the same cause.
GPU memory that does not come back after a stop (another process holds it) blocks every later start alike: the
pool fails once with the holders named and then refuses at once, rather than waiting out the release limit again
before each test.
"""

from __future__ import annotations

from pathlib import Path

from servingbench.measure import telemetry
from servingbench.servers.process import ServerConfig, ServerProcess, ServerStartError, describe_process


class ServerUnavailable(Exception):
    """This config cannot be served in this session (remote mode, or it failed to start); the reason says why."""


def gpu_memory_holders() -> str:
    """The processes NVML says hold GPU memory (pid, memory, command line): who to stop; a sentence saying why
    none can be named otherwise (no NVML, or a driver that lists none, as in a container)."""
    nvml = telemetry._nvml()
    if nvml is None:
        return "NVML is not available to name the processes holding it (see nvidia-smi)"
    found = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(i)):
                used = p.usedGpuMemory
                size = f"{used / telemetry.GIB:.1f} GiB" if isinstance(used, int) else "memory not reported"
                found.append(f"GPU {i}: pid {p.pid}, {size}: {describe_process(p.pid)}")
    except Exception as e:  # noqa: BLE001 - an NVML error only costs the names, never the message
        found.append(f"(NVML could not list them: {type(e).__name__}: {e})")
    if not found:
        return ("NVML lists no compute process holding it (a process of another container, or the driver's own: "
                "see nvidia-smi on the host)")
    return "held by " + "; ".join(found)


class ServerPool:
    def __init__(self, log_dir: Path, *, api_key: str | None = None, gpu: bool = False,
                 startup_timeout: float = 900.0) -> None:
        self.log_dir = log_dir
        self.api_key = api_key
        self.gpu = gpu
        self.startup_timeout = startup_timeout
        self.current: tuple[ServerConfig, ServerProcess] | None = None
        self.failed: dict[ServerConfig, str] = {}
        self.blocked: str | None = None  # why no server can start in this session any more (GPU memory held)
        self.started: list[tuple[ServerConfig, float]] = []

    def get(self, config: ServerConfig) -> ServerProcess:
        """The running server for ``config``, starting it (and stopping any other) if needed."""
        if config in self.failed:
            raise ServerUnavailable(self.failed[config])
        if self.blocked is not None:
            raise ServerUnavailable(self.blocked)
        if self.current and self.current[0] == config:
            if self.current[1].is_running():
                return self.current[1]
            self.stop()  # it died since its last use: start afresh
        self.stop()
        server = ServerProcess(config, self.log_dir, api_key=self.api_key, gpu=self.gpu,
                               startup_timeout=self.startup_timeout)
        try:
            server.start()
        except ServerStartError as e:
            self.failed[config] = str(e)
            raise
        except TimeoutError as e:  # the GPU memory wait before the start
            raise self._block(e) from e
        self.current = (config, server)
        self.started.append((config, server.startup_seconds or 0.0))
        return server

    def release(self, keep: set[ServerConfig] = frozenset()) -> None:  # type: ignore[assignment]
        """Stop the running server unless a config in ``keep`` is the one running."""
        if self.current and self.current[0] not in keep:
            self.stop()

    def stop(self) -> None:
        """Stop the running server; a GPU whose memory does not come back blocks the pool (ServerStartError)."""
        if self.current:
            try:
                self.current[1].stop()
            except TimeoutError as e:  # the GPU memory wait after the stop: the server itself has ended
                self.current = None
                raise self._block(e) from e
            self.current = None

    def _block(self, e: TimeoutError) -> ServerStartError:
        """The start failure every later ``get`` repeats at once: the wait's reason and who holds the memory."""
        self.blocked = (f"no server can start on this GPU: {e}; {gpu_memory_holders()}. Every later server of "
                        "this session fails at once with this message: end those processes (or use a free GPU) "
                        "and rerun")
        return ServerStartError(self.blocked)

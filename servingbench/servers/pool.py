"""The session's servers: each distinct config starts once, and at most one heavy server is alive at a time.

A 7B model leaves no room for two servers on one GPU, so ``ServerPool.get`` stops the running server before it
starts another, and remembers a config that failed to start so that later tests fail at once with the same cause.
"""

from __future__ import annotations

from pathlib import Path

from servingbench.servers.process import ServerConfig, ServerProcess, ServerStartError


class ServerUnavailable(Exception):
    """This config cannot be served in this session (remote mode, or it failed to start); the reason says why."""


class ServerPool:
    def __init__(self, log_dir: Path, *, api_key: str | None = None, gpu: bool = False,
                 startup_timeout: float = 900.0) -> None:
        self.log_dir = log_dir
        self.api_key = api_key
        self.gpu = gpu
        self.startup_timeout = startup_timeout
        self.current: tuple[ServerConfig, ServerProcess] | None = None
        self.failed: dict[ServerConfig, str] = {}
        self.started: list[tuple[ServerConfig, float]] = []

    def get(self, config: ServerConfig) -> ServerProcess:
        """The running server for ``config``, starting it (and stopping any other) if needed."""
        if config in self.failed:
            raise ServerUnavailable(self.failed[config])
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
        self.current = (config, server)
        self.started.append((config, server.startup_seconds or 0.0))
        return server

    def release(self, keep: set[ServerConfig] = frozenset()) -> None:  # type: ignore[assignment]
        """Stop the running server unless a config in ``keep`` is the one running."""
        if self.current and self.current[0] not in keep:
            self.stop()

    def stop(self) -> None:
        if self.current:
            self.current[1].stop()
            self.current = None



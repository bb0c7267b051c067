"""The HF server's config: how the suite starts ``servingbench serve-hf`` (servers/hf/app.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from servingbench.servers.process import ServerConfig


@dataclass(frozen=True)
class HFConfig(ServerConfig):
    max_batch_size: int = 1  # 1: one request at a time in arrival order (the naive baseline)
    batch_wait_ms: float = 20.0  # static batching: how long to wait for a batch to fill
    threads: int | None = None  # torch threads; None: match vLLM's CPU build (one compute thread)
    device: str = "auto"
    load_format: str = "auto"  # "dummy": random init on the device
    step_delay_ms: float = 0.0  # a slowdown of known size per decode step (the gate's power benchmark)
    engine: ClassVar[str] = "hf"
    needs: ClassVar[tuple[str, str] | None] = ("the HF engine", "hf")

    def command(self, host: str, port: int) -> list[str]:
        args = [self.python or sys.executable, "-m", "servingbench.cli", "serve-hf", "--model", self.model,
                "--host", host, "--port", str(port), *self._common_args(),
                "--max-batch-size", str(self.max_batch_size), "--batch-wait-ms", str(self.batch_wait_ms),
                "--device", self.device, "--load-format", self.load_format]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.step_delay_ms:
            args += ["--step-delay-ms", str(self.step_delay_ms)]
        return args + list(self.extra_args)



"""A fast SSE peer: OpenAI completion chunks shaped like vLLM's, with no model behind them.

What the fidelity study measures a client's own CPU cost against: a server that streams as fast as it can (or at
a set pace), so the client, not the server, sets the chunk rate. Started through ``ServerProcess`` like any
server; ``python -m servingbench.servers.sse_peer --port N`` runs it by hand.

A paced stream keeps to an absolute schedule: chunk k leaves at arrival + ttft + k * interval (a late write is
followed at once by the next), so its timing is known to within the peer's own lateness, which is what the
client self-test (``servingbench.suite.selftest``) measures the client against. ``--processes K`` serves one
port from K processes (SO_REUSEPORT: the kernel spreads connections over them), so that the peer is not the
bottleneck of a many-stream test; the parent only supervises, and /health answers 200 once all K listen.
Every response carries ``X-Peer-Pid`` and ``/whoami`` answers the serving process's pid.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from servingbench.servers.events import sse_event
from servingbench.servers.process import ServerConfig, die_with_parent

CHILD_START_S = 60.0  # how long the supervisor waits for each serving process to listen
# Pending connections each listening socket holds (the kernel caps it at net.core.somaxconn): aiohttp's 128
# overflows when a thousand clients connect at once, and a dropped SYN is retried after a second, which the
# self-test would read as a second of client TTFT error.
BACKLOG = 4096


@dataclass(frozen=True)
class PeerConfig(ServerConfig):
    """A ``ServerProcess`` config for the peer, so it gets the same lifecycle (own process group, /health)."""

    interval_ms: float = 0.0  # per-stream pause between writes; 0: as fast as possible (still yielding)
    burst: int = 1  # chunks per write: > 1 keeps the peer ahead of any client, so the client sets the pace
    ttft_ms: float = 0.0  # pause before the first chunk, as a prefill would take
    processes: int = 1  # serving processes on the one port (SO_REUSEPORT); > 1 for many-stream client tests
    engine: ClassVar[str] = "fast-sse-peer"

    def command(self, host: str, port: int) -> list[str]:
        return [sys.executable, "-m", "servingbench.servers.sse_peer", "--host", host, "--port", str(port),
                "--interval-ms", str(self.interval_ms), "--burst", str(self.burst), "--ttft-ms", str(self.ttft_ms),
                "--processes", str(self.processes)]


def completion_chunk(request_id: str, model: str, text: str, finish_reason: str | None) -> bytes:
    """One event as vLLM's /v1/completions streams it (compact JSON, ``usage: null`` until the last event)."""
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                         "stop_reason": None}], "usage": None}
    return sse_event(body)


def usage_chunk(request_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [], "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                                     "completion_tokens": completion_tokens}}
    return sse_event(body)


def peer_app(interval_ms: float = 0.0, burst: int = 1, ttft_ms: float = 0.0,
             ready: threading.Event | None = None) -> Any:
    """The peer's aiohttp application: /v1/completions (streaming only), /v1/models, /whoami, /health.

    ``ready``: /health answers 503 until it is set (a serving process of several waits for its siblings)."""
    from aiohttp import web

    ids = itertools.count()
    pause = interval_ms / 1000.0
    pid_header = {"X-Peer-Pid": str(os.getpid())}

    async def completions(request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        first = loop.time() + ttft_ms / 1000.0  # loop.time() is time.monotonic(): the clients' clock too
        body = await request.json()
        n, model = max(1, int(body.get("max_tokens") or 16)), str(body.get("model") or "peer")
        prompt = body.get("prompt")
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        rid = f"cmpl-{next(ids)}"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **pid_header})
        await resp.prepare(request)
        token = completion_chunk(rid, model, " tok", None)
        await asyncio.sleep(max(0.0, first - loop.time()))
        for k, i in enumerate(range(0, n - 1, burst)):
            await resp.write(token * min(burst, n - 1 - i))
            # write k + 1 is due at first + (k + 1) * pause; sleep(0) still yields: streams interleave as on a
            # batching server
            await asyncio.sleep(max(0.0, first + (k + 1) * pause - loop.time()) if pause else 0.0)
        await resp.write(completion_chunk(rid, model, " tok", "length") + usage_chunk(rid, model, prompt_tokens, n)
                         + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fast-sse-peer", "object": "model"}]})

    async def health(request: web.Request) -> web.Response:
        if ready is not None and not ready.is_set():
            return web.Response(status=503, text="waiting for the other serving processes", headers=pid_header)
        return web.Response(text="", headers=pid_header)

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"pid": os.getpid()}, headers=pid_header)

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions), web.get("/v1/models", models),
                    web.get("/whoami", whoami), web.get("/health", health)])
    return app


def serve_shared(ns: argparse.Namespace) -> None:
    """One of several serving processes: listen with SO_REUSEPORT, say so on stdout, and answer /health only
    once the supervisor writes a line to stdin (all siblings listen). EOF on stdin (supervisor gone) ends it."""
    from aiohttp import web

    ready = threading.Event()

    async def serve() -> None:
        runner = web.AppRunner(peer_app(ns.interval_ms, ns.burst, ns.ttft_ms, ready), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ns.host, ns.port, reuse_port=True, backlog=BACKLOG).start()
        print(f"listening {os.getpid()}", flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            await runner.cleanup()
            return
        ready.set()
        await loop.run_in_executor(None, sys.stdin.readline)  # blocks until the supervisor closes stdin
        await runner.cleanup()

    asyncio.run(serve())


def supervise(ns: argparse.Namespace, argv: Sequence[str]) -> int:
    """Start ``ns.processes`` serving processes on one port, open /health once all listen, end them all on
    SIGTERM/SIGINT or when any of them ends (so a half-dead peer is never measured)."""
    child_argv = [*argv, "--serve-shared"]
    children: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        for _ in range(ns.processes):
            cmd = die_with_parent([sys.executable, "-m", "servingbench.servers.sse_peer", *child_argv])
            children.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        waiting = {c.stdout.fileno(): c for c in children if c.stdout is not None}
        deadline = time.monotonic() + CHILD_START_S
        while waiting:  # each says "listening PID" once bound; one that dies says nothing (EOF)
            if stop.is_set():
                return 0
            if time.monotonic() > deadline:
                print(f"sse_peer: {len(waiting)} serving process(es) not listening after {CHILD_START_S:g} s",
                      file=sys.stderr, flush=True)
                return 1
            for fd in select.select(list(waiting), [], [], 0.2)[0]:
                child = waiting.pop(fd)
                assert child.stdout is not None
                if not child.stdout.readline().startswith(b"listening"):
                    print(f"sse_peer: serving process {child.pid} did not start (exit code {child.wait()})",
                          file=sys.stderr, flush=True)
                    return 1
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"ready\n")
            child.stdin.flush()
        while not stop.is_set():
            ended = [c for c in children if c.poll() is not None]
            if ended:
                print(f"sse_peer: serving process {ended[0].pid} exited with code {ended[0].returncode}; "
                      "stopping the others", file=sys.stderr, flush=True)
                code = 1
                break
            stop.wait(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 5.0
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return code


def main(argv: Sequence[str] | None = None) -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(prog="python -m servingbench.servers.sse_peer",
                                     description="serve OpenAI completion chunks as fast as possible (no model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--processes", type=int, default=1, help="serving processes on the port (SO_REUSEPORT)")
    parser.add_argument("--serve-shared", action="store_true", help=argparse.SUPPRESS)  # one of --processes K
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    if ns.processes < 1:
        parser.error("--processes must be >= 1")
    if ns.serve_shared:
        serve_shared(ns)
        return
    if ns.processes > 1:
        sys.exit(supervise(ns, argv))
    web.run_app(peer_app(ns.interval_ms, ns.burst, ns.ttft_ms), host=ns.host, port=ns.port, print=None,
                access_log=None, backlog=BACKLOG)


if __name__ == "__main__":
    main()

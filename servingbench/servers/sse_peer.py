"""A fast SSE peer: OpenAI completion chunks shaped like vLLM's, with no model behind them.

What the fidelity study measures a client's own CPU cost against: a server that streams as fast as it can (or at
a set pace), so the client, not the server, sets the chunk rate. Started through ``ServerProcess`` like any
server; ``python -m servingbench.servers.sse_peer --port N`` runs it by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from servingbench.servers.events import sse_event
from servingbench.servers.process import ServerConfig


@dataclass(frozen=True)
class PeerConfig(ServerConfig):
    """A ``ServerProcess`` config for the peer, so it gets the same lifecycle (own process group, /health)."""

    interval_ms: float = 0.0  # per-stream pause between writes; 0: as fast as possible (still yielding)
    burst: int = 1  # chunks per write: > 1 keeps the peer ahead of any client, so the client sets the pace
    ttft_ms: float = 0.0  # pause before the first chunk, as a prefill would take
    engine: ClassVar[str] = "fast-sse-peer"

    def command(self, host: str, port: int) -> list[str]:
        return [sys.executable, "-m", "servingbench.servers.sse_peer", "--host", host, "--port", str(port),
                "--interval-ms", str(self.interval_ms), "--burst", str(self.burst), "--ttft-ms", str(self.ttft_ms)]


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


def peer_app(interval_ms: float = 0.0, burst: int = 1, ttft_ms: float = 0.0) -> Any:
    """The peer's aiohttp application: /v1/completions (streaming only), /v1/models, /health."""
    from aiohttp import web

    ids = itertools.count()
    pause = interval_ms / 1000.0

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n, model = max(1, int(body.get("max_tokens") or 16)), str(body.get("model") or "peer")
        prompt = body.get("prompt")
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        rid = f"cmpl-{next(ids)}"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        token = completion_chunk(rid, model, " tok", None)
        await asyncio.sleep(ttft_ms / 1000.0)
        for i in range(0, n - 1, burst):
            await resp.write(token * min(burst, n - 1 - i))
            await asyncio.sleep(pause)  # sleep(0) still yields: streams interleave as on a batching server
        await resp.write(completion_chunk(rid, model, " tok", "length") + usage_chunk(rid, model, prompt_tokens, n)
                         + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fast-sse-peer", "object": "model"}]})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions), web.get("/v1/models", models),
                    web.get("/health", health)])
    return app


def main(argv: Sequence[str] | None = None) -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(prog="python -m servingbench.servers.sse_peer",
                                     description="serve OpenAI completion chunks as fast as possible (no model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    ns = parser.parse_args(argv)
    web.run_app(peer_app(ns.interval_ms, ns.burst, ns.ttft_ms), host=ns.host, port=ns.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()

"""The load client's own handling of protocol faults, and atomic result files.

A fake aiohttp server on 127.0.0.1 plays each fault a real server (or a proxy in front of one) can produce:
malformed, truncated, oversized or wrongly typed server-sent events, error statuses, stalls, resets. Each must
become a counted failure with a reason in the run's metrics, within the request timeout: never a hang, never an
exception out of ``run_load``. Real servers are used everywhere else; here only a fake can misbehave on cue.

The last tests kill or break a writer of ``atomic_write_json`` mid-write and check the previous file survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from servingbench.load.synthetic import RequestSpec
from servingbench.load.generator import LoadShape, OpenAIClient, run_load
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.files import atomic_write_json

pytestmark = pytest.mark.timeout(120)

SPEC = RequestSpec(prompt=[20, 21, 22], prompt_len=3, max_tokens=3)
TOKEN = b'data: {"choices": [{"index": 0, "text": "a"}]}\n\n'
USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}\n\n'
DONE = b"data: [DONE]\n\n"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _sse(request: web.Request, *parts: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
    return resp


def _stream_of(*parts: bytes, eof: bool = True) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = await _sse(request, *parts)
        if eof:
            await resp.write_eof()
        return resp
    return handler


async def _abort_mid_chunk(request: web.Request) -> web.StreamResponse:
    """Two tokens, then the connection drops inside the chunked body (a crashed server or proxy)."""
    await request.read()
    await _sse(request, TOKEN, TOKEN)
    assert request.transport is not None
    request.transport.write(b"40\r\ndata: {\"choi")  # half of a chunk
    await asyncio.sleep(0.05)
    request.transport.abort()
    return web.StreamResponse()


async def _reset_before_headers(request: web.Request) -> web.StreamResponse:
    await request.read()
    assert request.transport is not None
    request.transport.abort()
    return web.StreamResponse()


async def _stall_after_first_token(request: web.Request) -> web.StreamResponse:
    await request.read()
    await _sse(request, TOKEN)
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def _never_answer(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def _http_500(request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="<html>upstream exploded</html>", content_type="text/html")


async def _plain_json(request: web.Request) -> web.StreamResponse:
    """A 200 that is not a stream at all (a server that ignored ``stream: true``)."""
    return web.json_response({"choices": [{"text": "abc"}], "usage": {"completion_tokens": 3}})


# name -> (handler, expected start of RequestRecord.error)
FAULTS: dict[str, tuple[Handler, str]] = {
    "malformed-json": (_stream_of(TOKEN, b"data: {\"choices\": [{\"te\n\n", DONE), "stream: malformed event"),
    "not-an-object": (_stream_of(TOKEN, b"data: [1, 2, 3]\n\n", DONE), "stream: malformed event: not an object"),
    "invalid-utf8": (_stream_of(b"data: \xff\xfe\xfd\n\n", DONE), "stream: malformed event"),
    "error-event": (_stream_of(TOKEN, b'data: {"error": {"message": "engine died", "code": 500}}\n\n', DONE),
                    "stream: server error in stream: {'message': 'engine died'"),
    "eof-without-done": (_stream_of(TOKEN, TOKEN), "stream: truncated"),
    "eof-mid-event": (_stream_of(TOKEN, b'data: {"choices": [{"text": "b"'), "stream: malformed event"),
    "no-content": (_stream_of(b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n', USAGE, DONE),
                   "stream: no content"),
    "only-done": (_stream_of(DONE), "stream: no content"),
    "empty-body": (_stream_of(), "stream: truncated"),
    "choices-wrong-type": (_stream_of(TOKEN, b'data: {"choices": "abc"}\n\n', DONE), "client: AttributeError"),
    "text-wrong-type": (_stream_of(b'data: {"choices": [{"text": 5}]}\n\n', DONE), "client: TypeError"),
    "usage-wrong-type": (_stream_of(TOKEN, b'data: {"choices": [], "usage": {"completion_tokens": "x"}}\n\n', DONE),
                         "client: ValueError"),
    "line-over-256KiB": (_stream_of(TOKEN, b"data: " + b"x" * (256 * 1024) + b"\n\n", DONE), "client: LineTooLong"),
    "abort-mid-chunk": (_abort_mid_chunk, "connection: ClientPayloadError"),
    "reset-before-headers": (_reset_before_headers, "connection: ServerDisconnectedError"),
    "http-500": (_http_500, "HTTP 500: <html>upstream exploded"),
    "not-a-stream": (_plain_json, "stream: truncated"),
    "stall-mid-stream": (_stall_after_first_token, "timeout: no complete response within 1.5 s"),
    "no-response": (_never_answer, "timeout: no complete response within 1.5 s"),
}


@contextlib.asynccontextmanager
async def fake_server(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """Serve ``/<name>/v1/completions`` for each route on 127.0.0.1; yields the base URL."""
    app = web.Application()
    for name, handler in routes.items():
        app.router.add_post(f"/{name}/v1/completions", handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_protocol_fault_is_a_counted_failure_with_its_reason(fault: str) -> None:
    handler, reason = FAULTS[fault]

    async def scenario() -> tuple[list[RequestRecord], float, float]:
        async with fake_server({fault: handler}) as base:
            t0 = time.monotonic()
            result = await asyncio.wait_for(
                run_load(f"{base}/{fault}", "m", [SPEC] * 3, LoadShape(concurrency=2, timeout_s=1.5)), 30)
            return result.records, result.duration, time.monotonic() - t0

    records, duration, elapsed = asyncio.run(scenario())
    assert len(records) == 3 and len({r.request_id for r in records}) == 3
    for r in records:
        assert not r.success
        assert r.error is not None and r.error.startswith(reason), r.error
    metrics = compute_metrics(records, duration)
    assert metrics.completed == 0 and metrics.failed == 3
    assert sum(metrics.errors.values()) == 3 and reason.split(":")[0] in metrics.errors
    # two waves of 1.5 s timeouts at most (concurrency 2), plus slack for a shared machine
    assert elapsed < 2 * 1.5 + 5


def test_mixed_faults_are_counted_per_reason_and_good_requests_measured() -> None:
    """One run against a server that fails every third request: the good ones keep their timings."""
    calls = {"n": 0}
    good = _stream_of(TOKEN, TOKEN, TOKEN, USAGE, DONE)
    bad = _stream_of(TOKEN, b"data: {oops\n\n")

    async def alternating(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        return await (bad if calls["n"] % 3 == 0 else good)(request)

    async def scenario() -> list[RequestRecord]:
        async with fake_server({"mixed": alternating}) as base:
            result = await run_load(f"{base}/mixed", "m", [SPEC] * 12, LoadShape(concurrency=1, timeout_s=5))
            return result.records

    records = asyncio.run(scenario())
    metrics = compute_metrics(records, 1.0)
    assert (metrics.completed, metrics.failed) == (8, 4)
    assert metrics.errors == {"stream": 4}
    assert metrics.total_output_tokens == 8 * 3 and metrics.ttft.count == 8


def test_connection_refused_is_counted_not_raised() -> None:
    """Nothing listening (a server that never came up, or is gone): each request fails fast with a reason."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    result = asyncio.run(run_load(f"http://127.0.0.1:{port}", "m", [SPEC] * 4, LoadShape(timeout_s=10)))
    assert time.monotonic() - t0 < 5
    assert all(r.error and r.error.startswith("connection: ClientConnectorError") for r in result.records)
    assert result.metrics().failed == 4


def test_client_cancelling_mid_stream_is_recorded_and_the_server_sees_the_disconnect() -> None:
    """Cancelling a request mid-stream (the run stopped) marks it cancelled, re-raises, and closes the socket."""
    async def scenario() -> tuple[RequestRecord, float | None]:
        first_token = asyncio.Event()
        cancelled_at = 0.0
        disconnected_after: list[float] = []

        async def slow_stream(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = await _sse(request, TOKEN)
            first_token.set()
            try:
                for _ in range(600):
                    await asyncio.sleep(0.05)
                    await resp.write(TOKEN)
            except (asyncio.CancelledError, ConnectionResetError):
                disconnected_after.append(time.monotonic() - cancelled_at)
                raise
            return resp

        async with fake_server({"slow": slow_stream}) as base:
            record = RequestRecord("req-0", 3, 3)
            async with OpenAIClient(f"{base}/slow", "m", LoadShape(timeout_s=60)) as client:
                task = asyncio.create_task(client.send(SPEC, record))
                await asyncio.wait_for(first_token.wait(), 10)
                await asyncio.sleep(0.2)
                cancelled_at = time.monotonic()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            for _ in range(100):  # the server notices the closed socket at its next write
                if disconnected_after:
                    break
                await asyncio.sleep(0.05)
            return record, disconnected_after[0] if disconnected_after else None

    record, disconnected_after = asyncio.run(scenario())
    assert record.error is not None and record.error.startswith("cancelled"), record.error
    assert not record.success and len(record.chunk_times) >= 1
    assert compute_metrics([record], 1.0).errors == {"cancelled": 1}
    assert disconnected_after is not None and disconnected_after < 5.0


def test_a_whole_run_cancelled_mid_stream_ends_promptly() -> None:
    """An outer deadline around ``run_load`` (a CI step limit) cancels every stream at once: no hang."""
    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = await _sse(request, TOKEN)
        while True:
            await asyncio.sleep(0.05)
            await resp.write(TOKEN)

    async def scenario() -> float:
        async with fake_server({"endless": endless}) as base:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(run_load(f"{base}/endless", "m", [SPEC] * 8, LoadShape(timeout_s=600)), 1.0)
            return time.monotonic() - t0

    assert asyncio.run(scenario()) < 4.0


# ---- atomic result files ----------------------------------------------------------------------------------

OLD = {"schema": "old", "completed": 100, "records": list(range(50))}

WRITER = """
import os, sys, time
from servingbench.measure import files as results
path, ready = sys.argv[1], sys.argv[2]
real_fsync = os.fsync
def fsync_then_hang(fd):
    real_fsync(fd)
    open(ready, "w").close()  # the new content is fully on disk in the temporary file, not yet renamed
    time.sleep(600)
results.os.fsync = fsync_then_hang
results.atomic_write_json(path, {"schema": "new", "records": list(range(200000))})
"""


def test_writer_killed_mid_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "measurements" / "vllm--lab.json"
    atomic_write_json(target, OLD)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the writer exited before reaching the write"
            assert time.monotonic() < deadline, "the writer never reached the write"
            time.sleep(0.05)
        temps = [p for p in target.parent.iterdir() if p.name != target.name]
        assert temps and temps[0].stat().st_size > 1_000_000  # the half-done write exists beside the target
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert json.loads(target.read_text()) == OLD


def test_a_failure_during_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    atomic_write_json(target, OLD)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(target, {"schema": "new"})
    monkeypatch.undo()

    class Unserializable:
        def to_dict(self) -> dict[str, int]:
            raise RuntimeError("boom while serializing")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write_json(target, {"schema": "new", "bad": Unserializable()})
    assert json.loads(target.read_text()) == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]

"""The HF engine under abuse while it is loaded: bad input and vanishing clients mixed into 64 concurrent
requests, against one-at-a-time and static-batch servers.

Single bad requests against an idle server are covered in test_hf_server.py; here the same kinds of abuse
arrive while 64 valid requests queue far beyond the batch size. Each bad request must get a 4xx with a message
(or a clean drop) without waiting behind the queue; every valid request must complete with exactly its tokens;
the abandoned ones must be cancelled rather than generated; and afterwards the server answers exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadShape, LoadResult, run_load
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.process import ServerProcess

pytestmark = pytest.mark.timeout(300)

MODEL = "cpu-llama-36m"
PROMPT = [101, 2002, 303, 4004, 505, 6006, 707]
VALID = 64
OUTPUT = 8
IMPATIENT = 8  # clients that send a long request and vanish
# name -> (raw body, what the message must mention)
BAD: list[tuple[str, bytes, str]] = [
    ("malformed-json", b'{"model": "cpu-llama-36m", "prompt": [1, 2', "not valid JSON"),
    ("empty-body", b"", "not valid JSON"),
    ("binary-garbage", bytes(range(256)) * 64, "not valid JSON"),
    ("not-an-object", b'"just a string"', "JSON object"),
    ("prompt-wrong-type", json.dumps({"prompt": 12345}).encode(), "prompt"),
    ("max-tokens-wrong-type", json.dumps({"prompt": PROMPT, "max_tokens": [8]}).encode(), "max_tokens"),
    ("max-tokens-1e9", json.dumps({"prompt": PROMPT, "max_tokens": 10**9}).encode(), "maximum context length"),
    ("max-tokens-1e30", json.dumps({"prompt": PROMPT, "max_tokens": 10**30}).encode(), "maximum context length"),
    ("max-tokens-inf", b'{"prompt": [1, 2], "max_tokens": 1e400}', "max_tokens"),
    ("prompt-over-context", json.dumps({"prompt": [20] * 5000, "max_tokens": 4}).encode(),
     "maximum context length"),
    ("prompt-text-over-context", json.dumps({"prompt": "baba " * 4000, "max_tokens": 4}).encode(),
     "maximum context length"),
    ("chat-over-context", json.dumps({"messages": [{"role": "user", "content": "dodo " * 4000}]}).encode(),
     "maximum context length"),
    ("temperature-nan", b'{"prompt": [1, 2], "temperature": NaN}', "temperature"),
    ("stream-options-wrong-type", json.dumps({"prompt": PROMPT, "stream": True,
                                              "stream_options": "yes"}).encode(), "stream_options"),
]


def hf_config(model_dir: str, max_batch_size: int) -> HFConfig:
    return HFConfig(model=model_dir, served_model_name=MODEL, dtype="float32", max_model_len=1024,
                    max_batch_size=max_batch_size, batch_wait_ms=20.0)


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
               path: str = "/v1/completions") -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    async with session.post(url + path, data=body, headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else {}, time.monotonic() - t0


async def impatient_client(host: str, port: int, linger: float) -> None:
    """Send a valid streaming request for 900 tokens, then vanish without reading the answer."""
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 900, "ignore_eos": True,
                       "stream": True}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    await asyncio.sleep(linger)
    writer.transport.abort()


async def half_open_client(host: str, port: int, hold: float) -> None:
    """Headers that never end (a slowloris), held open while the real load runs."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Len")
    await writer.drain()
    await asyncio.sleep(hold)
    writer.close()


async def abuse_while_loaded(server: ServerProcess) -> tuple[LoadResult, list[tuple[str, int, dict[str, Any], float]]]:
    specs = random_token_prompts(VALID, prompt_len=16, output_len=OUTPUT, vocab_size=8192, seed=7)
    load = asyncio.create_task(run_load(server.url, MODEL, specs, LoadShape(timeout_s=240)))
    await asyncio.sleep(0.5)  # the 64 are queued: now the abuse
    assert server.port is not None
    slow = asyncio.create_task(half_open_client(server.host, server.port, hold=5.0))
    await asyncio.gather(*(impatient_client(server.host, server.port, linger=0.2 + 0.1 * i)
                           for i in range(IMPATIENT)))
    answers = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for name, body, _ in BAD:
            path = "/v1/chat/completions" if name.startswith("chat") else "/v1/completions"
            status, reply, seconds = await post(session, server.url, body, path)
            answers.append((name, status, reply, seconds))
    await slow
    return await load, answers


@pytest.mark.parametrize("max_batch_size", [1, 4])
def test_loaded_server_rejects_abuse_and_serves_every_valid_request(model_dir: str, tmp_path: Path,
                                                                    max_batch_size: int) -> None:
    with ServerProcess(hf_config(model_dir, max_batch_size), tmp_path, startup_timeout=180) as server:
        reference = asyncio.run(run_load(server.url, MODEL, random_token_prompts(1, 16, OUTPUT, 8192, seed=99),
                                         LoadShape(timeout_s=60)))
        result, answers = asyncio.run(abuse_while_loaded(server))

        needles = {name: needle for name, _, needle in BAD}
        for name, status, reply, seconds in answers:
            assert 400 <= status < 500, (name, status, reply)
            message = reply["error"]["message"]
            assert needles[name] in message and "Traceback" not in message, (name, message)
            assert seconds < 10.0, f"{name}: a bad request waited {seconds:.1f} s behind the queue"

        records = result.records
        assert len({r.request_id for r in records}) == VALID
        failures = [(r.request_id, r.error) for r in records if not r.success]
        assert not failures
        assert all(r.output_tokens == OUTPUT and len(r.chunk_times) == OUTPUT for r in records)
        assert result.metrics().max_concurrent_requests > 4 * max_batch_size  # the queue really was deep

        time.sleep(0.5)
        log = server.log_path.read_text()
        assert log.count("cancelled: the client disconnected") >= IMPATIENT, log[-2000:]
        assert "Traceback" not in log and "internal error" not in log
        # the next valid request is answered exactly as before the abuse (greedy: same text)
        after = asyncio.run(run_load(server.url, MODEL, random_token_prompts(1, 16, OUTPUT, 8192, seed=99),
                                     LoadShape(timeout_s=60)))
        assert after.records[0].success and after.records[0].generated_text == reference.records[0].generated_text
        assert server.is_running()


def _post_all(server: ServerProcess, bodies: list[tuple[str, bytes]]) -> list[tuple[str, int | str, str]]:
    """(name, status or 'dropped: ...', reply excerpt) for each body, then proof that the server still serves."""
    async def scenario() -> list[tuple[str, int | str, str]]:
        out: list[tuple[str, int | str, str]] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for name, body in bodies:
                try:
                    status, reply, _ = await post(session, server.url, body)
                    out.append((name, status, json.dumps(reply)[:300]))
                except aiohttp.ClientError as e:
                    out.append((name, f"dropped: {type(e).__name__}", ""))
            valid = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "ignore_eos": True}).encode()
            status, reply, _ = await post(session, server.url, valid)
            assert status == 200 and reply["usage"]["completion_tokens"] == 2, reply
        return out

    return asyncio.run(scenario())


def test_body_over_the_size_limit_is_413_or_dropped(hf_server: ServerProcess) -> None:
    [(name, status, reply)] = _post_all(hf_server, [("over-64MiB", b'{"prompt": "' + b"a" * (65 << 20) + b'"}')])
    assert status == 413 or (isinstance(status, str) and status.startswith("dropped")), (status, reply)
    if status == 413:
        assert "message" in reply


def test_json_nested_beyond_the_parsers_limit_is_a_400(hf_server: ServerProcess) -> None:
    results = _post_all(hf_server, [("nested-array", b"[" * 100_000 + b"]" * 100_000),
                                    ("nested-object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000)])
    for name, status, reply in results:
        assert status == 400 and "nests JSON too deeply" in reply, (name, status, reply)

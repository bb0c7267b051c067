"""The HF engine over real HTTP (a real server process on the generated model), plus its in-process core.

Plain ``urllib`` keeps the client out of the way: what is checked is the wire format the load generator reads.
Every bad-input case is followed by a valid request, proving the server kept serving.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from servingbench.load.synthetic import random_token_prompts
from servingbench.servers.hf.engine import HFBaselineServer, SequenceRequest
from servingbench.load.generator import LoadShape, run_load
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.process import ServerProcess

MODEL = "cpu-llama-36m"  # the served name conftest's hf_server uses
VOCAB = 8192
CONTEXT = 1024
PROMPT_IDS = [101, 2002, 303, 4004, 505, 6006, 707]
TEXT_PROMPT = "baba cece dodo fafa gigi"


# ---- a tiny client ----------------------------------------------------------------------------------------

def post(server: ServerProcess, path: str, body: dict[str, Any] | bytes, *, key: str | None = None,
         timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body), for 2xx and error statuses alike."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(server: ServerProcess, path: str, *, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stream(server: ServerProcess, path: str, body: dict[str, Any]) -> list[Any]:
    """The ``data:`` payloads of a streaming response, JSON-decoded except the final ``[DONE]``."""
    return [payload for payload, _ in stream_timed(server, path, body)]


def stream_timed(server: ServerProcess, path: str, body: dict[str, Any]) -> list[tuple[Any, float]]:
    """Each payload with its arrival time (``time.monotonic``)."""
    req = urllib.request.Request(server.url + path, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return [(p if p == "[DONE]" else json.loads(p), time.monotonic()) for p in _payloads(resp)]


def _payloads(resp: Any) -> Iterator[str]:
    for raw in resp:
        line = raw.decode().strip()
        if line.startswith("data:"):
            yield line[5:].strip()


def complete(server: ServerProcess, prompt: Any, max_tokens: int, **extra: Any) -> dict[str, Any]:
    status, body = post(server, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                                                     "temperature": 0, "ignore_eos": True, **extra})
    assert status == 200, body
    return body


def assert_still_serving(server: ServerProcess) -> None:
    body = complete(server, PROMPT_IDS, 2)
    assert body["usage"]["completion_tokens"] == 2


def fresh_server(model_dir: str, tmp_path_factory: pytest.TempPathFactory, *, api_key: str | None = None,
                 **options: Any) -> ServerProcess:
    """A second server with other settings, configured like the session one; use it as a context manager."""
    config = HFConfig(model=model_dir, served_model_name=MODEL, dtype="float32", max_model_len=CONTEXT, **options)
    return ServerProcess(config, log_dir=tmp_path_factory.mktemp("logs"), api_key=api_key, startup_timeout=180)


# ---- endpoints --------------------------------------------------------------------------------------------

def test_health(hf_server: ServerProcess) -> None:
    assert get(hf_server, "/health")[0] == 200


def test_models_lists_the_served_name(hf_server: ServerProcess) -> None:
    status, raw = get(hf_server, "/v1/models")
    body = json.loads(raw)
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]


def test_token_id_prompt_gives_exactly_max_tokens(hf_server: ServerProcess) -> None:
    body = complete(hf_server, PROMPT_IDS, 7)
    assert body["object"] == "text_completion" and body["model"] == MODEL and body["id"]
    assert body["usage"] == {"prompt_tokens": len(PROMPT_IDS), "completion_tokens": 7,
                             "total_tokens": len(PROMPT_IDS) + 7}
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"].split()) == 7  # word-level tokenizer: one word per token


@pytest.mark.parametrize("prompt", [TEXT_PROMPT, [TEXT_PROMPT], [PROMPT_IDS]], ids=["text", "text-list", "ids-list"])
def test_prompt_forms(hf_server: ServerProcess, prompt: Any) -> None:
    body = complete(hf_server, prompt, 3)
    expected_len = len(PROMPT_IDS) if isinstance(prompt[0], list) else len(TEXT_PROMPT.split())
    assert body["usage"]["prompt_tokens"] == expected_len
    assert body["usage"]["completion_tokens"] == 3


def test_streaming_completion_matches_non_streaming(hf_server: ServerProcess) -> None:
    full = complete(hf_server, PROMPT_IDS, 6)
    events = stream(hf_server, "/v1/completions", {"model": MODEL, "prompt": PROMPT_IDS, "max_tokens": 6,
                                                   "temperature": 0, "ignore_eos": True,
                                                   "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    *token_chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": len(PROMPT_IDS), "completion_tokens": 6, "total_tokens": 13}
    content = [c for c in token_chunks if c["choices"][0]["text"]]
    assert len(content) == len(token_chunks) == usage_chunk["usage"]["completion_tokens"]
    assert "".join(c["choices"][0]["text"] for c in token_chunks) == full["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None] * 5 + ["length"]
    for chunk in events[:-1]:
        assert chunk["object"] == "text_completion" and chunk["model"] == MODEL
        assert chunk["id"] == events[0]["id"] and isinstance(chunk["created"], int)


def test_streaming_without_usage_has_no_usage_chunk(hf_server: ServerProcess) -> None:
    events = stream(hf_server, "/v1/completions", {"model": MODEL, "prompt": PROMPT_IDS, "max_tokens": 2,
                                                   "ignore_eos": True})
    assert events[-1] == "[DONE]" and len(events) == 3
    assert all(e["choices"] and "usage" not in e for e in events[:-1])


def test_chat_streaming_starts_with_a_role_only_chunk(hf_server: ServerProcess) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": TEXT_PROMPT}], "max_tokens": 4,
            "temperature": 0, "ignore_eos": True}
    status, full = post(hf_server, "/v1/chat/completions", body)
    assert status == 200 and full["object"] == "chat.completion"
    assert full["choices"][0]["message"]["role"] == "assistant"
    assert full["usage"]["completion_tokens"] == 4
    events = stream(hf_server, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    first, *token_chunks, usage_chunk = events[:-1]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(token_chunks) == 4 and token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["delta"]["content"] for c in token_chunks) == full["choices"][0]["message"]["content"]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"]


def test_min_tokens_is_honoured(hf_server: ServerProcess) -> None:
    status, body = post(hf_server, "/v1/completions", {"model": MODEL, "prompt": PROMPT_IDS, "max_tokens": 6,
                                                        "min_tokens": 4, "temperature": 0})
    assert status == 200, body
    assert 4 <= body["usage"]["completion_tokens"] <= 6
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_seeded_sampling_is_reproducible(hf_server: ServerProcess) -> None:
    texts = [complete(hf_server, PROMPT_IDS, 6, temperature=1.0, seed=seed)["choices"][0]["text"]
             for seed in (7, 7, 8)]
    assert texts[0] == texts[1] != texts[2]


def test_project_load_client_reads_the_stream(hf_server: ServerProcess) -> None:
    """The suite's own measuring client gets exact token counts and one content chunk per token."""
    specs = random_token_prompts(3, prompt_len=16, output_len=5, vocab_size=VOCAB, seed=1)
    result = asyncio.run(run_load(hf_server.url, MODEL, specs, LoadShape(concurrency=2)))
    for record in result.records:
        assert record.error is None, record.error
        assert record.output_tokens == 5 and len(record.chunk_times) == 5


# ---- bad input: a precise 4xx, and the server keeps serving ----------------------------------------------

BAD_REQUESTS = [
    ("malformed-json", "/v1/completions", b'{"prompt": [1, 2', 400, "not valid JSON"),
    ("not-an-object", "/v1/completions", [1, 2], 400, "JSON object"),
    ("unknown-model", "/v1/completions", {"model": "gpt-9", "prompt": "a"}, 404, MODEL),
    ("unknown-model-chat", "/v1/chat/completions",
     {"model": "gpt-9", "messages": [{"role": "user", "content": "a"}]}, 404, "gpt-9"),
    ("over-context", "/v1/completions", {"prompt": [20] * 1000, "max_tokens": 100}, 400, "maximum context length"),
    ("max-tokens-zero", "/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("max-tokens-negative", "/v1/completions", {"prompt": "a", "max_tokens": -5}, 400, "max_tokens"),
    ("max-tokens-string", "/v1/completions", {"prompt": "a", "max_tokens": "10"}, 400, "max_tokens"),
    ("max-tokens-float", "/v1/completions", {"prompt": "a", "max_tokens": 2.5}, 400, "max_tokens"),
    ("temperature-negative", "/v1/completions", {"prompt": "a", "temperature": -1}, 400, "temperature"),
    ("temperature-string", "/v1/completions", {"prompt": "a", "temperature": "hot"}, 400, "temperature"),
    ("ignore-eos-string", "/v1/completions", {"prompt": "a", "ignore_eos": "yes"}, 400, "ignore_eos"),
    ("stream-string", "/v1/completions", {"prompt": "a", "stream": "yes"}, 400, "stream"),
    ("min-tokens-negative", "/v1/completions", {"prompt": "a", "min_tokens": -1}, 400, "min_tokens"),
    ("min-tokens-over-max", "/v1/completions", {"prompt": "a", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens"),
    ("token-id-too-big", "/v1/completions", {"prompt": [5, VOCAB]}, 400, f"token id {VOCAB}"),
    ("token-id-negative", "/v1/completions", {"prompt": [5, -1]}, 400, "token id -1"),
    ("prompt-missing", "/v1/completions", {"max_tokens": 2}, 400, "prompt"),
    ("prompt-wrong-type", "/v1/completions", {"prompt": {"text": "a"}}, 400, "prompt"),
    ("prompt-empty", "/v1/completions", {"prompt": ""}, 400, "empty"),
    ("prompt-bools", "/v1/completions", {"prompt": [True, False]}, 400, "prompt"),
    ("two-prompts", "/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt"),
    ("messages-missing", "/v1/chat/completions", {"max_tokens": 2}, 400, "messages"),
    ("messages-wrong-type", "/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ("message-without-role", "/v1/chat/completions", {"messages": [{"content": "a"}]}, 400, "role"),
    ("chat-max-tokens-zero", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, 400, "max_tokens"),
    ("unsupported-n", "/v1/completions", {"prompt": "a", "n": 3}, 400, "'n'"),
    ("stream-options-without-stream", "/v1/completions",
     {"prompt": "a", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("seed-string", "/v1/completions", {"prompt": "a", "seed": "x"}, 400, "seed"),
]


@pytest.mark.parametrize("path, body, status, needle", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(hf_server: ServerProcess, path: str, body: Any,
                                                         status: int, needle: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got_status, got = post(hf_server, path, raw)
    assert got_status == status, got
    error = got["error"]
    assert needle in error["message"], error
    assert error["code"] == status and error["type"] in ("BadRequestError", "NotFoundError")
    assert "Traceback" not in error["message"]
    assert_still_serving(hf_server)


def test_unknown_route_is_an_openai_404(hf_server: ServerProcess) -> None:
    status, raw = get(hf_server, "/v1/nothing-here")
    assert status == 404 and json.loads(raw)["error"]["code"] == 404


# ---- cancellation -----------------------------------------------------------------------------------------

def test_client_disconnecting_mid_stream_cancels_its_request(hf_server: ServerProcess) -> None:
    """A long stream abandoned after two chunks must not hold the one-at-a-time worker."""
    conn = http.client.HTTPConnection(hf_server.host, hf_server.port, timeout=30)
    body = {"model": MODEL, "prompt": PROMPT_IDS, "max_tokens": CONTEXT - len(PROMPT_IDS), "ignore_eos": True,
            "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    arrivals: list[float] = []
    while len(arrivals) < 3:
        if resp.readline().startswith(b"data:"):
            arrivals.append(time.monotonic())
    conn.sock.shutdown(socket.SHUT_RDWR)  # vanish mid-stream
    conn.close()
    t0 = time.monotonic()
    assert_still_serving(hf_server)
    # Had the abandoned request held the one-at-a-time worker, the next one would wait for its remaining tokens at
    # the step time this server just showed; a cancelled one frees the worker at once. Half of that wait is the
    # bound, so it follows this machine's speed (about 1000 tokens of ~16 ms on the 2-core boxes).
    step = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    held = (body["max_tokens"] - len(arrivals)) * step
    assert time.monotonic() - t0 < 0.5 * held, (time.monotonic() - t0, held)
    time.sleep(0.2)
    log = hf_server.log_path.read_text()
    assert "cancelled" in log
    assert "Traceback" not in log and "Error handling request" not in log
    assert hf_server.is_running()


# ---- servers with other settings (started one after another, each stopped after its test) ----------------

def test_api_key_is_required_on_v1(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    key = "secret-test-key"
    with fresh_server(model_dir, tmp_path_factory, api_key=key) as server:
        body = {"model": MODEL, "prompt": PROMPT_IDS, "max_tokens": 2, "ignore_eos": True}
        status, error = post(server, "/v1/completions", body)
        assert status == 401 and error["error"]["code"] == 401 and "Bearer" in error["error"]["message"]
        assert post(server, "/v1/completions", body, key="wrong-key")[0] == 401
        assert get(server, "/v1/models")[0] == 401
        assert get(server, "/health")[0] == 200  # open: the lifecycle polls it without the key
        status, ok = post(server, "/v1/completions", body, key=key)
        assert status == 200 and ok["usage"]["completion_tokens"] == 2
        assert get(server, "/v1/models", key=key)[0] == 200
        assert key not in server.log_path.read_text()


def test_static_batching_answers_concurrent_requests(hf_server: ServerProcess, model_dir: str,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """Four requests arriving together run as one batch: same greedy output as alone, exact lengths each,
    and their first tokens arrive together (one-at-a-time would space them a whole generation apart)."""
    prompts = [PROMPT_IDS, [900 + i for i in range(23)], [33, 44], list(range(3000, 3012))]
    lengths = [24, 16, 20, 12]
    expected = [complete(hf_server, p, n)["choices"][0]["text"] for p, n in zip(prompts, lengths)]
    with fresh_server(model_dir, tmp_path_factory, max_batch_size=4, batch_wait_ms=1000.0) as server:
        def one(i: int) -> tuple[str, int, float, float]:
            sent = time.monotonic()
            events = stream_timed(server, "/v1/completions", {
                "model": MODEL, "prompt": prompts[i], "max_tokens": lengths[i], "temperature": 0,
                "ignore_eos": True, "stream_options": {"include_usage": True}})
            tokens = [(e, t) for e, t in events[:-1] if e["choices"]]
            text = "".join(e["choices"][0]["text"] for e, _ in tokens)
            return text, events[-2][0]["usage"]["completion_tokens"], sent, tokens[0][1]

        complete(server, PROMPT_IDS, 1)  # warm up, so the timings below are the batch's
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        for (text, count, _, _), want, n in zip(results, expected, lengths):
            assert count == n
            assert text == want
        first_tokens = [r[3] for r in results]
        whole_run = max(first_tokens) - min(r[2] for r in results)
        assert max(first_tokens) - min(first_tokens) < 0.5 * whole_run, results


# ---- the in-process core ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(model_dir: str) -> HFBaselineServer:
    return HFBaselineServer(model_dir, dtype="float32")


def test_engine_generate_batch_matches_each_prompt_alone(engine: HFBaselineServer) -> None:
    prompts: list[Any] = [TEXT_PROMPT, list(range(40, 80))]  # different lengths: the first is left-padded
    batch = engine.generate(prompts, max_tokens=8, ignore_eos=True)
    for prompt, result in zip(prompts, batch):
        assert result.completion_tokens == 8 and len(result.token_ids) == 8
        assert result.finish_reason == "length"
        assert 0 < result.ttft_s <= result.e2e_s
        alone = engine.generate([prompt], max_tokens=8, ignore_eos=True)[0]
        assert alone.token_ids == result.token_ids
        assert alone.text == result.text
    # the same math as transformers' own generate on the same left-padded batch
    ids = [engine.encode(p) for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[engine.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with torch.inference_mode():
        reference = engine.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=8,
                                          min_new_tokens=8, do_sample=False, pad_token_id=engine.pad_token_id)
    assert reference[:, width:].tolist() == [r.token_ids for r in batch]


def test_engine_stops_on_eos_unless_min_tokens_or_ignore_eos(engine: HFBaselineServer) -> None:
    """The random model never picks the real EOS, so make its first greedy pick the EOS."""
    first = engine.generate([PROMPT_IDS], max_tokens=1, ignore_eos=True)[0].token_ids[0]
    saved = engine.eos_token_ids
    engine.eos_token_ids = {first}
    try:
        stopped = engine.generate([PROMPT_IDS], max_tokens=6)[0]
        assert stopped.finish_reason == "stop" and stopped.token_ids == [first]
        ignored = engine.generate([PROMPT_IDS], max_tokens=6, ignore_eos=True)[0]
        assert ignored.finish_reason == "length" and ignored.completion_tokens == 6
        events = [e for step in engine.generate_stream([SequenceRequest(PROMPT_IDS, 6, min_tokens=3)])
                  for e in step]
        assert len(events) >= 3 and events[0].token_id != first  # EOS was suppressed for the first 3
        assert events[-1].finish_reason in ("stop", "length")
    finally:
        engine.eos_token_ids = saved


def test_engine_rejects_what_does_not_fit(engine: HFBaselineServer) -> None:
    with pytest.raises(ValueError, match="maximum context length"):
        engine.generate([[20] * 2000], max_tokens=100)
    with pytest.raises(ValueError, match="out of vocabulary"):
        engine.generate([[VOCAB + 1]], max_tokens=1)


def test_engine_dummy_load_needs_only_config_and_tokenizer(model_dir: str, tmp_path: Path) -> None:
    """``--load-format dummy``: a directory without weights (a shaped profile) gets seeded random weights."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(model_dir) / name, tmp_path / name)
    dummy = HFBaselineServer(str(tmp_path), load_format="dummy", max_model_len=64)
    assert dummy.dtype == torch.float32 and dummy.max_model_len == 64  # "auto" is config.json's dtype
    first, second = dummy.generate([PROMPT_IDS, [30]], max_tokens=3, ignore_eos=True)
    assert first.completion_tokens == second.completion_tokens == 3
    again = HFBaselineServer(str(tmp_path), load_format="dummy").generate([PROMPT_IDS], 3, ignore_eos=True)[0]
    assert again.token_ids == first.token_ids  # seeded: every run serves the same random weights


def test_top_p_and_seed_sample_as_asked(hf_server: ServerProcess) -> None:
    """A nucleus too small for a second token is greedy decoding; one seed gives one answer; natural stops end where
    the model stops, and usage says how long that was."""
    specs = random_token_prompts(2, 12, 16, VOCAB, seed=11)

    def texts(shape: LoadShape) -> list[str]:
        result = asyncio.run(run_load(hf_server.url, MODEL, specs, shape))
        assert result.metrics().failed == 0, result.metrics().errors
        assert all(r.output_tokens is not None and 1 <= r.output_tokens <= 16 for r in result.records)
        return [r.generated_text for r in result.records]

    greedy = texts(LoadShape(concurrency=1))
    assert texts(LoadShape(concurrency=1, temperature=1.0, top_p=1e-6, ignore_eos=False)) == greedy
    seeded = texts(LoadShape(concurrency=1, temperature=1.5, sampling_seed=5, ignore_eos=False))
    assert texts(LoadShape(concurrency=1, temperature=1.5, sampling_seed=5, ignore_eos=False)) == seeded
    assert seeded != greedy

"""The load generator against the real HF server on the generated model."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from servingbench.load.chat_client import chat_completion
from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadShape, arrival_offsets, load_test, run_load
from servingbench.measure.soundness import served_problems
from servingbench.servers.process import ServerProcess, free_port

VOCAB = 8192
MODEL = "cpu-llama-36m"


def run(server: ServerProcess, specs, shape: LoadShape, model: str = MODEL, **kw):  # type: ignore[no-untyped-def]
    return asyncio.run(run_load(server.url, model, specs, shape, **kw))


def test_exact_output_lengths_and_sound_records(hf_server: ServerProcess) -> None:
    specs = random_token_prompts(6, 32, 12, VOCAB, seed=1)
    result = run(hf_server, specs, LoadShape(concurrency=2))
    m = result.metrics()
    assert (m.completed, m.failed) == (6, 0), m.errors
    assert [r.output_tokens for r in result.records] == [12] * 6
    assert all(len(r.chunk_times) == 12 for r in result.records)  # one token per chunk on this server
    # usage against what was sent and asked for, and the stamps against the run's own clock (0 < TTFT <= E2EL
    # held by construction: every stamp is taken after the send, and chunks are appended in arrival order)
    assert served_problems(result.records, result.duration) == []
    assert m.total_input_tokens == 6 * 32 and m.total_output_tokens == 72
    assert m.itl.count == 6 * 11


def test_closed_loop_holds_the_requested_concurrency(hf_server: ServerProcess) -> None:
    """4 slots against a one-at-a-time server: exactly 4 requests are ever open, and the waiting is queue time."""
    specs = random_token_prompts(12, 16, 4, VOCAB, seed=2)
    result = run(hf_server, specs, LoadShape(concurrency=4))
    assert result.metrics().failed == 0
    assert result.metrics().max_concurrent_requests == 4
    assert sum(r.queue_time > 0.005 for r in result.records) >= 6  # the last 8 waited for a slot
    # a request waiting for a slot is sent only once a slot is free: after some other request's last token
    queued = [r for r in result.records if r.queue_time > 0.005]
    assert all(any(o.chunk_times[-1] <= r.start for o in result.records if o is not r) for r in queued)


def test_arrival_schedule_has_the_requested_rate_and_burstiness() -> None:
    n, rate = 4000, 8.0
    for k in (1.0, 0.5, 4.0):
        gaps = np.diff(arrival_offsets(n + 1, rate, k, seed=3))
        # mean of n gamma gaps: sd = (1/rate) * CV / sqrt(n), CV = 1/sqrt(k); allow 4 sd
        sd = (1 / rate) / math.sqrt(k) / math.sqrt(n)
        assert abs(gaps.mean() - 1 / rate) < 4 * sd, (k, gaps.mean())
        cv = gaps.std() / gaps.mean()
        assert abs(cv - 1 / math.sqrt(k)) < 0.1 / math.sqrt(k) + 0.05, (k, cv)
    assert arrival_offsets(5, math.inf, 1.0, 0) == [0.0] * 5


def test_open_loop_sends_on_schedule(hf_server: ServerProcess) -> None:
    """Real sends follow the Poisson schedule: achieved rate within 4 sd of the requested one, small lateness."""
    n, rate = 60, 25.0
    specs = random_token_prompts(n, 8, 1, VOCAB, seed=4)
    shape = LoadShape(request_rate=rate, seed=5)
    result = run(hf_server, specs, shape)
    assert result.metrics().failed == 0
    sent = np.array(sorted(r.queued_at for r in result.records))
    achieved = (n - 1) / (sent[-1] - sent[0])
    # the rate estimate (n-1)/T of a Poisson process has relative sd ~ 1/sqrt(n-1)
    assert abs(achieved - rate) / rate < 4 / math.sqrt(n - 1), achieved
    planned = np.array(arrival_offsets(n, rate, 1.0, 5))
    lateness = (sent - sent[0]) - planned
    assert np.median(np.abs(lateness)) < 0.02 and np.abs(lateness).max() < 0.25, lateness.max()


def test_errors_are_counted_not_raised(hf_server: ServerProcess) -> None:
    specs = random_token_prompts(3, 8, 2, VOCAB, seed=6)
    wrong_model = run(hf_server, specs, LoadShape(concurrency=3), model="no-such-model").metrics()
    assert wrong_model.failed == 3 and wrong_model.completed == 0
    assert list(wrong_model.errors) == ["HTTP 404"]
    refused = asyncio.run(run_load(f"http://127.0.0.1:{free_port()}", MODEL, specs, LoadShape())).metrics()
    assert refused.failed == 3 and all(k.startswith("connection") for k in refused.errors)
    slow = random_token_prompts(1, 8, 400, VOCAB, seed=7)
    timed_out = run(hf_server, slow, LoadShape(timeout_s=0.3)).metrics()
    assert timed_out.failed == 1 and "timeout" in next(iter(timed_out.errors))


def test_chat_endpoint_and_lab_shaped_helpers(hf_server: ServerProcess) -> None:
    specs = random_token_prompts(2, 8, 5, VOCAB, seed=8)
    result = run(hf_server, specs, LoadShape(concurrency=2, endpoint="chat"))
    assert result.metrics().failed == 0 and [r.output_tokens for r in result.records] == [5, 5]
    m = load_test(num_requests=4, concurrency=2, prompt_length=16, output_length=6, base_url=hf_server.url,
                  model=MODEL, vocab_size=VOCAB, seed=9)
    assert (m.completed, m.total_output_tokens) == (4, 24)
    chat = chat_completion([{"role": "user", "content": "ba be bi"}], max_tokens=6, base_url=hf_server.url,
                           extra_body={"ignore_eos": True})
    assert chat.completion_tokens == 6 and chat.text
    assert chat.ttft_s is not None and chat.tpot_s is not None
    plain = chat_completion([{"role": "user", "content": "ba be bi"}], max_tokens=6, stream=False,
                            base_url=hf_server.url, extra_body={"ignore_eos": True})
    assert plain.completion_tokens == 6 and plain.text == chat.text  # greedy: same text either way
    # the streamed and the plain path count the same prompt (0 < TTFT <= E2E held by construction)
    assert chat.prompt_tokens is not None and chat.prompt_tokens == plain.prompt_tokens


def test_bad_load_shapes_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        LoadShape(concurrency=0)
    with pytest.raises(ValueError, match="request_rate must be > 0"):
        LoadShape(request_rate=0)
    with pytest.raises(ValueError, match="endpoint must be"):
        LoadShape(endpoint="embeddings")
    with pytest.raises(ValueError, match="prompt_len"):
        random_token_prompts(1, 0, 1, VOCAB)

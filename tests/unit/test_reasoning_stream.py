"""Reasoning streams (issue #26 item 4): vLLM streams a reasoning model's thinking in ``delta.reasoning`` (older
releases: ``delta.reasoning_content``) before the answer in ``delta.content``. Every such chunk is a token (TTFT is
the first), and the record keeps the first answer chunk (TTFAT). The events below are shaped as vLLM's chat stream
sends them: a role-only opening chunk with the first token, reasoning deltas, content deltas, usage, [DONE]. Their
arrival times are set by the test (sleeps of known size between blocks), not measured speeds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from servingbench.load.sse import read_stream
from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.figures.workload import reasoning_figures

GAP_S = 0.03  # between blocks: larger than any scheduling jitter of a test process, so the order is unambiguous


def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


USAGE = b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":6}}\n\n'


def read(blocks: list[bytes]) -> RequestRecord:
    async def stream():  # type: ignore[no-untyped-def]
        for b in blocks:
            await asyncio.sleep(GAP_S)
            yield b

    r = RequestRecord("x", 9, 6, start=0.0)

    async def go() -> None:
        r.start = __import__("time").perf_counter()
        await read_stream(stream(), r, chat=True)

    asyncio.run(go())
    return r


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_chunks_are_tokens_and_the_first_answer_is_kept(field: str) -> None:
    blocks = [event({"role": "assistant", "content": "", field: "Let"}), event({field: " me"}),
              event({field: " think"}), event({"content": "It"}), event({"content": " is"}),
              event({"content": " 4."}, finish="stop"), USAGE, b"data: [DONE]\n\n"]
    r = read(blocks)
    assert r.error is None and len(r.chunk_times) == 6 and r.output_tokens == 6
    assert r.reasoning_chunks == 3 and r.generated_text == "Let me thinkIt is 4."
    assert r.first_answer_at == r.chunk_times[3]  # the first content chunk, not the first reasoning one
    assert r.ttfat is not None and r.ttfat >= r.ttft + 3 * GAP_S * 0.9  # three blocks later


def test_a_plain_stream_has_no_reasoning_and_its_answer_starts_at_the_first_token() -> None:
    r = read([event({"role": "assistant", "content": "It"}), event({"content": " is"}, finish="stop"),
              USAGE, b"data: [DONE]\n\n"])
    assert r.reasoning_chunks == 0 and r.first_answer_at == r.chunk_times[0]


def measurement(records: list[RequestRecord]) -> Measurement:
    return Measurement("k", "vllm", "vllm", {}, {"name": "w"}, compute_metrics(records, 1.0), TelemetrySummary(),
                       records, 0.0, figures=reasoning_figures(records))


def test_ttfat_figures_only_for_reasoning_runs_and_missing_with_the_reason_otherwise() -> None:
    def rec(i: int, reasoning: int, answer_at: float | None) -> RequestRecord:
        return RequestRecord(f"r{i}", 9, 6, start=0.0, chunk_times=[0.1, 0.2, 0.3, 0.4], output_tokens=4,
                             first_answer_at=answer_at, reasoning_chunks=reasoning)

    m = measurement([rec(0, 2, 0.3), rec(1, 1, 0.2), rec(2, 4, None)])  # the third never reached its answer
    assert m.value("median_ttfat_ms") == pytest.approx(250.0) and m.value("median_ttft_ms") == pytest.approx(100.0)
    assert m.value("unanswered_requests") == 1 and m.value("mean_reasoning_chunks") == pytest.approx(7 / 3)
    plain = measurement([rec(0, 0, 0.1)])
    with pytest.raises(MissingFigure, match="no stream carried reasoning.*bound median_ttft_ms instead"):
        plain.value("median_ttfat_ms")
    none_answered = measurement([rec(0, 3, None)])
    with pytest.raises(MissingFigure, match="no request reached its answer past the reasoning"):
        none_answered.value("p99_ttfat_ms")

"""Metric math on constructed records, checked against values computed by hand."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from servingbench.measure.metrics import SLO, Distribution, compute_metrics, max_in_flight
from servingbench.measure.records import RequestRecord
from servingbench.load.sse import read_stream


def rec(rid: str, start: float, chunks: list[float], tokens: int | None, prompt_len: int = 10,
        queued: float | None = None, error: str | None = None) -> RequestRecord:
    return RequestRecord(rid, prompt_len, 8, queued_at=start if queued is None else queued, start=start,
                         chunk_times=chunks, output_tokens=tokens, error=error)


def test_per_request_definitions() -> None:
    r = rec("a", 10.0, [10.2, 10.3, 10.5, 10.6], tokens=4, queued=9.5)
    assert r.ttft == pytest.approx(0.2)
    assert r.e2el == pytest.approx(0.6)
    assert r.tpot == pytest.approx((0.6 - 0.2) / 3)
    assert r.itls == pytest.approx([0.1, 0.2, 0.1])
    assert r.queue_time == pytest.approx(0.5)


def test_several_tokens_in_one_chunk_use_usage_count_for_tpot() -> None:
    # 2 chunks carrying 5 tokens: TPOT divides by usage's N - 1, ITL stays one gap per chunk pair
    r = rec("a", 0.0, [0.1, 0.5], tokens=5)
    assert r.tpot == pytest.approx(0.4 / 4)
    assert r.itls == pytest.approx([0.4])


def test_single_token_has_no_tpot() -> None:
    assert rec("a", 0.0, [0.1], tokens=1).tpot is None


def test_aggregate_hand_computed() -> None:
    records = [
        rec("a", 0.0, [0.1, 0.2, 0.3], tokens=3, prompt_len=10),  # ttft .1 e2el .3 tpot .1
        rec("b", 0.0, [0.3, 0.5, 0.7], tokens=3, prompt_len=20),  # ttft .3 e2el .7 tpot .2
        rec("c", 0.5, [], tokens=None, error="HTTP 500: boom"),
    ]
    m = compute_metrics(records, duration=2.0)
    assert (m.completed, m.failed) == (2, 1)
    assert m.errors == {"HTTP 500": 1}
    assert m.total_input_tokens == 30 and m.total_output_tokens == 6
    assert m.output_throughput == pytest.approx(3.0)
    assert m.request_throughput == pytest.approx(1.0)
    assert m.total_token_throughput == pytest.approx(18.0)
    assert m.ttft.mean == pytest.approx(200.0) and m.ttft.median == pytest.approx(200.0)
    assert m.tpot.mean == pytest.approx(150.0)
    assert m.e2el.max == pytest.approx(700.0)
    # ITL pooled over requests: .1 .1 .2 .2 (ms: 100 100 200 200)
    assert m.itl.mean == pytest.approx(150.0) and m.itl.count == 4
    assert m.itl.percentiles[50] == pytest.approx(150.0)
    assert m.ttft.std == pytest.approx(100.0)
    out = m.to_vllm_json()
    for key in ("completed", "failed", "output_throughput", "mean_ttft_ms", "median_tpot_ms", "p99_itl_ms",
                "std_e2el_ms", "total_input_tokens", "request_throughput", "duration", "max_concurrent_requests"):
        assert key in out
    json.dumps(out)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = [rec("a", 0.0, [0.1, 0.2, 0.3], tokens=3), rec("b", 0.0, [0.3, 0.5, 0.7], tokens=3)]
    assert compute_metrics(records, 2.0, SLO(ttft_ms=250)).request_goodput == pytest.approx(0.5)
    assert compute_metrics(records, 2.0, SLO(ttft_ms=250, tpot_ms=50)).request_goodput == 0.0
    assert compute_metrics(records, 2.0, SLO(e2el_ms=1000)).request_goodput == pytest.approx(1.0)
    assert compute_metrics(records, 2.0).request_goodput is None


def test_failed_requests_do_not_enter_latency() -> None:
    records = [rec("a", 0.0, [0.1, 0.2], tokens=2), rec("b", 0.0, [0.05], tokens=None, error="stream: truncated")]
    m = compute_metrics(records, 1.0)
    assert m.ttft.count == 1 and m.ttft.mean == pytest.approx(100.0)
    assert m.total_output_tokens == 2


def test_output_tokens_fall_back_to_chunk_count_without_usage() -> None:
    m = compute_metrics([rec("a", 0.0, [0.1, 0.2, 0.4], tokens=None)], 1.0)
    assert m.total_output_tokens == 3


def test_empty_distribution_and_zero_duration() -> None:
    d = Distribution.of([])  # missing, never zeros: a zero would pass every max bound (issue 15)
    assert d.count == 0 and math.isnan(d.mean) and math.isnan(d.percentiles[99])
    m = compute_metrics([], 0.0)
    assert m.completed == 0 and math.isnan(m.output_throughput)


def test_max_in_flight() -> None:
    records = [rec("a", 0.0, [1.0], 1), rec("b", 0.5, [1.5], 1), rec("c", 1.0, [2.0], 1), rec("d", 1.2, [1.3], 1)]
    # at t=1.0 a ends as c starts: ends close first, so the peak is b, c, d = 3
    assert max_in_flight(records) == 3


def _stream(*events: str) -> "asyncio.StreamReader":
    async def gen():  # type: ignore[no-untyped-def]
        for e in events:
            yield (e + "\n\n").encode()
    return gen()  # type: ignore[return-value]


def _read(chat: bool, *events: str) -> RequestRecord:
    r = RequestRecord("x", 4, 3, start=0.0)
    asyncio.run(read_stream(_stream(*events), r, chat=chat))
    return r


def chat_chunk(delta: dict, finish: str | None = None) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


USAGE = "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})


def test_role_only_chunk_is_not_the_first_token() -> None:
    r = _read(True, chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "a"}),
              chat_chunk({"content": " b"}), chat_chunk({"content": " c"}, "length"), USAGE, "data: [DONE]")
    assert r.error is None
    assert len(r.chunk_times) == 3
    assert r.output_tokens == 3 and r.generated_text == "a b c"


def test_usage_chunk_does_not_extend_e2el() -> None:
    comp = lambda t: "data: " + json.dumps({"choices": [{"index": 0, "text": t}]})  # noqa: E731
    r = _read(False, comp("a"), comp(" b"), USAGE, "data: [DONE]")
    assert len(r.chunk_times) == 2 and r.output_tokens == 3


def test_truncated_and_malformed_streams_are_failures() -> None:
    comp = "data: " + json.dumps({"choices": [{"index": 0, "text": "a"}]})
    assert _read(False, comp).error.startswith("stream: truncated")
    assert "malformed" in _read(False, comp, "data: {not json", "data: [DONE]").error
    assert "no content" in _read(False, "data: [DONE]").error
    assert "server error" in _read(False, 'data: {"error": {"message": "overloaded"}}', "data: [DONE]").error
    ok = _read(False, ": keep-alive comment", comp, "data: [DONE]")
    assert ok.error is None and ok.success

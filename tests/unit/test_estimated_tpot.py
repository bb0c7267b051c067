"""A server that sends no usage still has a TPOT: from its content chunks, marked as estimated (#28 item 5).

The streams here are read by the suite's own SSE reader from an async byte source with real gaps between events
(a protocol edge case, not a performance figure), so the chunk times are what the client stamped.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from servingbench.load.sse import read_stream
from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.expect.bounds import Bound, check
from servingbench.figures.workload import token_count_notes

GAP_S = 0.03


def _stream(texts: list[str], usage: dict[str, int] | None) -> RequestRecord:
    """A completions stream of ``texts`` with ``GAP_S`` between chunks, then usage (if any) and [DONE]."""
    async def gen():  # type: ignore[no-untyped-def]
        for i, t in enumerate(texts):
            if i:
                await asyncio.sleep(GAP_S)
            yield ("data: " + json.dumps({"choices": [{"index": 0, "text": t, "finish_reason": None}]})
                   + "\n\n").encode()
        if usage is not None:
            yield ("data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n").encode()
        yield b"data: [DONE]\n\n"

    r = RequestRecord("x", 4, len(texts), start=time.perf_counter())
    asyncio.run(read_stream(gen(), r, chat=False))
    assert r.error is None
    return r


def measurement(records: list[RequestRecord]) -> Measurement:
    return Measurement(key="vllm--lab", engine="vllm", config_name="vllm", config={}, workload={},
                       metrics=compute_metrics(records, 1.0), telemetry=TelemetrySummary(), records=records,
                       started_at=0.0)


def test_a_stream_without_usage_has_a_tpot_from_its_chunks_marked_estimated() -> None:
    r = _stream(["a", "b", "c", "d"], usage=None)
    assert r.output_tokens is None and r.output_tokens_estimated
    assert r.tpot == pytest.approx(GAP_S, abs=0.02)  # (E2EL - TTFT) / (4 chunks - 1)
    m = measurement([r])
    assert m.metrics.tpot.count == 1 and m.metrics.tpot_estimated == 1
    assert m.value("median_tpot_ms") == pytest.approx(GAP_S * 1000, abs=20)
    bound = Bound("cpu-2c-amx", "cpu-llama-36m", "vllm", "median_tpot_ms", None, 1000.0, "lab", "test", "t:1")
    assert check(bound, lambda c, w: m, lambda c: None) is None  # a figure, not "no successful requests"


def test_usage_counts_are_not_marked() -> None:
    r = _stream(["a", "b", "c"], usage={"prompt_tokens": 4, "completion_tokens": 3})
    assert not r.output_tokens_estimated
    assert compute_metrics([r], 1.0).tpot_estimated == 0


def test_the_notes_say_which_tpot_is_estimated() -> None:
    estimated = _stream(["a", "b", "c"], usage=None)
    counted = _stream(["a", "b", "c"], usage={"prompt_tokens": 4, "completion_tokens": 3})
    notes = token_count_notes([estimated, counted], exact=True)
    assert any("1 of 2 responses carried no usage.completion_tokens" in n and "TPOT" in n and "estimated" in n
               for n in notes), notes
    assert not any("completion_tokens" in n for n in token_count_notes([counted], exact=True))


def test_the_flag_survives_a_saved_measurement() -> None:
    from servingbench.measure.measurement import measurement_from_dict

    m = measurement([_stream(["a", "b"], usage=None)])
    back = measurement_from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.metrics.tpot_estimated == 1 and m.to_dict()["tpot_estimated"] == 1


def test_one_token_answers_have_no_tpot_and_say_why() -> None:
    """Succeeded, but none long enough for a TPOT: not "no successful requests"."""
    m = measurement([_stream(["a"], usage={"prompt_tokens": 4, "completion_tokens": 1})])
    with pytest.raises(MissingFigure, match=r"median_tpot_ms: none of the 1 successful requests .*two or more"):
        m.value("median_tpot_ms")

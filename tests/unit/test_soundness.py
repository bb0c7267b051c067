"""The lab-load checks can fail: each fault a broken client or server makes is caught (#28 item 13).

perf/test_lab_load.py checked ``ttft > 0`` and ``chunk_times == sorted(chunk_times)``, which hold for any record
the client writes (stamps are taken after the send and appended in arrival order). Each record below passes that
old check and carries a real fault; ``served_problems`` must name it.
"""

from __future__ import annotations

import pytest

from servingbench.measure.records import RequestRecord
from servingbench.measure.soundness import served_problems

PROMPT, OUT = 16, 4


def rec(i: int, *, start: float = 0.0, chunks: int = OUT, output_tokens: int | None = OUT,
        prompt_tokens: int | None = PROMPT, error: str | None = None) -> RequestRecord:
    return RequestRecord(f"r{i}", PROMPT, OUT, queued_at=start, start=start,
                         chunk_times=[start + 0.1 + 0.02 * k for k in range(chunks)], output_tokens=output_tokens,
                         prompt_tokens=prompt_tokens, error=error)


def sound() -> list[RequestRecord]:
    return [rec(0), rec(1, start=0.05)]


DURATION = 0.05 + 0.1 + 0.02 * (OUT - 1) + 0.01  # first send to after the last chunk, on the run's clock


def old_check(records: list[RequestRecord]) -> bool:
    return all(r.ttft > 0 and r.chunk_times == sorted(r.chunk_times) for r in records)


def test_a_sound_run_has_no_problems() -> None:
    assert served_problems(sound(), DURATION) == []


@pytest.mark.parametrize("fault, records, duration, says", [
    ("server stopped early", [rec(0, output_tokens=3, chunks=3), rec(1)], DURATION,
     "1 of 2 requests got another number of tokens than they asked for under ignore_eos (first: r0, usage says 3, "
     "max_tokens was 4)"),
    ("no usage", [rec(0, output_tokens=None), rec(1)], DURATION, "1 of 2 requests carried no usage.completion_tokens"),
    ("prompt garbled on the way", [rec(0, prompt_tokens=17), rec(1)], DURATION,
     "usage.prompt_tokens 17, sent 16 token ids"),
    ("usage chunk counted as a token", [rec(0, chunks=OUT + 1), rec(1)], DURATION,
     "had more content chunks than completion tokens"),
    ("stamps from another clock", [rec(0), rec(1, start=5.0)], DURATION, "the stamps are not on the run's clock"),
])
def test_each_fault_is_named_though_the_old_check_passed_it(fault: str, records: list[RequestRecord],
                                                           duration: float, says: str) -> None:
    assert old_check([r for r in records if r.chunk_times])  # the tautology saw nothing wrong
    problems = served_problems(records, duration)
    assert any(says in p for p in problems), (fault, problems)


def test_free_lengths_and_text_prompts_skip_the_exact_checks() -> None:
    natural = [rec(0, output_tokens=3, chunks=3, prompt_tokens=19), rec(1)]
    assert served_problems(natural, DURATION, exact_output=False, exact_prompt=False) == []
    assert served_problems([rec(0, error="HTTP 500: boom")], DURATION) == [
        "1 of 1 requests failed (first: r0, error 'HTTP 500: boom')"]

"""Checks that a run's records are sound: what a broken client or server would get wrong.

Each check compares two observations that are made independently, so it can fail: the server's ``usage`` against
what the client sent and asked for, the content chunks the client counted against the tokens the server counted,
and the request stamps against the run's own clock (the load generator times the whole run, from before the first
send to after the last completion). Checks that hold by construction are left out: chunk stamps are appended in
arrival order, and every stamp is taken after the send, so "sorted" and "TTFT > 0" cannot fail.
"""

from __future__ import annotations

from typing import Callable, Sequence

from servingbench.measure.records import RequestRecord

# Slack on the run's clock: the same perf_counter, read at other instants; float rounding only
_CLOCK_SLACK_S = 1e-6


def _problem(records: Sequence[RequestRecord], bad: Callable[[RequestRecord], bool], what: str,
             example: Callable[[RequestRecord], str]) -> list[str]:
    hits = [r for r in records if bad(r)]
    if not hits:
        return []
    return [f"{len(hits)} of {len(records)} requests {what} (first: {hits[0].request_id}, {example(hits[0])})"]


def served_problems(records: Sequence[RequestRecord], duration: float, *, exact_output: bool = True,
                    exact_prompt: bool = True) -> list[str]:
    """Why the records of a run are not sound ([] when they are).

    ``exact_output``: the run asked for exact lengths (ignore_eos), so usage.completion_tokens must equal the
    max_tokens sent. ``exact_prompt``: the prompts were token ids, so usage.prompt_tokens must equal the ids sent.
    ``duration``: the run's length on the load generator's clock."""
    out = _problem(records, lambda r: not r.success, "failed", lambda r: f"error {r.error!r}")
    ok = [r for r in records if r.success]
    out += _problem(ok, lambda r: r.output_tokens is None, "carried no usage.completion_tokens",
                    lambda r: f"{len(r.chunk_times)} chunks")
    counted = [r for r in ok if r.output_tokens is not None]
    if exact_output:
        out += _problem(counted, lambda r: r.output_tokens != r.max_tokens,
                        "got another number of tokens than they asked for under ignore_eos",
                        lambda r: f"usage says {r.output_tokens}, max_tokens was {r.max_tokens}")
    if exact_prompt:
        out += _problem(ok, lambda r: r.prompt_tokens != r.prompt_len,
                        "had their prompt counted otherwise by the server than the client sent it",
                        lambda r: f"usage.prompt_tokens {r.prompt_tokens}, sent {r.prompt_len} token ids")
    out += _problem(counted, lambda r: len(r.chunk_times) > (r.output_tokens or 0),
                    "had more content chunks than completion tokens (a chunk without a token was counted: usage, "
                    "role; or the server's count is short)",
                    lambda r: f"{len(r.chunk_times)} chunks for {r.output_tokens} tokens")
    if ok:
        first, last = min(r.start for r in ok), max(r.chunk_times[-1] for r in ok)
        if last - first > duration + _CLOCK_SLACK_S:
            out.append(f"the requests' stamps span {last - first:.6f} s, longer than the run's own clock measured "
                       f"({duration:.6f} s): the stamps are not on the run's clock")
    return out

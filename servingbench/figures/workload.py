"""Figures a workload kind adds to its measurement, and the checks on what the client and server counted.

- Multi-turn chat: TTFT by turn index (``median_ttft_ms_turn1`` ...), which shows what prefix caching does to
  later turns, and the prefix-cache hit rate from the server's ``/metrics`` deltas over the measured part
  (``prefix_cache_hit_rate``) beside the range the histories imply (``expected_prefix_hit_rate_low/high``).
- Trace replay: the same measured hit rate beside the rate the trace's hash_ids imply at the server's block size
  (``expected_prefix_hit_rate``) and the range the run's timing allows (``expected_prefix_hit_rate_low/high``).
- Speculative decoding (a vLLM config with a speculative method): acceptance rate and mean accepted length from
  the server's ``/metrics`` deltas over the measured part (``spec_acceptance_rate``, ``spec_mean_accepted_length``).
- Reasoning streams: time to the first answer token past the reasoning (``median_ttfat_ms``, ``p99_ttfat_ms``).
- Token counts: the figures use the server's ``usage``; where the client's own count (its tokenizer) disagrees,
  the measurement says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from servingbench.load.conversation import expected_hit_range
from servingbench.load.synthetic import Codec
from servingbench.load.trace import hit_figures
from servingbench.measure.records import RequestRecord
from servingbench.measure import telemetry
from servingbench.servers.vllm import (PrefixCounters, SpecCounters, prefix_counters,
                                       spec_counters)


def load_codec(model_path: str) -> Codec | None:
    """The model's tokenizer as a ``Codec``; None when it cannot be loaded here (a remote deployment's model)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_path)
    except Exception:  # noqa: BLE001 - no local tokenizer: the server's usage is then the only count
        return None

    def count_chat(messages: Sequence[Any]) -> int:
        """As vLLM's chat endpoint counts: the template rendered to text, then tokenized without extra specials."""
        text = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return len(tok.encode(text, add_special_tokens=False))

    return Codec(decode=lambda ids: tok.decode(list(ids), skip_special_tokens=True),
                 count_text=lambda text: len(tok.encode(text, add_special_tokens=False)),
                 count_chat=count_chat if getattr(tok, "chat_template", None) else
                 (lambda ms: sum(len(tok.encode(m["content"], add_special_tokens=False)) for m in ms)))


def token_count_notes(records: Sequence[RequestRecord], exact: bool) -> list[str]:
    """A note where the server's prompt-token count disagrees with the client's on some requests (only where the
    client's count is meant to be exact: token ids, or text counted with the model's own tokenizer), and where
    output tokens, and so TPOT, were counted from chunks because the server sent no usage."""
    done = [r for r in records if r.success]
    no_usage = sum(r.output_tokens_estimated for r in done)
    notes = []
    if no_usage:
        notes.append(f"token counts: {no_usage} of {len(done)} responses carried no usage.completion_tokens; their "
                     "output tokens are their content chunks, and their TPOT is estimated from those")
    ok = [r for r in done if r.prompt_len > 0]
    missing = sum(r.prompt_tokens is None for r in ok)
    if missing:
        notes.append(f"token counts: {missing} of {len(ok)} responses carried no usage.prompt_tokens; their input "
                     "tokens are the client's count")
    if not exact:  # the client's figure was an estimate (text without the model's tokenizer)
        return notes
    off = [r for r in ok if r.prompt_tokens is not None and r.prompt_tokens != r.prompt_len]
    if off:
        client, server = sum(r.prompt_len for r in off), sum(r.prompt_tokens or 0 for r in off)
        notes.append(f"token counts: the server tokenized {len(off)} of {len(ok)} prompts differently from the "
                     f"client ({server} tokens where the client counted {client}); the figures use the server's")
    return notes


def turn_figures(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Median and p99 TTFT by turn index, for multi-turn runs; {} otherwise."""
    by_turn: dict[int, list[float]] = {}
    for r in records:
        if r.turn is not None and r.success:
            by_turn.setdefault(r.turn, []).append(r.ttft * 1000.0)
    out: dict[str, float] = {}
    for turn, ttfts in sorted(by_turn.items()):
        out[f"median_ttft_ms_turn{turn}"] = float(np.median(ttfts))
        out[f"p99_ttft_ms_turn{turn}"] = float(np.percentile(ttfts, 99))
    if len(by_turn) > 1:
        first, last = min(by_turn), max(by_turn)
        out["ttft_last_over_first_turn"] = out[f"median_ttft_ms_turn{last}"] / out[f"median_ttft_ms_turn{first}"]
    return out


def reasoning_figures(records: Sequence[RequestRecord]) -> dict[str, float]:
    """Time to the first answer token past the reasoning (median and p99, ms), for a run whose streams carried
    reasoning; {} for any other (its TTFT is already the first answer token). Requests whose answer never came
    (reasoning up to max_tokens) are counted in ``unanswered_requests``, not in the times."""
    done = [r for r in records if r.success]
    if not any(r.reasoning_chunks for r in done):
        return {}
    times = [r.ttfat * 1000.0 for r in done if r.ttfat is not None]
    out: dict[str, float] = {"unanswered_requests": float(len(done) - len(times)),
                             "mean_reasoning_chunks": float(np.mean([r.reasoning_chunks for r in done]))}
    if times:
        out["median_ttfat_ms"], out["p99_ttfat_ms"] = float(np.median(times)), float(np.percentile(times, 99))
    return out


@dataclass
class PrefixWatch:
    """The server's prefix-cache counters around the measured part of a run (after its warm-up)."""

    url: str
    api_key: str | None = None
    before: PrefixCounters | None = None  # None: /metrics could not say at the start, so there is no delta
    spec_before: SpecCounters | None = None  # None: no speculative decoding counters (or /metrics unreachable)
    _end_samples: list[tuple[str, dict[str, str], float]] | None = field(default=None, repr=False)
    _ended: bool = field(default=False, repr=False)

    def start(self) -> None:
        try:
            samples = telemetry.fetch_metrics(self.url, self.api_key)
        except OSError:
            self.before = self.spec_before = None
            return
        try:
            self.before = prefix_counters(samples)
        except ValueError:
            self.before = None
        self.spec_before = spec_counters(samples)

    def _end(self) -> list[tuple[str, dict[str, str], float]] | None:
        """The server's /metrics once, at the end of the run, for both counter sets (None: unreachable)."""
        if not self._ended:
            self._ended = True
            try:
                self._end_samples = telemetry.fetch_metrics(self.url, self.api_key)
            except OSError:
                self._end_samples = None
        return self._end_samples

    def spec_figures(self) -> dict[str, float]:
        """Speculative decoding over the measured part: acceptance rate and mean accepted length; {} for a server
        that does not speculate (the bound on a figure then fails as missing, with the reason)."""
        samples = self._end() if self.spec_before is not None else None
        if samples is None:
            return {}
        try:
            now = spec_counters(samples)
            return (now - self.spec_before).figures() if now is not None else {}
        except ValueError:
            return {}

    def figures(self, records: Sequence[RequestRecord], block_size: Any,
                prompts: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
        """The measured hit rate and what the workload implies: for multi-turn runs the range the histories
        allow, for a trace (``prompts``, in the records' order) the rate its blocks imply and the range the run's
        timing allows; {} where /metrics could not say (the bound on the figure then fails as missing)."""
        samples = self._end() if self.before is not None else None
        if samples is None:
            return {}
        try:
            delta = prefix_counters(samples) - self.before
        except ValueError:
            return {}
        out: dict[str, float] = {"prefix_cache_queries": delta.queries, "prefix_cache_hits": delta.hits}
        if delta.hit_rate is not None:
            out["prefix_cache_hit_rate"] = delta.hit_rate
        if block_size and any(r.turn is not None for r in records):
            low, high = expected_hit_range(records, int(block_size))
            out["expected_prefix_hit_rate_low"], out["expected_prefix_hit_rate_high"] = low, high
        if block_size and prompts is not None:
            out.update(hit_figures(prompts, records, int(block_size)))
        return out

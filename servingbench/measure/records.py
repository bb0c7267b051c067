"""What one request looked like from the client: the raw facts every metric is computed from.

Times are ``time.perf_counter()`` seconds. A record holds only observations (when the request was queued,
sent, when each content chunk arrived, what ``usage`` said); every derived figure lives in ``metrics``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    request_id: str
    prompt_len: int
    max_tokens: int
    queued_at: float = 0.0  # when the load generator took it up (its arrival, as the client saw it)
    start: float = 0.0  # right before the HTTP request was sent
    chunk_times: list[float] = field(default_factory=list)  # arrival of each token chunk (vLLM's definition)
    output_tokens: int | None = None  # usage.completion_tokens, as the server counted them
    prompt_tokens: int | None = None  # usage.prompt_tokens, as the server tokenized the prompt
    scheduled_at: float | None = None  # open loop: when the schedule said it should arrive (None: at once)
    conversation: int | None = None  # multi-turn workloads: which conversation, and which turn (1-based)
    turn: int | None = None
    source: str = ""  # the dataset line it came from, where it came from a file
    generated_text: str = ""
    error: str | None = None
    status: int | None = None  # HTTP status, when one was received
    first_answer_at: float | None = None  # arrival of the first chunk with answer text (not reasoning): TTFAT
    reasoning_chunks: int = 0  # token chunks that carried reasoning (vLLM: delta.reasoning, older reasoning_content)

    @property
    def success(self) -> bool:
        return self.error is None and bool(self.chunk_times)

    @property
    def input_tokens(self) -> int:
        """The server's count of the prompt when it reported one, else the client's."""
        return self.prompt_tokens if self.prompt_tokens is not None else self.prompt_len

    @property
    def schedule_lag(self) -> float:
        """How late the client took the request up against its arrival schedule (open loop); 0 without one."""
        return max(0.0, self.queued_at - self.scheduled_at) if self.scheduled_at is not None else 0.0

    @property
    def queue_time(self) -> float:
        """Client-side wait between arrival and send (concurrency limit); not part of the latency."""
        return max(0.0, self.start - self.queued_at)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start

    @property
    def ttfat(self) -> float | None:
        """Time to the first answer token: past the reasoning, where the stream had any; None before an answer."""
        return self.first_answer_at - self.start if self.first_answer_at is not None else None

    @property
    def e2el(self) -> float:
        """Start to the last token chunk: a trailing usage-only chunk does not extend it."""
        return self.chunk_times[-1] - self.start

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive token chunks (one chunk may carry several tokens)."""
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def output_tokens_estimated(self) -> bool:
        """True when the server sent no usage.completion_tokens: the count is then its content chunks."""
        return self.output_tokens is None

    @property
    def output_token_count(self) -> int:
        """usage.completion_tokens, else the content chunks (one token each, as vLLM streams)."""
        return self.output_tokens if self.output_tokens is not None else len(self.chunk_times)

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (N - 1), defined for N > 1 output tokens; N from usage, else estimated from the
        chunks (``output_tokens_estimated``), so that a server without usage still has a TPOT."""
        n = self.output_token_count
        return (self.e2el - self.ttft) / (n - 1) if n > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RequestRecord":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

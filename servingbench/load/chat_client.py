"""A small user-facing client with the lab's shape: one chat call, with its TTFT and TPOT.

Built on the ``openai`` package because that is what users' applications use. The load generator does not use
it: it speaks HTTP through aiohttp directly, which costs less client CPU per streamed chunk.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from servingbench.measure.records import RequestRecord


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_s: float | None  # first content chunk (streaming only; a role-only chunk does not count)
    tpot_s: float | None  # (E2EL - TTFT) / (N - 1)
    e2e_s: float


def chat_completion(messages: list[dict[str, str]], max_tokens: int = 64, stream: bool = True, *,
                    base_url: str = "http://127.0.0.1:8000", model: str | None = None,
                    api_key: str | None = None, temperature: float = 0.0,
                    extra_body: dict[str, Any] | None = None) -> ChatResult:
    """Send one chat request and time it. ``model`` defaults to the first one the server lists."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url.rstrip("/") + "/v1",
                    api_key=api_key or os.environ.get("SERVINGBENCH_API_KEY") or "EMPTY", max_retries=0)
    model = model or client.models.list().data[0].id
    record = RequestRecord("chat", 0, max_tokens)
    record.start = time.perf_counter()
    if not stream:
        resp = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,  # type: ignore[arg-type]
                                              temperature=temperature, extra_body=extra_body)
        e2e = time.perf_counter() - record.start
        usage = resp.usage
        return ChatResult(resp.choices[0].message.content or "", usage.prompt_tokens if usage else None,
                          usage.completion_tokens if usage else None, None, None, e2e)
    parts: list[str] = []
    prompt_tokens = None
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,  # type: ignore[arg-type]
                                            temperature=temperature, stream=True,
                                            stream_options={"include_usage": True}, extra_body=extra_body)
    for chunk in chunks:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            record.chunk_times.append(now)
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            record.output_tokens = chunk.usage.completion_tokens
            prompt_tokens = chunk.usage.prompt_tokens
    if not record.chunk_times:
        raise RuntimeError(f"{base_url}: the server streamed no content for model {model!r}")
    return ChatResult("".join(parts), prompt_tokens, record.output_tokens, record.ttft, record.tpot, record.e2el)

"""Reading an OpenAI streaming response (server-sent events) into a RequestRecord.

Only chunks that carry content count as tokens arriving: a chat stream's role-only first chunk does not start
TTFT, and the trailing usage chunk (``choices: []``) does not extend E2EL; it only gives ``completion_tokens``.
A stream that ends without ``[DONE]`` or carries a line that is not JSON is a failure with a reason.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterable

from .records import RequestRecord


class StreamError(Exception):
    pass


def chunk_content(data: dict[str, Any], chat: bool) -> str:
    """The text a chunk adds, '' for role-only, finish-only and usage-only chunks."""
    choices = data.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if chat:
        delta = choice.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choice.get("text") or ""


async def iter_events(lines: AsyncIterable[bytes]) -> AsyncIterable[str]:
    """The ``data:`` payloads of an event stream; comments and other fields are skipped."""
    async for raw in lines:
        line = raw.strip()
        if not line or line.startswith(b":"):
            continue
        if line.startswith(b"data:"):
            yield line[5:].strip().decode("utf-8", errors="replace")


async def read_stream(lines: AsyncIterable[bytes], record: RequestRecord, chat: bool) -> None:
    """Fill ``record`` from the stream; sets ``record.error`` on a malformed or truncated stream."""
    done = False
    parts: list[str] = []
    try:
        async for payload in iter_events(lines):
            if payload == "[DONE]":
                done = True
                break
            now = time.perf_counter()
            try:
                data = json.loads(payload)
            except json.JSONDecodeError:
                raise StreamError(f"malformed event: {payload[:120]!r}") from None
            if not isinstance(data, dict):
                raise StreamError(f"malformed event: not an object: {payload[:120]!r}")
            if "error" in data:
                raise StreamError(f"server error in stream: {str(data['error'])[:200]}")
            text = chunk_content(data, chat)
            if text:
                record.chunk_times.append(now)
                parts.append(text)
            usage = data.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                record.output_tokens = int(usage["completion_tokens"])
    except StreamError as e:
        record.error = f"stream: {e}"
    record.generated_text = "".join(parts)
    if record.error is None and not done:
        record.error = "stream: truncated: the connection closed before [DONE]"
    elif record.error is None and not record.chunk_times:
        record.error = "stream: no content: the server sent no token"

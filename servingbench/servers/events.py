"""Server-sent events as OpenAI-compatible servers stream them: one encoder for every server this suite runs
(the HF engine and the SSE peer), so both frame chunks exactly as vLLM does (compact JSON, ``data: ...`` + blank
line)."""

from __future__ import annotations

import json
from typing import Any


def sse_event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()

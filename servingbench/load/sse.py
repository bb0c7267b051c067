"""Reading an OpenAI streaming response (server-sent events) into a RequestRecord.

Every chunk with choices counts as tokens arriving, as ``vllm bench serve`` times them, even when its text is
empty (a token that decodes to "", a finish-only chunk): TTFT is the first, ITL the gaps. Two chunks do not count:
the trailing usage chunk (``choices: []``), which only gives the token counts, and a chat stream's role-only
opening chunk, which a server may send before any token exists (vLLM sends it with the first token, so excluding it
changes nothing there; the HF engine sends it at once).
A stream that ends without ``[DONE]`` or carries a line that is not JSON is a failure with a reason.

Reasoning models stream their reasoning before the answer, in ``delta.reasoning`` (vLLM now) or
``delta.reasoning_content`` (older vLLM, other servers). Those chunks are tokens like any other, so TTFT is the
first of them; ignoring them made TTFT wrong or missing in another client (inference-perf issue #559). The record
also keeps the first chunk with answer text (``first_answer_at``, TTFAT) and how many chunks were reasoning.

The body is read in blocks (whatever the socket delivered, ``iter_any``), not line by line: aiohttp's
``readline`` costs two awaits and its flow-control bookkeeping per line. Against a peer that streams flat out
that was 8-10 us of CPU per chunk, in blocks 4-6 us, vLLM's own benchmark client 5.5-6.7 us
(perf/test_fidelity.py). Every chunk in a block is stamped with the block's arrival time: the bytes arrived
together, and parsing the earlier ones must not delay the later ones.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterable

from servingbench.measure.records import RequestRecord

MAX_LINE_BYTES = 256 * 1024  # a longer line is a broken server: refused, not buffered without end
_decode_json = json.JSONDecoder().decode  # json.loads without its per-call keyword checks


class StreamError(Exception):
    pass


class LineTooLong(Exception):
    """An event line over ``MAX_LINE_BYTES`` (a client-side limit, like aiohttp's own ``LineTooLong``)."""


def chunk_content(data: dict[str, Any], chat: bool) -> str | None:
    """The text a token chunk adds ('' when it decodes to nothing); None for a chunk that is not a token: a
    usage-only chunk, a chat role-only opening chunk, a completions choice without ``text``."""
    choices = data.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    if chat:
        delta = choice.get("delta") or {}
        text = (delta.get("content") or "") + (delta.get("reasoning") or delta.get("reasoning_content") or "")
        if not text and "role" in delta and choice.get("finish_reason") is None:
            return None
        return text
    text = choice.get("text")  # a choice that is not an object fails here, as a counted client error
    if text is None:
        return "" if "text" in choice else None
    return text


def answer_started(data: dict[str, Any], chat: bool, record: RequestRecord) -> bool:
    """For a token chunk with text: count it as reasoning where it carries some, and say whether it carries answer
    text (a completions chunk always does: that endpoint has no reasoning field)."""
    if not chat:
        return True
    delta = data["choices"][0].get("delta") or {}
    if delta.get("reasoning") or delta.get("reasoning_content"):
        record.reasoning_chunks += 1
    return bool(delta.get("content"))


def _blocks(stream: Any) -> AsyncIterable[bytes]:
    """An aiohttp ``StreamReader`` is read in blocks; any other async iterable of bytes is taken as it comes."""
    iter_any = getattr(stream, "iter_any", None)
    return iter_any() if callable(iter_any) else stream


def split_lines(rest: bytes, block: bytes) -> tuple[list[str], bytes]:
    """The complete lines of ``rest + block``, decoded, and the incomplete tail left for the next block.

    Decoding once per block is safe: a line never ends inside a UTF-8 sequence. Undecodable bytes become U+FFFD
    (as before) and fail as malformed JSON where they matter."""
    if rest:
        block = rest + block
    end = block.rfind(b"\n")
    if end < 0:
        if len(block) > MAX_LINE_BYTES:
            raise LineTooLong(f"a line of over {MAX_LINE_BYTES} bytes without a newline")
        return [], block
    return block[:end].decode("utf-8", "replace").split("\n"), block[end + 1:]


async def read_stream(stream: Any, record: RequestRecord, chat: bool) -> None:
    """Fill ``record`` from the stream; sets ``record.error`` on a malformed or truncated stream."""
    done = False
    parts: list[str] = []
    times = record.chunk_times
    rest = b""
    eof = False
    blocks = _blocks(stream).__aiter__()
    try:
        while not (done or eof):  # no async generator in between: this runs once per read of every stream
            try:
                block = await blocks.__anext__()
                now = time.perf_counter()  # the block's arrival: every chunk in it arrived together
                lines, rest = split_lines(rest, block)
            except StopAsyncIteration:  # a last line without a newline still counts (and fails if cut short)
                now, eof = time.perf_counter(), True
                lines, rest = ([rest.decode("utf-8", "replace")] if rest else []), b""
            for raw in lines:  # once per chunk of every stream
                if len(raw) > MAX_LINE_BYTES:
                    raise LineTooLong(f"a line of {len(raw)} characters, over {MAX_LINE_BYTES}")
                line = raw.strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                try:
                    data = _decode_json(payload)
                except json.JSONDecodeError:
                    raise StreamError(f"malformed event: {payload[:120]!r}") from None
                if not isinstance(data, dict):
                    raise StreamError(f"malformed event: not an object: {payload[:120]!r}")
                if "error" in data:
                    raise StreamError(f"server error in stream: {str(data['error'])[:200]}")
                text = chunk_content(data, chat)
                if text is not None:
                    times.append(now)
                    parts.append(text)
                    if text and answer_started(data, chat, record) and record.first_answer_at is None:
                        record.first_answer_at = now
                usage = data.get("usage")
                if isinstance(usage, dict):
                    if usage.get("completion_tokens") is not None:
                        record.output_tokens = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens") is not None:
                        record.prompt_tokens = int(usage["prompt_tokens"])
    except StreamError as e:
        record.error = f"stream: {e}"
    record.generated_text = "".join(parts)
    if record.error is None and not done:
        record.error = "stream: truncated: the connection closed before [DONE]"
    elif record.error is None and not record.chunk_times:
        record.error = "stream: no content: the server sent no token"

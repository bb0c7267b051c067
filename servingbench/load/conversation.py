"""Multi-turn chat: each conversation sends its next user turn after the previous answer arrived, with the whole
history, on the chat endpoint, as a chat application does.

Conversations run side by side (the concurrency is how many are open at once); within one, turns are sequential,
separated by an optional think time. Every turn is one ``RequestRecord`` tagged with its conversation and turn, so
the metrics can be split by turn: later turns carry a longer history, which prefix caching serves from cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from servingbench.load.synthetic import RequestSpec
from servingbench.load.generator import OPEN_LOOP_CONNECTIONS, LoadResult, LoadShape, OpenAIClient, drive
from servingbench.measure.records import RequestRecord


@dataclass(frozen=True)
class Conversation:
    """The user turns of one conversation; the assistant turns are what the server answers."""

    user_turns: tuple[str, ...]
    max_tokens: int
    system: str | None = None
    source: str = ""


def history_tokens(records: Sequence[RequestRecord]) -> list[tuple[int, int, int]]:
    """Per later turn: (prompt tokens, previous turn's prompt tokens, previous turn's output tokens), as the
    server counted them; what the prefix-cache hit rate is checked against."""
    by_conv: dict[int, list[RequestRecord]] = {}
    for r in records:
        if r.conversation is not None and r.success:
            by_conv.setdefault(r.conversation, []).append(r)
    out = []
    for turns in by_conv.values():
        turns.sort(key=lambda r: r.turn or 0)
        for prev, cur in zip(turns, turns[1:]):
            if cur.turn == (prev.turn or 0) + 1:
                out.append((cur.input_tokens, prev.input_tokens, prev.output_token_count))
    return out


def expected_hit_range(records: Sequence[RequestRecord], block_size: int) -> tuple[float, float]:
    """The prefix-cache hit rate the histories imply, as (low, high), in prompt tokens over all prompt tokens.

    A turn's prompt starts with the previous turn's prompt (the chat template renders history as a prefix), so at
    least that prompt's full blocks are found; at most the blocks the previous turn filled (its prompt and all but
    its last answer token, which is never computed), and never the block holding this prompt's last token. First
    turns find nothing: their text is distinct."""
    total = sum(r.input_tokens for r in records if r.success)
    if not total:
        return 0.0, 0.0
    low = high = 0
    for prompt, prev_prompt, prev_out in history_tokens(records):
        low += (prev_prompt // block_size) * block_size
        high += min(((prompt - 1) // block_size) * block_size,
                    ((prev_prompt + prev_out - 1) // block_size) * block_size)
    return low / total, high / total


async def run_conversations(base_url: str, model: str, conversations: Sequence[Conversation], shape: LoadShape,
                            *, think_time_s: float = 0.0, api_key: str | None = None,
                            before_measured: Callable[[], None] | None = None) -> LoadResult:
    """Run every conversation to its end, ``shape.concurrency`` of them at a time (all at once when None)."""
    shape = dataclasses.replace(shape, endpoint="chat")
    records: list[RequestRecord] = []
    async with OpenAIClient(base_url, model, shape, api_key) as client:
        await client.open_connections(min(len(conversations), shape.concurrency or OPEN_LOOP_CONNECTIONS))
        if before_measured is not None:
            before_measured()
        slots = asyncio.Semaphore(shape.concurrency) if shape.concurrency else None

        async def talk(index: int, conv: Conversation) -> None:
            history: list[dict[str, str]] = [{"role": "system", "content": conv.system}] if conv.system else []
            for turn, text in enumerate(conv.user_turns, start=1):
                history.append({"role": "user", "content": text})
                spec = RequestSpec(prompt=text, prompt_len=0, max_tokens=conv.max_tokens,
                                   messages=tuple(history), source=conv.source)
                record = RequestRecord(f"conv-{index}-turn-{turn}", 0, conv.max_tokens, conversation=index,
                                       turn=turn, source=conv.source)
                records.append(record)
                record.queued_at = time.perf_counter()
                await client.send(spec, record)
                if not record.success:
                    return  # the rest of this conversation has no history to build on
                history.append({"role": "assistant", "content": record.generated_text})
                if think_time_s and turn < len(conv.user_turns):
                    await asyncio.sleep(think_time_s)

        async def one(index: int, conv: Conversation) -> None:
            if slots is None:
                await talk(index, conv)
            else:
                async with slots:
                    await talk(index, conv)

        return await drive([one(i, c) for i, c in enumerate(conversations)], records, shape)

"""Trace replay (``kind = "trace"``): a recorded trace's requests, sent at their recorded times.

Each request goes out at its recorded offset from the slice's first, times ``time_scale`` (0.5: twice as fast), on
the open loop's schedule machinery (``LoadShape.offsets``): lateness against it makes the run invalid, as it does
a Poisson run's. Prompts are token ids built so that the trace's prefix sharing is prefix sharing at the server:
block ``h`` of Mooncake's ``hash_ids`` is the same ``block_tokens`` ids wherever it appears (drawn from the run's
seed and ``h``), and whatever a request has beyond its blocks (and every prompt of a trace without hash_ids) is
its own. Lengths scale by ``block_tokens / trace_block_tokens``, rounded up, so a small model's context holds a
trace recorded on a large one while each prompt keeps its number of blocks.

The hit rate the blocks imply, at the server's block granularity (``expected_prefix_hit_rate``), and the range the
run's timing allows (``expected_prefix_hit_rate_low/high``) sit beside the measured ``prefix_cache_hit_rate``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from servingbench.load.dataset_files import MAX_PROBLEMS, DatasetError, _summary
from servingbench.load.synthetic import FIRST_ORDINARY_ID, RequestSpec
from servingbench.load.trace_files import TraceRequest, read_trace
from servingbench.measure.records import RequestRecord

MOONCAKE_BLOCK_TOKENS = 512  # the tokens one Mooncake hash id stands for
_BLOCK, _OWN = 0, 1  # seed namespaces: a shared block's ids, a request's own tokens


@dataclass(frozen=True)
class TraceReplay:
    """What a trace workload sends: one request per trace line of the slice, and when (seconds from the start)."""

    format: str
    specs: list[RequestSpec]
    offsets: tuple[float, ...]

    @property
    def prompts(self) -> list[list[int]]:
        return [list(s.prompt) for s in self.specs]  # token ids: a trace's prompts are never text


def select(requests: Sequence[TraceRequest], start: int, count: int, path: str, name: str) -> list[TraceRequest]:
    """Requests ``start`` .. ``start + count - 1`` of the trace in arrival order; too few is an error with the fix."""
    if start + count > len(requests):
        raise DatasetError(f"{path}: holds {len(requests)} request(s); workload {name!r} asks for trace_start = "
                           f"{start} + num_requests = {count} = {start + count}; lower num_requests or trace_start")
    return list(requests[start:start + count])


def schedule(requests: Sequence[TraceRequest], time_scale: float) -> tuple[float, ...]:
    """Each request's send time: its recorded offset from the first request's, times ``time_scale``."""
    if not time_scale > 0 or not math.isfinite(time_scale):
        raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
    t0 = requests[0].time_s if requests else 0.0
    return tuple((r.time_s - t0) * time_scale for r in requests)


def scaled(tokens: int, scale: float) -> int:
    """A trace length scaled, rounded up (a prompt of k blocks keeps k blocks), at least 1 token."""
    return max(1, math.ceil(tokens * scale - 1e-9))


def block_ids(hash_id: int, block_tokens: int, vocab_size: int, seed: int) -> list[int]:
    """The token ids of trace block ``hash_id`` in a run of ``seed``: the same wherever the block appears."""
    rng = np.random.default_rng([seed, _BLOCK, hash_id])
    return rng.integers(FIRST_ORDINARY_ID, vocab_size, size=block_tokens).tolist()


def build_prompt(req: TraceRequest, index: int, length: int, block_tokens: int, vocab_size: int, seed: int,
                 cache: dict[int, list[int]] | None = None) -> list[int]:
    """``length`` token ids: the request's blocks in order (truncated where its last block is partial), then
    ids of its own (``index`` makes them distinct) where the blocks end before ``length``."""
    cache = {} if cache is None else cache
    ids: list[int] = []
    for h in req.hash_ids or ():
        if len(ids) >= length:
            break
        if h not in cache:
            cache[h] = block_ids(h, block_tokens, vocab_size, seed)
        ids.extend(cache[h])
    if len(ids) < length:
        rng = np.random.default_rng([seed, _OWN, index])
        ids.extend(rng.integers(FIRST_ORDINARY_ID, vocab_size, size=length - len(ids)).tolist())
    return ids[:length]


def replay(path: str | os.PathLike[str], *, vocab_size: int, seed: int, count: int, start: int = 0,
           format: str | None = None, time_scale: float = 1.0, block_tokens: int = MOONCAKE_BLOCK_TOKENS,
           trace_block_tokens: int = MOONCAKE_BLOCK_TOKENS, max_model_len: int | None = None,
           name: str = "trace") -> TraceReplay:
    """The slice of the trace as requests and their schedule. A request that does not fit ``max_model_len`` once
    scaled is an error naming its line and the fix (every such line, up to ten)."""
    if block_tokens < 1 or trace_block_tokens < 1:
        raise ValueError(f"block_tokens and trace_block_tokens must be >= 1, got {block_tokens}, {trace_block_tokens}")
    fmt, requests = read_trace(path, format)
    chosen = select(requests, start, count, os.fspath(path), name)
    scale = block_tokens / trace_block_tokens
    base, cache = Path(path).name, {}
    specs: list[RequestSpec] = []
    problems: list[tuple[int | None, str]] = []
    total = 0
    for i, req in enumerate(chosen):
        prompt_len, max_tokens = scaled(req.input_len, scale), scaled(req.output_len, scale)
        if max_model_len is not None and prompt_len + max_tokens > max_model_len:
            total += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append((req.line, f"input {req.input_len} and output {req.output_len} tokens scale by "
                                           f"block_tokens / trace_block_tokens = {block_tokens}/{trace_block_tokens} "
                                           f"to {prompt_len} + {max_tokens} = {prompt_len + max_tokens} tokens, "
                                           f"which do not fit max_model_len {max_model_len}; lower block_tokens, "
                                           f"start the slice past this line (trace_start), or raise max_model_len"))
            continue
        prompt = build_prompt(req, start + i, prompt_len, block_tokens, vocab_size, seed, cache)
        specs.append(RequestSpec(prompt=prompt, prompt_len=prompt_len, max_tokens=max_tokens,
                                 source=f"{base}:{req.line}"))
    if problems:
        raise DatasetError(_summary(os.fspath(path), problems, total).replace("dataset file", "trace file"), problems)
    return TraceReplay(fmt, specs, schedule(chosen, time_scale))


# -- the prefix-cache hit rate the blocks imply ---------------------------------------------------------------------
def server_blocks(prompt: Sequence[int], block_size: int) -> list[int]:
    """Chained keys of the prompt's full blocks of ``block_size`` tokens, as a prefix cache keys them (block j
    found only with the blocks before it)."""
    keys, h = [], 0
    for j in range(len(prompt) // block_size):
        h = hash((h, tuple(prompt[j * block_size:(j + 1) * block_size])))
        keys.append(h)
    return keys


def _found(keys: Sequence[int], prompt_len: int, block_size: int, present: Callable[[int], bool]) -> int:
    """Tokens served from cache: the leading blocks present, never the block of the last prompt token (the
    server computes that one again for its logits, as vLLM's ``num_tokens - 1`` limit does)."""
    n = 0
    for key in keys[:(prompt_len - 1) // block_size]:
        if not present(key):
            break
        n += 1
    return n * block_size


def expected_hit_rate(prompts: Sequence[Sequence[int]], block_size: int) -> float:
    """Prompt tokens a block-granular prefix cache serves if every request finds every earlier one's blocks
    (send order, nothing evicted), over all prompt tokens: what the trace's hash_ids imply at this block size."""
    total = sum(len(p) for p in prompts)
    seen: set[int] = set()
    hits = 0
    for p in prompts:
        keys = server_blocks(p, block_size)
        hits += _found(keys, len(p), block_size, seen.__contains__)
        seen.update(keys)
    return hits / total if total else 0.0


def hit_range(prompts: Sequence[Sequence[int]], records: Sequence[RequestRecord],
              block_size: int) -> tuple[float, float]:
    """The hit rate the run's timing allows, as (low, high), with nothing evicted. Low: only blocks of requests
    whose first token had arrived before this one was sent (their prompt was in the cache by then). High: blocks
    of any other request sent before this one's first token arrived (the last moment the server could look)."""
    sent = [(p, r) for p, r in zip(prompts, records) if r.start > 0]
    total = sum(len(p) for p, _ in sent)
    if not total:
        return 0.0, 0.0
    keys = [server_blocks(p, block_size) for p, _ in sent]
    starts = [r.start for _, r in sent]
    done_at = [r.start + r.ttft if r.success else math.inf for _, r in sent]
    by_start = sorted(range(len(sent)), key=starts.__getitem__)
    by_done = sorted(range(len(sent)), key=done_at.__getitem__)
    low = high = 0
    cached: set[int] = set()  # low: in start order, the blocks of every request done before this one's start
    k = 0
    for i in by_start:
        while k < len(by_done) and done_at[by_done[k]] <= starts[i]:
            cached.update(keys[by_done[k]])
            k += 1
        low += _found(keys[i], len(sent[i][0]), block_size, cached.__contains__)
    sent_blocks: Counter[int] = Counter()  # high: in first-token order, how many requests sent so far hold a block
    k = 0
    for i in by_done:
        while k < len(by_start) and starts[by_start[k]] < done_at[i]:
            sent_blocks.update(keys[by_start[k]])
            k += 1
        # request i is among them (sent before its own first token): a block counts if another holds it too
        high += _found(keys[i], len(sent[i][0]), block_size, lambda key: sent_blocks[key] >= 2)
    return low / total, high / total


def hit_figures(prompts: Sequence[Sequence[int]], records: Sequence[RequestRecord],
                block_size: int) -> dict[str, float]:
    """The expected figures beside the measured ``prefix_cache_hit_rate``, named as the multi-turn ones are."""
    low, high = hit_range(prompts, records, block_size)
    return {"expected_prefix_hit_rate": expected_hit_rate(prompts, block_size),
            "expected_prefix_hit_rate_low": low, "expected_prefix_hit_rate_high": high}


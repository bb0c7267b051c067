"""Synthetic prompts: random token ids of exact lengths, shared prefixes, and the text codec (files are dataset_files.py).

Prompts are lists of token ids, so their length is exact whatever the tokenizer (vLLM and the HF engine both
take ids on ``/v1/completions``). Each run should draw a fresh ``seed``: replaying the same prompts against a
server with prefix caching on measures the cache, not the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

FIRST_ORDINARY_ID = 16  # skip special ids (unk, bos, eos, pad, role markers) of every tokenizer we build


@dataclass(frozen=True)
class RequestSpec:
    """One request to send. ``prompt_len`` is the client's count (exact for token ids, the local tokenizer's or an
    estimate for text); the figures use the server's ``usage.prompt_tokens`` whenever it reports one."""

    prompt: list[int] | str
    prompt_len: int
    max_tokens: int
    prefix_len: int = 0  # tokens shared with other requests (shared-prefix workloads)
    messages: tuple[dict[str, str], ...] | None = None  # chat history to send on the chat endpoint, when given
    source: str = ""  # where it came from, for error messages: "data.jsonl:12"


@dataclass(frozen=True)
class Codec:
    """The model's tokenizer as the client needs it: ids to text (chat prompts of known tokens), and a text's or a
    chat's token count (the chat template applied), to check against what the server's usage says."""

    decode: Callable[[Sequence[int]], str]
    count_text: Callable[[str], int]
    count_chat: Callable[[Sequence[Mapping[str, str]]], int]


def random_token_prompts(num_requests: int, prompt_len: int, output_len: int, vocab_size: int,
                         seed: int = 0) -> list[RequestSpec]:
    """Distinct prompts of exactly ``prompt_len`` random token ids."""
    if prompt_len < 1 or output_len < 1 or num_requests < 1:
        raise ValueError(f"prompt_len, output_len and num_requests must be >= 1, got "
                         f"{prompt_len}, {output_len}, {num_requests}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(num_requests, prompt_len))
    return [RequestSpec(prompt=row.tolist(), prompt_len=prompt_len, max_tokens=output_len) for row in ids]


def shared_prefix_prompts(num_requests: int, prefix_len: int, suffix_len: int, output_len: int, vocab_size: int,
                          seed: int = 0, num_prefixes: int = 1) -> list[RequestSpec]:
    """A system prompt of ``prefix_len`` tokens shared by every request (round-robin over ``num_prefixes``
    prompts), each followed by a distinct user query of ``suffix_len`` tokens."""
    rng = np.random.default_rng(seed)
    prefixes = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(num_prefixes, prefix_len))
    suffixes = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(num_requests, suffix_len))
    return [
        RequestSpec(prompt=prefixes[i % num_prefixes].tolist() + suffixes[i].tolist(),
                    prompt_len=prefix_len + suffix_len, max_tokens=output_len, prefix_len=prefix_len)
        for i in range(num_requests)
    ]


def expected_prefix_hit_rate(specs: list[RequestSpec], block_size: int, num_prefixes: int = 1) -> float:
    """Fraction of prompt tokens a block-granular prefix cache can serve: every request after the first of each
    prefix reuses the prefix's full blocks."""
    total = sum(s.prompt_len for s in specs)
    if total == 0:
        return 0.0
    reusable = sum((s.prefix_len // block_size) * block_size for s in specs[num_prefixes:])
    return reusable / total

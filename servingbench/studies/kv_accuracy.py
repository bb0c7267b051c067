"""The accuracy cost of a quantized KV cache: the same prompts, scored by two servers, compared.

Each prompt is sent once, greedily (temperature 0), to vLLM's ``/v1/completions`` with ``prompt_logprobs=1``,
``logprobs=1`` and ``return_token_ids``: the server returns, at every prompt position, the log-probability of the
actual next prompt token and its top-1 prediction, and then its greedy continuation with per-token
log-probabilities. Comparing a quantized run with ``auto`` on these gives:

- prompt top-1 agreement: share of prompt positions where both predict the same next token;
- mean / max absolute log-prob difference of the actual prompt tokens (teacher-forced, so every position compares
  the same context);
- greedy exact match: share of prompts whose continuations are identical; greedy token agreement: mean share of
  the continuation before the first differing token (after it the contexts differ, so nothing more compares).

Requests go one at a time, so batching cannot change the numbers; the reference is scored twice to show that the
method itself reads zero difference.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from servingbench.measure.http import open_url
from servingbench.load.synthetic import random_token_prompts


@dataclass(frozen=True)
class ScoredPrompt:
    """One prompt as a server scored it."""

    prompt_ids: tuple[int, ...]
    prompt_logprobs: tuple[float, ...]  # log p(prompt[i] | prompt[:i]) for i = 1..n-1
    prompt_top1: tuple[int, ...]  # argmax prediction at the same positions
    output_ids: tuple[int, ...]  # greedy continuation
    output_logprobs: tuple[float, ...]


@dataclass(frozen=True)
class AccuracyDelta:
    num_prompts: int
    num_prompt_positions: int
    prompt_top1_agreement: float
    prompt_logprob_mae: float
    prompt_logprob_max_abs: float
    greedy_exact_match: float
    greedy_token_agreement: float
    output_logprob_mae: float  # over the common greedy prefix; 0.0 when no prompt has one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_choice(choice: dict[str, Any], prompt_ids: Sequence[int]) -> ScoredPrompt:
    """A ``/v1/completions`` choice requested with prompt_logprobs=1, logprobs=1, return_token_ids=true."""
    entries = choice.get("prompt_logprobs")
    if not entries or len(entries) != len(prompt_ids):
        got = None if entries is None else len(entries)
        raise ValueError(f"prompt_logprobs missing or of the wrong length ({got} for {len(prompt_ids)} prompt "
                         "tokens): does this server support prompt_logprobs on /v1/completions?")
    logprobs, top1 = [], []
    for pos in range(1, len(prompt_ids)):
        entry = {int(k): v for k, v in entries[pos].items()}
        actual = entry.get(prompt_ids[pos])
        if actual is None:
            raise ValueError(f"prompt_logprobs at position {pos} lacks the prompt's own token {prompt_ids[pos]}")
        logprobs.append(float(actual["logprob"]))
        top1.append(min(entry, key=lambda t: (entry[t].get("rank") or math.inf, -entry[t]["logprob"])))
    output_ids = choice.get("token_ids")
    if output_ids is None:
        raise ValueError("the choice has no token_ids: request it with return_token_ids=true")
    out_lp = (choice.get("logprobs") or {}).get("token_logprobs") or []
    return ScoredPrompt(tuple(prompt_ids), tuple(logprobs), tuple(top1), tuple(output_ids),
                        tuple(float(x) for x in out_lp))


def study_prompts(params: Mapping[str, Any], vocab_size: int) -> list[list[int]]:
    """The KV study's fixed prompt set (``num_prompts`` x ``prompt_len`` random ids from ``seed``): one definition,
    so the study and its noise floor (scripts/kv_noise_floor.py) score the same prompts."""
    specs = random_token_prompts(params["num_prompts"], params["prompt_len"], params["output_len"], vocab_size,
                                 params["seed"])
    return [list(s.prompt) for s in specs]  # type: ignore[arg-type]


def score_prompts(base_url: str, model: str, prompts: Sequence[Sequence[int]], max_tokens: int,
                  api_key: str | None = None, timeout_s: float = 120.0) -> list[ScoredPrompt]:
    """Score every prompt on a running vLLM server, one request at a time."""
    out = []
    for ids in prompts:
        body = {"model": model, "prompt": list(ids), "max_tokens": max_tokens, "temperature": 0.0,
                "logprobs": 1, "prompt_logprobs": 1, "return_token_ids": True, "ignore_eos": True}
        with open_url(base_url.rstrip("/") + "/v1/completions", timeout=timeout_s, api_key=api_key,
                      data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}) as resp:
            out.append(parse_choice(json.loads(resp.read())["choices"][0], ids))
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare(reference: Sequence[ScoredPrompt], other: Sequence[ScoredPrompt]) -> AccuracyDelta:
    """How far ``other`` is from ``reference`` on the same prompts (see the module docstring)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"compare needs the same non-empty prompt set on both sides, got {len(reference)} "
                         f"and {len(other)} prompts")
    diffs: list[float] = []
    agree = positions = 0
    exact = 0
    prefix_shares: list[float] = []
    out_diffs: list[float] = []
    for ref, oth in zip(reference, other):
        if ref.prompt_ids != oth.prompt_ids:
            raise ValueError("compare: the two sides scored different prompts")
        diffs += [abs(a - b) for a, b in zip(ref.prompt_logprobs, oth.prompt_logprobs)]
        agree += sum(a == b for a, b in zip(ref.prompt_top1, oth.prompt_top1))
        positions += len(ref.prompt_top1)
        common = _common_prefix(ref.output_ids, oth.output_ids)
        exact += ref.output_ids == oth.output_ids
        prefix_shares.append(common / len(ref.output_ids) if ref.output_ids else 1.0)
        out_diffs += [abs(a - b) for a, b in zip(ref.output_logprobs[:common], oth.output_logprobs[:common])]
    return AccuracyDelta(
        num_prompts=len(reference), num_prompt_positions=positions,
        prompt_top1_agreement=agree / positions if positions else 1.0,
        prompt_logprob_mae=sum(diffs) / len(diffs) if diffs else 0.0,
        prompt_logprob_max_abs=max(diffs, default=0.0),
        greedy_exact_match=exact / len(reference),
        greedy_token_agreement=sum(prefix_shares) / len(prefix_shares),
        output_logprob_mae=sum(out_diffs) / len(out_diffs) if out_diffs else 0.0)

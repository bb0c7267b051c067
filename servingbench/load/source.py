"""What a workload sends: its requests' source, as the table's ``[workloads]`` entry declares it.

A ``RequestSource`` is the request half of a ``Workload`` (``load/workload.py``); how the requests are sent (the
load shape), the rate sweep and the client topology are the other parts. Its requests come from
``load/synthetic.py`` (synthetic token ids), ``load/lengths.py`` (lengths drawn from a distribution),
``load/dataset_files.py`` (JSONL files) or ``load/trace.py`` (a recorded trace), with a seed the session derives.
Kinds:

- ``random``: random token ids, fixed lengths or drawn from ``prompt_dist`` / ``output_dist``;
- ``shared-prefix``: one system prompt (``prefix_len``) and distinct queries;
- ``dataset``: the requests of a JSONL file (``dataset``, ``dataset_format``);
- ``conversation``: multi-turn chat, ``turns`` user turns per conversation (synthetic, or the file's);
- ``trace``: a recorded trace (Mooncake, Azure or BurstGPT) replayed at its timestamps.

Its checks are the workload's (``Workload.problems``: some span parts); ``name`` in the methods below is the
workload's, for messages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from servingbench.load.conversation import Conversation
from servingbench.load.synthetic import (FIRST_ORDINARY_ID, Codec, RequestSpec, random_token_prompts,
                                        shared_prefix_prompts)
from servingbench.load.trace import MOONCAKE_BLOCK_TOKENS, TraceReplay


@dataclass(frozen=True)
class RequestSource:
    num_requests: int  # conversations, for kind "conversation"
    prompt_len: int = 128  # the fixed length, or the mean when prompt_dist gives none; per turn in conversations
    output_len: int = 128
    kind: str = "random"
    prefix_len: int = 0
    num_prefixes: int = 1
    warmup_requests: int = 2
    prompt_dist: Mapping[str, Any] | None = None  # a LengthDist entry: { dist = "lognormal", mean = .., ... }
    output_dist: Mapping[str, Any] | None = None
    dataset: str = ""  # a JSONL file (a trace file, kind "trace"): absolute, or relative to the declaring table
    dataset_format: str | None = None  # "prompt" | "chat" | "sharegpt"; None: detected per line
    turns: int = 1  # conversation: user turns per conversation
    think_time_s: float = 0.0  # conversation: pause between an answer and the next turn
    trace_format: str | None = None  # trace: "mooncake" | "azure" | "burstgpt"; None: detected from the file
    time_scale: float = 1.0  # trace: recorded gaps times this (0.5 replays twice as fast)
    trace_start: int = 0  # trace: the slice starts at this request (0-based, arrival order); num_requests long
    block_tokens: int = MOONCAKE_BLOCK_TOKENS  # trace: tokens sent per trace block; lengths scale by it
    trace_block_tokens: int = MOONCAKE_BLOCK_TOKENS  # trace: tokens one of the trace's hash ids stands for

    def specs(self, vocab_size: int, seed: int, codec: Codec | None = None, max_model_len: int | None = None, *,
              name: str) -> list[RequestSpec]:
        """The measured requests, as token ids (dataset lines: as the file has them). With ``codec`` (the model's
        tokenizer) a dataset's chat lines are counted with the chat template applied; without it (a remote
        deployment) the server's usage is the only count."""
        if self.kind == "dataset":
            return self._dataset_specs(codec, max_model_len, name)
        if self.kind == "trace":  # the prompts only: their send times are trace()'s
            return self.trace(vocab_size, seed, max_model_len, name=name).specs
        if self.kind == "shared-prefix":
            return shared_prefix_prompts(self.num_requests, self.prefix_len, self.prompt_len - self.prefix_len,
                                         self.output_len, vocab_size, seed, self.num_prefixes)
        if self.prompt_dist is not None or self.output_dist is not None:
            from servingbench.load.lengths import synthetic_prompts

            return synthetic_prompts(self.num_requests, self.prompt_lengths(name), self.output_lengths(name),
                                     vocab_size, seed)
        return random_token_prompts(self.num_requests, self.prompt_len, self.output_len, vocab_size, seed)

    def _dataset_specs(self, codec: Codec | None, max_model_len: int | None, name: str) -> list[RequestSpec]:
        from servingbench.load.dataset_files import DatasetError, read_dataset

        specs = read_dataset(self.dataset, format=self.dataset_format,
                             count_tokens=codec.count_text if codec else None, default_output_len=self.output_len,
                             max_model_len=max_model_len)
        if len(specs) < self.num_requests:
            raise DatasetError(f"{self.dataset}: holds {len(specs)} request(s), workload {name!r} asks for "
                               f"num_requests = {self.num_requests}; lower num_requests or add lines")
        specs = specs[:self.num_requests]
        if codec is not None:  # chat lines: the count the server will make, with the chat template applied
            specs = [dataclasses.replace(s, prompt_len=codec.count_chat(s.messages)) if s.messages else s
                     for s in specs]
        return specs

    def conversations(self, vocab_size: int, seed: int, codec: Codec | None = None, *,
                      name: str) -> list[Conversation]:
        """Kind ``conversation``: the file's conversations, or ``num_requests`` synthetic ones of ``turns`` turns
        of ``prompt_len`` tokens each (distinct text, so conversations share no prefix but their own)."""
        if self.dataset:
            from servingbench.load.dataset_files import DatasetError, read_conversations

            convs = read_conversations(self.dataset, format=self.dataset_format,
                                       count_tokens=codec.count_text if codec else None)
            if len(convs) < self.num_requests:
                raise DatasetError(f"{self.dataset}: holds {len(convs)} conversation(s), workload {name!r} "
                                   f"asks for num_requests = {self.num_requests}; lower num_requests or add lines")
            return [Conversation(tuple(turns[:self.turns]), self.output_len, source=f"{self.dataset}#{i + 1}")
                    for i, turns in enumerate(convs[:self.num_requests])]
        rng = np.random.default_rng(seed)
        ids = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(self.num_requests, self.turns, self.prompt_len))
        text = codec.decode if codec else (lambda row: " ".join(map(str, row)))
        return [Conversation(tuple(text(turn.tolist()) for turn in conv), self.output_len) for conv in ids]

    def trace(self, vocab_size: int, seed: int, max_model_len: int | None = None, *, name: str) -> TraceReplay:
        """Kind ``trace``: the slice's requests (token-id prompts, shared blocks shared) and their send times."""
        from servingbench.load.trace import replay

        return replay(self.dataset, vocab_size=vocab_size, seed=seed, count=self.num_requests, start=self.trace_start,
                      format=self.trace_format, time_scale=self.time_scale, block_tokens=self.block_tokens,
                      trace_block_tokens=self.trace_block_tokens, max_model_len=max_model_len, name=name)

    def warmup_specs(self, vocab_size: int, seed: int) -> list[RequestSpec]:
        if not self.warmup_requests:
            return []
        return random_token_prompts(self.warmup_requests, min(self.prompt_len, 512), min(self.output_len, 8),
                                    vocab_size, seed + 1_000_003)

    def prompt_lengths(self, name: str) -> Any:
        from servingbench.load.lengths import LengthDist

        return LengthDist.parse(self.prompt_dist if self.prompt_dist is not None else self.prompt_len,
                                f"workload {name!r} prompt_dist")

    def output_lengths(self, name: str) -> Any:
        from servingbench.load.lengths import LengthDist

        return LengthDist.parse(self.output_dist if self.output_dist is not None else self.output_len,
                                f"workload {name!r} output_dist")

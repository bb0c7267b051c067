"""A workload: what requests to send and how, as the table's ``[workloads]`` entries declare it.

The same entry means the same thing on any hardware; its requests come from ``load/synthetic.py`` (synthetic
token ids), ``load/lengths.py`` (lengths drawn from a distribution) or ``load/dataset_files.py`` (JSONL files),
with a seed the session derives, and its load shape goes to the generator. Kinds:

- ``random``: random token ids, fixed lengths or drawn from ``prompt_dist`` / ``output_dist``;
- ``shared-prefix``: one system prompt (``prefix_len``) and distinct queries;
- ``dataset``: the requests of a JSONL file (``dataset``, ``dataset_format``);
- ``conversation``: multi-turn chat, ``turns`` user turns per conversation (synthetic, or the file's);
- ``trace``: a recorded trace (Mooncake, Azure or BurstGPT) replayed at its timestamps (``load/trace.py``).

A workload with ``rates`` is a request-rate sweep; ``capacity_rps`` is the highest rate whose p99 TTFT and TPOT meet
``slo_ttft_ms`` / ``slo_tpot_ms``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from servingbench.errors import ConfigError
from servingbench.load.conversation import Conversation
from servingbench.load.synthetic import (FIRST_ORDINARY_ID, Codec, RequestSpec, random_token_prompts,
                                        shared_prefix_prompts)
from servingbench.load.generator import LoadShape
from servingbench.load.trace import MOONCAKE_BLOCK_TOKENS, TraceReplay
from servingbench.load.trace_files import TRACE_FORMATS
from servingbench.load.workload_schema import CLIENT_HOSTS, KINDS, entry_problems

# Seconds of arrivals at each rate of a sweep. With a fixed count (40 requests) the arrivals at 16-64 req/s lasted
# 0.6-2.5 s: the queue never reached steady state and capacity came out overstated and dependent on the count
# (issue #28 item 7). 30 s at the rate reaches it at the rates a CPU or a GPU server holds, and a sweep of six
# points stays minutes. num_requests is the floor (a low rate still gets enough requests for its p99).
RATE_SECONDS = 30.0


@dataclass(frozen=True)
class Workload:
    name: str
    num_requests: int  # conversations, for kind "conversation"
    concurrency: int | None
    prompt_len: int = 128  # the fixed length, or the mean when prompt_dist gives none; per turn in conversations
    output_len: int = 128
    request_rate: float = math.inf
    kind: str = "random"
    prefix_len: int = 0
    num_prefixes: int = 1
    warmup_requests: int = 2
    endpoint: str = "completions"
    prompt_dist: Mapping[str, Any] | None = None  # a LengthDist entry: { dist = "lognormal", mean = .., ... }
    output_dist: Mapping[str, Any] | None = None
    dataset: str = ""  # a JSONL file (a trace file, kind "trace"): absolute, or relative to the declaring table
    dataset_format: str | None = None  # "prompt" | "chat" | "sharegpt"; None: detected per line
    ignore_eos: bool = True  # False: natural stops, output lengths from usage
    temperature: float = 0.0
    top_p: float | None = None
    sampling_seed: int | None = None
    burstiness: float = 1.0  # open loop: gamma shape of the gaps; 1 is Poisson
    turns: int = 1  # conversation: user turns per conversation
    think_time_s: float = 0.0  # conversation: pause between an answer and the next turn
    rates: tuple[float, ...] = ()  # a request-rate sweep (open loop), ascending
    slo_ttft_ms: float | None = None  # p99 TTFT and TPOT limits of the capacity search
    slo_tpot_ms: float | None = None
    capacity_steps: int = 3  # bisection steps between the last rate that met the SLO and the first that did not
    rate_seconds: float | None = RATE_SECONDS  # a sweep's run at each rate: rate x this of arrivals (>= num_requests)
    deadline_s: float | None = None  # the run's deadline; None: derived from the workload and the request timeout
    max_schedule_lag_ms: float = 100.0
    max_queue_ms: float = 100.0
    client_workers: int | None = None  # client processes (per node with Ray); None: as the concurrency needs
    client_hosts: str = "local"  # "ray": the workers are Ray actors on the cluster's nodes (load/ray_workers.py)
    max_client_ttft_error_ms: float = 25.0  # runs at >= SELF_TEST_CONCURRENCY: the self-test's bound
    trace_format: str | None = None  # trace: "mooncake" | "azure" | "burstgpt"; None: detected from the file
    time_scale: float = 1.0  # trace: recorded gaps times this (0.5 replays twice as fast)
    trace_start: int = 0  # trace: the slice starts at this request (0-based, arrival order); num_requests long
    block_tokens: int = MOONCAKE_BLOCK_TOKENS  # trace: tokens sent per trace block; lengths scale by it
    trace_block_tokens: int = MOONCAKE_BLOCK_TOKENS  # trace: tokens one of the trace's hash ids stands for

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"workload {self.name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.kind not in KINDS:
            out.append(f"kind {self.kind!r}: use one of {list(KINDS)}")
        for f in ("num_requests", "prompt_len", "output_len", "turns", "num_prefixes"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                out.append(f"{f} must be an integer >= 1, got {v!r}")
        if self.kind == "dataset" and not self.dataset:
            out.append('kind "dataset" needs dataset = "path/to/file.jsonl"')
        if self.dataset and self.kind not in ("dataset", "conversation", "trace"):
            out.append(f'dataset is read by kind "dataset", "conversation" or "trace", not {self.kind!r}')
        out += self._trace_problems()
        if self.dataset_format not in (None, "prompt", "chat", "sharegpt"):
            out.append(f"dataset_format {self.dataset_format!r}: use prompt, chat or sharegpt (or leave it out)")
        if self.kind == "shared-prefix" and not 0 < self.prefix_len < self.prompt_len:
            out.append(f"shared-prefix needs 0 < prefix_len < prompt_len, got {self.prefix_len} and {self.prompt_len}")
        if self.rates:
            if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf for r in self.rates):
                out.append(f"rates must be positive finite numbers, got {list(self.rates)}")
            elif list(self.rates) != sorted(self.rates):
                out.append(f"rates must be ascending, got {list(self.rates)}")
            if self.slo_ttft_ms is None and self.slo_tpot_ms is None:
                out.append("a rate sweep needs an SLO: slo_ttft_ms and/or slo_tpot_ms (p99, milliseconds)")
        if self.rate_seconds is not None and not (isinstance(self.rate_seconds, (int, float))
                                                  and 0 < self.rate_seconds < math.inf):
            out.append(f"rate_seconds must be a positive number of seconds (or left out), got {self.rate_seconds!r}")
        if self.client_workers is not None and (isinstance(self.client_workers, bool)
                                                or not isinstance(self.client_workers, int) or self.client_workers < 1):
            out.append(f"client_workers must be an integer >= 1 (or left out), got {self.client_workers!r}")
        if self.client_hosts not in CLIENT_HOSTS:
            out.append(f"client_hosts {self.client_hosts!r}: use one of {list(CLIENT_HOSTS)}")
        elif self.client_hosts == "ray" and self.kind == "conversation":
            out.append('client_hosts = "ray" does not apply to kind "conversation": multi-turn runs stay in one '
                       "process; remove client_hosts")
        if self.think_time_s < 0 or (self.deadline_s is not None and self.deadline_s <= 0):
            out.append("think_time_s must be >= 0 and deadline_s > 0")
        return out

    def _trace_problems(self) -> list[str]:
        """A trace sets its own arrival times and token-id prompts; its fields mean nothing to another kind."""
        own = {f: getattr(self, f) for f in ("trace_format", "time_scale", "trace_start", "block_tokens",
                                             "trace_block_tokens")}
        if self.kind != "trace":
            set_ = [f for f, v in own.items() if v != _DEFAULTS[f]]
            return [f"{', '.join(set_)}: read by kind \"trace\" only; remove them or set kind = \"trace\""
                    ] if set_ else []
        out = []
        if not self.dataset:
            out.append('kind "trace" needs dataset = "path/to/trace" (a Mooncake .jsonl, an Azure or a BurstGPT .csv)')
        if self.trace_format is not None and self.trace_format not in TRACE_FORMATS:
            out.append(f"trace_format {self.trace_format!r}: use mooncake, azure or burstgpt (or leave it out)")
        if self.rates or not math.isinf(self.request_rate):
            out.append("a trace sends at its recorded times: leave out rates and request_rate (use time_scale)")
        if self.endpoint != "completions":
            out.append('a trace sends token-id prompts (its shared blocks exact) on completions: leave endpoint out')
        if self.dataset_format is not None:
            out.append("dataset_format is for dataset files; a trace's format is trace_format (or detected)")
        ts = self.time_scale
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 < ts < math.inf:
            out.append(f"time_scale must be a positive number (0.5: twice as fast), got {ts!r}")
        for f, low in (("trace_start", 0), ("block_tokens", 1), ("trace_block_tokens", 1)):
            v = own[f]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                out.append(f"{f} must be an integer >= {low}, got {v!r}")
        return out

    # -- requests ------------------------------------------------------------------------------------------
    def specs(self, vocab_size: int, seed: int, codec: Codec | None = None,
              max_model_len: int | None = None) -> list[RequestSpec]:
        """The measured requests. With ``codec`` (the model's tokenizer), chat prompts are real text whose token
        count the client knows; without it (a remote deployment) the server's usage is the only count."""
        if self.kind == "dataset":
            return self._dataset_specs(codec, max_model_len)
        if self.kind == "trace":  # the prompts only: their send times are trace()'s
            return self.trace(vocab_size, seed, max_model_len).specs
        if self.kind == "shared-prefix":
            specs = shared_prefix_prompts(self.num_requests, self.prefix_len, self.prompt_len - self.prefix_len,
                                          self.output_len, vocab_size, seed, self.num_prefixes)
        elif self.prompt_dist is not None or self.output_dist is not None:
            from servingbench.load.lengths import synthetic_prompts

            specs = synthetic_prompts(self.num_requests, self.prompt_lengths(), self.output_lengths(), vocab_size,
                                      seed)
        else:
            specs = random_token_prompts(self.num_requests, self.prompt_len, self.output_len, vocab_size, seed)
        if self.endpoint == "chat" and codec is not None:
            specs = [as_chat(s, codec) for s in specs]
        return specs

    def _dataset_specs(self, codec: Codec | None, max_model_len: int | None) -> list[RequestSpec]:
        from servingbench.load.dataset_files import DatasetError, read_dataset

        specs = read_dataset(self.dataset, format=self.dataset_format,
                             count_tokens=codec.count_text if codec else None, default_output_len=self.output_len,
                             max_model_len=max_model_len)
        if len(specs) < self.num_requests:
            raise DatasetError(f"{self.dataset}: holds {len(specs)} request(s), workload {self.name!r} asks for "
                               f"num_requests = {self.num_requests}; lower num_requests or add lines")
        specs = specs[:self.num_requests]
        if codec is not None:  # chat lines: the count the server will make, with the chat template applied
            specs = [dataclasses.replace(s, prompt_len=codec.count_chat(s.messages)) if s.messages else s
                     for s in specs]
        return specs

    def conversations(self, vocab_size: int, seed: int, codec: Codec | None = None) -> list[Conversation]:
        """Kind ``conversation``: the file's conversations, or ``num_requests`` synthetic ones of ``turns`` turns
        of ``prompt_len`` tokens each (distinct text, so conversations share no prefix but their own)."""
        if self.dataset:
            from servingbench.load.dataset_files import DatasetError, read_conversations

            convs = read_conversations(self.dataset, format=self.dataset_format,
                                       count_tokens=codec.count_text if codec else None)
            if len(convs) < self.num_requests:
                raise DatasetError(f"{self.dataset}: holds {len(convs)} conversation(s), workload {self.name!r} "
                                   f"asks for num_requests = {self.num_requests}; lower num_requests or add lines")
            return [Conversation(tuple(turns[:self.turns]), self.output_len, source=f"{self.dataset}#{i + 1}")
                    for i, turns in enumerate(convs[:self.num_requests])]
        rng = np.random.default_rng(seed)
        ids = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(self.num_requests, self.turns, self.prompt_len))
        text = codec.decode if codec else (lambda row: " ".join(map(str, row)))
        return [Conversation(tuple(text(turn.tolist()) for turn in conv), self.output_len) for conv in ids]

    def trace(self, vocab_size: int, seed: int, max_model_len: int | None = None) -> TraceReplay:
        """Kind ``trace``: the slice's requests (token-id prompts, shared blocks shared) and their send times."""
        from servingbench.load.trace import replay

        return replay(self.dataset, vocab_size=vocab_size, seed=seed, count=self.num_requests, start=self.trace_start,
                      format=self.trace_format, time_scale=self.time_scale, block_tokens=self.block_tokens,
                      trace_block_tokens=self.trace_block_tokens, max_model_len=max_model_len, name=self.name)

    def warmup_specs(self, vocab_size: int, seed: int) -> list[RequestSpec]:
        if not self.warmup_requests:
            return []
        return random_token_prompts(self.warmup_requests, min(self.prompt_len, 512), min(self.output_len, 8),
                                    vocab_size, seed + 1_000_003)

    def prompt_lengths(self) -> Any:
        from servingbench.load.lengths import LengthDist

        return LengthDist.parse(self.prompt_dist if self.prompt_dist is not None else self.prompt_len,
                                f"workload {self.name!r} prompt_dist")

    def output_lengths(self) -> Any:
        from servingbench.load.lengths import LengthDist

        return LengthDist.parse(self.output_dist if self.output_dist is not None else self.output_len,
                                f"workload {self.name!r} output_dist")

    # -- how ------------------------------------------------------------------------------------------------
    def shape(self, seed: int, timeout_s: float, offsets: tuple[float, ...] | None = None) -> LoadShape:
        """How it is sent; ``offsets``: a trace's recorded schedule (open loop at those times)."""
        span = max(offsets, default=0.0) if offsets else 0.0  # a trace's last arrival
        deadline = self.deadline_s or self.derived_deadline(timeout_s) + span
        return LoadShape(concurrency=self.concurrency, request_rate=self.request_rate, burstiness=self.burstiness,
                         timeout_s=timeout_s, seed=seed, endpoint="chat" if self.kind == "conversation" else self.endpoint,
                         ignore_eos=self.ignore_eos, temperature=self.temperature, top_p=self.top_p,
                         sampling_seed=self.sampling_seed, deadline_s=deadline,
                         max_schedule_lag_ms=self.max_schedule_lag_ms, max_queue_ms=self.max_queue_ms,
                         offsets=offsets)

    def derived_deadline(self, timeout_s: float) -> float:
        """One request timeout, plus every request served one after another at a slow 50 ms per output token and
        1 ms per prompt token: far past any healthy run (the sequential HF engine included), far short of the
        ceil(N / C) x timeout a wedged server would otherwise cost."""
        requests = self.num_requests * (self.turns if self.kind == "conversation" else 1)
        per_request = 0.05 * self.output_len + 0.001 * self.prompt_len * self.turns + self.think_time_s
        return timeout_s + requests * per_request

    def workers(self) -> int:
        """How many client processes drive it: ``client_workers``, or as many as the concurrency needs
        (``STREAMS_PER_WORKER`` streams each, at most the cores less one); multi-turn runs stay in one process."""
        if self.kind == "conversation":
            return 1
        if self.client_workers is not None:
            return self.client_workers
        from servingbench.load.workers import default_workers

        return default_workers(self.concurrency or self.num_requests)

    def replace(self, **changes: Any) -> "Workload":
        return dataclasses.replace(self, **changes)

    def at_rate(self, rate: float) -> "Workload":
        """One point of this workload's rate sweep: open loop at ``rate``, no cap on requests in flight, sized by
        duration (``rate_seconds`` of arrivals, at least ``num_requests``) so that each rate runs as long."""
        n = self.num_requests if self.rate_seconds is None else max(self.num_requests,
                                                                     math.ceil(rate * self.rate_seconds))
        return self.replace(request_rate=float(rate), rates=(), concurrency=None, num_requests=n)

    @property
    def sends_text(self) -> bool:
        """Whether prompts go out as text (dataset lines, conversations, chat messages): only then does the
        client need the model's tokenizer, and only with it are its token counts exact."""
        return self.kind in ("dataset", "conversation") or self.endpoint == "chat"

    @property
    def label(self) -> str:
        rate = "" if math.isinf(self.request_rate) else f"-rate{self.request_rate:g}"
        conc = f"c{self.concurrency}" if self.concurrency else "cinf"
        base = f"{self.name}-n{self.num_requests}-{conc}{rate}-p{self.prompt_len}-o{self.output_len}"
        extra = self._extra_fields()
        if not extra:  # the labels of the workloads that existed before these fields: saved keys still match
            return base
        return base + "-" + hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def _extra_fields(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            if f.name in _LABEL_FIELDS or f.name == "name":
                continue
            v = getattr(self, f.name)
            if v != f.default:
                out[f.name] = Path(v).name if f.name == "dataset" else v
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["request_rate"] = None if math.isinf(self.request_rate) else self.request_rate
        d["rates"] = list(self.rates)
        return d


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Workload)}
# The fields the label spelled out before workloads had more; the others go into its hash.
_LABEL_FIELDS = {"num_requests", "concurrency", "request_rate", "prompt_len", "output_len", "kind", "prefix_len",
                 "num_prefixes", "warmup_requests", "endpoint"}


def as_chat(spec: RequestSpec, codec: Codec) -> RequestSpec:
    """A token-id request as a chat message of the same tokens, counted with the chat template applied."""
    text = codec.decode(list(spec.prompt)) if not isinstance(spec.prompt, str) else spec.prompt
    messages = ({"role": "user", "content": text},)
    return dataclasses.replace(spec, prompt=text, prompt_len=codec.count_chat(messages), messages=messages)


def workload_from(name: str, entry: Mapping[str, Any], base_dir: Path | None = None) -> Workload:
    """A table entry as a Workload; a relative ``dataset`` path is taken from ``base_dir`` (the table's folder).

    Every problem at once, in one ConfigError: each field's type and range (``workload_schema.WorkloadEntry``),
    the checks across fields (``Workload.problems``, run with a placeholder where a field was wrong, so they are
    not lost behind it) and the length distributions'."""
    problems, wrong = entry_problems(entry)
    entry = dict(entry)  # the entry's own values: a checked value is never coerced (the label hashes them)
    if isinstance(entry.get("rates"), list):
        entry["rates"] = tuple(entry["rates"])
    if isinstance(entry.get("request_rate"), str) and entry["request_rate"] == "inf":
        entry["request_rate"] = math.inf
    if entry.get("dataset") and base_dir is not None and not Path(entry["dataset"]).expanduser().is_absolute():
        entry["dataset"] = str(base_dir / entry["dataset"])
    fields = {f.name: f for f in dataclasses.fields(Workload)}
    known = {k: v for k, v in entry.items() if k in fields and k not in wrong}
    placeholders = {k: 1 for k in ("num_requests", "concurrency") if k not in known}
    trial = Workload.__new__(Workload)  # the cross-field checks on what is right, without raising on the first
    for f in fields.values():
        default = f.default if f.default is not dataclasses.MISSING else None
        object.__setattr__(trial, f.name, {**placeholders, **known}.get(f.name, default))
    object.__setattr__(trial, "name", name)
    problems += trial.problems()
    for dist in ("prompt_dist", "output_dist"):
        if dist in known:
            try:
                (trial.prompt_lengths if dist == "prompt_dist" else trial.output_lengths)()
            except ConfigError as e:
                problems.append(str(e).removeprefix(f"workload {name!r} "))
    if problems:
        raise ConfigError(f"workload {name!r}: " + "; ".join(dict.fromkeys(problems)))
    return Workload(name=name, **entry)


def single_stream(workload: Workload) -> Workload:
    """The same requests one at a time: the denominator of batch efficiency."""
    return workload.replace(concurrency=1, num_requests=min(8, workload.num_requests), request_rate=float("inf"),
                            rates=())

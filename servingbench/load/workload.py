"""A workload: what requests to send and how, as the table's ``[workloads]`` entries declare it.

The same entry means the same thing on any hardware. The table's entry is flat (``load/workload_schema.py`` types
it); a ``Workload`` is its name and four parts, each field in exactly one:

- ``source`` (``load/source.py``'s ``RequestSource``): what requests to send: the kind (random, shared-prefix,
  dataset, conversation, trace), counts, lengths, the dataset or trace file;
- ``load`` (the generator's ``LoadShape``): how they are sent: concurrency, rate, burstiness, endpoint, sampling,
  the deadline and the validity bounds; its runtime fields (seed, timeout, a trace's offsets) are set by ``shape``;
- ``sweep`` (``Sweep``): a request-rate sweep: ``capacity_rps`` is the highest rate whose p99 TTFT and TPOT meet
  ``slo_ttft_ms`` / ``slo_tpot_ms``;
- ``client`` (``ClientTopology``): how many client processes drive it, and where.

``Workload.of`` and ``Workload.replace`` take the table's flat field names (``FLAT`` routes each to its part), and
``label`` and ``to_dict`` are computed over them: saved measurements are found by the label, and baselines
compare the flat dict field by field (``tests/unit/test_workload_split.py`` pins both).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from servingbench.errors import ConfigError
from servingbench.load.conversation import Conversation
from servingbench.load.generator import LoadShape
from servingbench.load.source import RequestSource
from servingbench.load.synthetic import Codec, RequestSpec
from servingbench.load.trace import TraceReplay
from servingbench.load.trace_files import TRACE_FORMATS
from servingbench.load.workload_schema import CLIENT_HOSTS, KINDS, entry_problems

# Seconds of arrivals at each rate of a sweep. With a fixed count (40 requests) the arrivals at 16-64 req/s lasted
# 0.6-2.5 s: the queue never reached steady state and capacity came out overstated and dependent on the count
# (issue #28 item 7). 30 s at the rate reaches it at the rates a CPU or a GPU server holds, and a sweep of six
# points stays minutes. num_requests is the floor (a low rate still gets enough requests for its p99).
RATE_SECONDS = 30.0


@dataclass(frozen=True)
class Sweep:
    """A request-rate sweep (open loop) and the SLO its capacity search holds; no ``rates``: no sweep."""

    rates: tuple[float, ...] = ()  # ascending
    rate_seconds: float | None = RATE_SECONDS  # the run at each rate: rate x this of arrivals (>= num_requests)
    slo_ttft_ms: float | None = None  # p99 TTFT and TPOT limits of the capacity search
    slo_tpot_ms: float | None = None
    capacity_steps: int = 3  # bisection steps between the last rate that met the SLO and the first that did not


@dataclass(frozen=True)
class ClientTopology:
    """The client processes that drive the load, and where they run."""

    workers: int | None = None  # client processes (per node with Ray); None: as the concurrency needs
    hosts: str = "local"  # "ray": the workers are Ray actors on the cluster's nodes (load/ray_workers.py)
    max_ttft_error_ms: float = 25.0  # runs at >= SELF_TEST_CONCURRENCY: the self-test's bound


PARTS: dict[str, type] = {"source": RequestSource, "load": LoadShape, "sweep": Sweep, "client": ClientTopology}
# The table's flat field -> (part, the part's field), in the order of to_dict (the order saved files have).
FLAT: dict[str, tuple[str, str]] = {
    "num_requests": ("source", "num_requests"), "concurrency": ("load", "concurrency"),
    "prompt_len": ("source", "prompt_len"), "output_len": ("source", "output_len"),
    "request_rate": ("load", "request_rate"), "kind": ("source", "kind"), "prefix_len": ("source", "prefix_len"),
    "num_prefixes": ("source", "num_prefixes"), "warmup_requests": ("source", "warmup_requests"),
    "endpoint": ("load", "endpoint"), "prompt_dist": ("source", "prompt_dist"),
    "output_dist": ("source", "output_dist"), "dataset": ("source", "dataset"),
    "dataset_format": ("source", "dataset_format"), "ignore_eos": ("load", "ignore_eos"),
    "temperature": ("load", "temperature"), "top_p": ("load", "top_p"), "sampling_seed": ("load", "sampling_seed"),
    "burstiness": ("load", "burstiness"), "turns": ("source", "turns"), "think_time_s": ("source", "think_time_s"),
    "rates": ("sweep", "rates"), "slo_ttft_ms": ("sweep", "slo_ttft_ms"), "slo_tpot_ms": ("sweep", "slo_tpot_ms"),
    "capacity_steps": ("sweep", "capacity_steps"), "rate_seconds": ("sweep", "rate_seconds"),
    "deadline_s": ("load", "deadline_s"), "max_schedule_lag_ms": ("load", "max_schedule_lag_ms"),
    "max_queue_ms": ("load", "max_queue_ms"), "client_workers": ("client", "workers"),
    "client_hosts": ("client", "hosts"), "max_client_ttft_error_ms": ("client", "max_ttft_error_ms"),
    "trace_format": ("source", "trace_format"), "time_scale": ("source", "time_scale"),
    "trace_start": ("source", "trace_start"), "block_tokens": ("source", "block_tokens"),
    "trace_block_tokens": ("source", "trace_block_tokens"),
}
REQUIRED = ("num_requests", "concurrency")  # flat fields every entry gives (concurrency may be None)
RUNTIME = ("timeout_s", "seed", "offsets")  # LoadShape fields no entry declares: shape() sets them per run


@dataclass(frozen=True)
class Workload:
    name: str
    source: RequestSource
    load: LoadShape
    sweep: Sweep = Sweep()
    client: ClientTopology = ClientTopology()

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"workload {self.name!r}: " + "; ".join(problems))

    @classmethod
    def of(cls, name: str, num_requests: int, concurrency: int | None, **flat: Any) -> "Workload":
        """A workload from the table's flat fields (``FLAT``); an unknown field is a ConfigError naming it."""
        return cls(name, **_parts({"num_requests": num_requests, "concurrency": concurrency, **flat}, name))

    def flat(self) -> dict[str, Any]:
        """The table's fields and their values (no name), in ``FLAT``'s order."""
        return {f: getattr(getattr(self, part), attr) for f, (part, attr) in FLAT.items()}

    def replace(self, **changes: Any) -> "Workload":
        """This workload with some flat fields (or ``name``) changed; each goes to its part."""
        name = changes.pop("name", self.name)
        return Workload.of(name, **{**self.flat(), **changes})

    def problems(self) -> list[str]:
        s, load, sweep, client = self.source, self.load, self.sweep, self.client
        out = []
        if s.kind not in KINDS:
            out.append(f"kind {s.kind!r}: use one of {list(KINDS)}")
        for f in ("num_requests", "prompt_len", "output_len", "turns", "num_prefixes"):
            v = getattr(s, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                out.append(f"{f} must be an integer >= 1, got {v!r}")
        if s.kind == "dataset" and not s.dataset:
            out.append('kind "dataset" needs dataset = "path/to/file.jsonl"')
        if s.dataset and s.kind not in ("dataset", "conversation", "trace"):
            out.append(f'dataset is read by kind "dataset", "conversation" or "trace", not {s.kind!r}')
        out += self._trace_problems()
        if s.dataset_format not in (None, "prompt", "chat", "sharegpt"):
            out.append(f"dataset_format {s.dataset_format!r}: use prompt, chat or sharegpt (or leave it out)")
        if s.kind == "shared-prefix" and not 0 < s.prefix_len < s.prompt_len:
            out.append(f"shared-prefix needs 0 < prefix_len < prompt_len, got {s.prefix_len} and {s.prompt_len}")
        if sweep.rates:
            if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf
                       for r in sweep.rates):
                out.append(f"rates must be positive finite numbers, got {list(sweep.rates)}")
            elif list(sweep.rates) != sorted(sweep.rates):
                out.append(f"rates must be ascending, got {list(sweep.rates)}")
            if sweep.slo_ttft_ms is None and sweep.slo_tpot_ms is None:
                out.append("a rate sweep needs an SLO: slo_ttft_ms and/or slo_tpot_ms (p99, milliseconds)")
        if sweep.rate_seconds is not None and not (isinstance(sweep.rate_seconds, (int, float))
                                                   and 0 < sweep.rate_seconds < math.inf):
            out.append(f"rate_seconds must be a positive number of seconds (or left out), got {sweep.rate_seconds!r}")
        if client.workers is not None and (isinstance(client.workers, bool)
                                           or not isinstance(client.workers, int) or client.workers < 1):
            out.append(f"client_workers must be an integer >= 1 (or left out), got {client.workers!r}")
        if client.hosts not in CLIENT_HOSTS:
            out.append(f"client_hosts {client.hosts!r}: use one of {list(CLIENT_HOSTS)}")
        elif client.hosts == "ray" and s.kind == "conversation":
            out.append('client_hosts = "ray" does not apply to kind "conversation": multi-turn runs stay in one '
                       "process; remove client_hosts")
        if s.think_time_s < 0 or (load.deadline_s is not None and load.deadline_s <= 0):
            out.append("think_time_s must be >= 0 and deadline_s > 0")
        return out

    def _trace_problems(self) -> list[str]:
        """A trace sets its own arrival times and token-id prompts; its fields mean nothing to another kind."""
        s = self.source
        own = {f: getattr(s, f) for f in ("trace_format", "time_scale", "trace_start", "block_tokens",
                                          "trace_block_tokens")}
        if s.kind != "trace":
            set_ = [f for f, v in own.items() if v != DEFAULTS[f]]
            return [f"{', '.join(set_)}: read by kind \"trace\" only; remove them or set kind = \"trace\""
                    ] if set_ else []
        out = []
        if not s.dataset:
            out.append('kind "trace" needs dataset = "path/to/trace" (a Mooncake .jsonl, an Azure or a BurstGPT .csv)')
        if s.trace_format is not None and s.trace_format not in TRACE_FORMATS:
            out.append(f"trace_format {s.trace_format!r}: use mooncake, azure or burstgpt (or leave it out)")
        if self.sweep.rates or not math.isinf(self.load.request_rate):
            out.append("a trace sends at its recorded times: leave out rates and request_rate (use time_scale)")
        if self.load.endpoint != "completions":
            out.append('a trace sends token-id prompts (its shared blocks exact) on completions: leave endpoint out')
        if s.dataset_format is not None:
            out.append("dataset_format is for dataset files; a trace's format is trace_format (or detected)")
        ts = s.time_scale
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 < ts < math.inf:
            out.append(f"time_scale must be a positive number (0.5: twice as fast), got {ts!r}")
        for f, low in (("trace_start", 0), ("block_tokens", 1), ("trace_block_tokens", 1)):
            v = own[f]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                out.append(f"{f} must be an integer >= {low}, got {v!r}")
        return out

    # -- requests: the source's, named after this workload in messages ---------------------------------------
    def specs(self, vocab_size: int, seed: int, codec: Codec | None = None,
              max_model_len: int | None = None) -> list[RequestSpec]:
        """The measured requests. With ``codec`` (the model's tokenizer), chat prompts are real text whose token
        count the client knows; without it (a remote deployment) the server's usage is the only count."""
        specs = self.source.specs(vocab_size, seed, codec, max_model_len, name=self.name)
        if self.load.endpoint == "chat" and codec is not None and self.source.kind not in ("dataset", "trace"):
            specs = [as_chat(s, codec) for s in specs]
        return specs

    def conversations(self, vocab_size: int, seed: int, codec: Codec | None = None) -> list[Conversation]:
        return self.source.conversations(vocab_size, seed, codec, name=self.name)

    def trace(self, vocab_size: int, seed: int, max_model_len: int | None = None) -> TraceReplay:
        return self.source.trace(vocab_size, seed, max_model_len, name=self.name)

    def warmup_specs(self, vocab_size: int, seed: int) -> list[RequestSpec]:
        return self.source.warmup_specs(vocab_size, seed)

    @property
    def sends_text(self) -> bool:
        """Whether prompts go out as text (dataset lines, conversations, chat messages): only then does the
        client need the model's tokenizer, and only with it are its token counts exact."""
        return self.source.kind in ("dataset", "conversation") or self.load.endpoint == "chat"

    # -- how ------------------------------------------------------------------------------------------------
    def shape(self, seed: int, timeout_s: float, offsets: tuple[float, ...] | None = None) -> LoadShape:
        """How it is sent: the declared shape with this run's seed and timeout, the deadline (declared, or
        derived) and the chat endpoint for conversations; ``offsets``: a trace's recorded schedule."""
        span = max(offsets, default=0.0) if offsets else 0.0  # a trace's last arrival
        deadline = self.load.deadline_s or self.derived_deadline(timeout_s) + span
        endpoint = "chat" if self.source.kind == "conversation" else self.load.endpoint
        return dataclasses.replace(self.load, timeout_s=timeout_s, seed=seed, endpoint=endpoint, deadline_s=deadline,
                                   offsets=offsets)

    def derived_deadline(self, timeout_s: float) -> float:
        """One request timeout, plus every request served one after another at a slow 50 ms per output token and
        1 ms per prompt token: far past any healthy run (the sequential HF engine included), far short of the
        ceil(N / C) x timeout a wedged server would otherwise cost."""
        s = self.source
        requests = s.num_requests * (s.turns if s.kind == "conversation" else 1)
        per_request = 0.05 * s.output_len + 0.001 * s.prompt_len * s.turns + s.think_time_s
        return timeout_s + requests * per_request

    def workers(self) -> int:
        """How many client processes drive it: ``client.workers``, or as many as the concurrency needs
        (``STREAMS_PER_WORKER`` streams each, at most the cores less one); multi-turn runs stay in one process."""
        if self.source.kind == "conversation":
            return 1
        if self.client.workers is not None:
            return self.client.workers
        from servingbench.load.workers import default_workers

        return default_workers(self.load.concurrency or self.source.num_requests)

    def at_rate(self, rate: float) -> "Workload":
        """One point of this workload's rate sweep: open loop at ``rate``, no cap on requests in flight, sized by
        duration (``rate_seconds`` of arrivals, at least ``num_requests``) so that each rate runs as long."""
        n, seconds = self.source.num_requests, self.sweep.rate_seconds
        n = n if seconds is None else max(n, math.ceil(rate * seconds))
        return self.replace(request_rate=float(rate), rates=(), concurrency=None, num_requests=n)

    # -- what is saved: over the flat fields, as before the split --------------------------------------------
    @property
    def label(self) -> str:
        s, load = self.source, self.load
        rate = "" if math.isinf(load.request_rate) else f"-rate{load.request_rate:g}"
        conc = f"c{load.concurrency}" if load.concurrency else "cinf"
        base = f"{self.name}-n{s.num_requests}-{conc}{rate}-p{s.prompt_len}-o{s.output_len}"
        extra = self._extra_fields()
        if not extra:  # the labels of the workloads that existed before these fields: saved keys still match
            return base
        return base + "-" + hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def _extra_fields(self) -> dict[str, Any]:
        return {f: Path(v).name if f == "dataset" else v for f, v in self.flat().items()
                if f not in _LABEL_FIELDS and v != DEFAULTS[f]}

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, **copy.deepcopy(self.flat())}
        d["request_rate"] = None if math.isinf(self.load.request_rate) else self.load.request_rate
        d["rates"] = list(self.sweep.rates)
        return d


def _default(part: str, attr: str) -> Any:
    f = next(f for f in dataclasses.fields(PARTS[part]) if f.name == attr)
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


# Each flat field's default (the required ones: what their part has, unused).
DEFAULTS = {f: _default(part, attr) for f, (part, attr) in FLAT.items()}
# The fields the label spelled out before workloads had more; the others go into its hash.
_LABEL_FIELDS = {"num_requests", "concurrency", "request_rate", "prompt_len", "output_len", "kind", "prefix_len",
                 "num_prefixes", "warmup_requests", "endpoint"}


def _parts(flat: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The parts' keyword arguments from flat fields; an unknown field or a load shape the generator refuses is
    a ConfigError."""
    unknown = [f for f in flat if f not in FLAT]
    if unknown:
        raise ConfigError(f"workload {name!r}: unknown field(s) {', '.join(map(repr, unknown))}; "
                          f"the fields are {', '.join(FLAT)}")
    by_part: dict[str, dict[str, Any]] = {part: {} for part in PARTS}
    for f, v in flat.items():
        part, attr = FLAT[f]
        by_part[part][attr] = v
    try:
        return {part: PARTS[part](**kw) for part, kw in by_part.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"workload {name!r}: {e}") from None


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
    known = {k: v for k, v in entry.items() if k in FLAT and k not in wrong}
    placeholders = {k: 1 for k in REQUIRED if k not in known}
    trial = Workload.__new__(Workload)  # the cross-field checks on what is right, without raising on the first
    for part, value in _parts({**placeholders, **known}, name).items():
        object.__setattr__(trial, part, value)
    object.__setattr__(trial, "name", name)
    problems += trial.problems()
    for dist in ("prompt_dist", "output_dist"):
        if dist in known:
            try:
                (trial.source.prompt_lengths if dist == "prompt_dist" else trial.source.output_lengths)(name)
            except ConfigError as e:
                problems.append(str(e).removeprefix(f"workload {name!r} "))
    if problems:
        raise ConfigError(f"workload {name!r}: " + "; ".join(dict.fromkeys(problems)))
    return Workload.of(name, **entry)


def single_stream(workload: Workload) -> Workload:
    """The same requests one at a time: the denominator of batch efficiency."""
    return workload.replace(concurrency=1, num_requests=min(8, workload.source.num_requests),
                            request_rate=float("inf"), rates=())

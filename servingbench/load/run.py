"""One entry that sends a workload: what to send follows from its kind (synthetic, shared-prefix, dataset, trace,
conversation), how from its load shape (closed or open loop, a trace's recorded offsets), and from where from its
client topology (this process, worker processes, or Ray actors on a cluster's nodes).

The session (``suite/bench.py``) owns the cache, the server and the telemetry around it; this owns nothing but
the run, so every kind goes through one door and a new kind is added here and in ``workload.py`` only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from servingbench.load.conversation import run_conversations
from servingbench.load.generator import LoadResult, run_load
from servingbench.load.synthetic import Codec
from servingbench.load.trace import TraceReplay
from servingbench.load.workers import run_load_workers
from servingbench.load.workload import Workload

if TYPE_CHECKING:
    from servingbench.load.ray_workers import RayHosts


@dataclass
class Sent:
    """A run's result, and the trace slice it replayed (its prompts feed the expected prefix hit rate)."""

    result: LoadResult
    trace: TraceReplay | None = None


@dataclass(frozen=True)
class Target:
    """Where the requests go, and what the prompts are built for."""

    url: str
    model: str
    vocab_size: int
    max_model_len: int | None = None
    api_key: str | None = None


def run(target: Target, workload: Workload, *, seed: int, timeout_s: float, codec: Codec | None = None,
        hosts: "RayHosts | None" = None, label: str = "run", progress: bool = False,
        before_measured: Callable[[], None] | None = None) -> Sent:
    """Send ``workload`` to ``target`` once. ``seed`` draws its prompts and schedule; ``codec`` only where text is
    sent; ``hosts`` places the clients on a Ray cluster (a multi-turn run stays in one process);
    ``before_measured`` runs right before the measured part (after warm-up), for counter snapshots."""
    t = target
    shape = workload.shape(seed, timeout_s)
    if workload.source.kind == "conversation":
        convs = workload.conversations(t.vocab_size, seed, codec)
        return Sent(asyncio.run(run_conversations(t.url, t.model, convs, shape,
                                                  think_time_s=workload.source.think_time_s, api_key=t.api_key,
                                                  before_measured=before_measured)))
    trace = None
    if workload.source.kind == "trace":  # its own schedule: the recorded arrival times, scaled
        trace = workload.trace(t.vocab_size, seed, t.max_model_len)
        specs, shape = trace.specs, workload.shape(seed, timeout_s, trace.offsets)
    else:
        specs = workload.specs(t.vocab_size, seed, codec, t.max_model_len)
    warmup = workload.warmup_specs(t.vocab_size, seed)
    common = dict(api_key=t.api_key, warmup_specs=warmup, before_measured=before_measured)
    if hosts is not None:
        per_node = hosts.per_node(workload.load.concurrency or workload.source.num_requests,
                                  workload.client.workers)
        result: LoadResult = hosts.run(t.url, t.model, specs, shape, per_node=per_node, label=label, **common)
    elif (workers := workload.workers()) > 1:
        result = run_load_workers(t.url, t.model, specs, shape, workers=workers, **common)
    else:
        result = asyncio.run(run_load(t.url, t.model, specs, shape, progress=progress, **common))
    return Sent(result, trace)

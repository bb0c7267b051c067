"""The client's own timing error, measured against a peer whose timing is known.

The SSE peer (``servers/sse_peer.py``) sends a stream's first chunk ``ttft_ms`` after the request reaches it and
each further chunk ``interval_ms`` after the previous one, on an absolute schedule. Whatever the client measures
beyond that is the client's (and the host's) error: connection set-up, a late event loop, a late worker. The
peer runs in several processes so that, at a thousand streams, the peer is not what runs late.

TTFT error >= 0 always: the client takes its start before the request leaves, the peer its own after it arrives.
ITL error is centred near 0: a late chunk shortens the next gap as much as it lengthens its own. Fixed lengths keep
the streams in step, as in the suite's random workloads: a round's requests are sent together, so the TTFT error
includes a worker's sending a burst, which the event loop's lag p90 does not show (docs/workers.md).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadResult, LoadShape
from servingbench.load.workers import (STREAMS_PER_WORKER, LocalProcessWorker, Worker, WorkersResult, available_cores,
                                       run_load_workers)
from servingbench.servers.process import ServerProcess
from servingbench.servers.sse_peer import PeerConfig

PEER_STREAMS_PER_PROCESS = STREAMS_PER_WORKER  # a paced stream costs the peer about what it costs the client
PROMPT_LEN = 8  # the peer ignores the prompt; short keeps the requests cheap to build and send


@dataclass(frozen=True)
class ErrorPercentiles:
    """Measured minus known, milliseconds."""

    p50: float
    p99: float

    @classmethod
    def of(cls, errors_ms: Sequence[float]) -> "ErrorPercentiles":
        if len(errors_ms) == 0:
            return cls(math.nan, math.nan)
        a = np.asarray(errors_ms, dtype=float)
        return cls(float(np.percentile(a, 50)), float(np.percentile(a, 99)))


@dataclass
class SelfTest:
    """One self-test run: the client at ``concurrency`` streams over ``workers`` processes."""

    concurrency: int
    workers: int
    peer_processes: int
    ttft_ms: float
    interval_ms: float
    output_len: int
    num_requests: int
    chunks_per_s: float  # what the client read
    ideal_chunks_per_s: float  # what the peer's pacing allows at this concurrency
    ttft_error_ms: ErrorPercentiles
    itl_error_ms: ErrorPercentiles
    saturated: list[int] = field(default_factory=list)  # 1-based numbers of the workers whose loop ran late
    loop_lag_ms_p90: list[float] = field(default_factory=list)  # per worker
    cpu_fraction: list[float] = field(default_factory=list)  # per worker
    failed: int = 0
    notes: list[str] = field(default_factory=list)  # the run's warnings
    hosts: list[str] = field(default_factory=list)  # the Ray nodes its workers ran on; [] for this host's processes

    def check(self, max_ttft_error_ms: float) -> str | None:
        """A problem sentence when the client's median TTFT error is over the bound (or the run broke)."""
        if self.failed:
            return f"client self-test: {self.failed} of {self.num_requests} requests to the peer failed"
        if not self.ttft_error_ms.p50 <= max_ttft_error_ms:
            return (f"client self-test: at concurrency {self.concurrency} over {self.workers} worker(s) the client "
                    f"adds {self.ttft_error_ms.p50:.1f} ms to the median TTFT (p99 {self.ttft_error_ms.p99:.1f} "
                    f"ms), over the {max_ttft_error_ms:g} ms allowed"
                    + (f"; worker(s) {', '.join(map(str, self.saturated))} saturated" if self.saturated else "")
                    + f": raise the workload's client_workers (above {self.workers}), lower its concurrency, or spread "
                    "the client over hosts (client_hosts = \"ray\")")
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_peer_processes(concurrency: int, cores: int | None = None) -> int:
    """Enough peer processes for the streams, at most half the cores (the client needs the rest)."""
    cores = available_cores() if cores is None else cores
    return max(1, min(math.ceil(concurrency / PEER_STREAMS_PER_PROCESS), cores // 2))


def peer_server(processes: int, ttft_ms: float = 50.0, interval_ms: float = 20.0,
                log_dir: str | None = None) -> ServerProcess:
    """A paced peer of ``processes`` processes, not yet started: ``with peer_server(4) as peer: ...``."""
    config = PeerConfig(model="peer", ttft_ms=ttft_ms, interval_ms=interval_ms, processes=processes)
    return ServerProcess(config, log_dir or tempfile.mkdtemp(prefix="servingbench-peer-"), startup_timeout=120)


def self_test(concurrency: int, *, workers: int | None = None, peer_processes: int | None = None,
              ttft_ms: float = 50.0, interval_ms: float = 20.0, output_len: int = 64,
              num_requests: int | None = None, peer: ServerProcess | None = None, seed: int = 0,
              make_worker: Callable[[int, int], Worker] = LocalProcessWorker) -> SelfTest:
    """Closed loop at ``concurrency`` against a paced peer; ``peer`` reuses a started one (its own ``ttft_ms``,
    ``interval_ms`` and processes then apply). ``num_requests`` None: two per slot (the second round runs on
    open connections, as a long run does). ``make_worker``: the workers the measured run uses (Ray actors:
    ``RayHosts.make_worker``), so the self-test measures that client, not another."""
    num_requests = num_requests or 2 * concurrency
    own = peer is None
    if peer is None:
        peer = peer_server(peer_processes or default_peer_processes(concurrency), ttft_ms, interval_ms).start()
    config = peer.config
    assert isinstance(config, PeerConfig), "self_test needs an SSE peer"
    try:
        specs = random_token_prompts(num_requests, PROMPT_LEN, output_len, 1000, seed)
        result = run_load_workers(peer.url, "peer", specs, LoadShape(concurrency=concurrency, timeout_s=120.0),
                                  workers=workers, make_worker=make_worker)
    finally:
        if own:
            peer.stop()
    return summarize(result, config, concurrency, output_len)


def summarize(result: WorkersResult, peer: PeerConfig, concurrency: int, output_len: int) -> SelfTest:
    ok = [r for r in result.records if r.success]
    ttft = [r.ttft * 1000.0 - peer.ttft_ms for r in ok]
    itl = [g * 1000.0 - peer.interval_ms for r in ok for g in r.itls]
    chunks = sum(len(r.chunk_times) for r in ok)
    per_slot_s = (peer.ttft_ms + (output_len - 1) * peer.interval_ms) / 1000.0
    stats = result.worker_stats
    return SelfTest(
        concurrency=concurrency, workers=result.workers, peer_processes=peer.processes, ttft_ms=peer.ttft_ms,
        interval_ms=peer.interval_ms, output_len=output_len, num_requests=len(result.records),
        chunks_per_s=chunks / result.duration if result.duration > 0 else math.nan,
        ideal_chunks_per_s=concurrency * output_len / per_slot_s if per_slot_s > 0 else math.inf,
        ttft_error_ms=ErrorPercentiles.of(ttft), itl_error_ms=ErrorPercentiles.of(itl),
        saturated=[s.index + 1 for s in stats if s.saturated], loop_lag_ms_p90=[s.loop_lag_ms_p90 for s in stats],
        cpu_fraction=[s.cpu_fraction for s in stats], failed=len(result.records) - len(ok),
        notes=list(result.warnings), hosts=sorted({s.host for s in stats if s.host}))


def client_error_note(result: LoadResult, selftest: SelfTest | None) -> str:
    """One sentence for a run's notes: how many client processes drove it, how late their loops ran, and what
    the self-test says the client adds to TTFT and ITL at that load (or that nobody measured it)."""
    stats = result.worker_stats if isinstance(result, WorkersResult) else []
    n = len(stats) or 1
    conc = result.shape.concurrency
    nodes = sorted({s.host for s in stats if s.host})
    who = (f"{n} Ray actor{'s' if n > 1 else ''} on {len(nodes)} node{'s' if len(nodes) > 1 else ''}" if nodes
           else f"{n} worker process{'es' if n > 1 else ''}" if stats else "in-process (one event loop)")
    text = (f"client: {who}, event-loop lag p90 {result.loop_lag_ms_p90:.1f} ms"
            + (" (the worst worker's)" if n > 1 else ""))
    late = [s.name for s in stats if s.saturated]
    if late:
        text += f"; saturated: {', '.join(late)}"
    elif not stats and result.client_saturated:
        text += "; saturated"
    if selftest is None:
        return text + ("; no client self-test at this load: the client's own share of TTFT and ITL is not known "
                       "(scripts/client_bench.py measures it)")
    text += (f"; self-test against a peer of known timing at concurrency {selftest.concurrency} over "
             f"{selftest.workers} worker(s){' on Ray' if selftest.hosts else ''}: the client adds TTFT p50 "
             f"{selftest.ttft_error_ms.p50:+.1f} ms / p99 "
             f"{selftest.ttft_error_ms.p99:+.1f} ms, ITL p50 {selftest.itl_error_ms.p50:+.1f} ms / p99 "
             f"{selftest.itl_error_ms.p99:+.1f} ms")
    if conc is not None and selftest.concurrency < conc:
        text += f" (measured below this run's concurrency of {conc}: the error here may be larger)"
    if selftest.workers != n:
        text += f" (with {selftest.workers} worker(s); this run used {n})"
    if selftest.saturated:
        text += f"; the self-test's own worker(s) {', '.join(map(str, selftest.saturated))} were saturated"
    return text

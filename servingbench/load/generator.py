"""Asyncio load generator for any OpenAI-compatible endpoint.

Closed loop (a cap on requests in flight) and open loop (arrivals at a rate, Poisson or gamma-bursty) share one
scheduler: every request gets an arrival time; when a concurrency cap is set it waits for a slot, and that wait
is recorded as client queue time, never as latency. The start time is taken right before the request is sent.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import aiohttp
import numpy as np

from servingbench.load import sse
from servingbench.load.synthetic import RequestSpec, random_token_prompts
from servingbench.measure.metrics import SLO, BenchmarkMetrics, compute_metrics
from servingbench.measure.records import RequestRecord

# How often the event loop's lateness is sampled. Each sample is a wakeup that costs the client CPU (about
# 150 us on the shared 2-core box: at 5 ms that was 3% of a core, half the client's CPU at 280 chunks/s);
# 20 ms still gives 50 samples a second, and a saturated loop is late by hundreds of ms.
LOOP_LAG_INTERVAL_S = 0.02
# p90 lateness of the loop's timer above which a run is flagged "client saturated". A saturated loop is late at
# almost every sample (one sample per long pass over the streams): p90 43-51 ms at concurrency 10 and 350-800 ms
# at 64 against a peer streaming flat out. A healthy client is late only in spikes when the box is crowded: p90
# 1-8 ms (p99 up to 40 ms, one spike run 103 ms) against vLLM and a paced peer on the shared 2-core box. So the
# bound is on p90, between the two (perf/test_fidelity.py, tests/integration/test_client_fidelity.py).
LOOP_LAG_WARN_MS = 20.0
# Percentile of the open loop's lateness against its arrival schedule that ``max_schedule_lag_ms`` bounds. Not p99:
# on the 2-core VMs here, whenever both cores are busy (vLLM's CPU engine alone keeps 1.8 of them busy: its worker
# computes, its engine core polls) the whole VM stalls now and then for up to about 100 ms, under any client: a
# bare asyncio sleeper woke 81-98 ms late at p99 (max 100-144 ms) beside two busy processes, even under SCHED_FIFO,
# and at most 4 ms late beside one. A stall makes the one or two requests due in it late, so p99 of a 40-request
# run is one stall (a CI run was invalid at 8 req/s with p99 161 ms), while the median stayed under 1 ms at 2-16
# req/s. A client that cannot keep up is late on most requests, which p90 catches; one stall is not.
SCHEDULE_LAG_PERCENTILE = 90
# Share of the run the loop's thread was on the CPU, only to name the cause in the warning: above it the client's
# own work (saturated clients measured 41-98%, lower on a crowded box), below it other processes or a
# blocking call held the loop up (a loop blocked by a sleeping call measured a few percent).
CLIENT_BUSY_FRACTION = 0.4
# Connections opened before a run's measured part, so that no measured request pays a TCP connect inside its TTFT.
# A closed loop opens one per slot; an open loop, with no cap to size them by, this many (what a lab-sized rate
# keeps in flight; a request that finds none free opens its own, as before). Measured against the SSE peer on
# cpu-2c-avx2 at c64 (scripts/client_bench.py): the first round's TTFT error p50 fell from 23-35 ms to 11-16 ms.
OPEN_LOOP_CONNECTIONS = 64
DRAIN_TIMEOUT_S = 1.0  # reading a finished stream to its end; only a server that keeps it open after [DONE] waits
# For opening them: a server that does not answer a GET in this time is not waited on (its requests then open
# their own connections), so a hung server costs the run at most this much more.
CONNECT_TIMEOUT_S = 2.0
# Idle connections are reused for this long at most: under the 5 s that uvicorn (vLLM's server) keeps one open, so a
# request never goes out on a connection the server is closing (ServerDisconnectedError, seen in the vLLM soak test
# once connections were reused).
KEEPALIVE_S = 2.0


@dataclass(frozen=True)
class LoadShape:
    concurrency: int | None = None  # closed loop: most requests in flight (None: no cap)
    request_rate: float = math.inf  # open loop: mean arrivals per second (inf: all at once)
    burstiness: float = 1.0  # gamma shape of inter-arrival times; 1.0 is Poisson
    timeout_s: float = 600.0  # per request, connect to last byte
    endpoint: str = "completions"  # or "chat"
    ignore_eos: bool = True  # exact output lengths; False: the model stops where it stops, usage says how long
    temperature: float = 0.0
    top_p: float | None = None  # None: the server's default
    sampling_seed: int | None = None  # sent as the request's ``seed`` (reproducible sampling at temperature > 0)
    seed: int = 0  # the arrival schedule's
    deadline_s: float | None = None  # the whole measured run; past it, requests in flight are cancelled and it fails
    max_schedule_lag_ms: float = 100.0  # open loop: p90 lateness against the arrival schedule that still counts
    max_queue_ms: float = 100.0  # open loop with a cap: p99 client queue time that still counts as open loop
    offsets: tuple[float, ...] | None = None  # a recorded schedule (trace replay): seconds from the start, per request

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 or None, got {self.concurrency}")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0 (use inf for all at once), got {self.request_rate}")
        if self.endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {self.endpoint!r}")
        if self.timeout_s <= 0 or self.burstiness <= 0:
            raise ValueError("timeout_s and burstiness must be > 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if self.offsets is not None and not (all(0 <= a < math.inf for a in self.offsets)
                                             and all(a <= b for a, b in zip(self.offsets, self.offsets[1:]))):
            raise ValueError("offsets must be finite, >= 0 and ascending (seconds from the start)")

    @property
    def open_loop(self) -> bool:
        """Arrivals on a schedule (a rate's, or a recorded one) rather than as fast as the cap allows."""
        return self.offsets is not None or not math.isinf(self.request_rate)

    def arrivals(self, n: int) -> list[float]:
        """The ``n`` requests' arrival offsets (seconds from the start): the recorded schedule, else the rate's."""
        if self.offsets is not None:
            if len(self.offsets) != n:
                raise ValueError(f"the schedule has {len(self.offsets)} offsets for {n} requests")
            return list(self.offsets)
        return arrival_offsets(n, self.request_rate, self.burstiness, self.seed)

    @property
    def offered(self) -> str:
        """What lateness broke, for messages: the offered rate, or the trace's recorded schedule."""
        if self.offsets is not None:
            return "the trace's recorded arrival times were not kept"
        return f"the offered rate was not {self.request_rate:g}/s"


@dataclass
class LoadResult:
    records: list[RequestRecord]
    duration: float  # first send to last completion, seconds
    shape: LoadShape
    started_at: float  # wall-clock (time.time) at the start of the measured part
    loop_lag_ms_max: float = 0.0
    loop_lag_ms_p99: float = 0.0
    warnings: list[str] = field(default_factory=list)
    loop_lag_ms_p90: float = 0.0
    client_cpu_fraction: float = 0.0  # CPU time of the event loop's thread / duration
    deadline_exceeded: bool = False
    invalid: list[str] = field(default_factory=list)  # broken preconditions: the figures do not measure the server

    def metrics(self, slo: SLO | None = None) -> BenchmarkMetrics:
        return compute_metrics(self.records, self.duration, slo)

    @property
    def client_saturated(self) -> bool:
        """The client's event loop ran late most of the time: its timestamps are late and it set the pace."""
        return self.loop_lag_ms_p90 > LOOP_LAG_WARN_MS


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Arrival times (seconds from start) with gamma inter-arrival gaps of mean 1/rate."""
    if math.isinf(rate):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


class OpenAIClient:
    """Sends one streaming request and fills a RequestRecord. One aiohttp session for the whole run."""

    def __init__(self, base_url: str, model: str, shape: LoadShape, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.shape = shape
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "OpenAIClient":
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                              read_bufsize=1 << 16)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def payload(self, spec: RequestSpec) -> tuple[str, dict[str, Any]]:
        common: dict[str, Any] = {
            "model": self.model, "max_tokens": spec.max_tokens, "temperature": self.shape.temperature,
            "stream": True, "stream_options": {"include_usage": True},
        }
        if self.shape.ignore_eos:
            common["ignore_eos"] = True
        if self.shape.top_p is not None:
            common["top_p"] = self.shape.top_p
        if self.shape.sampling_seed is not None:
            common["seed"] = self.shape.sampling_seed
        if self.shape.endpoint == "chat" or spec.messages is not None:
            if spec.messages is not None:
                messages = list(spec.messages)
            else:
                text = spec.prompt if isinstance(spec.prompt, str) else " ".join(map(str, spec.prompt))
                messages = [{"role": "user", "content": text}]
            return "/v1/chat/completions", {**common, "messages": messages}
        return "/v1/completions", {**common, "prompt": spec.prompt}

    async def open_connections(self, n: int) -> int:
        """Open ``n`` keep-alive connections at once (a GET of /v1/models on each), for the run's requests to
        reuse; returns how many answered 200. Best effort: a server that refuses the GET still had its connection
        opened, and a request that finds none free opens its own."""
        assert self._session is not None, "use OpenAIClient as an async context manager"

        async def one() -> bool:
            try:
                async with self._session.get(self.base_url + "/v1/models", headers=self.headers,
                                             timeout=aiohttp.ClientTimeout(
                                                 total=min(CONNECT_TIMEOUT_S, self.shape.timeout_s))) as resp:
                    await resp.read()
                    return resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        return sum(await asyncio.gather(*(one() for _ in range(n))))

    async def send(self, spec: RequestSpec, record: RequestRecord) -> None:
        assert self._session is not None, "use OpenAIClient as an async context manager"
        path, body = self.payload(spec)
        timeout = aiohttp.ClientTimeout(total=self.shape.timeout_s)
        record.start = time.perf_counter()
        try:
            async with self._session.post(self.base_url + path, json=body, headers=self.headers,
                                          timeout=timeout) as resp:
                record.status = resp.status
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    record.error = f"HTTP {resp.status}: {text}"
                    return
                await sse.read_stream(resp.content, record, chat=path.endswith("chat/completions"))
                await _drain(resp)
        except asyncio.TimeoutError:
            record.error = f"timeout: no complete response within {self.shape.timeout_s:g} s"
        except asyncio.CancelledError:
            record.error = "cancelled: the run was stopped while this request was in flight"
            raise
        except aiohttp.ClientError as e:
            record.error = f"connection: {type(e).__name__}: {e}"
        except Exception as e:  # a protocol surprise must become a counted failure, never a crash of the run
            record.error = f"client: {type(e).__name__}: {e}"


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read a stream past its [DONE] to the end of the body (the chunked encoding's last chunk follows at once), so
    the connection goes back to the pool: one left unread is closed, and the next request pays a new connect
    inside its TTFT. A server that holds the stream open after [DONE] is not waited on past DRAIN_TIMEOUT_S."""
    if resp.content.at_eof():
        return
    try:
        await asyncio.wait_for(resp.content.read(), DRAIN_TIMEOUT_S)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        pass


async def _watch_loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(LOOP_LAG_INTERVAL_S)
        samples.append((time.perf_counter() - t0 - LOOP_LAG_INTERVAL_S) * 1000.0)


async def drive(jobs: Sequence[Awaitable[None]], records: list[RequestRecord], shape: LoadShape) -> LoadResult:
    """Run the measured jobs under the watch every load run shares: the loop-lag sampler, the client's CPU clock
    and the run deadline; then check the run's validity. Used by ``run_load`` and the multi-turn runner."""
    lag: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_loop_lag(lag, stop))
    t0 = time.perf_counter()
    wall0 = time.time()
    cpu0 = time.thread_time()  # this coroutine runs on the loop's thread: all the client's work is counted
    tasks = [asyncio.ensure_future(j) for j in jobs]
    late = False
    try:
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=shape.deadline_s)
            if pending:
                late = True
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for t in tasks:  # a job's own exception is a bug of the client: raise it, as gather did
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        duration = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
        stop.set()
        await watcher
    result = LoadResult(records, duration, shape, wall0,
                        loop_lag_ms_max=max(lag, default=0.0),
                        loop_lag_ms_p99=float(np.percentile(lag, 99)) if lag else 0.0,
                        loop_lag_ms_p90=float(np.percentile(lag, 90)) if lag else 0.0,
                        client_cpu_fraction=cpu / duration if duration > 0 else 0.0, deadline_exceeded=late)
    if late:
        for r in records:
            if r.error and r.error.startswith("cancelled"):
                r.error = f"deadline: the run passed its deadline of {shape.deadline_s:g} s with this request open"
    result.invalid = preconditions(result)
    result.warnings += result.invalid  # also the run's notes: the summary and the report show them
    return result


def preconditions(result: LoadResult) -> list[str]:
    """What makes a run's figures describe the client rather than the server; each fails the run."""
    shape, out = result.shape, []
    if result.deadline_exceeded:
        open_ = sum(1 for r in result.records if r.error and r.error.startswith("deadline"))
        out.append(f"deadline: the run passed its deadline of {shape.deadline_s:g} s with {open_} request(s) open "
                   "(a wedged or far slower server); raise the workload's deadline_s if the run is meant to be "
                   "this slow")
    if result.client_saturated:
        cause = ("its own work set the pace" if result.client_cpu_fraction >= CLIENT_BUSY_FRACTION
                 else "other processes or a blocking call held it up")
        out.append(f"client saturated: event-loop lag p90 {result.loop_lag_ms_p90:.1f} ms > {LOOP_LAG_WARN_MS:g} ms, "
                   f"its loop on the CPU {result.client_cpu_fraction:.0%} of the run ({cause}); these figures "
                   "measure the load generator, not the server: lower the concurrency or use more client processes")
    if shape.open_loop:
        sent = [r for r in result.records if r.start > 0]
        lag = [r.schedule_lag * 1000.0 for r in sent]
        late = float(np.percentile(lag, SCHEDULE_LAG_PERCENTILE)) if lag else 0.0
        if late > shape.max_schedule_lag_ms:
            out.append(f"behind schedule: the open-loop client sent requests late, p{SCHEDULE_LAG_PERCENTILE} "
                       f"{late:.0f} ms > {shape.max_schedule_lag_ms:g} ms after their arrival times (p99 "
                       f"{float(np.percentile(lag, 99)):.0f} ms), so {shape.offered}; "
                       + ("raise time_scale (a slower replay) or use more client processes" if shape.offsets
                          is not None else "lower the rate or use more client processes"))
        queued = [r.queue_time * 1000.0 for r in sent]
        if shape.concurrency and queued and float(np.percentile(queued, 99)) > shape.max_queue_ms:
            out.append(f"client queue: requests waited for one of the {shape.concurrency} slots, p99 "
                       f"{float(np.percentile(queued, 99)):.0f} ms > {shape.max_queue_ms:g} ms, so the cap, not the "
                       f"rate, set the load: raise concurrency or lower the rate")
    return out


async def run_load(base_url: str, model: str, specs: Sequence[RequestSpec], shape: LoadShape = LoadShape(),
                   api_key: str | None = None, progress: bool = False,
                   warmup_specs: Sequence[RequestSpec] = (), *, offsets: Sequence[float] | None = None,
                   start_at: float | None = None, wait_start: Callable[[], float] | None = None,
                   before_measured: Callable[[], None] | None = None,
                   on_done: Callable[[int, RequestRecord], None] | None = None) -> LoadResult:
    """Send ``specs`` with the given shape; failures are recorded in the records, never raised.

    ``offsets`` (seconds) replace the shape's own arrival schedule and ``start_at`` (a ``time.perf_counter``
    instant, one clock for every process on the host) its start: how worker processes share one schedule. A
    worker passes ``wait_start`` instead, a blocking call that returns the start once the coordinator names it:
    it is called after the warm-up and the connections are open, on the session the run then uses.
    ``before_measured`` runs after the warm-up, right before the measured part (counter snapshots). ``on_done(i,
    record)`` runs as request i completes, on the loop: a remote worker hands finished records over during the
    run, so that a host lost mid-run loses only its requests in flight (load/ray_workers.py)."""
    async with OpenAIClient(base_url, model, shape, api_key) as client:
        if warmup_specs:
            await asyncio.gather(*(client.send(s, RequestRecord(f"warmup-{i}", s.prompt_len, s.max_tokens))
                                   for i, s in enumerate(warmup_specs)))
        await client.open_connections(min(len(specs), shape.concurrency or OPEN_LOOP_CONNECTIONS))
        if wait_start is not None:  # a worker: ready (warm, connections open), then the coordinator's start
            start_at = await asyncio.get_running_loop().run_in_executor(None, wait_start)
        if before_measured is not None:
            before_measured()
        records = [RequestRecord(f"req-{i}", s.prompt_len, s.max_tokens, source=s.source) for i, s in enumerate(specs)]
        slots = asyncio.Semaphore(shape.concurrency) if shape.concurrency else None
        if offsets is None:
            offsets = shape.arrivals(len(specs))
        bar = _progress_bar(len(specs)) if progress else None
        t0 = start_at if start_at is not None else time.perf_counter()
        timed = shape.open_loop or start_at is not None

        async def one(i: int, spec: RequestSpec, record: RequestRecord, offset: float) -> None:
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            record.queued_at = time.perf_counter()
            if timed:
                record.scheduled_at = t0 + offset
            if slots is None:
                await client.send(spec, record)
            else:
                async with slots:
                    await client.send(spec, record)
            if on_done is not None:
                on_done(i, record)
            if bar is not None:
                bar.update(1)

        try:
            result = await drive([one(i, s, r, o) for i, (s, r, o) in enumerate(zip(specs, records, offsets))],
                                 records, shape)
        finally:
            if bar is not None:
                bar.close()
    return result


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="requests", file=sys.stderr, leave=False, mininterval=1.0)


def load_test(num_requests: int, concurrency: int, prompt_length: int, output_length: int, *,
              base_url: str, model: str, vocab_size: int, seed: int = 0, api_key: str | None = None,
              progress: bool = False, slo: SLO | None = None) -> BenchmarkMetrics:
    """The lab's shape: closed-loop load of random prompts, returning the run's metrics."""
    specs = random_token_prompts(num_requests, prompt_length, output_length, vocab_size, seed)
    shape = LoadShape(concurrency=concurrency, seed=seed)
    result = asyncio.run(run_load(base_url, model, specs, shape, api_key=api_key, progress=progress))
    return result.metrics(slo)

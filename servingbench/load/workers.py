"""Load from several client processes on one host: one arrival schedule, one clock, one merged result.

One asyncio loop reads every chunk of every stream on one core; past a few hundred streams it runs late, and its
timestamps with it. ``run_load_workers`` splits a run over N processes: closed loop, the cap is split (shares
differ by at most 1) and requests are dealt round-robin over the slots; open loop, request i keeps its arrival
offset and goes to worker i % N. All start at one ``time.perf_counter()`` instant (CLOCK_MONOTONIC: one clock for
every process of a Linux host), set once all have booted and warmed up, so spawn time never eats the schedule.
Processes are spawned, not forked (a fork of a parent with threads can deadlock); workers=1 is one child too (the
same path and warnings; ``run_load`` is the in-process client). ``Worker``: the interface the local process and
the Ray actor (load/ray_workers.py, past one host) implement.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import math
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Protocol, Sequence

from servingbench.load.synthetic import RequestSpec
from servingbench.load.generator import (LOOP_LAG_WARN_MS, LoadResult, LoadShape, OpenAIClient,
                                         preconditions, run_load)
from servingbench.measure.records import RequestRecord

# Streams per worker by default, from the self-test on a 16-core H200 host (docs/workers.md): a chunk costs a
# worker 20-40 us of CPU, so 256 streams at a chunk per 20 ms kept a core 39% busy and added 24 ms to the median
# TTFT (p99 162 ms), 128 streams 8-17 ms (p99 80); at a chunk per 5 ms 256 streams saturated a worker, 128 did not.
STREAMS_PER_WORKER = 128
START_MARGIN_S = 1.0  # from the "go" to the shared start: every worker must get it and set up its tasks first
READY_TIMEOUT_S = 120.0  # spawn and imports on a crowded box; a warm-up adds the request timeout
POLL_S = 0.05


class WorkerError(RuntimeError):
    """A worker failed or vanished; the message names it and its exception."""


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, as a container or taskset limits it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(concurrency: int, cores: int | None = None) -> int:
    """ceil(concurrency / STREAMS_PER_WORKER), at most the cores less one (left to the coordinator and the rest of
    the host, a local server's own processes included), at least 1."""
    cores = available_cores() if cores is None else cores
    return max(1, min(math.ceil(concurrency / STREAMS_PER_WORKER), cores - 1))


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers that differ by at most 1, the larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass(frozen=True)
class WorkerShare:
    """What one worker runs: its requests (global ids and arrival offsets kept) under its own cap."""

    index: int  # 0-based
    workers: int
    base_url: str
    model: str
    shape: LoadShape  # the run's, with this worker's share of the concurrency cap
    ids: tuple[int, ...]  # global request indices, in the order this worker takes them up
    specs: tuple[RequestSpec, ...]
    offsets: tuple[float, ...]  # global arrival offsets, seconds from the shared start
    warmup_specs: tuple[RequestSpec, ...] = ()
    api_key: str | None = field(default=None, repr=False)


@dataclass
class WorkerReport:
    """One worker's part: its records and its loop's health (``merge`` moves the records into the result)."""

    index: int
    workers: int
    pid: int
    requests: int
    concurrency: int | None
    end: float  # perf_counter at its last completion
    loop_lag_ms_p90: float
    loop_lag_ms_p99: float
    loop_lag_ms_max: float
    cpu_fraction: float  # its loop thread's CPU time / its run
    deadline_exceeded: bool = False
    warnings: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)  # to_dict(): global ids, this clock
    process_cpu_s: float = 0.0  # its whole process over the run: the loop plus anything else there (Ray's threads)
    host: str = ""  # where it ran, when that is not this host (a Ray node's name); "" for a local process
    clock_offset_ms: float = 0.0  # its clock onto the coordinator's (load/clock.py); 0 on this host
    clock_uncertainty_ms: float = 0.0

    @property
    def name(self) -> str:
        return f"worker {self.index + 1} of {self.workers}" + (f" on {self.host}" if self.host else "")

    @property
    def saturated(self) -> bool:
        return self.loop_lag_ms_p90 > LOOP_LAG_WARN_MS


def run_share(share: WorkerShare, wait_start: Callable[[], float],
              on_record: Callable[[int, RequestRecord], None] | None = None) -> WorkerReport:
    """The worker itself, wherever it runs: ``run_load`` on the share's schedule, which warms up, opens its
    connections and then blocks in ``wait_start`` until the coordinator names the start instant (this host's
    perf_counter). ``on_record(global id, record)`` sees each request as it completes (a remote worker streams
    them back)."""
    began: list[tuple[float, float, float]] = []
    done = None if on_record is None else (lambda i, r: on_record(share.ids[i], r))
    result = asyncio.run(run_load(share.base_url, share.model, share.specs, share.shape, api_key=share.api_key,
                                  warmup_specs=share.warmup_specs, offsets=share.offsets, wait_start=wait_start,
                                  before_measured=lambda: began.append(
                                      (time.perf_counter(), time.time(), time.process_time())),
                                  on_done=done))
    cpu0 = began[0][2]
    cpu = time.process_time() - cpu0
    for gid, r in zip(share.ids, result.records):
        r.request_id = f"req-{gid}"
    # its run began (perf_counter) where result.started_at (time.time, taken with it) says, a little after `began`
    end = began[0][0] + (result.started_at - began[0][1]) + result.duration
    end = max([end] + [r.chunk_times[-1] for r in result.records if r.chunk_times])
    return WorkerReport(share.index, share.workers, os.getpid(), len(share.specs), share.shape.concurrency,
                        end, result.loop_lag_ms_p90, result.loop_lag_ms_p99,
                        result.loop_lag_ms_max, result.client_cpu_fraction, result.deadline_exceeded,
                        list(result.warnings), list(result.invalid), [r.to_dict() for r in result.records], cpu)


class Worker(Protocol):
    """What the coordinator drives. The local process worker is one, the Ray actor another (launch: create
    it; prepare: send the share, it warms up; wait_ready/go/result: run_share's wait_start and its report).
    ``wait_ready``/``result`` give False/None when not done within ``timeout`` and raise WorkerError if it failed."""

    def launch(self) -> None: ...  # returns at once: all workers boot side by side
    def prepare(self, share: WorkerShare) -> None: ...
    def wait_ready(self, timeout: float) -> bool: ...
    def go(self, start_at: float) -> None: ...  # the shared start, on the worker host's monotonic clock
    def result(self, timeout: float) -> WorkerReport | None: ...
    def close(self) -> None: ...  # ends it whatever its state; idempotent


def _child_main(conn: Connection) -> None:
    """A worker process: share in, "ready" out, start in, report out; an exception goes back as text."""
    if sys.platform.startswith("linux"):  # ends with the coordinator, however that ends (prctl PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    try:
        share: WorkerShare = conn.recv()

        def wait_start() -> float:
            conn.send(("ready", os.getpid()))
            return float(conn.recv()[1])

        conn.send(("result", run_share(share, wait_start)))
    except EOFError:
        pass  # the coordinator went away
    except BaseException as e:
        try:
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
        except (OSError, ValueError):
            pass
    finally:
        conn.close()


class LocalProcessWorker:
    """A worker in a process of this host, over a pipe; a dead or failed child is reported at the next poll."""

    def __init__(self, index: int, workers: int, context: str = "spawn") -> None:
        self.name, self._ctx = f"worker {index + 1} of {workers}", mp.get_context(context)
        self._conn: Connection | None = None
        self.proc: Any = None
        self._done = False

    def launch(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=_child_main, args=(child,), name=f"servingbench {self.name}",
                                      daemon=True)
        self.proc.start()
        child.close()

    def _gone(self, when: str) -> WorkerError:
        self.proc.join(0.5)
        how = f"exited with code {self.proc.exitcode}" if self.proc.exitcode is not None else "stopped answering"
        return WorkerError(f"{self.name} (pid {self.proc.pid}) {how} {when} without a report")

    def _send(self, msg: Any, when: str) -> None:
        try:
            self._conn.send(msg)  # type: ignore[union-attr]
        except (OSError, ValueError):  # its end is closed: it has died
            raise self._gone(when) from None

    def _receive(self, timeout: float, when: str) -> Any:
        assert self._conn is not None
        end = time.monotonic() + timeout
        while True:
            try:
                if self._conn.poll(max(0.0, min(POLL_S, end - time.monotonic()))):
                    msg = self._conn.recv()
                    if msg[0] == "error":
                        raise WorkerError(f"{self.name} (pid {self.proc.pid}) failed {when}: {msg[1]}\n{msg[2]}")
                    return msg[1]
            except (EOFError, OSError):
                raise self._gone(when) from None
            if not self.proc.is_alive() and not self._conn.poll(0):
                raise self._gone(when)
            if time.monotonic() >= end:
                return None

    def prepare(self, share: WorkerShare) -> None:
        self._send(share, "before it took its share")

    def wait_ready(self, timeout: float) -> bool:
        return self._receive(timeout, "while starting") is not None

    def go(self, start_at: float) -> None:
        self._send(("go", start_at), "before the start")

    def result(self, timeout: float) -> WorkerReport | None:
        report = self._receive(timeout, "during the run")
        self._done = report is not None
        return report

    def close(self) -> None:
        if self.proc is not None:
            self.proc.join(2.0 if self._done else 0.0)  # one that reported is only closing its pipe
            for stop in (self.proc.terminate, self.proc.kill):
                if self.proc.is_alive():
                    stop()
                    self.proc.join(2.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class WorkersResult(LoadResult):
    """A ``LoadResult`` merged from workers; its loop-lag and CPU figures are the worst worker's."""

    start_at: float = 0.0  # the shared start (perf_counter); duration runs from it
    worker_of: list[int] = field(default_factory=list)  # per record, the 0-based worker that sent it
    worker_stats: list[WorkerReport] = field(default_factory=list)  # their records moved into ``records``

    @property
    def workers(self) -> int:
        return len(self.worker_stats)


def plan_shares(base_url: str, model: str, specs: Sequence[RequestSpec], shape: LoadShape, workers: int,
                api_key: str | None = None, warmup_specs: Sequence[RequestSpec] = (),
                start_margin_s: float = START_MARGIN_S) -> list[WorkerShare]:
    """Cut one run into ``workers`` shares (the module's docstring says how)."""
    offsets = shape.arrivals(len(specs))
    caps = split(shape.concurrency, workers) if shape.concurrency else [None] * workers
    slots = shape.concurrency if shape.concurrency and not shape.open_loop else workers
    ids: list[list[int]] = [[] for _ in range(workers)]
    for i in range(len(specs)):  # slot s belongs to worker s % workers: a larger cap gets more requests
        ids[(i % slots) % workers].append(i)
    warm, w0, shares = split(len(warmup_specs), workers), 0, []
    deadline = shape.deadline_s + start_margin_s if shape.deadline_s else None  # its clock starts before start_at
    for w in range(workers):
        shares.append(WorkerShare(w, workers, base_url, model,
                                  dataclasses.replace(shape, concurrency=caps[w], deadline_s=deadline),
                                  tuple(ids[w]), tuple(specs[i] for i in ids[w]), tuple(offsets[i] for i in ids[w]),
                                  tuple(warmup_specs[w0:w0 + warm[w]]), api_key))
        w0 += warm[w]
    return shares


def merge(reports: Sequence[WorkerReport], shares: Sequence[WorkerShare], shape: LoadShape, start_at: float,
          wall_start: float) -> WorkersResult:
    """One result on the shared clock: records in request order, the schedule and queue checks re-run on the
    whole run, each saturated worker named."""
    placed: dict[int, tuple[RequestRecord, int]] = {}
    for share, rep in zip(shares, reports):
        for gid, d in zip(share.ids, rep.records):
            placed[gid] = (RequestRecord.from_dict(d), share.index)
        rep.records = []
    order, stats = sorted(placed), list(reports)
    result = WorkersResult(
        [placed[g][0] for g in order], max(s.end for s in stats) - start_at, shape, wall_start,
        loop_lag_ms_max=max(s.loop_lag_ms_max for s in stats), loop_lag_ms_p99=max(s.loop_lag_ms_p99 for s in stats),
        loop_lag_ms_p90=max(s.loop_lag_ms_p90 for s in stats), client_cpu_fraction=max(s.cpu_fraction for s in stats),
        deadline_exceeded=any(s.deadline_exceeded for s in stats), start_at=start_at,
        worker_of=[placed[g][1] for g in order], worker_stats=stats)
    named = [f"{s.name}: {m}" for s in stats for m in s.invalid if m.startswith(("client saturated", "clock"))]
    result.invalid = named + [m for m in preconditions(result) if not m.startswith("client saturated")]
    result.warnings = result.invalid + [f"{s.name}: {w}" for s in stats for w in s.warnings if w not in s.invalid]
    return result


def run_load_workers(base_url: str, model: str, specs: Sequence[RequestSpec], shape: LoadShape = LoadShape(), *,
                     workers: int | None = None, api_key: str | None = None,
                     warmup_specs: Sequence[RequestSpec] = (), before_measured: Callable[[], None] | None = None,
                     start_margin_s: float = START_MARGIN_S,
                     make_worker: Callable[[int, int], Worker] = LocalProcessWorker) -> WorkersResult:
    """``run_load`` over worker processes; blocking (call it outside an event loop). ``workers`` None: as many as
    the concurrency needs (``default_workers``); never more than the requests or the cap. ``before_measured``
    runs once every worker is warm, right before the start is set (counter snapshots)."""
    if not specs:
        raise ValueError("run_load_workers needs at least one request")
    in_flight = shape.concurrency or len(specs)
    n = max(1, min(workers or default_workers(in_flight), len(specs), in_flight))
    shares = plan_shares(base_url, model, specs, shape, n, api_key, warmup_specs, start_margin_s)
    pool = [make_worker(i, n) for i in range(n)]
    try:
        for w in pool:
            w.launch()
        for w, share in zip(pool, shares):
            w.prepare(share)
        _gather(pool, lambda w, t: w.wait_ready(t) or None,
                READY_TIMEOUT_S + (shape.timeout_s if warmup_specs else 0.0), "ready")
        if before_measured is not None:
            before_measured()
        start_at, wall_start = time.perf_counter() + start_margin_s, time.time() + start_margin_s
        for w in pool:
            w.go(start_at)
        reports = _gather(pool, lambda w, t: w.result(t), start_margin_s + _longest_run_s(shares, shape), "done")
    finally:
        for w in pool:
            w.close()
    return merge(reports, shares, shape, start_at, wall_start)


def _longest_run_s(shares: Sequence[WorkerShare], shape: LoadShape) -> float:
    """The longest a healthy run can take (its deadline, else the last arrival and then each slot's requests
    one after another, each to its timeout): only a wedged worker meets it; a dead one is seen at the next poll."""
    rounds = max(math.ceil(len(s.ids) / (s.shape.concurrency or len(s.ids) or 1)) for s in shares)
    return 60.0 + (shape.deadline_s or max(o for s in shares for o in s.offsets) + rounds * shape.timeout_s)


def _gather(pool: Sequence[Worker], poll: Callable[[Worker, float], Any], limit_s: float, what: str) -> list[Any]:
    """Each worker's answer, polling all of them in turn so that any one's failure is seen at once."""
    got: dict[int, Any] = {}
    end = time.monotonic() + limit_s
    while len(got) < len(pool):
        for i, w in enumerate(pool):
            if i not in got and (answer := poll(w, POLL_S / len(pool))) is not None:
                got[i] = answer
        if len(got) < len(pool) and time.monotonic() > end:
            late = ", ".join(f"worker {i + 1} of {len(pool)}" for i in range(len(pool)) if i not in got)
            raise WorkerError(f"{late}: not {what} within {limit_s:.0f} s (wedged?)")
    return [got[i] for i in range(len(pool))]

"""Load past one host: client workers as Ray actors on the nodes of a Ray cluster, one schedule, one clock.

``run_load_workers`` drives any ``Worker``; here each is a Ray actor pinned to one node (``client_workers`` per
node), running ``run_share`` on its share, so the split, the shared start and the merge are the one-host ones. What
differs across hosts is the clock: each worker's offset to the coordinator is measured by round trips once it is
ready (load/clock.py), its start is sent in its own clock, and its records come back shifted onto the
coordinator's. A worker hands its finished records over every second during the run, so a node lost mid-run costs
only its requests in flight: the run fails naming the node, and what was received is saved.

Ray is optional (``pip install 'servingbench[ray]'``): nothing here imports it until a run asks for Ray. Every
``ray.get`` has a timeout, and the address is probed before ``ray.init`` (which waits minutes for a GCS that is
not there), so a wrong address is one line, never a hang.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from servingbench.errors import ConfigError
from servingbench.load.clock import MAX_CLOCK_UNCERTAINTY_MS, ClockOffset, measure_offset, shift_records
from servingbench.load.synthetic import RequestSpec
from servingbench.load.generator import LoadShape
from servingbench.load.workers import (READY_TIMEOUT_S, STREAMS_PER_WORKER, WorkerError, WorkerReport, WorkerShare,
                                       WorkersResult, run_load_workers, run_share)
from servingbench.measure.files import atomic_write_json
from servingbench.measure.records import RequestRecord

RAY_EXTRA = "pip install 'servingbench[ray]'"
PROBE_TIMEOUT_S = 5.0  # a TCP connect to the cluster's address before ray.init, which itself retries for minutes
CALL_TIMEOUT_S = 30.0  # one small answer (a clock reading, the records finished so far, the report)
ACTOR_START_TIMEOUT_S = 90.0  # an actor that has not answered by then will not: no free CPU, or no servingbench there
PARTIAL_POLL_S = 1.0  # how often finished records are fetched during a run: a lost node loses at most this much more
FINAL_TAKE_S = 5.0  # when another worker failed: how long a live one gets to hand over what it finished
START_WAIT_S = READY_TIMEOUT_S + 600.0  # an actor left waiting for its start gives up (its coordinator is gone)
ACTOR_THREADS = 6  # run blocks one thread for the whole run; until_ready, clock, go, take, where are served beside it


class RayUnavailable(ConfigError):
    """Ray is not installed, or no cluster answers at the address, or it cannot host the workers: the message is
    one line naming the fix. A ConfigError, so it fails the run in every mode rather than skipping it."""


class RayRunFailed(WorkerError):
    """A run on Ray failed (a node lost, an actor's exception): ``node`` names the node where one was lost,
    ``records`` (on the coordinator's clock, in request order) are those received before, saved at ``path``."""

    def __init__(self, message: str, node: str = "", records: Sequence[dict[str, Any]] = (),
                 path: Path | None = None) -> None:
        super().__init__(message)
        self.node, self.records, self.path = node, list(records), path


def require_ray() -> Any:
    """The ``ray`` module, or RayUnavailable naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f'Ray is not installed: {RAY_EXTRA} (client_hosts = "ray" and --ray-address need '
                             "it)") from None
    return ray


def resolve_address(address: str | None) -> str:
    """The GCS address to join: the one given, else $RAY_ADDRESS, else the cluster started on this host."""
    if address and address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip():
        return current.read_text().strip()
    raise RayUnavailable("no Ray cluster to join: --ray-address is not given, RAY_ADDRESS is unset and none was "
                         "started on this host; start one (`ray start --head --num-cpus 1`) or pass --ray-address")


def probe(address: str) -> None:
    """RayUnavailable naming ``address`` unless something accepts a TCP connection there."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as e:
        raise RayUnavailable(f"Ray is not reachable at {address} ({type(e).__name__}: {e}): start the cluster "
                             "(`ray start --head`) or fix --ray-address") from None


def connect(address: str | None) -> tuple[Any, bool]:
    """``ray``, joined to the cluster; True where this call joined it (and so should leave it). A process already
    joined (a test's cluster) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    resolved = resolve_address(address)
    probe(resolved)
    try:
        ray.init(address=resolved, log_to_driver=False, logging_level="WARNING")
    except Exception as e:  # noqa: BLE001 - whatever Ray says, the user needs the address and its words
        first = (str(e).strip().splitlines() or [""])[0]
        raise RayUnavailable(f"Ray at {resolved} refused the connection: {type(e).__name__}: {first}") from None
    return ray, True


@dataclass(frozen=True)
class RayNode:
    node_id: str
    ip: str
    cpus: float

    @property
    def name(self) -> str:
        return f"node {self.node_id[:8]} ({self.ip})"


def _as_dict(gid: int, record: RequestRecord) -> dict[str, Any]:
    d = record.to_dict()
    d["request_id"] = f"req-{gid}"
    return d


class LoadActor:
    """One client worker in a Ray actor (threaded: ``run`` holds a thread for the whole run while the
    coordinator's small calls are served in others). Its clock is its host's ``perf_counter``."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._start: queue.Queue[float] = queue.Queue()
        self._lock = threading.Lock()
        self._done: list[tuple[int, RequestRecord]] = []
        self._taken = 0

    def where(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname()}

    def clock(self) -> float:
        return time.perf_counter()

    def until_ready(self) -> bool:
        return self._ready.wait(START_WAIT_S)

    def go(self, start_local: float) -> None:
        self._start.put(start_local)

    def take(self) -> list[dict[str, Any]]:
        """The records finished since the last call (each is handed over once, here or in the report)."""
        with self._lock:
            new, self._taken = self._done[self._taken:], len(self._done)
        return [_as_dict(gid, r) for gid, r in new]

    def run(self, share: WorkerShare) -> WorkerReport:
        def wait_start() -> float:
            self._ready.set()
            try:
                return self._start.get(timeout=START_WAIT_S)
            except queue.Empty:
                raise WorkerError(f"no start from the coordinator within {START_WAIT_S:.0f} s") from None

        def finished(gid: int, record: RequestRecord) -> None:
            with self._lock:
                self._done.append((gid, record))

        # Ray installs uvloop as the asyncio policy in its workers; its timers tick in whole milliseconds (a sleep
        # until the start woke up to 0.7 ms before it here) and its loop is not the one the one-host workers and
        # the self-test measure. The standard loop keeps the client the same wherever it runs.
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        report = run_share(share, wait_start, finished)
        with self._lock:  # what take() handed over stays out of the report: each record crosses once
            handed = {f"req-{gid}" for gid, _ in self._done[:self._taken]}
            self._taken = len(self._done)
        report.records = [d for d in report.records if d["request_id"] not in handed]
        return report


class RayWorker:
    """``Worker`` over a ``LoadActor`` pinned to one node; its records come back on the coordinator's clock."""

    def __init__(self, hosts: "RayHosts", index: int, workers: int, node: RayNode) -> None:
        self.hosts, self.node, self.ray = hosts, node, hosts.ray
        self.name = f"worker {index + 1} of {workers} on {node.name}"
        self.actor: Any = None
        self.share: WorkerShare | None = None
        self.clock: ClockOffset | None = None
        self.end_clock: ClockOffset | None = None
        self.report: WorkerReport | None = None
        self.received: list[dict[str, Any]] = []  # finished records handed over so far, coordinator's clock
        self.lost = False
        self._refs: dict[str, Any] = {}
        self._launched = self._last_take = 0.0

    def launch(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(self.node.node_id, soft=False)
        self.actor = self.hosts.actor_class.options(scheduling_strategy=strategy).remote()
        self._refs["where"] = self.actor.where.remote()
        self._launched = time.monotonic()

    def prepare(self, share: WorkerShare) -> None:
        self.share = share
        self._refs["run"] = self.actor.run.remote(share)
        self._refs["ready"] = self.actor.until_ready.remote()

    def _get(self, ref: Any, when: str, timeout: float = CALL_TIMEOUT_S) -> Any:
        """``ray.get`` with a limit; its failures as WorkerError naming this worker and its node."""
        ex = self.ray.exceptions
        try:
            return self.ray.get(ref, timeout=timeout)
        except ex.GetTimeoutError:
            raise WorkerError(f"{self.name}: no answer within {timeout:g} s {when} (wedged, or its node is "
                              "unreachable)") from None
        except ex.RayTaskError as e:  # its own exception, raised in the actor
            cause = e.cause if getattr(e, "cause", None) is not None else e
            raise WorkerError(f"{self.name} failed {when}: {type(cause).__name__}: {cause}") from None
        except ex.RayError as e:
            self.lost = True
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise WorkerError(f"{self.name}: lost {when}, {self.node.name} {self.hosts.node_state(self.node)} "
                              f"({type(e).__name__}: {first})") from None

    def wait_ready(self, timeout: float) -> bool:
        if self.clock is not None:
            return True
        done, _ = self.ray.wait([self._refs["run"], self._refs["ready"]], num_returns=1, timeout=timeout)
        if not done:
            started = self.ray.wait([self._refs["where"]], timeout=0)[0]
            if not started and time.monotonic() - self._launched > ACTOR_START_TIMEOUT_S:
                raise WorkerError(f"{self.name}: its actor did not start within {ACTOR_START_TIMEOUT_S:.0f} s: each "
                                  f"worker takes a CPU of its node ({self.node.cpus:g} there, shared with other "
                                  f"Ray work) and needs servingbench installed there ({RAY_EXTRA})")
            return False
        if self._refs["run"] in done:  # it ended before it was ready: its exception
            self._get(self._refs["run"], "while starting")
            raise WorkerError(f"{self.name} ended before its start without an error")
        self.clock = measure_offset(lambda: self._get(self.actor.clock.remote(), "while its clock was read"))
        return True

    def go(self, start_at: float) -> None:
        assert self.clock is not None
        self.actor.go.remote(self.clock.to_worker(start_at))

    def _poll(self) -> None:
        """Collect the last fetch of finished records, if it is back, and ask for the next once a second."""
        ref = self._refs.get("take")
        if ref is not None and self.ray.wait([ref], timeout=0)[0]:
            del self._refs["take"]
            self._add(self._get(ref, "during the run"))
        if "take" not in self._refs and time.monotonic() - self._last_take >= PARTIAL_POLL_S:
            self._refs["take"] = self.actor.take.remote()
            self._last_take = time.monotonic()

    def _add(self, records: list[dict[str, Any]]) -> None:
        assert self.clock is not None
        self.received += shift_records(records, self.clock.offset_s)

    def result(self, timeout: float) -> WorkerReport | None:
        self._poll()
        if not self.ray.wait([self._refs["run"]], timeout=timeout)[0]:
            return None
        report: WorkerReport = self._get(self._refs["run"], "during the run")
        if "take" in self._refs:  # a fetch in flight holds records the report left out
            self._add(self._get(self._refs.pop("take"), "during the run"))
        self.end_clock = measure_offset(lambda: self._get(self.actor.clock.remote(), "while its clock was read"))
        self.report = self._on_coordinator_clock(report)
        return self.report

    def _on_coordinator_clock(self, report: WorkerReport) -> WorkerReport:
        """The report with every record (those handed over and the rest) in its share's order, shifted onto the
        coordinator's clock, and the clock's own checks as invalid reasons."""
        assert self.clock is not None and self.end_clock is not None and self.share is not None
        got = self.received + shift_records(report.records, self.clock.offset_s)
        by_id = {d["request_id"]: d for d in got}
        want = [f"req-{g}" for g in self.share.ids]
        missing = [w for w in want if w not in by_id]
        if missing or len(by_id) != len(got) or len(got) != len(want):
            raise WorkerError(f"{self.name}: records lost or doubled on the way back: {len(got)} for {len(want)} "
                              f"requests, missing {missing[:5]}")
        report.records = [by_id[w] for w in want]
        report.end += self.clock.offset_s
        report.host = self.node.name
        report.clock_offset_ms, report.clock_uncertainty_ms = self.clock.offset_ms, self.clock.uncertainty_ms
        problem = self.clock.problem()
        drift_ms = self.end_clock.offset_ms - self.clock.offset_ms
        slack_ms = self.clock.uncertainty_ms + self.end_clock.uncertainty_ms + MAX_CLOCK_UNCERTAINTY_MS
        if problem is None and abs(drift_ms) > slack_ms:
            problem = (f"clock: the offset to the coordinator's clock moved by {drift_ms:+.1f} ms during the run "
                       f"(more than its uncertainties and {MAX_CLOCK_UNCERTAINTY_MS:g} ms): the hosts' clocks ran "
                       "at different rates, so the records do not line up; check the hosts' time sync (chrony/ntpd)")
        if problem:
            report.invalid.append(problem)
            report.warnings.append(problem)
        return report

    def close(self) -> None:
        if self.actor is None:
            return
        if self.report is None and not self.lost and self.clock is not None:  # another worker failed: keep ours
            try:
                if "take" in self._refs:
                    self._add(self._get(self._refs.pop("take"), "handing over records", FINAL_TAKE_S))
                self._add(self._get(self.actor.take.remote(), "handing over records", FINAL_TAKE_S))
            except WorkerError:
                pass
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone with its node
            pass
        self.actor = None


class RayHosts:
    """A Ray cluster's live nodes as client hosts: ``per_node`` actors on each (each takes one CPU there).
    ``partial_dir``: where a failed run's received records go. ``close`` leaves the cluster if this joined it."""

    def __init__(self, address: str | None = None, partial_dir: Path | None = None) -> None:
        self.ray, self._own = connect(address)
        self.address = address or "auto"
        self.partial_dir = partial_dir
        self.nodes = sorted((RayNode(n["NodeID"], n["NodeManagerAddress"], n["Resources"].get("CPU", 0.0))
                             for n in self.ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0.0) >= 1),
                            key=lambda n: (n.ip, n.node_id))
        if not self.nodes:
            self.close()
            raise RayUnavailable(f"the Ray cluster at {self.address} has no live node with a CPU for a client worker")
        self.actor_class = self.ray.remote(num_cpus=1, max_concurrency=ACTOR_THREADS, max_restarts=0)(LoadActor)
        self.pool: list[RayWorker] = []

    def per_node(self, in_flight: int, client_workers: int | None = None) -> int:
        """``client_workers``, else the streams' workers (STREAMS_PER_WORKER each) spread over the nodes."""
        return client_workers or max(1, math.ceil(math.ceil(in_flight / STREAMS_PER_WORKER) / len(self.nodes)))

    def make_worker(self, index: int, workers: int) -> RayWorker:
        """Worker ``index`` on node ``index % nodes``: consecutive requests (dealt i % workers) alternate nodes."""
        if index == 0:
            self.pool = []
        worker = RayWorker(self, index, workers, self.nodes[index % len(self.nodes)])
        self.pool.append(worker)
        return worker

    def node_state(self, node: RayNode) -> str:
        try:
            alive = {n["NodeID"]: n["Alive"] for n in self.ray.nodes()}.get(node.node_id)
        except Exception:  # noqa: BLE001 - the GCS itself may be what went away
            return "(its state unknown: the cluster does not answer)"
        return "is dead" if not alive else "(its actor died; Ray still lists the node as alive)"

    def check_url(self, url: str) -> None:
        """RayUnavailable where ``url`` is this host's loopback and some node is another host."""
        host = urlsplit(url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            from ray.util import get_node_ip_address

            here = get_node_ip_address()
            away = [n.name for n in self.nodes if n.ip != here]
            if away:
                raise RayUnavailable(f"{url} is this host's loopback, which the client workers on {', '.join(away)} "
                                     f"cannot reach: serve on an address they can reach (http://{here}:PORT)")

    def run(self, base_url: str, model: str, specs: Sequence[RequestSpec], shape: LoadShape = LoadShape(), *,
            per_node: int = 1, label: str = "run", **kwargs: Any) -> WorkersResult:
        """``run_load_workers`` on ``per_node`` actors per node; a failure is a RayRunFailed carrying (and saving,
        as ``<partial_dir>/<label>.json``) the records received before it."""
        self.check_url(base_url)
        self.pool = []
        try:
            result = run_load_workers(base_url, model, specs, shape, workers=per_node * len(self.nodes),
                                      make_worker=self.make_worker, **kwargs)
        except WorkerError as e:
            raise self._failed(e, label, len(specs)) from e
        result.warnings.append(self.note(result))
        return result

    def _failed(self, error: WorkerError, label: str, requests: int) -> RayRunFailed:
        records = sorted((d for w in self.pool for d in (w.report.records if w.report else w.received)),
                         key=lambda d: int(d["request_id"].split("-")[1]))
        path = None
        if self.partial_dir is not None:
            path = Path(self.partial_dir) / f"{label}.json"
            atomic_write_json(path, {"error": str(error), "num_requests": requests,
                                     "nodes": [n.name for n in self.nodes], "records": records})
        node = next((w.node.name for w in self.pool if w.lost), "")
        return RayRunFailed(f"{error}; {len(records)} of {requests} records were received before that"
                            + (f", saved to {path}" if path else ""), node, records, path)

    def note(self, result: WorkersResult) -> str:
        """Where the run's workers ran and how well their clocks were tied to the coordinator's."""
        by_node: dict[str, list[WorkerReport]] = {}
        for s in result.worker_stats:
            by_node.setdefault(s.host, []).append(s)
        parts = [f"{host}: worker(s) {', '.join(str(s.index + 1) for s in stats)}" for host, stats in by_node.items()]
        worst = max(result.worker_stats, key=lambda s: s.clock_uncertainty_ms)
        offsets = ", ".join(f"{s.clock_offset_ms:+.2f}" for s in result.worker_stats)
        return (f"client hosts: {result.workers} Ray actor(s) on {len(by_node)} node(s), {'; '.join(parts)}; "
                f"clock offsets to the coordinator {offsets}"
                f" ms, known to +-{worst.clock_uncertainty_ms:.2f} ms at worst (bound {MAX_CLOCK_UNCERTAINTY_MS:g} ms)")

    def close(self) -> None:
        for w in self.pool:
            w.close()
        if self._own and self.ray.is_initialized():
            self.ray.shutdown()

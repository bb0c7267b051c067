"""Worker processes against the SSE peer on 127.0.0.1: one schedule and one clock over several client processes,
a worker's failure as a clear error, the multi-process peer, and the client self-test. No assertion on how fast
this (shared, 2-core) machine is: counts, orderings, the schedule's own bound, signs."""

from __future__ import annotations

import json
import math
import multiprocessing
import operator
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import pytest

from servingbench.load.synthetic import RequestSpec, random_token_prompts
from servingbench.load.generator import LoadShape, arrival_offsets
from servingbench.suite.selftest import client_error_note, default_peer_processes, self_test
from servingbench.load.workers import (STREAMS_PER_WORKER, WorkerError, default_workers, plan_shares, run_load_workers,
                                       split)
from servingbench.measure.metrics import max_in_flight
from servingbench.servers.process import ServerProcess
from servingbench.servers.sse_peer import PeerConfig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two serving processes, first chunk after 50 ms, then one every 20 ms per stream."""
    config = PeerConfig(model="peer", ttft_ms=50.0, interval_ms=20.0, processes=2)
    with ServerProcess(config, tmp_path_factory.mktemp("peer"), startup_timeout=120) as server:
        yield server


def _no_workers_left() -> bool:
    return not [p for p in multiprocessing.active_children() if p.name.startswith("servingbench worker")]


def test_shares_split_the_cap_and_deal_requests_over_the_slots() -> None:
    assert split(8, 2) == [4, 4] and split(9, 4) == [3, 2, 2, 2] and sum(split(1023, 16)) == 1023
    assert default_workers(8, cores=16) == 1 and default_workers(STREAMS_PER_WORKER + 1, cores=16) == 2
    assert default_workers(1024, cores=16) == 1024 // STREAMS_PER_WORKER
    assert default_workers(100_000, cores=16) == 15 and default_workers(1024, cores=2) == 1
    assert default_workers(1024, cores=1) == 1
    # the peer gets the client's budget per process, so the suite's self-test runs the peer the benchmarks measured
    assert default_peer_processes(512, cores=16) == 4 and default_peer_processes(1024, cores=16) == 8
    assert default_peer_processes(100_000, cores=16) == 8 and default_peer_processes(512, cores=2) == 1
    specs = random_token_prompts(90, 4, 4, 100)
    shares = plan_shares("http://x", "m", specs, LoadShape(concurrency=9), 4)
    assert [s.shape.concurrency for s in shares] == [3, 2, 2, 2]
    assert [len(s.ids) for s in shares] == [30, 20, 20, 20]  # in proportion to the caps
    assert sorted(i for s in shares for i in s.ids) == list(range(90))
    open_ = plan_shares("http://x", "m", specs, LoadShape(request_rate=5.0, seed=3), 4)
    offsets = arrival_offsets(90, 5.0, 1.0, 3)
    assert [list(s.ids) for s in open_] == [list(range(w, 90, 4)) for w in range(4)]
    assert all(s.offsets == tuple(offsets[i] for i in s.ids) for s in open_)


def test_two_workers_split_a_closed_loop_on_one_clock(peer: ServerProcess) -> None:
    specs = random_token_prompts(32, 8, 10, 1000, seed=1)
    result = run_load_workers(peer.url, "peer", specs, LoadShape(concurrency=8), workers=2)
    m = result.metrics()
    assert (m.completed, m.failed, m.total_output_tokens) == (32, 0, 320)
    assert [r.request_id for r in result.records] == [f"req-{i}" for i in range(32)]
    assert result.worker_of == [i % 2 for i in range(32)]
    stats = result.worker_stats
    assert [s.concurrency for s in stats] == [4, 4] and [s.requests for s in stats] == [16, 16]
    assert len({s.pid for s in stats}) == 2 and os.getpid() not in {s.pid for s in stats}
    for w in (0, 1):  # each worker kept to its share, and used all of it (every request lasts >= 230 ms)
        mine = [r for r, o in zip(result.records, result.worker_of) if o == w]
        assert max_in_flight(mine) == 4
    assert m.max_concurrent_requests == 8
    end = result.start_at + result.duration
    for r in result.records:  # both workers' timestamps on the parent's clock, inside the run's window
        assert result.start_at <= r.queued_at <= r.start < r.chunk_times[0] <= r.chunk_times[-1] <= end
    assert result.invalid == [] or all(w.startswith("worker ") for w in result.invalid), result.invalid


def test_two_workers_share_one_open_loop_schedule(peer: ServerProcess) -> None:
    """100 Poisson arrivals at 40/s (2.5 s), each 130 ms long: the merged run keeps to the one schedule."""
    shape = LoadShape(request_rate=40.0, seed=4)
    specs = random_token_prompts(100, 8, 5, 1000, seed=2)
    result = run_load_workers(peer.url, "peer", specs, shape, workers=2)
    assert result.metrics().failed == 0
    assert result.worker_of == [i % 2 for i in range(100)]  # requests alternate workers
    offsets = arrival_offsets(100, 40.0, 1.0, 4)
    for r, offset in zip(result.records, offsets):  # each keeps its place in the one global schedule
        assert r.scheduled_at == pytest.approx(result.start_at + offset, abs=1e-9)
        assert r.queued_at >= r.scheduled_at
    lag_p99 = float(np.percentile([r.schedule_lag * 1000.0 for r in result.records], 99))
    assert lag_p99 < shape.max_schedule_lag_ms, lag_p99
    assert not [w for w in result.invalid if w.startswith("behind schedule")], result.invalid


def test_one_worker_is_one_child(peer: ServerProcess) -> None:
    result = run_load_workers(peer.url, "peer", random_token_prompts(4, 8, 3, 1000), LoadShape(concurrency=4),
                              workers=1, warmup_specs=random_token_prompts(2, 8, 2, 1000, seed=9))
    assert result.workers == 1 and result.metrics().completed == 4
    assert result.worker_stats[0].pid != os.getpid()


class _FailsToUnpickle:
    """Pickles in the parent; unpickling it in the worker raises ZeroDivisionError (or exits, with ``code``)."""

    def __init__(self, code: int | None = None) -> None:
        self.code = code

    def __reduce__(self) -> Any:
        return (os._exit, (self.code,)) if self.code is not None else (operator.truediv, (1, 0))


def _specs_with_bad_second(bad: Any) -> list[RequestSpec]:
    specs = random_token_prompts(6, 8, 3, 1000)
    specs[1] = RequestSpec(prompt=bad, prompt_len=8, max_tokens=3)  # request 1: worker 2's
    return specs


def test_a_worker_that_raises_is_named_with_its_exception(peer: ServerProcess) -> None:
    with pytest.raises(WorkerError, match=r"worker 2 of 2 \(pid \d+\) failed while starting: ZeroDivisionError"):
        run_load_workers(peer.url, "peer", _specs_with_bad_second(_FailsToUnpickle()), LoadShape(concurrency=2),
                         workers=2)
    assert _no_workers_left()


def test_a_worker_that_exits_is_named_with_its_exit_code(peer: ServerProcess) -> None:
    with pytest.raises(WorkerError, match=r"worker 2 of 2 \(pid \d+\) exited with code 3 while starting"):
        run_load_workers(peer.url, "peer", _specs_with_bad_second(_FailsToUnpickle(3)), LoadShape(concurrency=2),
                         workers=2)
    assert _no_workers_left()


def test_a_worker_killed_during_the_run_fails_the_run_at_once(peer: ServerProcess) -> None:
    """Worker 1 is killed once its requests are under way (each lasts 50 + 199 x 20 ms): the parent says so and
    ends worker 2, well before the run would have ended. "Under way" is after the coordinator's start: its
    ``before_measured`` runs once every worker is warm with its connections open, right before the start is set
    (a worker's open connections no longer tell: they are opened before the start)."""
    killed: list[int] = []
    started = threading.Event()

    def kill_worker_1() -> None:
        if not started.wait(60):
            return
        time.sleep(0.5)  # into the first round: each request lasts about 4 s
        for p in multiprocessing.active_children():
            if p.name == "servingbench worker 1 of 2" and p.pid:
                os.kill(p.pid, 9)
                killed.append(p.pid)

    killer = threading.Thread(target=kill_worker_1, daemon=True)
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker 1 of 2 \(pid \d+\) exited with code -9 during the run"):
        run_load_workers(peer.url, "peer", random_token_prompts(8, 8, 200, 1000), LoadShape(concurrency=8),
                         workers=2, before_measured=started.set)
    killer.join(5)
    assert killed and time.monotonic() - t0 < 60  # a healthy run: 2 rounds of 4 s; the backstop: minutes
    assert _no_workers_left()


def test_the_peer_serves_one_port_from_several_processes(tmp_path: Path) -> None:
    config = PeerConfig(model="peer", interval_ms=1.0, processes=3)
    with ServerProcess(config, tmp_path, startup_timeout=120) as server:
        assert server.proc is not None
        children = {p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)}
        seen = set()
        for _ in range(60):  # a new connection each: the kernel spreads them over the listening sockets
            with urllib.request.urlopen(server.url + "/whoami", timeout=10) as resp:
                pid = json.load(resp)["pid"]
                assert resp.headers["X-Peer-Pid"] == str(pid)
                seen.add(pid)
        assert len(seen) > 1 and seen <= children, (seen, children)
        result = run_load_workers(server.url, "peer", random_token_prompts(6, 8, 4, 1000), LoadShape(concurrency=6),
                                  workers=2)
        assert result.metrics().completed == 6
    alive = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive  # stopping the peer ended every serving process


def test_self_test_reports_finite_errors_and_a_non_negative_ttft_error(peer: ServerProcess) -> None:
    st = self_test(8, workers=2, peer=peer, output_len=16)
    assert (st.concurrency, st.workers, st.peer_processes, st.failed, st.num_requests) == (8, 2, 2, 0, 16)
    values = [st.ttft_error_ms.p50, st.ttft_error_ms.p99, st.itl_error_ms.p50, st.itl_error_ms.p99,
              st.chunks_per_s]
    assert all(math.isfinite(v) for v in values), values
    assert st.ttft_error_ms.p50 >= 0.0  # no client sees the first chunk before the peer sends it
    assert st.ttft_error_ms.p99 >= st.ttft_error_ms.p50 and st.itl_error_ms.p99 >= st.itl_error_ms.p50
    assert 0 < st.chunks_per_s <= st.ideal_chunks_per_s * 1.5
    assert len(st.loop_lag_ms_p90) == 2 and set(st.saturated) <= {1, 2}
    assert st.check(max_ttft_error_ms=1e9) is None
    problem = st.check(max_ttft_error_ms=-1.0)
    assert problem is not None and "median TTFT" in problem
    json.dumps(st.to_dict())
    run = run_load_workers(peer.url, "peer", random_token_prompts(8, 8, 4, 1000), LoadShape(concurrency=8),
                           workers=2)
    note = client_error_note(run, st)
    assert note.startswith("client: 2 worker processes") and "self-test" in note and "TTFT p50 +" in note
    assert "no client self-test" in client_error_note(run, None)


SUITE_TABLE = """
[workloads.wide]
cpu = {{ num_requests = 512, concurrency = 256, prompt_len = 4, output_len = 16, warmup_requests = 2, client_workers = 2, max_client_ttft_error_ms = {bound} }}

[configs.vllm]
engine = "vllm"

[[expect]]
hardware = "any-cpu"
model = "*"
config = "vllm"
workload = "wide"
failure_rate = {{ max = 0 }}
"""


@pytest.mark.parametrize("error_bound", [1e6, 1e-6])
def test_the_suite_drives_wide_runs_over_workers_and_checks_its_own_error(peer: ServerProcess, tmp_path: Path,
                                                                         error_bound: float, table_project: Any) -> None:
    """A workload at 256 streams over 2 client processes, measured through the plugin (--server-url: the peer
    stands in for a deployment): the run carries the self-test's note, and an impossible error bound makes the
    run invalid, so its bound fails with the client's figure."""
    proc = table_project(tmp_path, SUITE_TABLE.format(bound=error_bound), "--server-url", peer.url, timeout=280)
    out = proc.stdout + proc.stderr
    (saved,) = (tmp_path / "results" / "measurements").glob("vllm--wide*.json")
    m = json.loads(saved.read_text())
    assert m["completed"] == 512 and m["failed"] == 0, m["errors"]
    (note,) = [w for w in m["warnings"] if w.startswith("client: 2 worker processes")]
    assert "self-test against a peer of known timing at concurrency 256 over 2 worker(s)" in note, note
    if error_bound > 1:
        assert proc.returncode == 0, out[-3000:]
        assert not m["invalid"], m["invalid"]
    else:
        assert proc.returncode == 1, out[-3000:]
        (problem,) = m["invalid"]
        assert problem.startswith("client self-test: at concurrency 256 over 2 worker(s)"), problem
        assert "the run is invalid: client self-test" in out, out[-3000:]

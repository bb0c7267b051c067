"""Client workers as Ray actors on a real Ray cluster of two nodes on this machine (a head node and a worker node,
each with one CPU and its own resource, ``node_a`` / ``node_b``): the same figures as one host against a real
server, records merged in request order, a node killed mid-run, and the self-test through Ray.

Both nodes run on this host, so their monotonic clocks are one clock: the measured offsets must come out as 0
within their stated uncertainty, a real check of the round trips' plumbing (tests/unit/test_clock_offset.py checks
the estimator on known, nonzero offsets). Skipped only where Ray cannot start, with the reason."""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadShape
from servingbench.load.workers import LocalProcessWorker, run_load_workers
from servingbench.servers.process import ServerProcess
from servingbench.servers.sse_peer import PeerConfig
from servingbench.suite.selftest import self_test

pytestmark = pytest.mark.timeout(300)
OBJECT_STORE = 100 * 2**20  # the smallest Ray takes happily; the machine is shared
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "plasma_store", "log_monitor", "dashboard")


def _ray_children() -> list[str]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            text = " ".join(p.cmdline()) or p.name()
        except psutil.Error:
            continue
        if any(k in text for k in RAY_PROCESSES):
            out.append(f"{p.pid} {text[:80]}")
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Head (node_a) + one worker node (node_b), one CPU each, no dashboard; the test process joins it. Shut down
    at the end, and no Ray process of it may outlive that."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError as e:
        pytest.skip(f"Ray is not installed ({e}): pip install 'servingbench[ray]'")
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1},
                                                           "object_store_memory": OBJECT_STORE,
                                                           "include_dashboard": False})
        c.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=OBJECT_STORE)
        ray.init(address=c.address, log_to_driver=False, logging_level="WARNING")
    except Exception as e:  # noqa: BLE001 - any reason Ray cannot start here is the skip's reason
        pytest.skip(f"Ray cannot start a cluster here: {type(e).__name__}: {e}")
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        deadline = time.monotonic() + 10
        while _ray_children() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _ray_children(), _ray_children()


@pytest.fixture(scope="module")
def hosts(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from servingbench.load.ray_workers import RayHosts

    h = RayHosts(cluster.address, partial_dir=tmp_path_factory.mktemp("partial"))
    yield h
    h.close()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = PeerConfig(model="peer", ttft_ms=50.0, interval_ms=20.0, processes=1)
    with ServerProcess(config, tmp_path_factory.mktemp("peer"), startup_timeout=120) as server:
        yield server


def _free_cpus_back(ray: Any, cpus: float, within_s: float = 15.0) -> bool:
    """Whether the actors' CPUs came back to the cluster (every actor of the run was killed)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if ray.available_resources().get("CPU", 0.0) >= cpus:
            return True
        time.sleep(0.2)
    return False


def test_records_merge_in_request_order_with_none_lost_or_doubled(hosts: Any, peer: ServerProcess) -> None:
    """24 requests of 40 chunks (850 ms each) at concurrency 8 over one actor per node: three rounds, so records
    cross both ways (handed over during the run, and in the final report), and all come back once each."""
    import ray

    assert len(hosts.nodes) == 2 and len({n.node_id for n in hosts.nodes}) == 2
    specs = random_token_prompts(24, 8, 40, 1000, seed=3)
    result = hosts.run(peer.url, "peer", specs, LoadShape(concurrency=8), per_node=1, label="merge")
    m = result.metrics()
    assert (m.completed, m.failed, m.total_output_tokens) == (24, 0, 24 * 40)
    assert [r.request_id for r in result.records] == [f"req-{i}" for i in range(24)]
    assert result.worker_of == [i % 2 for i in range(24)]
    assert all(len(r.chunk_times) == 40 for r in result.records)
    assert {s.host for s in result.worker_stats} == {n.name for n in hosts.nodes}  # one actor on each node
    handed = [len(w.received) for w in hosts.pool]  # the rest came in the final reports
    assert sum(handed) > 0, handed  # records crossed during the run too, and none of them twice (above)
    for s in result.worker_stats:  # one host, one CLOCK_MONOTONIC: the true offset is 0
        assert abs(s.clock_offset_ms) <= s.clock_uncertainty_ms, (s.clock_offset_ms, s.clock_uncertainty_ms)
    end = result.start_at + result.duration
    for r in result.records:  # on the coordinator's clock, inside the run's window; the peer's known TTFT
        assert result.start_at <= r.queued_at <= r.start < r.chunk_times[0] <= r.chunk_times[-1] <= end
        assert r.ttft >= 0.050
    (note,) = [w for w in result.warnings if w.startswith("client hosts: 2 Ray actor(s) on 2 node(s)")]
    assert all(n.name in note for n in hosts.nodes), note
    assert not result.invalid, result.invalid
    assert _free_cpus_back(ray, 2.0)


def test_the_self_test_runs_through_ray(hosts: Any, peer: ServerProcess) -> None:
    st = self_test(16, workers=2, peer=peer, output_len=16, make_worker=hosts.make_worker)
    assert (st.workers, st.failed, st.num_requests) == (2, 0, 32)
    assert st.hosts == sorted(n.name for n in hosts.nodes)
    assert st.ttft_error_ms.p50 >= 0.0 and st.ttft_error_ms.p99 >= st.ttft_error_ms.p50


def _figures(result: Any) -> dict[str, float]:
    m = result.metrics()
    assert m.failed == 0, m.errors
    return {"output tok/s": m.output_throughput, "TPOT p50": m.tpot.median, "E2EL p50": m.e2el.median}


def test_two_nodes_measure_a_real_server_as_one_host_does(hosts: Any, hf_server: ServerProcess) -> None:
    """The HF server on the generated 36M model, 6 requests of 16 tokens at concurrency 2 over two
    workers: three runs on this host's processes and three over the two Ray nodes, interleaved (L R R L L R, each
    Ray run's actors gone before the next run starts) so that the machine's drift hits both. Each figure's
    medians differ by no more than the larger spread of the three runs
    of either side, with a floor of 10% where both spreads happen to be smaller. The server shares this machine's 2
    cores with the client's processes, so the host side's cost moves the server's own figures: a fresh-clone run on
    the Zen 3 box (2026-12-07) had E2EL p50 556.7 ms on one host and 598.4 ms over Ray (7.5%), each side's three runs
    within 6%. The client's own precision over Ray is held exactly above, against the peer of known timing."""
    specs = random_token_prompts(6, 16, 16, 1000, seed=5)
    shape = LoadShape(concurrency=2)
    url, model = hf_server.url, "cpu-llama-36m"
    local: list[dict[str, float]] = []
    remote: list[dict[str, float]] = []
    import ray

    for i in range(6):  # L R R L L R: neither side always goes first
        if i in (0, 3, 4):
            local.append(_figures(run_load_workers(url, model, specs, shape, workers=2,
                                                   make_worker=LocalProcessWorker)))
        else:
            remote.append(_figures(hosts.run(url, model, specs, shape, per_node=1, label="hf")))
            assert _free_cpus_back(ray, 2.0)  # Ray's teardown of the actors is done before the next run
    for k in local[0]:
        a, b = [r[k] for r in local], [r[k] for r in remote]
        noise = max(max(a) - min(a), max(b) - min(b), 0.10 * statistics.median(a))
        diff = abs(statistics.median(b) - statistics.median(a))
        print(f"{k}: one host {a}, Ray {b}, |difference of medians| {diff:.3g} vs noise {noise:.3g}")
        assert diff <= noise, (k, a, b)


SUITE_TABLE = """
[workloads.wide]
cpu = { num_requests = 256, concurrency = 256, prompt_len = 4, output_len = 8, warmup_requests = 2, client_workers = 1, max_client_ttft_error_ms = 1e6 }

[configs.vllm]
engine = "vllm"

[[expect]]
hardware = "any-cpu"
model = "*"
config = "vllm"
workload = "wide"
failure_rate = { max = 0 }
"""


def test_the_suite_places_workers_on_ray_with_ray_address(cluster: Any, peer: ServerProcess, tmp_path: Path,
                                                           table_project: Any) -> None:
    """``--ray-address``: a table's workload at 256 streams runs as one actor per node (client_workers = 1), its
    self-test too, and the summary names both nodes (the peer stands in for a deployment at --server-url)."""
    proc = table_project(tmp_path, SUITE_TABLE, "--server-url", peer.url, "--ray-address", cluster.address,
                         timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    (saved,) = (tmp_path / "results" / "measurements").glob("vllm--wide*.json")
    m = json.loads(saved.read_text())
    assert m["completed"] == 256 and m["failed"] == 0 and not m["invalid"], (m["errors"], m["invalid"])
    (hosts_note,) = [w for w in m["warnings"] if w.startswith("client hosts: 2 Ray actor(s) on 2 node(s)")]
    (client_note,) = [w for w in m["warnings"] if w.startswith("client: 2 Ray actors on 2 nodes")]
    assert "self-test against a peer of known timing at concurrency 256 over 2 worker(s) on Ray" in client_note
    assert f"note: {hosts_note}" in out, out[-3000:]



def test_a_node_killed_mid_run_ends_the_run_naming_it_with_the_records_so_far(cluster: Any, hosts: Any,
                                                                             peer: ServerProcess) -> None:
    """A third node joins; the run puts one actor on each. Once the third node's worker has handed over a record,
    the node is removed (its raylet and workers killed): the run fails within seconds naming that node, and the
    records received from all three so far are saved, in request order, none twice."""
    import ray

    from servingbench.load.ray_workers import RayHosts, RayRunFailed

    node_c = cluster.add_node(num_cpus=1, resources={"node_c": 1}, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    three = RayHosts(cluster.address, partial_dir=hosts.partial_dir)
    doomed = next(n for n in three.nodes if n.node_id == node_c.node_id)
    specs = random_token_prompts(30, 8, 100, 1000, seed=6)  # 5 rounds of 2 s: about 10 s when healthy
    killed: list[float] = []

    def kill_when_it_has_handed_over() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            mine = [w for w in three.pool if w.node == doomed]
            if mine and mine[0].received:
                cluster.remove_node(node_c, allow_graceful=False)
                killed.append(time.monotonic())
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_it_has_handed_over, daemon=True)
    killer.start()
    with pytest.raises(RayRunFailed) as e:
        three.run(peer.url, "peer", specs, LoadShape(concurrency=6), per_node=1, label="killed")
    failed_at = time.monotonic()
    killer.join(5)
    assert killed, "the node was never killed"
    print(f"the run ended {failed_at - killed[0]:.1f} s after its node was killed")
    assert failed_at - killed[0] < 30, "the run did not end soon after its node died"
    msg = str(e.value)
    assert e.value.node == doomed.name and doomed.name in msg and "lost during the run" in msg, msg
    assert e.value.path is not None and str(e.value.path) in msg
    saved = json.loads(Path(e.value.path).read_text())
    ids = [int(d["request_id"].split("-")[1]) for d in saved["records"]]
    assert ids == sorted(set(ids)) and 0 < len(ids) < 30, ids
    assert {i % 3 for i in ids} >= {three.nodes.index(doomed)}  # the lost node's finished records are kept
    assert f"{len(ids)} of 30 records were received" in msg
    assert _free_cpus_back(ray, 2.0)  # the two live nodes' actors were killed too

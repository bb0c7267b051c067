"""The client's own error on Ray actors against this host's worker processes, and Ray's own cost per request.

The self-test (a paced SSE peer of known timing, suite/selftest.py) runs at each concurrency over two workers,
alternately as two local worker processes and as two Ray actors, one on each node of a Ray cluster, `--repeats`
times, so the machine's drift hits both. Per run: the TTFT and ITL error, and each worker process's CPU time over
its measured run (``WorkerReport.process_cpu_s``: the client's loop plus, in an actor, Ray's own threads and the
records handed over each second). Ray's cost per request is the actors' CPU less the local workers' CPU for the
same requests; the coordinator's wall time beyond the run (actor start, clock round trips, collecting the
records) is per run.

Without --ray-address it starts a cluster of two nodes on this host (a head and a worker node, one CPU each, a
100 MB object store, no dashboard) and shuts it down at the end:
    python scripts/ray_bench.py --concurrency 128,256 --repeats 3 --out docs/measurements/ray-cpu-2c-selftest.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

try:
    import servingbench  # noqa: F401
except ImportError:  # run from a checkout without installing: the repository root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadShape
from servingbench.load.workers import LocalProcessWorker, available_cores, run_load_workers
from servingbench.suite.selftest import PROMPT_LEN, default_peer_processes, peer_server, summarize

OBJECT_STORE = 100 * 2**20
RAY_DAEMONS = ("raylet", "gcs_server", "log_monitor", "ray_client_server", "runtime_env", "dashboard")


def daemon_cpu_s() -> float:
    """CPU seconds so far of this host's Ray daemons (raylets, GCS, monitors; not the actors' worker processes,
    whose CPU over the run each report carries)."""
    total = 0.0
    for p in psutil.process_iter(["cmdline"]):
        try:
            text = " ".join(p.info["cmdline"] or [])
            if any(d in text for d in RAY_DAEMONS) and "ray::" not in text:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def one_run(kind: str, hosts: Any, peer: Any, concurrency: int, output_len: int, seed: int) -> dict[str, Any]:
    specs = random_token_prompts(2 * concurrency, PROMPT_LEN, output_len, 1000, seed)
    shape = LoadShape(concurrency=concurrency, timeout_s=120.0)
    t0, cpu0, daemons0 = time.monotonic(), os.times(), daemon_cpu_s()
    if kind == "ray":
        result = hosts.run(peer.url, "peer", specs, shape, per_node=1, label=f"bench-{seed}")
    else:
        result = run_load_workers(peer.url, "peer", specs, shape, workers=2, make_worker=LocalProcessWorker)
    wall = time.monotonic() - t0
    cpu1, daemons = os.times(), daemon_cpu_s() - daemons0
    coordinator = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)  # this process, not its children
    st = summarize(result, peer.config, concurrency, output_len)
    stats = result.worker_stats
    return {"kind": kind, "concurrency": concurrency, "workers": result.workers, "requests": len(specs),
            "ttft_error_ms_p50": st.ttft_error_ms.p50, "ttft_error_ms_p99": st.ttft_error_ms.p99,
            "itl_error_ms_p50": st.itl_error_ms.p50, "itl_error_ms_p99": st.itl_error_ms.p99,
            "failed": st.failed, "duration_s": result.duration, "wall_s": wall,
            "coordinator_cpu_s": coordinator, "ray_daemons_cpu_s": daemons,
            "process_cpu_s": [s.process_cpu_s for s in stats], "loop_cpu_fraction": [s.cpu_fraction for s in stats],
            "loop_lag_ms_p90": [s.loop_lag_ms_p90 for s in stats], "hosts": [s.host for s in stats],
            "clock_offset_ms": [s.clock_offset_ms for s in stats],
            "clock_uncertainty_ms": [s.clock_uncertainty_ms for s in stats], "invalid": result.invalid}


def summary(rows: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["kind"] == kind and r["concurrency"] == concurrency)

    def cpu_per_request_ms(kind: str, key: str = "process_cpu_s") -> float:
        runs = [r for r in rows if r["kind"] == kind and r["concurrency"] == concurrency]
        return statistics.median((sum(r[key]) if isinstance(r[key], list) else r[key]) / r["requests"] * 1000
                                 for r in runs)

    def setup_s(kind: str) -> float:
        return statistics.median(r["wall_s"] - r["duration_s"] for r in rows
                                 if r["kind"] == kind and r["concurrency"] == concurrency)

    out: dict[str, Any] = {"concurrency": concurrency}
    for kind in ("local", "ray"):
        out[kind] = {"ttft_error_ms_p50": med(kind, "ttft_error_ms_p50"),
                     "ttft_error_ms_p99": med(kind, "ttft_error_ms_p99"),
                     "itl_error_ms_p99": med(kind, "itl_error_ms_p99"), "cpu_ms_per_request": cpu_per_request_ms(kind),
                     "coordinator_cpu_ms_per_request": cpu_per_request_ms(kind, "coordinator_cpu_s"),
                     "daemons_cpu_ms_per_request": cpu_per_request_ms(kind, "ray_daemons_cpu_s"),
                     "wall_beyond_run_s": setup_s(kind)}
    out["ray_cpu_ms_per_request_extra"] = sum(out["ray"][k] - out["local"][k] for k in (
        "cpu_ms_per_request", "coordinator_cpu_ms_per_request", "daemons_cpu_ms_per_request"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="128,256", help="concurrencies (default 128,256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind at each concurrency")
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--ray-address", default=None, help="an existing cluster (default: start 2 nodes here)")
    parser.add_argument("--out", default=None, help="JSON of every run and the summary (default: stdout)")
    ns = parser.parse_args(argv)
    concs = [int(x) for x in ns.concurrency.split(",")]

    import ray

    from servingbench.load.ray_workers import RayHosts

    cluster = None
    if ns.ray_address is None:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE,
                                                                 "include_dashboard": False})
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    rows: list[dict[str, Any]] = []
    try:
        hosts = RayHosts(cluster.address if cluster else ns.ray_address)
        processes = default_peer_processes(max(concs))
        print(f"# {available_cores()} cores; Ray {ray.__version__}, {len(hosts.nodes)} node(s); peer {processes} "
              "process(es), TTFT 50 ms, a chunk per 20 ms", file=sys.stderr)
        with peer_server(processes) as peer:
            for rep in range(ns.repeats):
                for c in concs:
                    for kind in (("local", "ray") if rep % 2 == 0 else ("ray", "local")):
                        row = one_run(kind, hosts, peer, c, ns.output_len, seed=len(rows))
                        rows.append(row)
                        print(f"{kind:>5} c{c:<4} TTFT error p50 {row['ttft_error_ms_p50']:6.1f} p99 "
                              f"{row['ttft_error_ms_p99']:6.1f} ms | ITL p99 {row['itl_error_ms_p99']:5.1f} ms | CPU "
                              f"{sum(row['process_cpu_s']):.2f} s, coordinator {row['coordinator_cpu_s']:.2f} s, "
                              "Ray daemons "
                              f"{row['ray_daemons_cpu_s']:.2f} s | wall beyond run "
                              f"{row['wall_s'] - row['duration_s']:.1f} s | {row['failed']} failed",
                              file=sys.stderr, flush=True)
        hosts.close()
    finally:
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
    doc = {"ray_version": ray.__version__, "cores": available_cores(), "runs": rows,
           "summary": [summary(rows, c) for c in concs]}
    text = json.dumps(doc, indent=1)
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.out).write_text(text + "\n")
    else:
        print(text)
    for s in doc["summary"]:
        print(json.dumps(s), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Capacity under an SLO, two ways on the real vLLM CPU server, which must agree: the open-loop rate sweep's
capacity (the highest Poisson rate whose p99 TTFT and TPOT meet the SLO) and the concurrency sweep's. Little's law
ties them: an open loop at the rate a closed loop sustains holds about that many requests in flight.

A concurrency sweep in doubling steps does not give one capacity but a bracket: the closed loop's capacity lies
between the throughput of the highest level that meets the SLO and that of the first level that misses it (10.0 vs
6.1 req/s in one CI run, 1.6x apart). The rate sweep's capacity is checked against that bracket, with room for the
noise of p99s over tens of requests: comparing it with the bracket's lower edge alone failed a CI run whose rate
sweep found 11.3 req/s, inside what c8 and c16 allowed. Where the bracket had a top, the rate sweep sat just above
it (1.13x and 1.27x in two runs): a closed loop of three waves spends part of its run filling and draining, which
lowers its throughput.

On the Zen 3 CI machine the open loop fell behind its schedule at 8 req/s (p90 138 ms late) beside the engine; the
search then goes on below that rate and the capacity is a lower bound (``bounded_by = "client"``), which the
table's ``min`` bound still decides. The test holds such a capacity to what the client could reach.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest


SLO_TTFT_MS, SLO_TPOT_MS = 1500.0, 60.0
LEVELS = (1, 2, 4, 8, 16, 32)  # c32 misses the SLO on 2 cores, so the bracket has a top
SHAPE = "prompt_len = 64, output_len = 24, warmup_requests = 1"
RATE_SECONDS = 10  # each rate's run: 10 s of arrivals, at least the 40 requests (not the default 30 s: CI time)

TABLE = f"""
[workloads.sweep]
cpu = {{ num_requests = 40, concurrency = 1, {SHAPE}, rates = [1, 4, 16, 64], slo_ttft_ms = {SLO_TTFT_MS}, slo_tpot_ms = {SLO_TPOT_MS}, capacity_steps = 3, rate_seconds = {RATE_SECONDS} }}
""" + "".join(f"""
[workloads.c{c}]
cpu = {{ num_requests = {max(3 * c, 12)}, concurrency = {c}, {SHAPE} }}
""" for c in LEVELS) + """
[configs.vllm]
engine = "vllm"

[[expect]]
hardware = "any-cpu"
model = "*"
config = "vllm"
workload = "sweep"
capacity_rps = { min = 0.5 }
""" + "".join(f"""
[[expect]]
hardware = "any-cpu"
model = "*"
config = "vllm"
workload = "c{c}"
failure_rate = {{ max = 0 }}
""" for c in LEVELS)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, table_project: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("capacity")
    proc = table_project(root, TABLE, timeout=1500)
    ms = [json.loads(p.read_text()) for p in (root / "results" / "measurements").glob("*.json")]
    # written whatever the search met: an invalid run leaves its curve, with the reason, and a missing figure
    (cap,) = [json.loads(p.read_text()) for p in (root / "results" / "capacity").glob("*.json")]
    return {"proc": proc, "m": ms, "cap": cap}


def test_rate_sweep_capacity_agrees_with_the_concurrency_sweep(run: dict[str, Any]) -> None:
    proc = run["proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    closed = []
    for d in run["m"]:
        if d["workload"]["name"].startswith("c") and d["workload"]["name"][1:].isdigit():
            meets = d["p99_ttft_ms"] <= SLO_TTFT_MS and d["p99_tpot_ms"] <= SLO_TPOT_MS and d["failed"] == 0
            closed.append((d["workload"]["concurrency"], d["request_throughput"], meets))
    closed.sort()
    met = [x for c, x, ok in closed if ok]
    assert met, closed  # c1 must meet a loose SLO
    low = max(met)  # the closed loop sustains at least this under the SLO
    missed = [x for c, x, ok in closed if not ok and x >= low]
    high = min(missed) if missed else None  # ... and not this, where a level missed it
    cap = run["cap"]
    points = [(p["rate"], p["meets"], round(p["p99_ttft_ms"]), round(p["p99_tpot_ms"])) for p in cap["points"]]
    summary = f"rate-sweep capacity {cap['capacity_rps']:.2f} req/s vs concurrency-sweep bracket " \
              f"[{low:.2f}, {high if high is None else round(high, 2)}]; closed {closed}; points {points}"
    print(summary)
    for p in cap["points"]:  # sized by duration: rate x 10 s of arrivals, at least 40
        assert p["requests"] == max(40, math.ceil(p["rate"] * RATE_SECONDS)), (p, summary)
    for p in cap["points"]:  # each verdict follows from the point's own figures, whatever path the search took
        judged = None if p["invalid"] else (p["failed"] == 0 and p["p99_ttft_ms"] <= SLO_TTFT_MS
                                           and p["p99_tpot_ms"] <= SLO_TPOT_MS)  # an invalid run is not judged
        assert p["meets"] == judged, (p, summary)
    # the SLO binds inside the swept rates, or the client's reach does: beside vLLM's engine on 2 shared cores the
    # open loop can fall behind its schedule near capacity (a CI run at 8 req/s, p90 138 ms late)
    assert cap["bounded_by"] in ("search", "client"), summary
    reach = low
    if cap["bounded_by"] == "client":  # known from below: the lowest invalid run is the client's, above the capacity
        bad = min((p for p in cap["points"] if p["invalid"]), key=lambda p: p["rate"])
        assert bad["rate"] > cap["capacity_rps"] and bad["meets"] is None, summary
        assert all(r.startswith(("behind schedule", "client saturated")) for r in bad["invalid"]), summary
        reach = min(low, bad["rate"])
    assert cap["capacity_rps"] >= 0.4 * reach, summary
    if high is not None:  # with every level meeting the SLO the closed sweep has no upper edge to hold it to
        assert cap["capacity_rps"] <= 1.5 * high, summary

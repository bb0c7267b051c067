"""How many client worker processes a load needs: the client's own error per worker count and concurrency.

Self-test mode (default): a paced SSE peer of P processes (first chunk after --ttft-ms, then one per --interval-ms
per stream) is driven closed-loop at each concurrency with each worker count; what the client measures beyond the
peer's known timing is its own error. Prints one line per run and writes all of them as JSON.
Server mode (--server-url URL --model M): the same sweep of worker counts against a real server (vLLM on a GPU,
say) with random token prompts; reports throughput, TTFT p50/p99 and each worker's loop lag.

Needs only the package's own dependencies (aiohttp, numpy, psutil), no pytest:
    python scripts/client_bench.py --out results/client_bench.json
    python scripts/client_bench.py --workers 1,4,8 --concurrency 1024 --peer-processes 4
    python scripts/client_bench.py --server-url http://127.0.0.1:8000 --model M --workers 1,4 --concurrency 256,1024
The API key, where the server needs one, comes from $SERVINGBENCH_API_KEY (never from the command line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    import servingbench  # noqa: F401
except ImportError:  # run from a checkout without installing: the repository root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadShape
from servingbench.suite.selftest import default_peer_processes, peer_server, self_test
from servingbench.load.workers import available_cores, run_load_workers


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def clean(x: Any) -> Any:
    """JSON has no NaN: a missing figure is null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.1f}"


def self_test_sweep(ns: argparse.Namespace) -> list[dict[str, Any]]:
    processes = ns.peer_processes or default_peer_processes(max(ns.concurrency))
    rows = []
    print(f"# peer: {processes} process(es), ttft {ns.ttft_ms:g} ms, interval {ns.interval_ms:g} ms; "
          f"{available_cores()} cores", file=sys.stderr)
    print("concurrency workers chunks/s (ideal) | TTFT error p50 p99 ms | ITL error p50 p99 ms | saturated | "
          "loop lag p90 ms (max over workers)", file=sys.stderr)
    with peer_server(processes, ns.ttft_ms, ns.interval_ms) as peer:
        for c in ns.concurrency:
            for w in ns.workers:
                st = self_test(c, workers=w, peer=peer, output_len=ns.output_len,
                               num_requests=ns.requests_per_slot * c, seed=len(rows))
                row = st.to_dict()
                rows.append(row)
                print(f"{c:>11} {st.workers:>7} {st.chunks_per_s:>8.0f} ({st.ideal_chunks_per_s:.0f}) | "
                      f"{fmt(st.ttft_error_ms.p50):>6} {fmt(st.ttft_error_ms.p99):>6} | "
                      f"{fmt(st.itl_error_ms.p50):>6} {fmt(st.itl_error_ms.p99):>6} | {st.saturated or '-'} | "
                      f"{max(st.loop_lag_ms_p90):.1f}" + (f" | {st.failed} failed" if st.failed else ""),
                      file=sys.stderr, flush=True)
    return rows


def server_sweep(ns: argparse.Namespace) -> list[dict[str, Any]]:
    api_key = os.environ.get("SERVINGBENCH_API_KEY") or None
    rows = []
    print("concurrency workers output tok/s req/s | TTFT p50 p99 ms | failed | loop lag p90 ms per worker",
          file=sys.stderr)
    for c in ns.concurrency:
        for w in ns.workers:
            n = ns.requests_per_slot * c
            specs = random_token_prompts(n, ns.prompt_len, ns.output_len, ns.vocab_size, seed=len(rows) + 1)
            warm = random_token_prompts(min(c, 8), ns.prompt_len, 8, ns.vocab_size, seed=10_000 + len(rows))
            shape = LoadShape(concurrency=c, timeout_s=ns.timeout_s, seed=len(rows))
            t0 = time.monotonic()
            result = run_load_workers(ns.server_url, ns.model, specs, shape, workers=w, api_key=api_key,
                                      warmup_specs=warm)
            m = result.metrics()
            row = {
                "concurrency": c, "workers": result.workers, "num_requests": n, "prompt_len": ns.prompt_len,
                "output_len": ns.output_len, "duration_s": m.duration, "wall_s": time.monotonic() - t0,
                "completed": m.completed, "failed": m.failed, "errors": m.errors,
                "output_throughput": m.output_throughput, "request_throughput": m.request_throughput,
                "ttft_ms_p50": m.ttft.median, "ttft_ms_p99": m.ttft.percentiles[99],
                "itl_ms_p50": m.itl.median, "itl_ms_p99": m.itl.percentiles[99],
                "max_concurrent_requests": m.max_concurrent_requests,
                "loop_lag_ms_p90": [s.loop_lag_ms_p90 for s in result.worker_stats],
                "loop_lag_ms_p99": [s.loop_lag_ms_p99 for s in result.worker_stats],
                "cpu_fraction": [s.cpu_fraction for s in result.worker_stats],
                "saturated": [s.index + 1 for s in result.worker_stats if s.saturated],
                "notes": result.warnings,
            }
            rows.append(row)
            print(f"{c:>11} {result.workers:>7} {m.output_throughput:>12.0f} {m.request_throughput:>5.1f} | "
                  f"{fmt(m.ttft.median):>7} {fmt(m.ttft.percentiles[99]):>7} | {m.failed:>6} | "
                  + " ".join(f"{x:.1f}" for x in row["loop_lag_ms_p90"]), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=ints, default=[1, 2, 4, 8, 16], help="worker counts (default 1,2,4,8,16)")
    parser.add_argument("--concurrency", type=ints, default=[256, 512, 1024],
                        help="concurrencies (default 256,512,1024)")
    parser.add_argument("--requests-per-slot", type=int, default=2, help="requests = this x concurrency")
    parser.add_argument("--output-len", type=int, default=None, help="tokens per request (64 peer, 256 server)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here (else to stdout)")
    peer = parser.add_argument_group("self-test (peer) mode")
    peer.add_argument("--peer-processes", type=int, default=None, help="peer processes (default: by concurrency)")
    peer.add_argument("--ttft-ms", type=float, default=50.0)
    peer.add_argument("--interval-ms", type=float, default=20.0)
    server = parser.add_argument_group("server mode")
    server.add_argument("--server-url", default=None)
    server.add_argument("--model", default=None)
    server.add_argument("--prompt-len", type=int, default=128)
    server.add_argument("--vocab-size", type=int, default=32000, help="random prompt ids are drawn below this")
    server.add_argument("--timeout-s", type=float, default=600.0)
    ns = parser.parse_args(argv)
    if ns.server_url and not ns.model:
        parser.error("--server-url needs --model")
    mode = "server" if ns.server_url else "self-test"
    ns.output_len = ns.output_len or (256 if ns.server_url else 64)
    rows = server_sweep(ns) if ns.server_url else self_test_sweep(ns)
    doc = {"mode": mode, "cores": available_cores(), "args": {k: str(v) for k, v in vars(ns).items()},
           "rows": rows}
    text = json.dumps(clean(doc), indent=1, default=str)
    if ns.out:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(text)
        print(f"# wrote {ns.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

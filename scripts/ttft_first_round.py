"""Where the client's TTFT error at a closed loop's concurrency goes: the first round (one burst of sends, and before
2026-12-06 a new connection each) against later requests, on the SSE peer. Usage: python scripts/ttft_first_round.py C [PEER_PROCESSES]"""
import asyncio, sys, numpy as np
from servingbench.suite.selftest import peer_server
from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadShape, run_load

c = int(sys.argv[1]); rounds = 6
with peer_server(int(sys.argv[2]) if len(sys.argv) > 2 else 1, 50.0, 20.0) as peer:
    for rep in range(3):
        specs = random_token_prompts(c * rounds, 8, 32, 1000, seed=rep)
        warm = random_token_prompts(2, 8, 4, 1000, seed=99)
        res = asyncio.run(run_load(peer.url, "peer", specs, LoadShape(concurrency=c, seed=rep), warmup_specs=warm))
        rec = [r for r in res.records if r.success]
        err = np.array([(r.ttft * 1000 - 50.0) for r in rec])
        first, rest = err[:c], err[c:]
        # within the first burst, by send order
        starts = np.array([r.start for r in rec[:c]]); send_spread = (starts.max() - starts.min()) * 1000
        itl = np.array([g * 1000 - 20.0 for r in rec for g in r.itls])
        print(f"   ITL err p50 {np.median(itl):.1f} p99 {np.percentile(itl,99):.1f}")
        print(f"c{c} rep{rep}: first round p50 {np.median(first):.1f} p99 {np.percentile(first,99):.1f} | "
              f"later p50 {np.median(rest):.1f} p99 {np.percentile(rest,99):.1f} | burst send spread {send_spread:.1f} ms | "
              f"first-round err vs send order corr {np.corrcoef(np.argsort(np.argsort(starts)), first)[0,1]:.2f}")

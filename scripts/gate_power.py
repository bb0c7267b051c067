"""Measured power of the regression gate on the CPU profile: false alarms from A/A pairs, detection of slowdowns.

A benchmark, not a test: it takes about 20 minutes on the 2-core machine. Two HF baseline servers of the CPU
profile's model run side by side on 127.0.0.1: A as it is, B with every decode step made slower by a set delay
(``--step-delay-ms``: real server behaviour, not a figure edited afterwards). Each pair is R rounds a side,
interleaved A B A B ..., judged by the gate's own ``verdicts``. A/A pairs run both sides on A.

    .venv/bin/python scripts/gate_power.py --aa-pairs 10 --pairs 4 --slowdowns 0.1,0.2 --out results/gate-power.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from servingbench.load.datasets import random_token_prompts
from servingbench.load.generator import LoadShape, run_load
from servingbench.measure.measurement import Measurement
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.process import ServerProcess
from servingbench.suite.gate import verdicts
from servingbench.suite.models import get_model, materialize
from servingbench.suite.rounds import GATED, Round

MODEL = "cpu-llama-36m"


def one_round(server: ServerProcess, name: str, seed: int, args: argparse.Namespace, vocab: int) -> Round:
    specs = random_token_prompts(args.requests, args.prompt_len, args.output_len, vocab, seed)
    result = asyncio.run(run_load(server.url, MODEL, specs, LoadShape(concurrency=args.concurrency, seed=seed)))
    m = Measurement(f"{name}-{seed}", "hf", name, {}, {}, result.metrics(), TelemetrySummary(), result.records, 0.0)
    return Round.of(m, 0, seed)


def pair(a: ServerProcess, b: ServerProcess, args: argparse.Namespace, vocab: int, seed0: int,
         raw: list[dict]) -> list[dict]:
    """R rounds a side, interleaved; the rounds themselves go to ``raw`` so the verdicts can be recomputed."""
    ra, rb = [], []
    for i in range(args.rounds):
        ra.append(one_round(a, "A", seed0 + 2 * i, args, vocab))
        rb.append(one_round(b, "B", seed0 + 2 * i + 1, args, vocab))
    raw.append({"a": [asdict(r) for r in ra], "b": [asdict(r) for r in rb]})
    return [v.to_dict() for v in verdicts(ra, rb)]


def summarize(pairs: list[list[dict]]) -> dict[str, dict[str, float]]:
    out = {}
    for g in GATED:
        vs = [next(v for v in p if v["metric"] == g.name) for p in pairs]
        out[g.name] = {"regressed": sum(v["status"] == "regressed" for v in vs) / len(vs),
                       "improved": sum(v["status"] == "improved" for v in vs) / len(vs),
                       "median_change": statistics.median(v["change"] for v in vs),
                       "median_mdr": statistics.median(v["mdr"] for v in vs)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--aa-pairs", type=int, default=10)
    p.add_argument("--pairs", type=int, default=4, help="pairs per slowdown")
    p.add_argument("--slowdowns", default="0.1,0.2", help="relative per-step slowdowns of B")
    p.add_argument("--rounds", type=int, default=3, help="rounds a side")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("results/gate-power.json"))
    args = p.parse_args()
    spec = get_model(MODEL)
    path, vocab = materialize(spec), int(spec.config["vocab_size"])
    base = dict(model=path, served_model_name=MODEL, dtype="float32", max_model_len=spec.max_model_len, threads=1)
    logs = Path(tempfile.mkdtemp(prefix="gate-power-"))
    report: dict = {"workload": {k: getattr(args, k) for k in ("requests", "concurrency", "prompt_len", "output_len",
                                                                "rounds")}, "started_at": time.time()}
    with ServerProcess(HFConfig(**base), logs, startup_timeout=300) as a:
        warm = one_round(a, "A", 10**6, args, vocab)
        step_ms = warm.figures["median_tpot_ms"]
        report["step_ms"] = step_ms
        print(f"A: TPOT p50 {step_ms:.2f} ms, {warm.figures['output_throughput']:.1f} tok/s", flush=True)
        aa: list[list[dict]] = []
        report["raw_aa"], report["raw_slowdowns"] = [], {}
        for k in range(args.aa_pairs):
            aa.append(pair(a, a, args, vocab, 1000 * (k + 1), report["raw_aa"]))
            print(f"A/A pair {k}: " + ", ".join(f"{v['metric']} {v['status']}" for v in aa[-1]), flush=True)
        report["aa"] = {"pairs": len(aa), "rates": summarize(aa),
                        "any_metric_regressed": sum(any(v["status"] == "regressed" for v in p) for p in aa) / len(aa)}
        report["slowdowns"] = {}
        for s in (float(x) for x in args.slowdowns.split(",")):
            with ServerProcess(HFConfig(**base, step_delay_ms=s * step_ms), logs, startup_timeout=300) as b:
                raw = report["raw_slowdowns"].setdefault(f"{s:.0%}", [])
                runs = [pair(a, b, args, vocab, 10**5 * (k + 1) + int(s * 1000), raw) for k in range(args.pairs)]
            report["slowdowns"][f"{s:.0%}"] = {"delay_ms": s * step_ms, "pairs": len(runs), "rates": summarize(runs)}
            print(f"slowdown {s:.0%}: " + json.dumps(report["slowdowns"][f"{s:.0%}"]["rates"]), flush=True)
    report["seconds"] = time.time() - report["started_at"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

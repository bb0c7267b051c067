"""The regression gate's false alarms and power: simulated (seconds), or measured on the CPU profile (an hour).

Simulated (``--simulate``): hierarchical data of known noise (servingbench/gate/simulate.py), A/A runs of
``make compare`` (2 configs x 8 metrics) and detection at the MDR the gate prints, per (sL, sr) case and design;
``--old-stats FILE`` judges the same A/A runs with an old stats.py's ``compare_rounds`` (Welch on rounds), e.g.

    .venv/bin/python scripts/gate_power.py --simulate --runs 1000
    git show 2043a6b:servingbench/measure/stats.py > /tmp/old_stats.py
    .venv/bin/python scripts/gate_power.py --simulate --runs 400 --old-stats /tmp/old_stats.py

Measured (``--live``): two HF servers of the CPU profile's model, A as it is, B with every decode step
made slower by a set delay (``--step-delay-ms``: real server behaviour, not a figure edited afterwards); each pair
is N lifetimes a side in ABBA order (a fresh server each) of R rounds, judged by the gate's own ``verdicts``. A/A
pairs run A on both sides.

    .venv/bin/python scripts/gate_power.py --live --aa-pairs 10 --pairs 4 --slowdowns 0.1,0.2
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

MODEL = "cpu-llama-36m"


def simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from servingbench.gate.simulate import CASES, DESIGNS, detection_at_printed_mdr, false_alarms

    decide = None
    if args.old_stats:
        spec = importlib.util.spec_from_file_location("old_stats", args.old_stats)
        old = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["old_stats"] = old  # its dataclasses look their module up
        spec.loader.exec_module(old)  # type: ignore[union-attr]

        def decide(name, hib, b, c, stored, alpha, me):  # the old gate: every round independent
            return old.compare_rounds(name, np.ravel(b), np.ravel(c), higher_is_better=hib, min_effect=me,
                                      alpha=alpha).status

    print("| design | case (sL, sr) | A/A runs failed (min effect 0) | A/A runs failed (gate's min effects) | "
          + ("" if decide else "throughput: detection at printed MDR, median MDR | TPOT p50: same |"))
    print("|---|---|---|---|" + ("" if decide else "---|---|"))
    for dk, design in DESIGNS.items():
        for ck, (sl, sr) in CASES.items():
            kw = dict(decide=decide, alpha=0.05 / 8) if decide else {}
            r0, _ = false_alarms(sl, sr, design, args.runs, 11, **kw)
            r1, _ = false_alarms(sl, sr, design, args.runs, 11, min_effect=None, **kw)
            row = f"| {dk} | {ck} | {r0:.1%} | {r1:.1%} |"
            if not decide:
                for metric in ("output_throughput", "median_tpot_ms"):
                    det, mdr = detection_at_printed_mdr(sl, sr, design, metric, args.draws, 21)
                    row += f" {det:.0%}, {mdr:.1%} |"
            print(row, flush=True)
    return 0


def live(args: argparse.Namespace) -> int:
    from servingbench.load.synthetic import random_token_prompts
    from servingbench.load.generator import LoadShape, run_load
    from servingbench.measure.measurement import Measurement
    from servingbench.measure.telemetry import TelemetrySummary
    from servingbench.servers.hf.config import HFConfig
    from servingbench.servers.process import ServerProcess
    from servingbench.gate.judge import abba, verdicts
    from servingbench.servers.models import get_model, materialize
    from servingbench.measure.rounds import GATED, Round

    spec = get_model(MODEL)
    path, vocab = materialize(spec), int(spec.config["vocab_size"])
    base = dict(model=path, served_model_name=MODEL, dtype="float32", max_model_len=spec.max_model_len, threads=1)
    logs = Path(tempfile.mkdtemp(prefix="gate-power-"))

    def one_round(server: ServerProcess, name: str, seed: int, lifetime: int, index: int) -> Round:
        specs = random_token_prompts(args.requests, args.prompt_len, args.output_len, vocab, seed)
        result = asyncio.run(run_load(server.url, MODEL, specs, LoadShape(concurrency=args.concurrency, seed=seed)))
        m = Measurement(f"{name}-{seed}", "hf", name, {}, {}, result.metrics(), TelemetrySummary(), result.records,
                        0.0, server_startup_s=server.startup_seconds)
        return Round.of(m, lifetime, index)

    def pair(delay_ms: float, seed0: int, raw: list[dict]) -> list[dict]:
        """N lifetimes a side in ABBA order, a fresh server each, R rounds on each."""
        sides: tuple[list[Round], list[Round]] = ([], [])
        seen = [0, 0]
        for k, s in enumerate(abba(args.lifetimes)):
            cfg = HFConfig(**base, step_delay_ms=delay_ms) if s == 1 and delay_ms else HFConfig(**base)
            with ServerProcess(cfg, logs, startup_timeout=300) as server:
                lt, seen[s] = seen[s], seen[s] + 1
                sides[s].extend(one_round(server, "AB"[s], seed0 + 100 * k + i, lt, i) for i in range(args.rounds))
        raw.append({"a": [asdict(r) for r in sides[0]], "b": [asdict(r) for r in sides[1]]})
        judged = [v.to_dict() for v in verdicts(sides[0], sides[1], configs=1)]
        raw[-1]["verdicts"] = judged
        save()  # every pair is kept as it completes: a later failure loses nothing measured
        flagged = [v["metric"] for v in judged if v["status"] == "regressed"]
        print(f"pair delay {delay_ms:.2f} ms ({time.time() - report['started_at']:.0f} s): "
              f"regressed {flagged or 'none'}", flush=True)
        return judged

    def save() -> None:
        report["seconds"] = time.time() - report["started_at"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.out)

    def summarize(pairs: list[list[dict]]) -> dict[str, dict[str, float]]:
        out = {}
        for g in GATED:
            vs = [next(v for v in p if v["metric"] == g.name) for p in pairs]
            out[g.name] = {"regressed": sum(v["status"] == "regressed" for v in vs) / len(vs),
                           "median_change": statistics.median(v["change"] for v in vs),
                           "median_mdr": statistics.median(v["mdr"] for v in vs)}
        return out

    report: dict = {"workload": {k: getattr(args, k) for k in ("requests", "concurrency", "prompt_len", "output_len",
                                                                "rounds", "lifetimes")}, "started_at": time.time()}
    with ServerProcess(HFConfig(**base), logs, startup_timeout=300) as a:
        step_ms = one_round(a, "A", 10**6, 0, 0).figures["median_tpot_ms"]
    report["step_ms"], report["raw_aa"], report["raw_slowdowns"] = step_ms, [], {}
    aa = [pair(0.0, 1000 * (k + 1), report["raw_aa"]) for k in range(args.aa_pairs)]
    report["aa"] = {"pairs": len(aa), "rates": summarize(aa),
                    "any_metric_regressed": sum(any(v["status"] == "regressed" for v in p) for p in aa) / len(aa)}
    report["slowdowns"] = {}
    for s in (float(x) for x in args.slowdowns.split(",")):
        raw = report["raw_slowdowns"].setdefault(f"{s:.0%}", [])
        runs = [pair(s * step_ms, 10**5 * (k + 1) + int(s * 1000), raw) for k in range(args.pairs)]
        report["slowdowns"][f"{s:.0%}"] = {"delay_ms": s * step_ms, "pairs": len(runs), "rates": summarize(runs)}
        print(f"slowdown {s:.0%}: " + json.dumps(report["slowdowns"][f"{s:.0%}"]["rates"]), flush=True)
    save()
    print(f"written: {args.out} ({report['seconds']:.0f} s)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", action="store_true", help="simulated A/A and power tables (seconds)")
    mode.add_argument("--live", action="store_true", help="measure on the CPU profile with HF servers (an hour)")
    p.add_argument("--runs", type=int, default=1000, help="--simulate: A/A runs per case and design")
    p.add_argument("--draws", type=int, default=400, help="--simulate: draws per power estimate")
    p.add_argument("--old-stats", type=Path, default=None, help="--simulate: judge the A/A runs with this old "
                   "stats.py's compare_rounds at the old split (0.05 / 8 a metric)")
    p.add_argument("--aa-pairs", type=int, default=10)
    p.add_argument("--pairs", type=int, default=4, help="pairs per slowdown")
    p.add_argument("--slowdowns", default="0.1,0.2", help="relative per-step slowdowns of B")
    p.add_argument("--rounds", type=int, default=3, help="rounds per lifetime")
    p.add_argument("--lifetimes", type=int, default=2, help="lifetimes a side, ABBA")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("results/gate-power.json"))
    args = p.parse_args()
    return simulate(args) if args.simulate else live(args)


if __name__ == "__main__":
    raise SystemExit(main())

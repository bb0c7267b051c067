"""The plugin's command-line options, in two groups: the run, and the baseline store."""

from __future__ import annotations

import math

import os

import pytest

# How much a metric's median may grow before the run fails. Measured: five runs of the lab load on the CPU
# profile (vLLM 0.32 CPU, a fresh server each, 2 cores shared with other jobs): medians varied with a CV of 4-6%
# and by up to 16.5% between two runs (ITL; s/token 16.3%, TTFT 12%); means varied more (up to 18%). A 10%
# threshold failed one of those identical-code runs. Tighten it with --baseline-tolerance on quieter machines.
DEFAULT_TOLERANCE = "median:20%"


def _gate_rounds(text: str) -> int:
    """--gate-rounds: at least 2 (servingbench/gate/judge.py MIN_ROUNDS says why); argparse turns the error into
    a usage error that names the fix."""
    import argparse

    from servingbench.gate.judge import check_rounds

    try:
        return check_rounds(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _gate_alpha(text: str) -> float:
    """--gate-alpha: the false alarms a run may raise, over all its metrics and configs (gate/judge.py ALPHA)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 0.2:
        raise argparse.ArgumentTypeError(f"--gate-alpha must be a number in (0, 0.2], the share of untouched runs "
                                         f"the gate may fail (default 0.05), got {text!r}")
    return value


def _gate_lifetimes(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--gate-lifetimes must be >= 1, got {value}")
    return value


def add_options(parser: pytest.Parser) -> None:
    g = parser.getgroup("servingbench", "LLM serving performance")
    g.addoption("--gpu", action="store_true", help="GPU profile: vLLM's CUDA build, Llama-2-7B-shaped dummy "
                "weights by default; runs tests marked gpu")
    g.addoption("--model", default=None, help="model profile name (cpu-llama-36m, llama-2-7b, mistral-7b), or a "
                "local checkpoint directory, or a hub id")
    g.addoption("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallel size (default 1)")
    g.addoption("--hardware-key", "--profile", dest="hardware_key", default=None,
                help="hardware key for thresholds and baselines (default: detected, e.g. H200-SXM-140GB or "
                "cpu-2c-avx2); --profile is its older name")
    g.addoption("--server-url", default=None, help="measure an existing OpenAI-compatible deployment instead of "
                "starting servers; tests that need other configs are skipped")
    g.addoption("--ray-address", default=None, metavar="ADDR", help="run the client workers as Ray actors on the "
                "nodes of the Ray cluster at ADDR (host:port of its GCS; 'auto': RAY_ADDRESS or the one started on "
                "this host), client_workers per node; needs servingbench[ray]")
    g.addoption("--api-key", default=os.environ.get("SERVINGBENCH_API_KEY"), help="API key passed to the "
                "servers started and sent by the client (default: $SERVINGBENCH_API_KEY)")
    g.addoption("--results-dir", default=None, help="where measurements, logs and the summary go "
                "(default: results/<timestamp>)")
    g.addoption("--expectations", default=None, help="expected-performance table (default: "
                "perf/expected_performance.toml under the rootdir, else the one the package ships)")
    g.addoption("--server-startup-timeout", type=float, default=900.0, help="seconds a server may take to be healthy")
    g.addoption("--request-timeout", type=float, default=600.0, help="seconds one request may take")
    g.addoption("--studies", action="store_true", help="also run the experiments marked study (block size, KV "
                "dtype, prefix caching, concurrency sweep, offline, TP, agreement with vllm bench serve)")
    g.addoption("--replay", default=None, metavar="RESULTS_DIR", help="start no server: read each measurement "
                "from a results directory written by an earlier run (e.g. a GPU runner's artifact), to store its "
                "samples as baselines or re-check thresholds and reports on another machine")
    g.addoption("--sb-progress", action="store_true", help="show a progress bar during load runs")
    g.addoption("--report", action="store_true", help="write the performance report (Markdown, PNG figures, HTML) "
                "to <results-dir>/report at the end of the session (servingbench report RESULTS_DIR does it later)")
    g.addoption("--report-dir", default=None, help="where --report writes (implies --report)")

    b = parser.getgroup("servingbench baselines")
    b.addoption("--baseline-dir", default=None, help="parent of the per-hardware baseline folders; "
                "--benchmark-storage defaults to DIR/<hardware-key> (default: <rootdir>/baselines)")
    b.addoption("--baseline-compare", action="store_true", help="compare with the latest baseline of this "
                "hardware and fail on a regression beyond --baseline-tolerance: short for "
                "--benchmark-compare --benchmark-compare-fail=TOLERANCE")
    b.addoption("--gate", action="store_true", help="run the regression gate (perf/test_gate.py): R rounds of the "
                "lab load per config and a verdict per metric against baselines/<key>/rounds.json, or in an A/B")
    b.addoption("--gate-rounds", type=_gate_rounds, default=None, metavar="R", help="rounds per server lifetime, "
                ">= 2 (default 3)")
    b.addoption("--gate-lifetimes", type=_gate_lifetimes, default=None, metavar="N", help="server lifetimes a "
                "side, a restart before each; an A/B runs them in ABBA order (default 2; servingbench/gate/judge.py "
                "says why). Deployments at --server-url are not restarted: one lifetime")
    b.addoption("--gate-alpha", type=_gate_alpha, default=None, metavar="A", help="false alarms per gate run, "
                "over all its metrics and configs (default 0.05): each test is one-sided at A / tests. Lower it "
                "where a failed untouched run costs more than a missed regression; the MDR printed grows with it")
    b.addoption("--gate-allow-mismatch", action="append", default=[], metavar="FIELD", help="compare with a stored "
                "baseline recorded on another FIELD (model, workload.<key>, versions.vllm, ...; a prefix such as "
                "versions, or all); repeatable. By default such a baseline is refused, naming the field")
    b.addoption("--ab-config", default=None, metavar="NAME", help="A/B in one session: the candidate config of the "
                "table, run interleaved with config vllm round by round")
    b.addoption("--ab-server-url", default=None, metavar="URL", help="A/B in one session: the candidate deployment; "
                "the reference is --server-url")
    b.addoption("--ab-python", default=None, metavar="PYTHON", help="A/B in one session: the interpreter of the "
                "Python environment holding the vLLM under test; the reference is this environment's")
    b.addoption("--baseline-tolerance", default=DEFAULT_TOLERANCE, metavar="EXPR", help="fail threshold of "
                f"--baseline-compare, in --benchmark-compare-fail's syntax (default: {DEFAULT_TOLERANCE})")

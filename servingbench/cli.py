"""The ``servingbench`` command. One small function per subcommand: ``add_<name>_parser`` declares its flags,
``cmd_<name>`` runs it; heavy imports (torch) happen inside the command, so ``--help`` stays instant.

    servingbench serve-hf --model DIR [--port 8000] ...   the HF Transformers engine, OpenAI API
    servingbench report RESULTS_DIR [...] -o OUT          the performance report (Markdown, PNG, HTML)
    servingbench calibrate [--gpu] [--rounds 3 --lifetimes 6]   lifetimes of rounds, noise, proposed table rows
    servingbench gate BASELINE... -- CURRENT...           the regression gate over saved runs (vllm bench files too)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from servingbench.extras import MissingExtra, require

API_KEY_ENV = "SERVINGBENCH_API_KEY"
log = logging.getLogger("servingbench")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}: the spread within a lifetime and between "
                                         "lifetimes are both estimated")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_serve_hf_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser("serve-hf", help="serve the HF Transformers engine over the OpenAI API",
                              description="The naive baseline: one static batch at a time, KV cache on, no tricks.")
    p.add_argument("--model", required=True, help="HF model directory (or hub id)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="the name clients send (default: --model)")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, float16, bfloat16")
    p.add_argument("--max-model-len", type=_positive_int, default=None,
                   help="context length (default: the model's max_position_embeddings)")
    p.add_argument("--max-batch-size", type=_positive_int, default=1,
                   help="1: one request at a time, FIFO; N: static batches of up to N")
    p.add_argument("--batch-wait-ms", type=_non_negative_float, default=20.0,
                   help="static batching: how long the first request waits for others")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--load-format", choices=("auto", "dummy"), default="auto",
                   help="dummy: random weights of the config's shape, made on the device")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads (default on CPU: 1; the suite passes the threads vLLM's CPU build computes on)")
    p.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.add_argument("--step-delay-ms", type=_non_negative_float, default=0.0,
                   help="make every decode step this much slower: a regression of known size (gate power tests)")
    p.set_defaults(handler=cmd_serve_hf)


def cmd_serve_hf(args: argparse.Namespace) -> int:
    require("the HF engine", "hf")  # before its import: one line naming the extra, not an ImportError traceback
    from servingbench.servers.hf.app import run_server

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        run_server(args.model, host=args.host, port=args.port, served_model_name=args.served_model_name,
                   dtype=args.dtype, device=args.device, threads=args.threads, load_format=args.load_format,
                   max_model_len=args.max_model_len, max_batch_size=args.max_batch_size,
                   batch_wait_ms=args.batch_wait_ms, api_key=api_key, step_delay_ms=args.step_delay_ms)
    except (ValueError, OSError) as e:  # bad model path, dtype, context length, busy port: say so, no traceback
        log.error("serve-hf: error: %s", e)
        return 1
    return 0


def add_report_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from servingbench.report.write import add_report_parser as add  # no torch or matplotlib at import: --help stays instant

    add(subparsers)


def add_calibrate_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser("calibrate", help="rounds of the lab load: the baseline with its spread, and "
                              "proposed [[expect]] rows for this hardware",
                              description="Run on a quiet machine. R rounds per config in each of L server lifetimes "
                                          "(restarted between lifetimes); writes baselines/<key>/rounds.json and "
                                          "proposes rows in the table between markers, to review and commit.")
    p.add_argument("--gpu", action="store_true", help="the GPU profile (vLLM's CUDA build)")
    p.add_argument("--model", default=None, help="model (default: cpu-llama-36m, or llama-2-7b with --gpu)")
    p.add_argument("--hardware-key", "--profile", dest="hardware_key", default=None,
                   help="hardware key to calibrate (default: detected); --profile is its older name")
    p.add_argument("--tensor-parallel-size", type=_positive_int, default=1)
    p.add_argument("--configs", default="vllm,hf", help="comma-separated configs of the table (default: vllm,hf)")
    p.add_argument("--rounds", type=_at_least_two, default=3, help="rounds per server lifetime (default 3)")
    p.add_argument("--lifetimes", type=_at_least_two, default=6, help="server lifetimes (default 6: the gate's "
                   "degrees of freedom come from lifetimes; servingbench/gate/calibrate.py says why 6)")
    p.add_argument("--expectations", default=None, help="the table (default: perf/expected_performance.toml)")
    p.add_argument("--baseline-dir", default="baselines", help="where <key>/rounds.json goes (default: baselines)")
    p.add_argument("--results-dir", default=None, help="measurements and logs (default: results/calibrate-<time>)")
    p.add_argument("--no-write", action="store_true", help="print the proposed rows; leave the table alone")
    p.set_defaults(handler=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from servingbench.errors import ConfigError
    from servingbench.servers.pool import ServerUnavailable
    from servingbench.servers.process import ServerStartError
    from servingbench.gate.calibrate import CalibrationOptions, run
    from servingbench.expect.defaults import default_table_path
    from servingbench.servers.models import ModelError

    opts = CalibrationOptions(gpu=args.gpu, model=args.model, hardware_key=args.hardware_key,
                              tensor_parallel_size=args.tensor_parallel_size,
                              table=Path(args.expectations) if args.expectations else default_table_path(),
                              baseline_dir=Path(args.baseline_dir),
                              results_dir=Path(args.results_dir) if args.results_dir else None,
                              configs=tuple(c for c in args.configs.split(",") if c), rounds=args.rounds,
                              lifetimes=args.lifetimes, write_table=not args.no_write,
                              api_key=os.environ.get(API_KEY_ENV) or None)
    try:
        _, rows, saved = run(opts, log=lambda line: print(line, flush=True))
    except (ConfigError, ModelError, ServerStartError, ServerUnavailable, RuntimeError, OSError) as e:
        print(f"servingbench calibrate: error: {e}", file=sys.stderr)
        return 1
    print(rows)
    print(f"rounds: {saved}" + ("" if args.no_write else f"\nproposed rows written to {opts.table} (review, "
                                                            "then commit)"))
    return 0


def add_gate_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser(
        "gate", help="the regression gate over saved runs: BASELINE... -- CURRENT...",
        description="The verdict table of `make compare` over runs saved elsewhere, one file one round: vllm bench "
                    "serve results (--save-result --save-detailed), this suite's results folders or measurement "
                    "files, and rounds.json files. PATH@N marks files that ran on one server lifetime (same N). "
                    "Exit status: 0 no regression, 1 a regression, 2 input it cannot judge.",
        usage="servingbench gate [--config NAME] [--json FILE] BASELINE... -- CURRENT...")
    p.add_argument("--config", default="vllm", help="the config whose rounds a rounds.json gives, and the name the "
                                                    "verdicts carry (default vllm)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the verdicts here as JSON")
    p.add_argument("runs", nargs=argparse.REMAINDER, help="BASELINE... -- CURRENT...")
    p.set_defaults(handler=cmd_gate)


def cmd_gate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from servingbench.gate.saved_runs import SavedRunError, gate_saved

    runs = list(args.runs)
    if runs.count("--") != 1 or runs.index("--") in (0, len(runs) - 1):
        print("servingbench gate: error: give the baseline's saved runs, then --, then the current ones: "
              "servingbench gate BASE1.json BASE2.json -- CUR1.json CUR2.json", file=sys.stderr)
        return 2
    cut = runs.index("--")
    try:
        report = gate_saved(runs[:cut], runs[cut + 1:], config=args.config)
    except (SavedRunError, ValueError) as e:
        print(f"servingbench gate: error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return 1 if report.regressed else 0


SUBCOMMANDS: list[Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]] = [
    add_serve_hf_parser,
    add_report_parser,
    add_calibrate_parser,
    add_gate_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servingbench", description="LLM serving performance suite")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except MissingExtra as e:  # a command whose extra is not installed: the one line that says which
        print(f"servingbench {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``servingbench`` command. One small function per subcommand: ``add_<name>_parser`` declares its flags,
``cmd_<name>`` runs it; heavy imports (torch) happen inside the command, so ``--help`` stays instant.

    servingbench serve-hf --model DIR [--port 8000] ...   the HF Transformers baseline, OpenAI API
    servingbench report RESULTS_DIR [...] -o OUT          the performance report (Markdown, PNG, HTML)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

API_KEY_ENV = "SERVINGBENCH_API_KEY"
log = logging.getLogger("servingbench")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_serve_hf_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser("serve-hf", help="serve the HF Transformers baseline over the OpenAI API",
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
                   help="torch threads (default on CPU: 1, like vLLM's CPU build here; GPU: untouched)")
    p.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.set_defaults(handler=cmd_serve_hf)


def cmd_serve_hf(args: argparse.Namespace) -> int:
    from servingbench.servers.hf.app import run_server

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        run_server(args.model, host=args.host, port=args.port, served_model_name=args.served_model_name,
                   dtype=args.dtype, device=args.device, threads=args.threads, load_format=args.load_format,
                   max_model_len=args.max_model_len, max_batch_size=args.max_batch_size,
                   batch_wait_ms=args.batch_wait_ms, api_key=api_key)
    except (ValueError, OSError) as e:  # bad model path, dtype, context length, busy port: say so, no traceback
        log.error("serve-hf: error: %s", e)
        return 1
    return 0


def add_report_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from servingbench.report.write import add_report_parser as add  # no torch or matplotlib at import: --help stays instant

    add(subparsers)


SUBCOMMANDS: list[Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]] = [
    add_serve_hf_parser,
    add_report_parser,
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
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

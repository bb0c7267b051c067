"""The performance report: the lab's deliverables as one artifact a person reads.

``servingbench report RESULTS_DIR [...] -o OUT`` (or ``pytest --report``) reads the measurements and study files of
one or more results directories and writes ``OUT/report.md`` with PNG figures under ``OUT/figures/``, a
self-contained ``OUT/report.html`` (figures inlined) and ``OUT/report.json`` (the recommendations and efficiency
figures, for machines). Every number comes from the files read; every section whose data is absent says so.
Several directories merge (a GPU lease split over sessions); a measurement key seen twice keeps the later run.

This module: writing the files and the command. ``data`` loads the results (typed ``Measurement``s, study files as
JSON) and derives figures, ``build`` assembles the sections, ``studies`` the study sections, ``doc`` the document
model (Markdown and HTML from the same blocks), ``recommend`` the recommendations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from servingbench.report.data import ReportOptions, load_run
from servingbench.expect.defaults import default_table_path
from servingbench.report.goodput import SLOLimits


# ---- options, assembly, writing --------------------------------------------------------------------------------------

def default_expectations() -> Path | None:
    path = default_table_path()
    return path if path.is_file() else None


def write_report(dirs: Sequence[Path | str], out: Path | str, options: ReportOptions | None = None) -> Path:
    """Build the report of ``dirs`` into ``out``; returns the path of report.md."""
    from servingbench.report.build import build  # matplotlib: not at import, so that --help stays instant

    opts = options or ReportOptions()
    if opts.expectations is None:
        opts.expectations = default_expectations()
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for old in (out / "figures").glob("*.png"):
        old.unlink()
    data = load_run(dirs)
    doc, machine = build(data, opts, out)
    title = f"servingbench report: {data.hardware} / {data.model}"
    (out / "report.md").write_text(doc.markdown(out))
    if opts.html:
        (out / "report.html").write_text(doc.html(title))
    (out / "report.json").write_text(json.dumps(machine, indent=2, default=str) + "\n")
    return out / "report.md"


def add_report_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser("report", help="write the performance report of results directories",
                              description="Markdown + PNG figures, a self-contained HTML page and report.json, "
                                          "from the measurements and studies under RESULTS_DIR(s).")
    p.add_argument("results", nargs="+", type=Path, metavar="RESULTS_DIR")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for report.md, report.html, figures/")
    p.add_argument("--slo-ttft-ms", type=float, default=2000.0, help="TTFT p99 limit (default 2000: MLPerf "
                   "Llama-2-70B server)")
    p.add_argument("--slo-tpot-ms", type=float, default=200.0, help="TPOT p99 limit (default 200: MLPerf "
                   "Llama-2-70B server)")
    p.add_argument("--reference", "--baseline", dest="reference", default=None, help="config the improvement "
                   "factors divide by (default: hf; --baseline is its old name)")
    p.add_argument("--workload", default="lab", help="workload name of the comparison load (default: lab)")
    p.add_argument("--expectations", type=Path, default=None, help="expected-performance table (default: "
                   "perf/expected_performance.toml)")
    p.add_argument("--peaks", type=Path, default=None, help="hardware peaks TOML (default: the packaged "
                   "servingbench/data/hardware_peaks.toml)")
    p.add_argument("--noise", type=float, default=0.05, help="relative difference treated as noise (default 0.05)")
    p.add_argument("--no-html", action="store_true", help="skip report.html")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    custom = args.slo_ttft_ms != 2000.0 or args.slo_tpot_ms != 200.0
    slo = SLOLimits(args.slo_ttft_ms, args.slo_tpot_ms, "set on the command line" if custom else SLOLimits().source)
    opts = ReportOptions(slo=slo, reference=args.reference, workload=args.workload, expectations=args.expectations,
                         peaks=args.peaks, html=not args.no_html, noise=args.noise)
    try:
        path = write_report(args.results, args.output, opts)
    except (FileNotFoundError, ValueError) as e:
        print(f"servingbench report: error: {e}")
        return 1
    print(f"report: {path}" + (f" and {path.with_suffix('.html')}" if opts.html else ""))
    return 0

"""The performance report: the lab's deliverables as one artifact a person reads.

``servingbench report RESULTS_DIR [...] -o OUT`` (or ``pytest --report``) reads the measurements and study files of
one or more results directories and writes ``OUT/report.md`` with PNG figures under ``OUT/figures/``, a
self-contained ``OUT/report.html`` (figures inlined) and ``OUT/report.json`` (the recommendations and efficiency
figures, for machines). Every number comes from the files read; every section whose data is absent says so.
Several directories merge (a GPU lease split over sessions); a measurement key seen twice keeps the later run.

This module: loading, the derived figures, the expectations table, the document model (Markdown and HTML from the
same blocks) and the command; ``report_build`` assembles the sections, ``report_sections`` the studies.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .recommend import SLOLimits, sweep_levels

REPO = Path(__file__).resolve().parents[1]
Row = dict[str, Any]


# ---- input -------------------------------------------------------------------------------------------------------

@dataclass
class RunData:
    measurements: list[Row]
    studies: dict[str, Row]
    sources: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def hardware(self) -> str:
        return next((m["environment"].get("hardware") for m in self.measurements if m.get("environment")), None) \
            or next((s["hardware"].get("profile") for s in self.studies.values() if isinstance(s.get("hardware"), dict)),
                    "unknown")

    @property
    def model(self) -> str:
        return next((m["environment"].get("model") for m in self.measurements if m.get("environment")), None) \
            or next((s["model"].get("name") for s in self.studies.values() if isinstance(s.get("model"), dict)),
                    "unknown")

    @property
    def gpu(self) -> bool:
        """Whether the servers ran on GPUs (which workload variant of the table applies): from the server configs,
        not from the GPUs present (a CPU-profile run on a GPU host still lists them)."""
        if self.measurements:
            return any(str((m.get("config") or {}).get("device", "")).startswith("cuda")
                       or (m.get("config") or {}).get("gpu_memory_utilization") is not None for m in self.measurements)
        return any((s.get("hardware") or {}).get("gpu") for s in self.studies.values())


def load_run(dirs: Sequence[Path | str]) -> RunData:
    """Measurements from ``DIR/measurements/*.json`` or ``DIR/*.json``, studies from ``DIR/studies/*.json``."""
    by_key: dict[str, Row] = {}
    data = RunData([], {}, [str(d) for d in dirs])
    for d in map(Path, dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"results directory {d} does not exist")
        for path in sorted(list(d.glob("measurements/*.json")) + list(d.glob("*.json"))):
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                data.notes.append(f"skipped unreadable {path}: {e}")
                continue
            if not isinstance(m, dict) or m.get("schema") != "servingbench.measurement/1":
                continue
            old = by_key.get(m["key"])
            if old is not None:
                data.notes.append(f"measurement {m['key']} appears twice; kept the later run ({path})")
                if old.get("started_at", 0) > m.get("started_at", 0):
                    continue
            by_key[m["key"]] = m
        for path in sorted(d.glob("studies/*.json")):
            try:
                s = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                data.notes.append(f"skipped unreadable {path}: {e}")
                continue
            if isinstance(s, dict) and isinstance(s.get("rows"), list):
                data.studies[s.get("study", path.stem)] = s
        summary = d / "summary.json"
        if summary.is_file():
            data.notes += [f"session note: {n}" for n in json.loads(summary.read_text()).get("notes", [])]
    data.measurements = sorted(by_key.values(), key=lambda m: (m["config_name"], m["workload"]["name"],
                                                               m["workload"].get("concurrency") or 0))
    if not data.measurements and not data.studies:
        raise FileNotFoundError(f"no servingbench measurements or studies under {', '.join(map(str, dirs))}")
    return data


# ---- derived figures -----------------------------------------------------------------------------------------------

def fmt(v: Any, spec: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return spec.format(v) if isinstance(v, (int, float)) else str(v)


def flat_value(m: Row, name: str) -> float | None:
    """A measurement's figure by metric name, as ``Measurement.value`` computes it, from the saved dict."""
    if isinstance(m.get(name), (int, float)) and not isinstance(m.get(name), bool):
        return float(m[name])
    t = m.get("telemetry") or {}
    gpu_util = t.get("gpu_memory_utilization_peak") or []
    derived = {
        "memory_utilization": max(gpu_util) if gpu_util else
        (t.get("rss_peak_gib", 0) / m["memory_total_gib"] if m.get("memory_total_gib") else None),
        "gpu_memory_used_gib": max(t.get("gpu_memory_used_peak_gib") or [0.0]),
        "gpu_utilization": max(t.get("gpu_utilization_mean") or [0.0]),
        "rss_peak_gib": t.get("rss_peak_gib"),
        "memory_gib": max(t.get("gpu_memory_used_peak_gib") or [0.0]) or t.get("rss_peak_gib"),
        "failure_rate": m.get("failed", 0) / max(1, m.get("completed", 0) + m.get("failed", 0)),
        "seconds_per_output_token": 1 / m["output_throughput"] if m.get("output_throughput") else None,
    }
    return derived.get(name)


def conc(m: Row) -> int:
    return m["workload"].get("concurrency") or m["workload"]["num_requests"]


def shape(m: Row) -> tuple[int, int]:
    return m["workload"]["prompt_len"], m["workload"]["output_len"]


def single_stream_of(m: Row, ms: Sequence[Row]) -> Row | None:
    """The same config and prompt/output lengths at concurrency 1 (same workload name preferred)."""
    cands = [x for x in ms if x["config_name"] == m["config_name"] and shape(x) == shape(m) and conc(x) == 1]
    return max(cands, key=lambda x: (x["workload"]["name"] == m["workload"]["name"], x["workload"]["num_requests"]),
               default=None)


def batch_efficiency(m: Row, ms: Sequence[Row]) -> float | None:
    one = single_stream_of(m, ms)
    if one is None or conc(m) == 1 or not one["output_throughput"]:
        return None
    return m["output_throughput"] / (conc(m) * one["output_throughput"])


def is_study(m: Row) -> bool:
    return str(m["workload"]["name"]).startswith("study-")


def headlines(ms: Sequence[Row], workload: str) -> dict[str, Row]:
    """Per config, its loaded run: the named workload at its highest concurrency, else its highest-concurrency run.
    Configs measured only by studies (vllm-block8, ...) are left to the study sections."""
    out: dict[str, Row] = {}
    for config in dict.fromkeys(m["config_name"] for m in ms if not is_study(m)):
        mine = [m for m in ms if m["config_name"] == config and not is_study(m)]
        named = [m for m in mine if m["workload"]["name"] == workload] or mine
        out[config] = max(named, key=lambda m: (conc(m), m["workload"]["num_requests"]))
    order = sorted(out, key=lambda c: (out[c]["engine"] != "vllm", out[c]["engine"] == "hf", c))
    return {c: out[c] for c in order}


def sweep_groups(ms: Sequence[Row], configs: Sequence[str]) -> dict[tuple[str, str], list[Row]]:
    """(config, workload name) -> one run per concurrency level, for the headline configs and the study sweep."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for m in ms:
        if (m["config_name"] in configs and not is_study(m)) or m["workload"]["name"] == "study-concurrency":
            groups[(m["config_name"], m["workload"]["name"])].append(m)
    return {k: sweep_levels(v) for k, v in groups.items()}


# ---- the expected-performance table -------------------------------------------------------------------------------

def expectation_rows(table_path: Path | None, data: RunData) -> tuple[list[list[str]], str]:
    """(rows, note): each bound of this hardware+model with the measured value and pass/fail."""
    if table_path is None or not Path(table_path).is_file():
        return [], "no expected-performance table found (pass --expectations PATH)"
    from .thresholds import load_table, single_stream

    table = load_table(table_path)
    bounds = table.for_run(data.hardware, data.model)
    if not bounds:
        return [], (f"{table_path} has no entries for hardware {data.hardware} with model {data.model} "
                    f"(it has: {', '.join(table.hardware_profiles()) or 'none'})")
    by_key = {m["key"]: m for m in data.measurements}

    def value(config: str, metric: str, workload_name: str) -> float | None:
        w = table.workload(workload_name, data.gpu, table.configs[config].get("engine"))
        loaded = by_key.get(f"{config}--{w.label}")
        if metric == "batch_efficiency":
            one = by_key.get(f"{config}--{single_stream(w).label}")
            if not (loaded and one and one["output_throughput"]):
                return None
            return loaded["output_throughput"] / ((w.concurrency or w.num_requests) * one["output_throughput"])
        return flat_value(loaded, metric) if loaded else None

    rows = []
    for b in bounds:
        v = value(b.config, b.base_metric, b.workload)
        if v is not None and b.ratio_over:
            other = value(b.ratio_over, b.base_metric, b.workload)
            v = v / other if other else None
        verdict = "not measured" if v is None else ("pass" if b.violation(v) is None else "**FAIL**")
        rows.append([b.config, b.metric, b.describe(), fmt(v, "{:.4g}"), verdict, b.location.split("/")[-1]])
    return rows, f"bounds of {table_path} for {data.hardware} / {data.model}; sources: " + "; ".join(
        sorted({b.source for b in bounds}))


# ---- document model and rendering ---------------------------------------------------------------------------------

@dataclass
class Doc:
    """The report as blocks, rendered to Markdown and to HTML from the same content."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append((f"h{level}", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def fig(self, path: Path, caption: str) -> None:
        self.figures.append(path)
        self.blocks.append(("fig", (path, caption)))

    def markdown(self, out: Path) -> str:
        lines: list[str] = []
        for kind, body in self.blocks:
            if kind.startswith("h"):
                lines += ["#" * int(kind[1]) + " " + body, ""]
            elif kind == "p":
                lines += [body, ""]
            elif kind == "ul":
                lines += [f"- {i}" for i in body] + [""]
            elif kind == "table":
                head, rows = body
                esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
                lines += ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows] + [""]
            elif kind == "fig":
                path, caption = body
                lines += [f"![{caption}]({path.relative_to(out).as_posix()})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self, title: str) -> str:
        def inline(text: str) -> str:
            t = html.escape(text)
            t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
            return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)

        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
                 "body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 7px}"
                 "th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}"
                 "img{max-width:100%}figcaption{font-style:italic;color:#555}code{background:#f4f4f4}"
                 "</style></head><body>"]
        for kind, body in self.blocks:
            if kind.startswith("h"):
                parts.append(f"<{kind}>{inline(body)}</{kind}>")
            elif kind == "p":
                parts.append(f"<p>{inline(body)}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in body) + "</ul>")
            elif kind == "table":
                head, rows = body
                parts.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                             + "".join("<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in r) + "</tr>"
                                       for r in rows) + "</table>")
            elif kind == "fig":
                path, caption = body
                b64 = base64.b64encode(path.read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
                             f"<figcaption>{inline(caption)}</figcaption></figure>")
        return "\n".join(parts + ["</body></html>"])


# ---- options, assembly, writing --------------------------------------------------------------------------------------

@dataclass
class ReportOptions:
    slo: SLOLimits = field(default_factory=SLOLimits)
    baseline: str | None = None  # the config improvement factors are relative to (default: "hf", else an hf config)
    workload: str = "lab"  # the comparison load's workload name
    expectations: Path | None = None
    peaks: Path | None = None
    html: bool = True
    noise: float = 0.05  # relative differences below this are treated as run-to-run noise


def default_expectations() -> Path | None:
    for p in (Path("perf/expected_performance.toml"), REPO / "perf" / "expected_performance.toml"):
        if p.is_file():
            return p
    return None


def kv_limits(expectations: Path | None) -> tuple[float, float]:
    """The KV study's own accuracy limits (perf/studies.toml beside the table), else its shipped defaults."""
    path = (Path(expectations).parent if expectations else REPO / "perf") / "studies.toml"
    try:
        s = tomllib.loads(path.read_text()).get("kv_cache_dtype", {})
        return float(s.get("min_prompt_top1_agreement", 0.8)), float(s.get("max_prompt_logprob_mae", 0.25))
    except (OSError, tomllib.TOMLDecodeError):
        return 0.8, 0.25


def write_report(dirs: Sequence[Path | str], out: Path | str, options: ReportOptions | None = None) -> Path:
    """Build the report of ``dirs`` into ``out``; returns the path of report.md."""
    from .report_build import build

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
    p.add_argument("--baseline", default=None, help="config the improvement factors divide by (default: hf)")
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
    opts = ReportOptions(slo=slo, baseline=args.baseline, workload=args.workload, expectations=args.expectations,
                         peaks=args.peaks, html=not args.no_html, noise=args.noise)
    try:
        path = write_report(args.results, args.output, opts)
    except (FileNotFoundError, ValueError) as e:
        print(f"servingbench report: error: {e}")
        return 1
    print(f"report: {path}" + (f" and {path.with_suffix('.html')}" if opts.html else ""))
    return 0

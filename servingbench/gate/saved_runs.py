"""The gate over runs saved elsewhere: ``servingbench gate BASELINE... -- CURRENT...``.

Users already have results: this suite's results folders and rounds files, and the JSON of ``vllm bench serve
--save-result --save-detailed`` (vLLM's own perf CI saves exactly these). Each file is one round. Its requests are
read back into records and its figures computed with this suite's definitions (which are vLLM's), so the verdict
table is the same as ``make compare``'s, test for test.

The unit of the gate's statistics is the server lifetime: a restart moves every figure. A rounds file says which
lifetime each round ran in, and a measurement saved by this suite records its server's start. A ``vllm bench``
file does not: each such file is taken as a lifetime of its own, and the verdict notes it. Files that came from
one server lifetime are marked ``PATH@N`` (same N, same lifetime); taken as separate lifetimes they would make the
gate's false alarms more frequent than it states.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from servingbench.measure.measurement import Measurement, find_measurement_files, measurement_from_dict
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.gate.judge import MIN_ROUNDS, GateReport, alpha_per_test, judge
from servingbench.measure.rounds import SCHEMAS as ROUNDS_SCHEMAS
from servingbench.measure.rounds import Round, RoundsFile

# What a vllm bench serve result needs for per-request figures: only --save-detailed writes the lists
VLLM_BENCH_FIELDS = ("duration", "ttfts", "itls", "output_lens", "errors")


class SavedRunError(ValueError):
    """A file or folder the gate cannot read as rounds; the message names it and the fix."""


@dataclass
class Side:
    """One side's rounds, and the sources whose lifetime was not recorded (each taken as its own)."""

    rounds: list[Round] = field(default_factory=list)
    unknown_lifetime: list[str] = field(default_factory=list)


def split_spec(spec: str) -> tuple[Path, int | None]:
    """``PATH`` or ``PATH@N``: a file and the lifetime the user says it ran in."""
    path, at, label = spec.rpartition("@")
    if at and label.isdigit() and path:
        return Path(path), int(label)
    return Path(spec), None


def vllm_bench_measurement(d: dict[str, Any], path: Path, config: str) -> Measurement:
    """A ``vllm bench serve --save-detailed`` result as a measurement: each request's chunk times rebuilt from its
    start, TTFT and inter-token gaps (vLLM's ITL list holds the gaps between its chunks)."""
    missing = [k for k in VLLM_BENCH_FIELDS if k not in d]
    if missing:
        raise SavedRunError(f"{path}: a vllm bench serve result without {', '.join(missing)}: per-request figures "
                            "are saved only with --save-detailed; rerun it with --save-result --save-detailed")
    n = len(d["ttfts"])
    starts = d.get("start_times") or [0.0] * n
    inputs = d.get("input_lens") or [0] * n
    records = []
    for i in range(n):
        error = d["errors"][i] or None
        rec = RequestRecord(f"{path.stem}-{i}", int(inputs[i] or 0), int(d["output_lens"][i] or 0),
                            start=float(starts[i]), prompt_tokens=int(inputs[i] or 0) or None, error=error)
        if error is None and d["ttfts"][i] and d["ttfts"][i] > 0:
            t = rec.start + float(d["ttfts"][i])
            rec.chunk_times.append(t)
            for gap in d["itls"][i] or ():
                t += float(gap)
                rec.chunk_times.append(t)
            rec.output_tokens = int(d["output_lens"][i])
        elif error is None:
            rec.error = "vllm bench: the request failed without an error message"
        records.append(rec)
    workload = {"name": path.stem, "num_requests": n, "max_concurrency": d.get("max_concurrency"),
                "request_rate": d.get("request_rate")}
    return Measurement(path.stem, "vllm", config, {}, workload, compute_metrics(records, float(d["duration"])),
                       TelemetrySummary(), records, 0.0)


def read_side(specs: Sequence[str], config: str) -> Side:
    """The rounds of one side, lifetimes numbered per side: a user's ``@N`` first, then each recorded server start
    or rounds-file lifetime, then one per file that records none."""
    side = Side()
    labels: dict[Any, int] = {}

    def lifetime(key: Any) -> int:
        return labels.setdefault(key, len(labels))

    for spec in specs:
        path, said = split_spec(spec)
        if not path.exists():
            raise SavedRunError(f"{path}: no such file or folder; give saved runs: vllm bench serve result files, "
                                "this suite's results folders or measurement files, or a rounds.json")
        files = find_measurement_files(path) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise SavedRunError(f"{path}: a folder with no saved measurement in it (this suite's results folders "
                                "hold them under measurements/)")
        for f in files:
            try:
                d = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SavedRunError(f"{f}: not a JSON file the gate can read ({e})") from None
            if not isinstance(d, dict):
                raise SavedRunError(f"{f}: not a saved run (a JSON object was expected)")
            if d.get("schema") in ROUNDS_SCHEMAS:
                stored = [r for r in RoundsFile.load(f).rounds if r.config == config]
                if not stored:
                    raise SavedRunError(f"{f}: no rounds of config {config!r}; choose one with --config")
                for r in stored:
                    side.rounds.append(replace(r, lifetime=lifetime((f, "rounds", r.lifetime)),
                                               index=len(side.rounds)))
                continue
            if "records" not in d and ("ttfts" in d or "output_throughput" in d):
                m = vllm_bench_measurement(d, f, config)
                key: Any = ("user", said) if said is not None else (f, "file")
                if said is None:
                    side.unknown_lifetime.append(str(f))
            elif "records" in d and "key" in d:
                m = measurement_from_dict(d)
                started = d.get("server_started_at")
                key = (("user", said) if said is not None else
                       ("server", d.get("server_url"), started) if started is not None else (f, "file"))
                if said is None and started is None:
                    side.unknown_lifetime.append(str(f))
            else:
                raise SavedRunError(f"{f}: neither a vllm bench serve result, a servingbench measurement nor a "
                                    "rounds file")
            side.rounds.append(Round.of(m, lifetime(key), len(side.rounds)))
    return side


def gate_saved(baseline: Sequence[str], current: Sequence[str], config: str = "vllm") -> GateReport:
    """The verdict table of ``make compare`` over saved rounds; SavedRunError on input it cannot judge."""
    base, cur = read_side(baseline, config), read_side(current, config)
    for name, side in (("baseline", base), ("current", cur)):
        if len(side.rounds) < MIN_ROUNDS:
            raise SavedRunError(f"the {name} side has {len(side.rounds)} round(s); the gate needs at least "
                                f"{MIN_ROUNDS} a side (one file is one round): give more saved runs")
        if all(any(math.isnan(v) for v in r.figures.values()) for r in side.rounds):
            raise SavedRunError(f"the {name} side has no round with every figure (all failed?)")
    verdicts, _ = judge(base.rounds, cur.rounds, configs=1)
    lifetimes = min(len({r.lifetime for r in base.rounds}), len({r.lifetime for r in cur.rounds}))
    rounds = min(len(base.rounds), len(cur.rounds)) // max(1, lifetimes)
    report = GateReport(config, "saved runs", rounds, verdicts, lifetimes=lifetimes, alpha=alpha_per_test(1))
    unknown = base.unknown_lifetime + cur.unknown_lifetime
    if unknown:
        report.notes.append(f"{len(unknown)} file(s) record no server lifetime, so each was taken as a lifetime of "
                            "its own; if several ran on one server lifetime, mark them PATH@N (same N), or the "
                            "gate's false alarms exceed its stated rate")
    return report

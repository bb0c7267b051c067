"""What the report reads: the measurements, study files and capacity searches of results directories, and figures
derived from them.

Several directories merge (a GPU lease split over sessions); a measurement key seen twice keeps the later run.
"""

from __future__ import annotations

import json
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from servingbench.measure.measurement import Measurement, load_measurement, measurement_from_dict
from servingbench.measure.metrics import batch_efficiency as batching
from servingbench.report.goodput import SLOLimits
from servingbench.report.recommend import sweep_levels
from servingbench.figures.capacity import BOUNDED_BY, CAPACITY_SCHEMA
from servingbench.expect.defaults import default_studies_path

Row = dict[str, Any]  # a study file, or one of its rows (JSON by design)


@dataclass
class RunData:
    measurements: list[Measurement]
    studies: dict[str, Row]
    sources: list[str]
    notes: list[str] = field(default_factory=list)
    capacities: list[Row] = field(default_factory=list)  # <results>/capacity/*.json, as read_capacity checks

    @property
    def hardware(self) -> str:
        return next((m.environment.get("hardware") for m in self.measurements if m.environment), None) \
            or next((s["hardware"].get("profile") for s in self.studies.values() if isinstance(s.get("hardware"), dict)),
                    "unknown")

    @property
    def model(self) -> str:
        return next((m.environment.get("model") for m in self.measurements if m.environment), None) \
            or next((s["model"].get("name") for s in self.studies.values() if isinstance(s.get("model"), dict)),
                    "unknown")

    @property
    def gpu(self) -> bool:
        """Whether the servers ran on GPUs (which workload variant of the table applies): from the server configs,
        not from the GPUs present (a CPU-profile run on a GPU host still lists them)."""
        if self.measurements:
            return any(str(m.config.get("device", "")).startswith("cuda")
                       or m.config.get("gpu_memory_utilization") is not None for m in self.measurements)
        return any((s.get("hardware") or {}).get("gpu") for s in self.studies.values())


def _read_measurement(path: Path, notes: list[str]) -> Measurement | None:
    """The measurement in ``path``; None for another kind of JSON file (summary.json, ...) or, with a note, for an
    unreadable one."""
    try:
        raw = load_measurement(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.append(f"skipped unreadable {path}: {e}")
        return None
    except (ValueError, AttributeError):  # another schema, or JSON that is not an object: not a measurement
        return None
    try:
        return measurement_from_dict(raw)
    except (KeyError, TypeError, ValueError) as e:
        notes.append(f"skipped unreadable {path}: {type(e).__name__}: {e}")
        return None


CAPACITY_POINT = ("rate", "request_throughput", "goodput", "p99_ttft_ms", "p99_tpot_ms", "failed", "meets", "invalid",
                  "requests")


def read_capacity(path: Path) -> Row:
    """A capacity search saved by ``Bench.record_capacity``, its points sorted by rate (a missing point
    figure becomes None). ValueError (with the reason) for another schema or a malformed file."""
    try:
        c = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(str(e)) from e
    if not isinstance(c, dict) or c.get("schema") != CAPACITY_SCHEMA:
        got = c.get("schema") if isinstance(c, dict) else type(c).__name__
        raise ValueError(f"schema {got!r}, not {CAPACITY_SCHEMA!r}")
    problems = [f"{k} missing or not {t.__name__}" for k, t in (("config_name", str), ("workload", dict),
                                                                  ("slo", dict), ("points", list))
                if not isinstance(c.get(k), t)]
    if c.get("bounded_by") not in BOUNDED_BY:
        problems.append(f"bounded_by {c.get('bounded_by')!r} is not {', '.join(BOUNDED_BY[:-1])} or {BOUNDED_BY[-1]}")
    elif not isinstance(c.get("capacity_rps"), (int, float)) and not (
            c["bounded_by"] == "invalid" and c.get("capacity_rps") is None):
        problems.append("capacity_rps missing or not a number")
    if isinstance(c.get("points"), list) and not all(
            isinstance(p, dict) and isinstance(p.get("rate"), (int, float)) for p in c["points"]):
        problems.append("a point without a numeric rate")
    if problems:
        raise ValueError("; ".join(problems))
    c["points"] = sorted(({**{k: p.get(k) for k in CAPACITY_POINT}, "invalid": list(p.get("invalid") or ())}
                          for p in c["points"]), key=lambda p: p["rate"])
    return c


def load_run(dirs: Sequence[Path | str]) -> RunData:
    """Measurements from ``DIR/measurements/*.json`` or ``DIR/*.json``, studies from ``DIR/studies/*.json``,
    capacity searches from ``DIR/capacity/*.json`` (a search seen twice keeps the later directory's)."""
    by_key: dict[str, Measurement] = {}
    caps: dict[str, Row] = {}
    data = RunData([], {}, [str(d) for d in dirs])
    for d in map(Path, dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"results directory {d} does not exist")
        for path in sorted(list(d.glob("measurements/*.json")) + list(d.glob("*.json"))):
            m = _read_measurement(path, data.notes)
            if m is None:
                continue
            old = by_key.get(m.key)
            if old is not None:
                data.notes.append(f"measurement {m.key} appears twice; kept the later run ({path})")
                if old.started_at > m.started_at:
                    continue
            by_key[m.key] = m
        for path in sorted(d.glob("studies/*.json")):
            try:
                s = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                data.notes.append(f"skipped unreadable {path}: {e}")
                continue
            if isinstance(s, dict) and isinstance(s.get("rows"), list):
                data.studies[s.get("study", path.stem)] = s
        for path in sorted(d.glob("capacity/*.json")):
            try:
                cap = read_capacity(path)
            except ValueError as e:
                data.notes.append(f"skipped unreadable capacity file {path}: {e}")
                continue
            if path.stem in caps:
                data.notes.append(f"capacity search {path.stem} appears twice; kept the later directory's ({path})")
            caps[path.stem] = cap
        summary = d / "summary.json"
        if summary.is_file():
            data.notes += [f"session note: {n}" for n in json.loads(summary.read_text()).get("notes", [])]
    data.measurements = sorted(by_key.values(), key=lambda m: (m.config_name, workload_name(m),
                                                               m.workload.get("concurrency") or 0))
    data.capacities = sorted(caps.values(), key=lambda c: (c["config_name"], str(c["workload"].get("name"))))
    if not data.measurements and not data.studies and not data.capacities:
        raise FileNotFoundError(f"no servingbench measurements or studies under {', '.join(map(str, dirs))}")
    return data


def workload_name(m: Measurement) -> str:
    """The workload's name ("lab", "study-concurrency", ...)."""
    return str(m.workload["name"])


def requests(m: Measurement) -> int:
    return int(m.workload["num_requests"])


def conc(m: Measurement) -> int:
    return m.workload.get("concurrency") or requests(m)


def shape(m: Measurement) -> tuple[int, int]:
    return m.workload["prompt_len"], m.workload["output_len"]


def single_stream_of(m: Measurement, ms: Sequence[Measurement]) -> Measurement | None:
    """The same config and prompt/output lengths at concurrency 1 (same workload name preferred)."""
    cands = [x for x in ms if x.config_name == m.config_name and shape(x) == shape(m) and conc(x) == 1]
    return max(cands, key=lambda x: (workload_name(x) == workload_name(m), requests(x)), default=None)


def batch_efficiency(m: Measurement, ms: Sequence[Measurement]) -> float | None:
    """T(C) / (C x T(1)) against the same config's single-stream run; None without one."""
    one = single_stream_of(m, ms)
    if one is None:
        return None
    return batching(m.metrics.output_throughput, one.metrics.output_throughput, conc(m))


def is_study(m: Measurement) -> bool:
    return workload_name(m).startswith("study-")


def headlines(ms: Sequence[Measurement], workload: str) -> dict[str, Measurement]:
    """Per config, its loaded run: the named workload at its highest concurrency, else its highest-concurrency run.
    Configs measured only by studies (vllm-block8, ...) are left to the study sections."""
    out: dict[str, Measurement] = {}
    for config in dict.fromkeys(m.config_name for m in ms if not is_study(m)):
        mine = [m for m in ms if m.config_name == config and not is_study(m)]
        named = [m for m in mine if workload_name(m) == workload] or mine
        out[config] = max(named, key=lambda m: (conc(m), requests(m)))
    order = sorted(out, key=lambda c: (out[c].engine != "vllm", out[c].engine == "hf", c))
    return {c: out[c] for c in order}


def static_hf_configs(heads: dict[str, Measurement], base: str | None) -> list[str]:
    """The headline HF configs with static batches (``max_batch_size`` > 1, e.g. hf-batch8) other than the
    reference. vLLM is compared with them too: its factor over hf (one request at a time) includes what batching
    alone gains."""
    return [c for c, m in heads.items()
            if c != base and m.engine == "hf" and int(m.config.get("max_batch_size") or 1) > 1]


def sweep_groups(ms: Sequence[Measurement], configs: Sequence[str]) -> dict[tuple[str, str], list[Measurement]]:
    """(config, workload name) -> one run per concurrency level, for the headline configs and the study sweep.
    Open-loop runs (a rate sweep's points) have no concurrency level: a group of only those is left out."""
    groups: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for m in ms:
        if (m.config_name in configs and not is_study(m)) or workload_name(m) == "study-concurrency":
            groups[(m.config_name, workload_name(m))].append(m)
    levels = {k: sweep_levels(v) for k, v in groups.items()}
    return {k: v for k, v in levels.items() if v}


@dataclass
class ReportOptions:
    slo: SLOLimits = field(default_factory=SLOLimits)
    reference: str | None = None  # the config improvement factors are relative to (default: "hf", else an hf config)
    workload: str = "lab"  # the comparison load's workload name
    expectations: Path | None = None
    peaks: Path | None = None
    html: bool = True
    noise: float = 0.05  # relative differences below this are treated as run-to-run noise


def kv_limits(expectations: Path | None) -> tuple[float, float]:
    """The KV study's own accuracy limits (perf/studies.toml beside the table), else its shipped defaults."""
    beside = Path(expectations).parent / "studies.toml" if expectations else None
    path = beside if beside and beside.is_file() else default_studies_path()
    try:
        s = tomllib.loads(path.read_text()).get("kv_cache_dtype", {})
        return float(s.get("min_prompt_top1_agreement", 0.8)), float(s.get("max_prompt_logprob_mae", 0.25))
    except (OSError, tomllib.TOMLDecodeError):
        return 0.8, 0.25

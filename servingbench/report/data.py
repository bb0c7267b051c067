"""What the report reads: the measurements and study files of results directories, and figures derived from them.

Several directories merge (a GPU lease split over sessions); a measurement key seen twice keeps the later run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from servingbench.report.recommend import sweep_levels

Row = dict[str, Any]


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



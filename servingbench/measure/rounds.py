"""Rounds: the gated workload run several times in several server lifetimes, each run's figures kept.

A round is one run of a workload against one config; a lifetime is one server process (a restart between
lifetimes). A restart moves every figure (``measure/noise.py`` has the measurements), so the lifetime is the
independent unit: the rounds file, ``baselines/<key>/rounds.json``, keeps every round with its lifetime, figures,
per-request samples and failure counts, and per config and metric the noise model's estimates (sL between
lifetimes, sr between rounds of one lifetime, their degrees of freedom, L and R), so the gate compares a run's
lifetimes against it with a test per metric (``measure/stats.py``).

Schema ``servingbench.rounds/2``; files of ``/1`` still load (their failure counts are derived from the samples,
as only successful requests have samples). An invalid round keeps no figure (null): it is left out of every
estimate, never stored as NaN.
"""

from __future__ import annotations

import json
import math
from statistics import median
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from servingbench.measure import catalog
from servingbench.measure.files import atomic_write_text
from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.noise import Noise, side
from servingbench.measure.stats import log_spread

SCHEMA = "servingbench.rounds/2"
SCHEMAS = ("servingbench.rounds/1", SCHEMA)  # /1: no failure counts, no noise block
FILENAME = "rounds.json"


@dataclass(frozen=True)
class GatedMetric:
    """A figure the gate gives a verdict on: its name in ``Measurement.value``, direction, and samples source."""

    name: str
    higher_is_better: bool = False
    samples: str | None = None  # per-request samples it is a quantile of ("ttft", "tpot", "itl", "e2el")
    quantile: float | None = None


# The catalog's gated metrics (those with a minimum effect), in its order: the rounds file lists them so.
GATED: tuple[GatedMetric, ...] = tuple(GatedMetric(m.name, m.higher_is_better, m.samples, m.quantile)
                                       for m in catalog.gated())


def request_samples(m: Measurement) -> dict[str, list[float]]:
    """Per-request samples in milliseconds (to the microsecond, which keeps a baseline file small), as the
    percentiles are computed from them, with the metrics' own definitions: ITL gaps of 0 (two chunks in one socket
    read) stay, as ``median_itl_ms`` keeps them. The gate judges per-round figures (``Round.figures``), not logs of
    single requests, so a zero gap needs no special case."""
    us = lambda seconds: round(seconds * 1e3, 3)  # noqa: E731
    return {s.name: [us(x) for x in s.get(m)] for s in catalog.SAMPLES.values() if s.per_request}


@dataclass
class Round:
    config: str
    lifetime: int  # which server lifetime (a restart between lifetimes)
    index: int
    measurement: str
    figures: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)
    requests: int | None = None  # measured requests, and how many failed (None: not recorded)
    failed: int | None = None
    duration_s: float | None = None  # of the load, for planning how many rounds fit in a budget
    startup_s: float | None = None  # of the server this round ran on (None: not started by the suite)

    @classmethod
    def of(cls, m: Measurement, lifetime: int, index: int) -> "Round":
        figures: dict[str, float] = {}
        for g in GATED:
            try:
                figures[g.name] = m.require_valid(g.name).value(g.name)  # an invalid round has none
            except MissingFigure:
                figures[g.name] = math.nan
        return cls(m.config_name, lifetime, index, m.key, figures, request_samples(m),
                   requests=m.metrics.completed + m.metrics.failed, failed=m.metrics.failed,
                   duration_s=m.metrics.duration, startup_s=m.server_startup_s)


@dataclass
class RoundsFile:
    """The rounds a baseline was made of, with what they were measured on and each metric's spread."""

    provenance: dict[str, Any]
    workloads: dict[str, dict[str, Any]]  # config -> workload
    rounds: list[Round]
    created_at: float = field(default_factory=time.time)

    def of(self, config: str) -> list[Round]:
        return [r for r in self.rounds if r.config == config]

    def configs(self) -> list[str]:
        return list(dict.fromkeys(r.config for r in self.rounds))

    def noise(self) -> dict[str, dict[str, Noise]]:
        """config -> metric -> the random-effects estimates over this file's lifetimes (invalid rounds left out)."""
        return {c: {g.name: Noise.of(side(by_lifetime(self.of(c), g.name))) for g in GATED} for c in self.configs()}

    def spread(self) -> dict[str, dict[str, float]]:
        """config -> metric -> sample std of log(round figure): restart-to-restart spread included."""
        out: dict[str, dict[str, float]] = {}
        for config in dict.fromkeys(r.config for r in self.rounds):
            out[config] = {g.name: log_spread([x for r in self.of(config) if (x := r.figures.get(g.name))
                                               and math.isfinite(x) and x > 0]) for g in GATED}
        return out

    def medians(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for config in dict.fromkeys(r.config for r in self.rounds):
            out[config] = {}
            for g in GATED:
                xs = [x for r in self.of(config) if math.isfinite(x := r.figures.get(g.name, math.nan))]
                out[config][g.name] = median(xs) if xs else math.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        noise = {c: {m: {**n.to_dict(), "lifetime_share": n.lifetime_share(n.r_ref) if n.dz > 0 else None}
                     for m, n in per.items()} for c, per in self.noise().items()}
        return {"schema": SCHEMA, "created_at": self.created_at, "provenance": self.provenance,
                "workloads": self.workloads, "metrics": [asdict(g) for g in GATED],
                "noise": noise, "spread": self.spread(), "medians": self.medians(),
                "rounds": [asdict(r) for r in self.rounds]}

    def save(self, folder: Path) -> Path:
        path = folder / FILENAME
        # one top-level key a line, each round on its own line: readable at the top, compact in the samples
        d = _finite(self.to_dict())
        compact = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
        lines = [f'  {json.dumps(k)}: {compact(v)}' for k, v in d.items() if k != "rounds"]
        lines.append('  "rounds": [\n' + ",\n".join(f"    {compact(r)}" for r in d["rounds"]) + "\n  ]")
        atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")
        path.chmod(0o644)  # a baseline to commit, as a plain write would leave it (the temporary file is private)
        return path

    @classmethod
    def load(cls, path: Path) -> "RoundsFile":
        data = json.loads(path.read_text())
        if data.get("schema") not in SCHEMAS:
            raise ValueError(f"{path}: not a servingbench rounds file (schema {data.get('schema')!r})")
        rounds = [Round(**{**r, "figures": {k: (math.nan if v is None else v) for k, v in r["figures"].items()}})
                  for r in data["rounds"]]
        if data["schema"] == SCHEMAS[0]:
            rounds = [_v1_failures(r, data["workloads"].get(r.config) or {}) for r in rounds]
        return cls(data["provenance"], data["workloads"], rounds, data.get("created_at", 0.0))


def by_lifetime(rounds: list[Round], metric: str) -> list[list[float]]:
    """A metric's figures, one list per lifetime in the order the lifetimes ran; NaN where a round had none."""
    out: dict[int, list[float]] = {}
    for r in rounds:
        out.setdefault(r.lifetime, []).append(r.figures.get(metric, math.nan))
    return [out[k] for k in sorted(out)]


def _v1_failures(r: Round, workload: dict[str, Any]) -> Round:
    """A /1 round's failure counts: its samples are of successful requests only, so the failures are the
    workload's requests less the E2EL samples (a conversation workload's count is not its num_requests: unknown)."""
    n = workload.get("num_requests")
    if (r.requests is not None or not isinstance(n, int) or workload.get("kind") == "conversation"
            or "e2el" not in r.samples):
        return r
    ok = len(r.samples["e2el"])
    return replace(r, requests=max(n, ok), failed=max(0, n - ok))


def _finite(o: Any) -> Any:
    """JSON has no NaN: a figure a round did not have is written as null."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o

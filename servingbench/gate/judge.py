"""The regression gate: a verdict per metric from lifetimes of rounds, against a stored baseline or in an A/B.

A round is one run of the gated workload (the lab load); a lifetime is one server process. A restart moves every
figure, so the lifetime is the unit (``measure/noise.py``): the gate runs N lifetimes (``--gate-lifetimes``, a
restart before each) of R rounds (``--gate-rounds``) and gives each metric of ``rounds.GATED``, and failure_rate,
a verdict (``measure/stats.py``): regressed, improved, unchanged or inconclusive, with the change, its interval
(labelled with its real level) and the MDR of the very rule that decides. The run fails only on "regressed".

* **stored-baseline mode** compares with ``baselines/<key>/rounds.json`` (``servingbench calibrate``), after
  checking that it was recorded on this run's model, workload and engine versions.
* **A/B of configs or Python environments**: both sides' lifetimes in ABBA order (A B B A ...), so linear drift of
  the machine falls on both sides equally, each lifetime a fresh server.
* **A/B of two deployments** (``--server-url`` against ``--ab-server-url``): nothing restarts them, so each side is
  one lifetime and only a stored lifetime spread of this hardware can tell a change from a restart; without one
  the verdicts are inconclusive and say how to fix that.

False alarms: the run's 5% is split (Bonferroni) over every test of the run, metrics and failure_rate of every
config gated, each tested one-sided; the min effect lowers it further.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from servingbench.measure import catalog
from servingbench.measure.files import atomic_write_json
from servingbench.measure.noise import Noise, plan, side
from servingbench.measure.stats import Verdict, compare_failures, compare_lifetimes, verdict_table
from servingbench.measure.rounds import GATED, Round, RoundsFile, by_lifetime

ALPHA = 0.05  # false alarms per run, over all tests of all configs
# The smallest change worth failing a run for, per metric (a fraction): the catalog's, where the measurements that
# set them are told (TTFT's are wider because a server restart alone moves it).
MIN_EFFECT: dict[str, float] = catalog.min_effect()
POWER = 0.8
DEFAULT_ROUNDS = 3  # per lifetime
# Rounds per lifetime: the within-lifetime spread (sr) is estimated from them, and a run with fewer rounds a lifetime
# than the baseline adds their extra round noise with it. (Issue #29: one round a side gave the old gate 32-45%
# false alarms on TPOT p50 in simulation.)
MIN_ROUNDS = 2
# Lifetimes a side. Simulated power (scripts/gate_power.py --simulate, README "Power"): against a 6-lifetime
# calibration with the CPU machine's measured spreads, the throughput MDR is 21.9% with 1 lifetime, 15.6% with 2,
# 12.9% with 3; the first restart buys most (a second lifetime halves the current side's lifetime term and adds a
# degree of freedom), and 2 is the smallest ABBA block of an A/B.
DEFAULT_LIFETIMES = 2
# The goals of issue #29: a regression of this size detected with 80% power in this much load a side.
GOALS: dict[str, tuple[dict[str, float], float]] = {
    "gpu": ({"output_throughput": 0.03, "median_tpot_ms": 0.03}, 5.0),
    "cpu": ({"output_throughput": 0.10}, 15.0),
}
# Fields a stored baseline must share with the run; --gate-allow-mismatch FIELD (or a prefix: "versions") overrides.
ENGINE_VERSIONS = {"vllm": ("vllm", "torch"), "hf": ("transformers", "torch")}
NO_NOISE_FIX = ("fix: record this hardware's lifetime spread with `servingbench calibrate` so the "
                "gate can use it, or A/B servers the suite starts (--ab-config, --ab-python), which it restarts")


def n_tests_per_config() -> int:
    return len(GATED) + 1  # and failure_rate


def alpha_per_test(configs: int, alpha: float = ALPHA) -> float:
    """The one-sided level of each test, so that a run of ``configs`` gated configs fails with ``alpha`` at most."""
    return alpha / (n_tests_per_config() * max(1, configs))


def check_rounds(rounds: int) -> int:
    if rounds < MIN_ROUNDS:
        raise ValueError(f"--gate-rounds {rounds}: the gate needs at least {MIN_ROUNDS} rounds per lifetime, to "
                         f"estimate the spread within one; pass --gate-rounds {MIN_ROUNDS} or more")
    return rounds


def judge(baseline: Sequence[Round], current: Sequence[Round], *, configs: int = 1, stored: Sequence[Round] = (),
          stored_source: str = "", min_effect: dict[str, float] | None = None, alpha: float = ALPHA,
          power: float = POWER, no_noise: str = NO_NOISE_FIX) -> tuple[list[Verdict], dict[str, Noise]]:
    """One verdict per gated metric and failure_rate, and the pooled noise each metric's verdict used.

    ``stored`` are rounds of this hardware whose lifetimes only add to the noise estimate (an A/B's, where the run
    itself may hold one lifetime a side); a stored baseline is ``baseline`` itself."""
    effect = {**MIN_EFFECT, **(min_effect or {})}
    a = alpha_per_test(configs, alpha)
    out, noises = [], {}
    for g in GATED:
        extra = Noise.of(side(by_lifetime(list(stored), g.name))) if stored else None
        b, c = by_lifetime(list(baseline), g.name), by_lifetime(list(current), g.name)
        v = compare_lifetimes(g.name, b, c, higher_is_better=g.higher_is_better, min_effect=effect[g.name],
                              alpha=a, power=power, noise=extra, noise_source=stored_source, no_noise=no_noise)
        out.append(v)
        noises[g.name] = Noise.of(side(b), side(c)) + (extra or Noise())
    out.append(compare_failures(*_failures(baseline), *_failures(current), alpha=a, power=power))
    return out, noises


def verdicts(baseline: Sequence[Round], current: Sequence[Round], **kw: Any) -> list[Verdict]:
    """``judge``'s verdicts alone."""
    return judge(baseline, current, **kw)[0]


def _failures(rounds: Sequence[Round]) -> tuple[int | None, int]:
    if any(r.failed is None or r.requests is None for r in rounds):
        return None, sum(r.requests or 0 for r in rounds)
    return sum(r.failed or 0 for r in rounds), sum(r.requests or 0 for r in rounds)


def provenance_mismatches(stored: RoundsFile, config: str, provenance: dict[str, Any], workload: dict[str, Any],
                          engine: str) -> list[str]:
    """Where a stored baseline was recorded on something else than this run: 'field: stored X, run Y' each.
    Workload fields are compared where both sides name them (a newer suite may record more)."""
    out = []
    sp = stored.provenance
    for key in ("model", "tensor_parallel_size"):
        if key in sp and key in provenance and sp[key] != provenance[key]:
            out.append(f"{key}: baseline {sp[key]!r}, run {provenance[key]!r}")
    sw = stored.workloads.get(config) or {}
    for key in sorted(set(sw) & set(workload)):
        if sw[key] != workload[key]:
            out.append(f"workload.{key}: baseline {sw[key]!r}, run {workload[key]!r}")
    sv, rv = sp.get("versions") or {}, provenance.get("versions") or {}
    for key in ENGINE_VERSIONS.get(engine, ("torch",)):
        if sv.get(key) != rv.get(key):
            out.append(f"versions.{key}: baseline {sv.get(key)!r}, run {rv.get(key)!r}")
    return out


def refuse_mismatches(mismatches: Sequence[str], allow: Sequence[str], path: Path) -> list[str]:
    """The mismatches an option allows (to note in the report); ValueError naming the others and the option."""
    allowed = [m for m in mismatches if any(a == "all" or m.split(":")[0] == a or m.startswith(a + ".")
                                            for a in allow)]
    refused = [m for m in mismatches if m not in allowed]
    if refused:
        raise ValueError(f"{path} was recorded on something else than this run: {'; '.join(refused)}. Record a "
                         "baseline for it (servingbench calibrate), or compare anyway with "
                         + " ".join(f"--gate-allow-mismatch {m.split(':')[0]}" for m in refused))
    return allowed


@dataclass
class GateReport:
    """What the gate found for one config: printed in the session summary and written to ``<results>/gate.json``."""

    config: str
    mode: str  # "stored baseline <path>" or "A/B: A=... B=..."
    rounds: int
    verdicts: list[Verdict] = field(default_factory=list)
    lifetimes: int = 1
    alpha: float = math.nan  # per test
    notes: list[str] = field(default_factory=list)  # what it would take; mismatches allowed; forced designs

    @property
    def regressed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.failed()]

    def heading(self) -> str:
        return (f"{self.config} ({self.mode}, {self.lifetimes} lifetime(s) x {self.rounds} rounds a side, "
                f"each test one-sided at {self.alpha:.3g})")

    def table(self) -> str:
        return "\n".join([self.heading() + ":", verdict_table(self.verdicts), *(f"  note: {n}" for n in self.notes)])

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "mode": self.mode, "rounds": self.rounds, "lifetimes": self.lifetimes,
                "alpha_per_test": self.alpha, "notes": self.notes, "verdicts": [v.to_dict() for v in self.verdicts]}


def what_it_takes(verdicts: Sequence[Verdict], noises: dict[str, Noise], *, device_class: str, ab: bool,
                  current: Sequence[Round], baseline: Sequence[Round], alpha: float) -> list[str]:
    """For each goal metric whose MDR misses the goal: the design (lifetimes, rounds, minutes) that would meet it,
    from the noise this run measured, or the best one within the goal's minutes."""
    targets, minutes = GOALS[device_class]
    durations = [r.duration_s for r in current if r.duration_s]
    startups = [r.startup_s for r in current if r.startup_s]
    if not durations:
        return []
    round_min = statistics.median(durations) / 60
    restart_min = statistics.median(startups) / 60 if startups else 0.0
    lb = len({r.lifetime for r in baseline})
    rb = max(2, round(len(baseline) / max(1, lb)))
    out = []
    for v in verdicts:
        target = targets.get(v.metric)
        n = noises.get(v.metric)
        if target is None or v.mdr <= target:
            continue
        stored_l = (n.lifetimes - v.lifetimes_baseline - v.lifetimes_current) if n is not None else 0
        stored_r = max(2, round((n.rounds - v.n_baseline - v.n_current) / stored_l)) if n and stored_l else 3
        if n is None or not (math.isfinite(n.sl) and math.isfinite(n.sr)):
            out.append(f"{v.metric}: MDR {v.mdr:.1%} misses the {device_class} goal {target:.0%}; no lifetime "
                       f"spread to plan with. {NO_NOISE_FIX}")
            continue
        p = plan(n.sl, n.sr, target=target, alpha=alpha, power=POWER, min_effect=MIN_EFFECT[v.metric],
                 higher_is_better=v.higher_is_better, round_minutes=round_min, restart_minutes=restart_min, ab=ab,
                 baseline_lifetimes=lb, baseline_rounds=rb, max_load_minutes=minutes,
                 stored_lifetimes=stored_l, stored_rounds=stored_r)
        recal = (f"; recalibrate with `servingbench calibrate --lifetimes {p.baseline_lifetimes}`"
                 if not ab and p.baseline_lifetimes > lb else "")
        out.append(f"{v.metric}: MDR {v.mdr:.1%} misses the {device_class} goal of {target:.0%} in <= {minutes:g} min "
                   f"of load a side (sL {n.sl:.1%}, sr {n.sr:.1%}); {p.describe()}{recal}")
    return out


def stored_baseline(folder: Path, config: str) -> tuple[RoundsFile, list[Round]]:
    """The rounds a stored baseline holds for ``config``; FileNotFoundError / ValueError say what is missing."""
    path = folder / "rounds.json"
    if not path.is_file():
        raise FileNotFoundError(f"no rounds baseline at {path}: record one on a quiet machine of this hardware "
                                "with `servingbench calibrate`, review and commit it")
    calibration = RoundsFile.load(path)
    rounds = calibration.of(config)
    if not rounds:
        raise ValueError(f"{path} has no rounds of config {config!r} (it has: "
                         f"{', '.join(sorted({r.config for r in calibration.rounds}))})")
    return calibration, rounds


Measure = Callable[[int, int], Round]  # (lifetime, round index) -> Round


def run_lifetimes(measure: Measure, restart: Callable[[], None], lifetimes: int, rounds: int) -> list[Round]:
    """``lifetimes`` fresh servers (``restart`` before each), ``rounds`` rounds on each."""
    out = []
    for lt in range(lifetimes):
        restart()
        out.extend(measure(lt, i) for i in range(rounds))
    return out


def abba(lifetimes: int) -> list[int]:
    """Which side (0 = A, 1 = B) each lifetime goes to: A B B A A B B A ..., ``lifetimes`` a side."""
    return [side for k in range(lifetimes) for side in ((0, 1) if k % 2 == 0 else (1, 0))]


def run_abba(measure_a: Measure, measure_b: Measure, restart: Callable[[], None], lifetimes: int,
             rounds: int) -> tuple[list[Round], list[Round]]:
    """Both sides' lifetimes in ABBA order, a fresh server each: linear drift falls on both sides equally."""
    out: tuple[list[Round], list[Round]] = ([], [])
    seen = [0, 0]
    for s in abba(lifetimes):
        restart()
        lt, seen[s] = seen[s], seen[s] + 1
        out[s].extend((measure_a, measure_b)[s](lt, i) for i in range(rounds))
    return out


def run_interleaved(measure_a: Measure, measure_b: Measure, rounds: int) -> tuple[list[Round], list[Round]]:
    """Two servers nothing restarts (deployments): one lifetime a side, rounds in ABBA order."""
    out: tuple[list[Round], list[Round]] = ([], [])
    for i in range(rounds):
        for s in ((0, 1) if i % 2 == 0 else (1, 0)):
            out[s].append((measure_a, measure_b)[s](0, i))
    return out


def save_reports(results_dir: Path, reports: Sequence[GateReport]) -> Path:
    path = results_dir / "gate.json"
    atomic_write_json(path, {"schema": "servingbench.gate/2", "alpha": ALPHA, "min_effect": MIN_EFFECT,
                             "reports": [r.to_dict() for r in reports]})
    return path

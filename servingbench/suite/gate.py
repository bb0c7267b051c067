"""The regression gate: a verdict per metric from rounds, against a stored baseline or in an A/B of one session.

A round is one run of the gated workload (the lab load). The gate runs R rounds of a config and gives each metric
of ``rounds.GATED`` a verdict (``measure/stats.py``): regressed, improved, unchanged or inconclusive, with the
change, its confidence interval and this run's minimum detectable regression (MDR). The run fails only on
"regressed".

* **stored-baseline mode** compares the rounds with ``baselines/<key>/rounds.json`` (``servingbench calibrate``).
* **A/B mode** runs a reference A and a candidate B interleaved, round by round, on the same machine (A0 B0 A1 B1
  ...), so that drift of the machine falls on both sides: two configs of the table, two deployments, or two Python
  environments each holding the vLLM under test.

Test: Welch's t on the log of per-round figures (throughput), and for per-request quantiles a bootstrap of the pooled
requests when the rounds are exchangeable (Cochran's Q), else Welch's t on per-round quantiles. A run fails if any
metric regressed, so the false-alarm target, 5%, is per run: each of the 8 metrics is tested one-sided at
0.05 / 8 (Bonferroni), plus a minimum effect size, so a significant but tiny shift does not fail a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from servingbench.measure.files import atomic_write_json
from servingbench.measure.stats import Verdict, compare_rounds, compare_samples, verdict_table
from servingbench.suite.rounds import GATED, Round, RoundsFile

ALPHA = 0.05  # false alarms per run, over all gated metrics
# The smallest change worth failing a run for, per metric (a fraction). Below these a shift is "unchanged" at most.
# TTFT's are wider because a server restart alone moves it: on the H200, lifetime against lifetime (3 rounds each),
# TTFT p50 moved +5.6% with a confidence interval clear of zero; throughput, TPOT and E2EL moved under 0.3%.
MIN_EFFECT: dict[str, float] = {
    "output_throughput": 0.02, "median_tpot_ms": 0.02, "p99_tpot_ms": 0.05, "median_itl_ms": 0.02,
    "median_e2el_ms": 0.02, "p99_e2el_ms": 0.05, "median_ttft_ms": 0.10, "p99_ttft_ms": 0.15,
}
DEFAULT_ROUNDS = 3  # per side; see README "The regression gate" for the measured power behind it


def verdicts(baseline: Sequence[Round], current: Sequence[Round], *, spread: dict[str, float] | None = None,
             min_effect: dict[str, float] | None = None, alpha: float = ALPHA) -> list[Verdict]:
    """One verdict per gated metric: ``current`` rounds against ``baseline`` rounds of the same config; ``alpha``
    is the false-alarm rate of the whole run, split over the metrics."""
    effect = {**MIN_EFFECT, **(min_effect or {})}
    alpha = alpha / len(GATED)
    out = []
    for g in GATED:
        if g.samples and all(r.samples.get(g.samples) for r in (*baseline, *current)):
            out.append(compare_samples(g.name, [r.samples[g.samples] for r in baseline],
                                       [r.samples[g.samples] for r in current], quantile=g.quantile or 0.5,
                                       higher_is_better=g.higher_is_better, min_effect=effect[g.name], alpha=alpha))
        else:
            out.append(compare_rounds(g.name, [r.figures[g.name] for r in baseline],
                                      [r.figures[g.name] for r in current], higher_is_better=g.higher_is_better,
                                      min_effect=effect[g.name], alpha=alpha,
                                      spread=(spread or {}).get(g.name)))
    return out


@dataclass
class GateReport:
    """What the gate found for one config: printed in the session summary and written to ``<results>/gate.json``."""

    config: str
    mode: str  # "stored baseline <path>" or "A/B: A=... B=..."
    rounds: int
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def regressed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.failed()]

    def table(self) -> str:
        return f"{self.config} ({self.mode}, {self.rounds} rounds a side):\n{verdict_table(self.verdicts)}"

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "mode": self.mode, "rounds": self.rounds,
                "verdicts": [v.to_dict() for v in self.verdicts]}


def stored_baseline(folder: Path, config: str) -> tuple[RoundsFile, list[Round]]:
    """The rounds a stored baseline holds for ``config``; FileNotFoundError / ValueError say what is missing."""
    path = folder / "rounds.json"
    if not path.is_file():
        raise FileNotFoundError(f"no rounds baseline at {path}: record one on a quiet machine of this hardware "
                                "with `make calibrate` (servingbench calibrate), review and commit it")
    calibration = RoundsFile.load(path)
    rounds = calibration.of(config)
    if not rounds:
        raise ValueError(f"{path} has no rounds of config {config!r} (it has: "
                         f"{', '.join(sorted({r.config for r in calibration.rounds}))})")
    return calibration, rounds


def run_rounds(measure: Callable[[int], Round], rounds: int) -> list[Round]:
    return [measure(i) for i in range(rounds)]


def run_interleaved(measure_a: Callable[[int], Round], measure_b: Callable[[int], Round],
                    rounds: int) -> tuple[list[Round], list[Round]]:
    """A0 B0 A1 B1 ...: both sides see the same drift of the machine."""
    a, b = [], []
    for i in range(rounds):
        a.append(measure_a(i))
        b.append(measure_b(i))
    return a, b


def save_reports(results_dir: Path, reports: Sequence[GateReport]) -> Path:
    path = results_dir / "gate.json"
    atomic_write_json(path, {"schema": "servingbench.gate/1", "alpha": ALPHA, "min_effect": MIN_EFFECT,
                             "reports": [r.to_dict() for r in reports]})
    return path

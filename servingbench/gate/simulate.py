"""Simulated runs of the gate on hierarchical data of known noise: its false alarms per run and its power.

Why: the gate's promise (5% false alarms per ``make compare`` run, 80% detection at the MDR it prints) is a
property of its statistics under the noise model, so it is checked where the truth is known: log figure =
mu + a_l + e_lr (+ per-request noise for quantile metrics), a_l ~ N(0, sL^2) per server lifetime, e_lr ~ N(0, sr^2)
per round. The unit tests (tests/unit/test_gate_power.py) assert on it; ``scripts/gate_power.py --simulate``
prints the README's table. Vectorised draws; the verdicts come from the gate's own ``compare_lifetimes``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from servingbench.measure.stats import compare_lifetimes
from servingbench.gate.judge import DEFAULT_LIFETIMES, DEFAULT_ROUNDS, MIN_EFFECT, alpha_per_test
from servingbench.measure.rounds import GATED

# (sL, sr) of log figures. The first four are issue #29's A/A cases; "cpu" is the 2-core machine's measured
# throughput spread (sr 0.045 within a lifetime, sL 0.029 between lifetimes).
CASES: dict[str, tuple[float, float]] = {
    "flat (0, 0.02)": (0.0, 0.02), "(0.02, 0.01)": (0.02, 0.01), "(0.05, 0.02)": (0.05, 0.02),
    "(0.14, 0.03)": (0.14, 0.03), "cpu (0.029, 0.045)": (0.029, 0.045),
}
REQUESTS = 100  # per round: the lab load's
# Per-request spread (std of log) behind each quantile metric, roughly the CPU lab load's: TTFT varies most.
REQUEST_SPREAD = {"ttft": 0.3, "tpot": 0.1, "itl": 0.1, "e2el": 0.1}
CONFIGS = 2  # make compare gates vllm and hf


@dataclass(frozen=True)
class Design:
    """Lifetimes x rounds of each side, and lifetimes of stored data pooled into the noise only (an A/B's)."""

    name: str
    baseline: int
    current: int
    rounds: int = DEFAULT_ROUNDS
    stored: int = 0
    current_rounds: int | None = None  # where the run's rounds a lifetime differ from the baseline's

    @property
    def rounds_c(self) -> int:
        return self.current_rounds or self.rounds


DESIGNS = {
    "stored": Design("stored baseline: calibration 6 x 3 against the gate's default", 6, DEFAULT_LIFETIMES),
    "stored-legacy": Design("stored baseline of 2 lifetimes x 3 against 1 x 3 (the issue's case)", 2, 1),
    "ab-configs": Design("A/B of configs, ABBA", DEFAULT_LIFETIMES, DEFAULT_LIFETIMES),
    "ab-deployments": Design("A/B of deployments, 1 x 3 a side, stored 6 x 3 pooled", 1, 1, stored=6),
    "stored-fewer-rounds": Design("stored baseline 6 x 3 against 2 x 2", 6, 2, current_rounds=2),
    "stored-more-rounds": Design("stored baseline 6 x 3 against 1 x 6", 6, 1, current_rounds=6),
}

Decide = Callable[..., str]  # (metric, baseline (L, R), current (L, R), stored (L, R) | None, alpha, min_effect)


def decide_gate(g_name: str, higher_is_better: bool, b: np.ndarray, c: np.ndarray, stored: np.ndarray | None,
                alpha: float, min_effect: float) -> str:
    from servingbench.measure.noise import Noise, side

    noise = Noise.of(side(stored)) if stored is not None else None
    return compare_lifetimes(g_name, b, c, higher_is_better=higher_is_better, min_effect=min_effect, alpha=alpha,
                             noise=noise, with_mdr=False).status


@functools.lru_cache(maxsize=4)
def _quantile_pool(q: float, size: int = 50_000, seed: int = 99) -> np.ndarray:
    """Per-round q-quantiles of REQUESTS standard normal log request values: request sampling noise of a round's
    quantile, drawn once and resampled (the quantile of exp is exp of the quantile)."""
    z = np.random.default_rng(seed).standard_normal((size, REQUESTS))
    return np.quantile(z, q, axis=1)


def draw(rng: np.random.Generator, n: int, sl: float, sr: float, lifetimes: int, rounds: int,
         metric: str) -> np.ndarray:
    """n sides of ``lifetimes`` x ``rounds`` per-round figures of ``metric`` (positive, median ~1)."""
    logs = rng.normal(0, sl, (n, lifetimes, 1)) + rng.normal(0, sr, (n, lifetimes, rounds))
    g = next(g for g in GATED if g.name == metric)
    if g.samples:
        pool = _quantile_pool(g.quantile or 0.5)
        logs = logs + REQUEST_SPREAD[g.samples] * pool[rng.integers(0, pool.size, logs.shape)]
    return np.exp(logs)


def false_alarms(sl: float, sr: float, design: Design, runs: int, seed: int, *, min_effect: float | None = 0.0,
                 decide: Decide = decide_gate, alpha: float | None = None) -> tuple[float, dict[str, float]]:
    """A/A: the share of runs (CONFIGS configs x every gated metric) with any metric 'regressed', and each metric's
    rate. ``min_effect`` 0 tests the t-test alone (the gate's min effects only remove alarms); None uses them."""
    rng = np.random.default_rng(seed)
    a = alpha if alpha is not None else alpha_per_test(CONFIGS)
    any_alarm = np.zeros(runs, dtype=bool)
    per: dict[str, float] = {}
    for g in GATED:
        me = MIN_EFFECT[g.name] if min_effect is None else min_effect
        hits = np.zeros(runs, dtype=bool)
        for _ in range(CONFIGS):
            b = draw(rng, runs, sl, sr, design.baseline, design.rounds, g.name)
            c = draw(rng, runs, sl, sr, design.current, design.rounds_c, g.name)
            st = draw(rng, runs, sl, sr, design.stored, design.rounds, g.name) if design.stored else None
            for i in range(runs):
                alarm = decide(g.name, g.higher_is_better, b[i], c[i], None if st is None else st[i], a, me) \
                    == "regressed"
                hits[i] |= alarm
                any_alarm[i] |= alarm
        per[g.name] = float(hits.mean()) / CONFIGS  # per test (a config's metric), averaged over configs
    return float(any_alarm.mean()), per


def detection_at_printed_mdr(sl: float, sr: float, design: Design, metric: str, draws: int,
                             seed: int) -> tuple[float, float]:
    """(detection rate, median printed MDR): each draw's A/A data gives the MDR the gate prints; the current side is
    then made worse by exactly that and judged again. Shifting a side leaves the noise estimate as it was."""
    from servingbench.measure.noise import Noise, side

    g = next(g for g in GATED if g.name == metric)
    rng = np.random.default_rng(seed)
    a = alpha_per_test(CONFIGS)
    b = draw(rng, draws, sl, sr, design.baseline, design.rounds, metric)
    c = draw(rng, draws, sl, sr, design.current, design.rounds_c, metric)
    st = draw(rng, draws, sl, sr, design.stored, design.rounds, metric) if design.stored else None
    hits, mdrs = 0, []
    for i in range(draws):
        kw = dict(higher_is_better=g.higher_is_better, min_effect=MIN_EFFECT[metric], alpha=a,
                  noise=Noise.of(side(st[i])) if st is not None else None)
        m = compare_lifetimes(metric, b[i], c[i], **kw).mdr
        mdrs.append(m)
        if not math.isfinite(m) or (g.higher_is_better and m >= 1):
            continue  # nothing to shift to: counted as missed
        worse = c[i] * ((1 - m) if g.higher_is_better else (1 + m))
        hits += compare_lifetimes(metric, b[i], worse, **kw).status == "regressed"
    return hits / draws, float(np.median(mdrs))


def allowance(p: float, n: int, z: float = 2.326) -> float:
    """One-sided 99% binomial allowance of an observed rate around p in n draws."""
    return z * math.sqrt(p * (1 - p) / n)

"""The calibration's proposed bounds, as statistics: a new lifetime's round falls outside them as often as the rows say.

Seeded simulation on data with known structure (lifetimes, rounds, requests): each draw is a calibration of L
lifetimes x R rounds, each round's figure the mean of its requests times a lifetime and a round effect. The rows
state, per bound, ~P(t_df > m / s) false failures. What one round in a new lifetime does against those bounds is
computed exactly (the log figure is normal with known variance), so the only noise is that of the calibrations.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from servingbench.gate.calibrate import CalibrationOptions, propose_rows
from servingbench.measure.environment import Hardware
from servingbench.measure.rounds import GATED, Round, RoundsFile

CPU = Hardware("cpu-2c-avx2", False, cpu="AMD EPYC", cores=2, cpu_family="AuthenticAMD family 25 model 1", isa="avx2")
LIFETIMES, ROUNDS, REQUESTS, PER_REQUEST = 6, 2, 32, 0.3  # the default calibration's lifetimes; 2 rounds each
CENTRE = 100.0
ROW = re.compile(r"^(\w+) = \{ (min|max) = ([0-9.e+-]+) \}.*~([0-9.e-]+) false failures$", re.M)


def _calibration(rng: np.random.Generator, sl: float, sr: float, per_request: float = PER_REQUEST) -> RoundsFile:
    rounds = []
    for lifetime in range(LIFETIMES):
        a = rng.normal(0, sl, len(GATED))
        for i in range(ROUNDS):
            log = a + rng.normal(0, sr, len(GATED)) + rng.normal(0, per_request, (REQUESTS, len(GATED))).mean(0)
            rounds.append(Round("vllm", lifetime, i, f"l{lifetime}r{i}",
                                {g.name: CENTRE * math.exp(x) for g, x in zip(GATED, log)}))
    return RoundsFile({"versions": {}}, {}, rounds)


def _rates(sl: float, sr: float, draws: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """metric -> (smallest bound seen, mean false-failure rate of a new lifetime's round, mean rate the rows state)."""
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(sl ** 2 + sr ** 2 + PER_REQUEST ** 2 / REQUESTS)  # one round in a new lifetime, log scale
    seen: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(draws):
        rows = propose_rows(_calibration(rng, sl, sr), CPU, "m", {}, CalibrationOptions())
        for metric, side, bound, stated in ROW.findall(rows):
            b = float(bound)
            z = math.log(b / CENTRE) / sigma if b > 0 else -math.inf
            actual = stats.norm.cdf(z) if side == "min" else stats.norm.sf(z)
            seen.setdefault(metric, []).append((b, actual, float(stated)))
    return {m: (min(v[0] for v in vs), float(np.mean([v[1] for v in vs])), float(np.mean([v[2] for v in vs])))
            for m, vs in seen.items()}


@pytest.mark.parametrize("sl, sr", [
    (0.134, 0.075),  # cpu-2c-avx2's HF throughput, 2026-12-07: 6 lifetimes x 2 rounds, 44-66 tok/s
    (0.30, 0.10),  # a noisier box: 4 x spread passes 100%, where median x (1 - 4 x spread) went below zero
])
def test_a_new_lifetime_fails_the_proposed_bounds_as_often_as_the_rows_say(sl: float, sr: float) -> None:
    rates = _rates(sl, sr, draws=300, seed=20261207)
    assert {"output_throughput", "median_tpot_ms"} <= set(rates)  # a min side and a max side
    for metric, (lowest, actual, stated) in rates.items():
        assert lowest > 0, (metric, lowest)
        # 4 spreads out at 6-11 df: P(t > 4) is 0.1-0.4%, and the rows state it
        assert 0.0005 < stated < 0.008, (metric, stated)
        # seeds 1-10 gave actual / stated 0.41-1.51 for one metric over 300 calibrations
        assert actual < 2.5 * stated, (metric, actual, stated)
    pooled = np.mean([a for _, a, _ in rates.values()]) / np.mean([s for _, _, s in rates.values()])
    assert 0.5 < pooled < 1.5, pooled  # seeds 1-10: 0.66-1.08 over the five bounds


def test_the_rule_is_symmetric_in_log() -> None:
    """A min bound on x and a max bound on 1/x are reciprocal: a regression by a factor k counts the same on
    throughput as on TPOT (median x (1 - m) and median x (1 + m) were not: 6.6 and 3.3 spreads at m = 66%)."""
    calibration = _calibration(np.random.default_rng(3), 0.134, 0.075)
    for r in calibration.rounds:
        r.figures["median_tpot_ms"] = CENTRE ** 2 / r.figures["output_throughput"]
    rows = propose_rows(calibration, CPU, "m", {}, CalibrationOptions())
    found = {m: float(b) for m, _, b in re.findall(r"^(\w+) = \{ (min|max) = ([0-9.e+-]+) \}", rows, re.M)}
    assert found["output_throughput"] < 0.6 * CENTRE  # 4 spreads wide: well past the floor
    assert found["output_throughput"] * found["median_tpot_ms"] == pytest.approx(CENTRE ** 2, rel=1e-2)


def test_the_floor_sets_quiet_bounds_at_15_percent_either_side() -> None:
    """Where 4 spreads are under the floor, the bound is 15% below a min and 15% above a max, as the rows say."""
    calibration = _calibration(np.random.default_rng(7), 0.005, 0.005, per_request=0.01)
    rows = propose_rows(calibration, CPU, "m", {}, CalibrationOptions())
    medians = calibration.medians()["vllm"]
    found = {m: (side, float(b)) for m, side, b in re.findall(r"^(\w+) = \{ (min|max) = ([0-9.e+-]+) \}", rows, re.M)}
    assert found["output_throughput"][0] == "min" and found["median_tpot_ms"][0] == "max"
    assert found["output_throughput"][1] == pytest.approx(medians["output_throughput"] * 0.85, rel=5e-3)
    assert found["median_tpot_ms"][1] == pytest.approx(medians["median_tpot_ms"] * 1.15, rel=5e-3)
    assert rows.count("margin 15%") == len(found) - 1  # every row but failure_rate

"""Unit tests of measure/stats.py and measure/noise.py on constructed data (all seeded); the simulated false-alarm
and power proof of the whole gate is tests/unit/test_gate_power.py."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from servingbench.measure.noise import (Noise, design_mdr, detection, log_threshold, mdr_log, plan, side,
                                        t_quantile)
from servingbench.measure.stats import (Verdict, compare_failures, compare_lifetimes, log_spread, status_of,
                                        verdict_table)


def hier(rng: np.random.Generator, sl: float, sr: float, lifetimes: int, rounds: int, scale: float = 1.0) -> np.ndarray:
    return scale * np.exp(rng.normal(0, sl, (lifetimes, 1)) + rng.normal(0, sr, (lifetimes, rounds)))


# ---------------------------------------------------------------- the noise model

def test_anova_recovers_known_components() -> None:
    rng = np.random.default_rng(1)
    n = Noise.of(side(hier(rng, 0.05, 0.02, 4000, 3)))
    assert n.sl == pytest.approx(0.05, rel=0.05) and n.sr == pytest.approx(0.02, rel=0.03)
    assert (n.dz, n.dw, n.lifetimes, n.rounds) == (3999, 8000, 4000, 12000)
    share = 0.05**2 / (0.05**2 + 0.02**2 / 3)
    assert n.r_ref == pytest.approx(3) and n.lifetime_share(3) == pytest.approx(share, rel=0.1)


def test_pooling_centres_each_side_so_a_shift_is_not_noise() -> None:
    rng = np.random.default_rng(2)
    a, b = hier(rng, 0.03, 0.02, 5, 3), hier(rng, 0.03, 0.02, 5, 3, scale=2.0)
    pooled = Noise.of(side(a), side(b))
    assert pooled.ssz == pytest.approx(Noise.of(side(a)).ssz + Noise.of(side(b)).ssz)
    assert pooled == Noise.of(side(a)) + Noise.of(side(b))


def test_balanced_variance_is_the_pooled_t_on_lifetime_means() -> None:
    rng = np.random.default_rng(3)
    a, b = hier(rng, 0.03, 0.02, 4, 3), hier(rng, 0.03, 0.02, 2, 3)
    v, df = Noise.of(side(a), side(b)).variance((3,) * 4, (3,) * 2)
    ma, mb = np.log(a).mean(axis=1), np.log(b).mean(axis=1)
    sp2 = (((ma - ma.mean()) ** 2).sum() + ((mb - mb.mean()) ** 2).sum()) / (4 + 2 - 2)
    assert df == 4 and v == pytest.approx(sp2 * (1 / 4 + 1 / 2))
    t = sps.ttest_ind(mb, ma, equal_var=True)
    assert (mb.mean() - ma.mean()) / math.sqrt(v) == pytest.approx(t.statistic)


def test_unbalanced_rounds_keep_the_lifetimes_df_and_stored_lifetimes_count() -> None:
    rng = np.random.default_rng(4)
    base, cur = side(hier(rng, 0.03, 0.03, 6, 3)), side(hier(rng, 0.03, 0.03, 1, 5))
    pool = Noise.of(base, cur)
    v, df = pool.variance(base.rounds, cur.rounds)  # more rounds than R_ref = 3: the round term is left out
    assert df == 5 and v == pytest.approx((1 / 6 + 1) * pool.tau2)
    fewer = side(hier(rng, 0.03, 0.03, 2, 2))
    pool = Noise.of(base, fewer)
    v, df = pool.variance(base.rounds, fewer.rounds)  # fewer: their extra round noise is added
    a, b = 1 / 6 + 1 / 2, 6 / 3 / 36 + 2 / 2 / 4
    assert df == 6 and v == pytest.approx(a * pool.tau2 + (b - a / pool.r_ref) * pool.sr2) and b > a / pool.r_ref
    # one lifetime a side: nothing separates a build from a restart, unless stored lifetimes are pooled
    one = side(hier(rng, 0.03, 0.03, 1, 3))
    assert Noise.of(one, one).variance((3,), (3,)) == (math.inf, 0.0)
    v2, df2 = (Noise.of(one, one) + Noise.of(base)).variance((3,), (3,))
    assert df2 == 5 and math.isfinite(v2)


def test_invalid_rounds_are_left_out_and_counted() -> None:
    s = side([[1.0, float("nan"), 1.1], [float("nan")], [0.0, 1.2, -1.0, float("inf")]])
    assert s.rounds == (2, 1) and s.dropped == 5 and s.n_lifetimes == 2


def test_detection_and_mdr() -> None:
    # with a known SE (df inf) and no min effect, the MDR is (z_{1-alpha} + z_power) se
    assert mdr_log(0.01, math.inf, 0.05, 0.8, 0.0) == pytest.approx((1.6449 + 0.8416) * 0.01, rel=1e-4)
    # detection at the MDR is the power; the min effect raises the MDR: at it, detection is ~50% at most
    for df in (1, 3, 8, math.inf):
        m = mdr_log(0.02, df, 0.003, 0.8, 0.05)
        assert detection(m, 0.02, df, 0.003, 0.05) == pytest.approx(0.8, abs=1e-6)
        assert m > 0.05 and detection(0.05, 0.02, df, 0.003, 0.05) <= 0.5
    by_df = [mdr_log(0.02, df, 0.003, 0.8, 0.0) for df in (1, 2, 4, 8, 30)]
    assert all(x > y for x, y in zip(by_df, by_df[1:]))
    assert mdr_log(0.0, 3, 0.05, 0.8, 0.02) == 0.02 and mdr_log(0.01, 0, 0.05, 0.8, 0.0) == math.inf
    assert t_quantile(0.975, math.inf) == pytest.approx(1.95996, rel=1e-5)
    assert log_threshold(0.1, True) == pytest.approx(-math.log(0.9)) and log_threshold(0.1, False) == pytest.approx(
        math.log(1.1))


def test_plan_meets_the_target_cheapest_or_says_the_best() -> None:
    kw = dict(alpha=0.05 / 18, power=0.8, min_effect=0.02, higher_is_better=True, round_minutes=0.5,
              restart_minutes=1.0)
    p = plan(0.029, 0.045, target=0.10, ab=False, baseline_lifetimes=6, baseline_rounds=3, **kw)
    assert p.met and p.mdr <= 0.10 and p.baseline_lifetimes >= 6
    assert p.mdr == pytest.approx(design_mdr(0.029, 0.045, baseline_rounds=[3] * p.baseline_lifetimes,
                                             current_rounds=[p.rounds] * p.lifetimes, **{k: kw[k] for k in (
                                                 "alpha", "power", "min_effect", "higher_is_better")}))
    assert "needs:" in p.describe() and "min of load a side" in p.describe()
    tight = plan(0.14, 0.03, target=0.03, ab=True, max_load_minutes=5, **kw)
    assert not tight.met and tight.load_minutes <= 5 and "best within limits" in tight.describe()
    ab = plan(0.029, 0.045, target=0.15, ab=True, **kw)
    assert ab.met and ab.minutes == pytest.approx(2 * (ab.lifetimes * ab.rounds * 0.5 + ab.lifetimes * 1.0))


# ---------------------------------------------------------------- the verdicts

def test_decision_rule() -> None:
    assert status_of(math.log(1.10), (0.05, 0.14), False, 0.03) == "regressed"
    assert status_of(math.log(1.01), (0.005, 0.015), False, 0.03) == "unchanged"  # significant, immaterial
    assert status_of(math.log(0.90), (-0.14, -0.05), True, 0.03) == "regressed"  # throughput down
    assert status_of(math.log(0.90), (-0.14, -0.05), False, 0.03) == "improved"
    assert status_of(0.0, (-0.2, 0.2), False, 0.03) == "inconclusive"


def test_compare_lifetimes_finds_a_planted_regression_with_its_interval() -> None:
    rng = np.random.default_rng(5)
    v = compare_lifetimes("output_throughput", hier(rng, 0.01, 0.01, 6, 3, 100), hier(rng, 0.01, 0.01, 2, 3, 80),
                          higher_is_better=True, min_effect=0.02, alpha=0.05 / 18)
    assert v.status == "regressed" and v.failed() and v.change == pytest.approx(-0.2, abs=0.03)
    assert v.ci_low < v.change < v.ci_high and v.ci_level == pytest.approx(1 - 0.1 / 18) and v.df == 6
    assert (v.lifetimes_baseline, v.n_baseline, v.lifetimes_current, v.n_current) == (6, 18, 2, 6)
    assert 0.02 < v.mdr < 0.2 and "t on lifetime means, df 6" in v.method
    assert re.search(r"\[-\d+\.\d%, -\d+\.\d%\] \(99\.44% CI\), MDR \d+\.\d%", v.describe())


def test_one_lifetime_a_side_is_inconclusive_and_says_the_fix() -> None:
    v = compare_lifetimes("median_tpot_ms", [[10.0, 10.1, 9.9]], [[20.0, 20.2, 19.8]], higher_is_better=False,
                          min_effect=0.02, no_noise="fix: calibrate")
    assert v.status == "inconclusive" and v.mdr == math.inf and "restart cannot be told" in v.method
    assert "fix: calibrate" in v.note
    stored = Noise.of(side([[10.0, 10.1], [10.5, 10.4], [9.8, 9.9]]))
    v2 = compare_lifetimes("median_tpot_ms", [[10.0, 10.1, 9.9]], [[20.0, 20.2, 19.8]], higher_is_better=False,
                           min_effect=0.02, noise=stored, noise_source="rounds.json")
    assert v2.df == 2 and math.isfinite(v2.mdr) and "rounds.json (3 lifetimes)" in v2.note


def test_invalid_rounds_leave_a_note_not_an_error() -> None:
    v = compare_lifetimes("p99_e2el_ms", [[1.0, 1.1, float("nan")], [1.05, 1.0, 1.02]], [[1.0, 1.01], [1.0, 1.03]],
                          higher_is_better=False, min_effect=0.05)
    assert v.n_baseline == 5 and "1 invalid baseline round(s) left out" in v.note
    none = compare_lifetimes("p99_e2el_ms", [[float("nan")]], [[1.0, 1.1]], higher_is_better=False, min_effect=0.05)
    assert none.status == "inconclusive" and none.method == "no valid rounds on a side"


def test_failures() -> None:
    v = compare_failures(0, 600, 1, 300)
    assert v.status == "regressed" and v.change == pytest.approx(1 / 300) and v.metric == "failure_rate"
    assert v.mdr == pytest.approx(1 - 0.2 ** (1 / 300))  # the rate at which 300 requests see a failure 80% of the time
    assert compare_failures(0, 600, 0, 300).status == "unchanged"
    assert compare_failures(30, 600, 60, 300, alpha=0.01).status == "regressed"
    assert compare_failures(30, 600, 16, 300, alpha=0.01).status == "inconclusive"
    assert compare_failures(30, 600, 0, 300, alpha=0.01).status == "improved"
    assert compare_failures(None, 600, 3, 300).status == "inconclusive"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="thr"):
        compare_lifetimes("thr", [[1.0]], [[1.0]], higher_is_better=True, min_effect=0.03, alpha=0.7)
    with pytest.raises(ValueError, match="thr"):
        compare_lifetimes("thr", [[1.0]], [[1.0]], higher_is_better=True, min_effect=1.5)
    with pytest.raises(ValueError, match="log_spread"):
        log_spread([1.0, 0.0])
    assert log_spread([]) == 0.0 and log_spread([3.0]) == 0.0
    assert log_spread([1.0, 2.0, 4.0]) == pytest.approx(np.std(np.log([1, 2, 4]), ddof=1))


def test_verdict_helpers_and_table() -> None:
    rng = np.random.default_rng(12)
    b = hier(rng, 0.01, 0.01, 4, 3, 100.0)
    vs = [
        compare_lifetimes("throughput", b, b[:2] * 0.8, higher_is_better=True, min_effect=0.03, alpha=0.01),
        compare_lifetimes("ttft_p50", b, b[:2] * 0.8, higher_is_better=False, min_effect=0.03, alpha=0.01),
        compare_lifetimes("tpot_p50", b, b[:2], higher_is_better=False, min_effect=0.05, alpha=0.01),
        compare_lifetimes("ttft_p99", [[1.0, 1.1]], [[1.5, 1.4]], higher_is_better=False, min_effect=0.03,
                          alpha=0.01),
        compare_failures(0, 100, 0, 100),
    ]
    assert [v.status for v in vs] == ["regressed", "improved", "unchanged", "inconclusive", "unchanged"]
    assert [v.failed() for v in vs] == [True, False, False, False, False]
    for v in vs:
        d = v.to_dict()
        assert Verdict(**d) == v and set(d) >= {"metric", "status", "change", "ci_low", "mdr", "method", "ci_level"}
    table = verdict_table(vs)
    lines = table.splitlines()
    assert len(lines) == 2 + len(vs) and lines[0].startswith("metric") and "CI (98%)" in lines[0]
    assert "100 vs 100 requests" in lines[-1] and "4 lifetimes/12 rounds vs 2/6" in lines[2]

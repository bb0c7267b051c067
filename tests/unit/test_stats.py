"""Tests for stats.py on constructed samples with known shifts (all seeded)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from servingbench.measure.stats import Verdict, compare_rounds, compare_samples, log_spread, verdict_table

ALPHA = 0.05


def lognormal_rounds(rng: np.random.Generator, r: int, sigma: float, scale: float = 1.0) -> np.ndarray:
    return scale * np.exp(rng.normal(0.0, sigma, r))


def rates(statuses: list[str]) -> dict[str, float]:
    n = len(statuses)
    return {s: statuses.count(s) / n for s in ("regressed", "improved", "unchanged", "inconclusive")}


# ---------------------------------------------------------------- compare_rounds

@pytest.mark.parametrize("hib", [False, True])
def test_aa_false_alarm_rate_rounds(hib: bool) -> None:
    # 2000 A/A pairs, min_effect 0 so the t-test's own alpha is what is measured.
    rng = np.random.default_rng(12345)
    x = np.exp(rng.normal(0.0, 0.02, size=(2000, 2, 5)))
    st = [compare_rounds("tput", b, c, higher_is_better=hib, min_effect=0.0).status for b, c in x]
    r = rates(st)
    # MC standard error at 0.05 with 2000 draws is ~0.005: 0.08 is a 6-sigma margin.
    assert r["regressed"] <= 0.08 and r["improved"] <= 0.08
    # ... and the test is not wildly conservative either (it really runs at ~alpha).
    assert r["regressed"] >= 0.02 and r["improved"] >= 0.02


def test_aa_with_min_effect_rarely_fails() -> None:
    rng = np.random.default_rng(7)
    x = np.exp(rng.normal(0.0, 0.02, size=(1000, 2, 5)))
    st = [compare_rounds("e2el_p50", b, c, higher_is_better=False, min_effect=0.02).status for b, c in x]
    assert rates(st)["regressed"] <= ALPHA


def test_detects_10pct_regression() -> None:
    rng = np.random.default_rng(1)
    vs = [compare_rounds("ttft_p50", lognormal_rounds(rng, 5, 0.02), lognormal_rounds(rng, 5, 0.02, 1.10),
                         higher_is_better=False, min_effect=0.03) for _ in range(200)]
    assert rates([v.status for v in vs])["regressed"] >= 0.95
    covered = np.mean([v.ci_low <= 0.10 <= v.ci_high for v in vs])
    assert covered >= 0.84  # nominal 90% two-sided
    v = vs[0]
    assert v.failed() and abs(v.change - 0.10) < 0.03 and v.ci_low <= 0.10 <= v.ci_high
    assert v.mdr < 0.10 and v.method == "welch-t on log rounds"
    assert (v.n_baseline, v.n_current) == (5, 5)


def test_direction_latency_and_throughput() -> None:
    rng = np.random.default_rng(2)
    b = lognormal_rounds(rng, 5, 0.02, 100.0)
    faster = lognormal_rounds(rng, 5, 0.02, 90.0)
    slower = lognormal_rounds(rng, 5, 0.02, 110.0)
    assert compare_rounds("tpot_p50", b, faster, higher_is_better=False, min_effect=0.03).status == "improved"
    assert compare_rounds("tpot_p50", b, slower, higher_is_better=False, min_effect=0.03).status == "regressed"
    down = compare_rounds("throughput", b, faster, higher_is_better=True, min_effect=0.03)
    up = compare_rounds("throughput", b, slower, higher_is_better=True, min_effect=0.03)
    assert down.status == "regressed" and down.change < 0 and down.higher_is_better
    assert up.status == "improved" and up.change > 0


def test_min_effect_guards_tiny_shift() -> None:
    rng = np.random.default_rng(3)
    v = compare_rounds("itl_p50", lognormal_rounds(rng, 5, 0.001), lognormal_rounds(rng, 5, 0.001, 1.01),
                       higher_is_better=False, min_effect=0.03)
    assert v.ci_low > 0  # the shift is significant ...
    assert v.status == "unchanged" and not v.failed()  # ... but immaterial, and proven so
    assert -0.03 < v.ci_low and v.ci_high < 0.03


def test_huge_noise_is_inconclusive() -> None:
    vs = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        vs.append(compare_rounds("ttft_p99", lognormal_rounds(rng, 3, 0.5), lognormal_rounds(rng, 3, 0.5, 1.1),
                                 higher_is_better=False, min_effect=0.03))
    assert vs[0].status == "inconclusive"
    assert rates([v.status for v in vs])["inconclusive"] >= 0.8
    assert all(v.mdr > 0.10 for v in vs)


def _exact_rounds(r: int, sigma: float) -> np.ndarray:
    z = np.linspace(-1.0, 1.0, r)
    return np.exp(sigma * z / z.std(ddof=1))  # sample log-std exactly sigma


def test_mdr_formula_and_monotonicity() -> None:
    def mdr(r: int, sigma: float, hib: bool = False) -> float:
        x = _exact_rounds(r, sigma)
        return compare_rounds("m", x, x, higher_is_better=hib, min_effect=0.0).mdr

    se, df = 0.02 * math.sqrt(2 / 5), 8
    expected = math.expm1((sps.t.ppf(0.95, df) + sps.t.ppf(0.8, df)) * se)
    assert mdr(5, 0.02) == pytest.approx(expected, rel=1e-9)
    assert mdr(5, 0.02, hib=True) == pytest.approx(-math.expm1(-(sps.t.ppf(0.95, df) + sps.t.ppf(0.8, df)) * se))
    by_r = [mdr(r, 0.05) for r in range(2, 21)]
    assert all(a > b for a, b in zip(by_r, by_r[1:]))
    by_sigma = [mdr(5, s) for s in (0.005, 0.01, 0.02, 0.05, 0.1, 0.3)]
    assert all(a < b for a, b in zip(by_sigma, by_sigma[1:]))
    x = _exact_rounds(5, 0.001)
    assert compare_rounds("m", x, x, higher_is_better=False, min_effect=0.03).mdr == 0.03  # floored


def test_single_round_with_spread() -> None:
    rng = np.random.default_rng(4)
    b = lognormal_rounds(rng, 5, 0.02, 50.0)
    v = compare_rounds("e2el_p99", b, [55.0], higher_is_better=False, min_effect=0.03, spread=log_spread(b))
    assert v.status == "regressed" and "single round" in v.method and math.isfinite(v.mdr)
    assert (v.n_baseline, v.n_current) == (5, 1)
    v2 = compare_rounds("e2el_p99", b, [55.0], higher_is_better=False, min_effect=0.03)
    assert v2.status == "regressed" and "spread from baseline" in v2.method
    same = compare_rounds("e2el_p99", b, [float(np.exp(np.log(b).mean()))], higher_is_better=False,
                          min_effect=0.05, spread=0.02)
    assert same.status == "unchanged"


def test_single_round_each_without_spread_is_inconclusive() -> None:
    v = compare_rounds("ttft_p50", [1.0], [2.0], higher_is_better=False, min_effect=0.03)
    assert v.status == "inconclusive" and v.mdr == math.inf and "no stored spread" in v.method
    assert v.change == pytest.approx(1.0)
    assert "inf" in v.describe()
    v2 = compare_rounds("ttft_p50", [1.0], [2.0], higher_is_better=False, min_effect=0.03, spread=0.02)
    assert v2.status == "inconclusive" and v2.mdr == math.inf  # spread of unknown df: not trusted


def test_log_spread() -> None:
    assert log_spread([]) == 0.0 and log_spread([3.0]) == 0.0
    x = [1.0, 2.0, 4.0]
    assert log_spread(x) == pytest.approx(np.std(np.log(x), ddof=1))


BAD = [[1.0, 0.0, 1.0], [1.0, -2.0], [1.0, float("nan")], [1.0, float("inf")], []]


@pytest.mark.parametrize("bad", BAD)
def test_bad_input_rounds(bad: list[float]) -> None:
    good = [1.0, 1.1, 0.9]
    with pytest.raises(ValueError, match="ttft_p99"):
        compare_rounds("ttft_p99", bad, good, higher_is_better=False, min_effect=0.03)
    with pytest.raises(ValueError, match="ttft_p99"):
        compare_rounds("ttft_p99", good, bad, higher_is_better=False, min_effect=0.03)


@pytest.mark.parametrize("bad", BAD)
def test_bad_input_samples(bad: list[float]) -> None:
    good = [[1.0, 1.1, 0.9]] * 2
    with pytest.raises(ValueError, match="tpot_p99"):
        compare_samples("tpot_p99", [[1.0, 1.2], bad], good, quantile=0.99, higher_is_better=False, min_effect=0.03)
    with pytest.raises(ValueError, match="tpot_p99"):
        compare_samples("tpot_p99", good, [bad], quantile=0.99, higher_is_better=False, min_effect=0.03)


def test_bad_input_misc() -> None:
    with pytest.raises(ValueError, match="tpot_p99"):
        compare_samples("tpot_p99", [], [[1.0]], quantile=0.99, higher_is_better=False, min_effect=0.03)
    with pytest.raises(ValueError, match="log_spread"):
        log_spread([1.0, 0.0])
    with pytest.raises(ValueError, match="thr"):
        compare_rounds("thr", [1.0], [1.0], higher_is_better=True, min_effect=0.03, alpha=0.7)


# --------------------------------------------------------------- compare_samples

def req_rounds(rng: np.random.Generator, r: int, n: int, scale: float = 1.0, dist: str = "lognormal",
               round_sigma: float = 0.0) -> list[np.ndarray]:
    out = []
    for _ in range(r):
        x = rng.lognormal(0.0, 0.3, n) if dist == "lognormal" else rng.exponential(1.0, n)
        out.append(scale * math.exp(rng.normal(0.0, round_sigma)) * x if round_sigma else scale * x)
    return out


@pytest.mark.parametrize("dist,n", [("lognormal", 400), ("exponential", 1000)])
def test_samples_detect_p99_shift_pooled(dist: str, n: int) -> None:
    rng = np.random.default_rng(10)
    b = req_rounds(rng, 5, n, dist=dist)
    c = req_rounds(rng, 5, n, 1.2, dist=dist)
    v = compare_samples("ttft_p99", b, c, quantile=0.99, higher_is_better=False, min_effect=0.05)
    assert v.status == "regressed" and v.method.startswith("pooled bootstrap")
    assert v.ci_low <= 0.2 <= v.ci_high and (v.n_baseline, v.n_current) == (5 * n, 5 * n)
    assert v.baseline == pytest.approx(np.quantile(np.concatenate(b), 0.99))
    assert "requests" in v.describe()


def test_samples_heterogeneous_rounds_fall_back() -> None:
    fell_back = 0
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        b = req_rounds(rng, 5, 200, round_sigma=0.3)
        c = req_rounds(rng, 5, 200, round_sigma=0.3)
        v = compare_samples("ttft_p99", b, c, quantile=0.99, higher_is_better=False, min_effect=0.05, n_boot=500)
        if "not exchangeable" in v.method:
            fell_back += 1
            assert "welch-t on log per-round p99" in v.method and v.n_baseline == 5
    assert fell_back >= 9


def test_samples_aa_false_alarm_rate() -> None:
    st, pooled = [], 0
    for seed in range(300):
        rng = np.random.default_rng(5000 + seed)
        b, c = req_rounds(rng, 5, 100), req_rounds(rng, 5, 100)
        v = compare_samples("ttft_p99", b, c, quantile=0.99, higher_is_better=False, min_effect=0.0,
                            n_boot=1000, seed=seed)
        st.append(v.status)
        pooled += v.method.startswith("pooled")
    r = rates(st)
    assert r["regressed"] <= 0.10 and r["improved"] <= 0.10
    assert pooled >= 0.8 * 300  # homogeneity test rejects ~alpha per side


def test_samples_single_round_and_determinism() -> None:
    rng = np.random.default_rng(11)
    b, c = req_rounds(rng, 1, 500), req_rounds(rng, 1, 500, 1.3)
    v1 = compare_samples("e2el_p50", b, c, quantile=0.5, higher_is_better=False, min_effect=0.03, seed=3)
    v2 = compare_samples("e2el_p50", b, c, quantile=0.5, higher_is_better=False, min_effect=0.03, seed=3)
    assert v1 == v2 and v1.status == "regressed"
    assert "single round: requests assumed independent" in v1.method
    v3 = compare_samples("e2el_p50", req_rounds(rng, 3, 200), c, quantile=0.5, higher_is_better=False,
                         min_effect=0.03)
    assert "single round" in v3.method and v3.n_baseline == 3 and v3.n_current == 1


# ---------------------------------------------------------------------- Verdict

def test_verdict_helpers_and_table() -> None:
    rng = np.random.default_rng(12)
    b = lognormal_rounds(rng, 5, 0.02, 100.0)
    vs = [
        compare_rounds("throughput", b, b * 0.8, higher_is_better=True, min_effect=0.03),
        compare_rounds("ttft_p50", b, b * 0.8, higher_is_better=False, min_effect=0.03),
        compare_rounds("tpot_p50", b, b, higher_is_better=False, min_effect=0.03),
        compare_rounds("ttft_p99", [1.0], [1.5], higher_is_better=False, min_effect=0.03),
    ]
    assert [v.status for v in vs] == ["regressed", "improved", "unchanged", "inconclusive"]
    assert [v.failed() for v in vs] == [True, False, False, False]
    for v in vs:
        d = v.to_dict()
        assert Verdict(**d) == v and set(d) >= {"metric", "status", "change", "ci_low", "mdr", "method"}
    table = verdict_table(vs)
    for v in vs:
        assert v.metric in table and v.status in table
    lines = table.splitlines()
    assert len(lines) == 2 + len(vs) and lines[0].startswith("metric")
    assert re.fullmatch(
        r"throughput: regressed -\d+\.\d% \[-\d+\.\d%, -\d+\.\d%\], MDR \d+\.\d% "
        r"\(welch-t on log rounds, 5 vs 5 rounds\)", vs[0].describe())


# ---- the gate's verdicts over rounds (servingbench.suite.gate) ------------------------------------------------------

def _gate_rounds(seed: int, n: int, ttft_scale: float = 1.0, tput_scale: float = 1.0) -> list:
    import numpy as np

    from servingbench.suite.rounds import GATED, Round

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ttft = list(rng.lognormal(np.log(100.0 * ttft_scale), 0.1, 200))
        tpot = list(rng.lognormal(np.log(20.0), 0.02, 200))
        figures = {g.name: 0.0 for g in GATED}
        figures.update(output_throughput=float(1000.0 * tput_scale * rng.lognormal(0, 0.01)),
                       median_ttft_ms=float(np.median(ttft)), p99_ttft_ms=float(np.quantile(ttft, 0.99)),
                       median_tpot_ms=float(np.median(tpot)), p99_tpot_ms=float(np.quantile(tpot, 0.99)),
                       median_itl_ms=float(np.median(tpot)), median_e2el_ms=float(np.median(tpot) * 50 + 100),
                       p99_e2el_ms=float(np.quantile(tpot, 0.99) * 50 + 100))
        out.append(Round("vllm", 0, i, f"r{i}", figures, {"ttft": ttft, "tpot": tpot, "itl": tpot,
                                                          "e2el": [t * 50 + 100 for t in tpot]}))
    return out


def test_gate_finds_nothing_in_an_unchanged_run_and_the_planted_regressions_in_a_changed_one() -> None:
    from servingbench.suite.gate import verdicts

    same = verdicts(_gate_rounds(1, 3), _gate_rounds(2, 3))
    assert not [v for v in same if v.failed()], [v.describe() for v in same]
    worse = {v.metric: v for v in verdicts(_gate_rounds(1, 3), _gate_rounds(3, 3, ttft_scale=1.3, tput_scale=0.9))}
    assert worse["output_throughput"].status == "regressed" and worse["median_ttft_ms"].status == "regressed"
    assert worse["median_tpot_ms"].status != "regressed"  # not shifted
    assert worse["output_throughput"].change == pytest.approx(-0.10, abs=0.02)

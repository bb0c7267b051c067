"""Fidelity's paired comparison (review item 4): noise widens the interval, never the margin.

Synthetic interleaved runs: pair i shares the machine's state at its time (a common factor, 15% log-std here),
so a constant bias of one client shows in the per-pair ratios however noisy the runs are; noise that does not
hit both runs of a pair alike leaves the verdict inconclusive, which does not pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from servingbench.studies import fidelity as fd

PAIRS = 8  # more than the perf check's 4 pairs, so the synthetic verdicts are not luck


def correlated_runs(bias: float, shared: float = 0.15, own: float = 0.005, seed: int = 1,
                    n: int = PAIRS) -> tuple[list[float], list[float]]:
    """Pairs whose runs share a lognormal factor of log-std ``shared`` (the machine's drift) and have only
    ``own`` of their own; ours is ``1 + bias`` times vLLM's."""
    rng = np.random.default_rng(seed)
    machine = 100.0 * np.exp(rng.normal(0.0, shared, n))
    theirs = machine * np.exp(rng.normal(0.0, own, n))
    ours = machine * (1 + bias) * np.exp(rng.normal(0.0, own, n))
    return list(ours), list(theirs)


def runs(values: list[float]) -> list[dict[str, float]]:
    return [{k: v for k, _ in fd.FIGURES} for v in values]


def test_a_12pct_bias_under_15pct_correlated_noise_fails() -> None:
    ours, theirs = correlated_runs(0.12)
    assert fd.relative_range(theirs) > 0.12  # the runs' own range exceeds the bias: a range-widened tolerance passes it
    p = fd.paired(ours, theirs)
    assert p.verdict == "differs", p.describe()
    assert p.ratio - 1 == pytest.approx(0.12, abs=0.01) and p.ci[0] > fd.TARGET
    rows = fd.compare(runs(ours), runs(theirs), notes={"output_throughput": "a note"})
    assert not any(r.agrees for r in rows) and {r.verdict for r in rows} == {"differs"}
    assert rows[0].note == "a note" and rows[0].margin == fd.TARGET  # the margin stays 5% whatever the noise


def test_no_bias_under_the_same_noise_passes() -> None:
    ours, theirs = correlated_runs(0.0)
    p = fd.paired(ours, theirs)
    assert p.verdict == "agrees", p.describe()
    assert -fd.TARGET < p.ci[0] and p.ci[1] < fd.TARGET
    rows = fd.compare(runs(ours), runs(theirs))
    assert all(r.agrees for r in rows) and all(r.note == "" for r in rows)
    assert "agrees" in fd.format_table(rows)


def test_unrelated_huge_noise_is_inconclusive_and_does_not_pass() -> None:
    rng = np.random.default_rng(7)
    ours, theirs = list(100 * np.exp(rng.normal(0, 0.4, PAIRS))), list(100 * np.exp(rng.normal(0, 0.4, PAIRS)))
    p = fd.paired(ours, theirs)
    assert p.verdict == "inconclusive", p.describe()
    row = fd.compare(runs(ours), runs(theirs))[0]
    assert row.verdict == "inconclusive" and not row.agrees  # never a silent pass
    assert "INCONCLUSIVE" in fd.format_table([row])
    assert fd.FigureRow(**{k: v for k, v in row.to_dict().items() if k not in ("diff", "agrees")}) == row


def test_pairing_rules() -> None:
    assert fd.paired([100.0], [100.0]).verdict == "inconclusive"  # one pair: no interval
    assert fd.paired([100.0, 100.0], [100.0, 100.0]).verdict == "agrees"  # identical: a zero-width interval at 0
    assert fd.paired([110.0, 110.0], [100.0, 100.0]).verdict == "differs"
    with pytest.raises(fd.FidelityError, match="as many runs"):
        fd.paired([1.0, 2.0], [1.0])
    with pytest.raises(fd.FidelityError, match="finite and > 0"):
        fd.paired([1.0, 0.0], [1.0, 1.0])
    # the interval is the t interval of the mean log ratio, two-sided 1 - 2 alpha
    d = np.log([1.02, 0.99, 1.03, 1.00])
    p = fd.paired([102.0, 99.0, 103.0, 100.0], [100.0] * 4)
    half = 2.3533634 * d.std(ddof=1) / 2  # t(0.95, df=3)
    assert p.ci_log == pytest.approx((d.mean() - half, d.mean() + half))
    assert p.mean_log_ratio == pytest.approx(d.mean()) and math.isclose(p.ratio, math.exp(d.mean()))


def test_one_sided_not_above() -> None:
    cheaper, theirs = correlated_runs(-0.3, seed=3)
    assert fd.paired(cheaper, theirs).not_above == "yes"
    dearer, theirs = correlated_runs(0.2, seed=3)
    assert fd.paired(dearer, theirs).not_above == "no"
    assert fd.paired([100.0, 150.0, 70.0], [100.0, 80.0, 120.0]).not_above == "inconclusive"

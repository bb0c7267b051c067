"""The gate's noise model: a server lifetime is the unit, rounds are repeated measures inside it.

Why: a server restart moves every figure (measured on the 2-core CPU machine, std of log: throughput 0.029
between lifetimes against 0.045 between rounds of one lifetime; TPOT p50 0.035 / 0.047; E2EL p99 0.053 / 0.064).
Treating the rounds of one lifetime as independent gave the old gate 10-21% A/A false alarms on throughput alone
(issue #29), and 5-99% a run over all metrics (README, "Power and false alarms").

Model, per metric and config, on logs: ``y[l, r] = mu + a_l + e_lr``, ``a_l ~ N(0, sL^2)`` (lifetime),
``e_lr ~ N(0, sr^2)`` (round; for a quantile metric the round's quantile, so request sampling is in sr). A side's
statistic is the mean over its lifetimes of the lifetime means; a lifetime mean of R rounds has variance
``tau^2(R) = sL^2 + sr^2 / R``.

Estimation (one-way random effects, method of moments, unbalanced rounds allowed). Over groups g (each side of a
comparison, and any stored data pooled in), with lifetime means z_l centred on their group's mean:

* ``SSZ = sum (z_l - zbar_g)^2`` on ``DZ = sum (L_g - 1)`` degrees of freedom; ``E[SSZ] = DZ sL^2 + C sr^2`` with
  ``C = sum_g (L_g - 1) / L_g * sum_l 1/R_l``. So ``SSZ / DZ`` estimates ``tau^2`` at ``R_ref = DZ / C`` rounds.
* ``MSW = SSW / DW``, the pooled within-lifetime variance, on ``DW = sum (R_l - 1)``, estimates ``sr^2``.

Variance of the difference of two sides' statistics, L_b and L_c lifetimes, ``h = sum_l 1/R_l`` per side:
``V = A sL^2 + B sr^2`` with ``A = 1/L_b + 1/L_c``, ``B = h_b/L_b^2 + h_c/L_c^2``; estimated as
``V = A * SSZ/DZ + max(0, B - A/R_ref) * MSW`` on ``DZ`` degrees of freedom. With the same R everywhere the MSW
term vanishes and this is the exact pooled two-sample t-test on lifetime means: degrees of freedom come from
lifetimes. Where a side's lifetimes have fewer rounds than R_ref the MSW term adds their extra round noise; where
more, it is left out, overstating V a little. Satterthwaite's degrees of freedom (more than DZ) were tried: at the
gate's per-test level (0.05 / 18) simulated false alarms of unbalanced designs rose to 1.5-2.4x alpha (e.g. 6 x 3
against 1 x 6 rounds with the CPU's spreads), and with DZ they stay at or under alpha.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import special

#: Points of the chi-square grid over which detection probabilities are averaged (the variance is estimated).
_GRID = 128


@dataclass(frozen=True)
class Side:
    """One side's log figures of one metric, reduced to what the model needs: per lifetime its mean and round
    count, and the within-lifetime sum of squares (invalid rounds already left out)."""

    means: tuple[float, ...]
    rounds: tuple[int, ...]
    ssw: float = 0.0
    dropped: int = 0  # rounds left out: invalid (no figure) or not finite and > 0

    @property
    def n_lifetimes(self) -> int:
        return len(self.means)

    @property
    def mean(self) -> float:
        """Mean over lifetimes of the lifetime means: every lifetime weighs the same, as each is one draw of a_l."""
        return sum(self.means) / len(self.means) if self.means else math.nan

    @property
    def h(self) -> float:
        return float(sum(1.0 / r for r in self.rounds))


def side(values_by_lifetime: Sequence[Sequence[float]]) -> Side:
    """A ``Side`` from raw figures per lifetime; NaN, inf and values <= 0 (an invalid round's figure) are left out,
    and a lifetime with no valid round with them, counted in ``dropped``."""
    if isinstance(values_by_lifetime, np.ndarray) and values_by_lifetime.ndim == 2 and values_by_lifetime.size:
        arr = values_by_lifetime.astype(float, copy=False)
        if (np.isfinite(arr) & (arr > 0)).all():  # the common case, and the simulations': one vectorised pass
            logs = np.log(arr)
            means = logs.mean(axis=1)
            return Side(tuple(means.tolist()), (arr.shape[1],) * arr.shape[0],
                        float(((logs - means[:, None]) ** 2).sum()))
    means, rounds, ssw, dropped = [], [], 0.0, 0
    for values in values_by_lifetime:
        arr = np.asarray(list(values), dtype=float)
        ok = np.isfinite(arr) & (arr > 0)
        dropped += int((~ok).sum())
        if ok.any():
            logs = np.log(arr[ok])
            means.append(float(logs.mean()))
            rounds.append(int(logs.size))
            ssw += float(((logs - logs.mean()) ** 2).sum())
    return Side(tuple(means), tuple(rounds), ssw, dropped)


@dataclass(frozen=True)
class Noise:
    """Sufficient sums of the random-effects model; adding two pools their information."""

    ssz: float = 0.0
    dz: float = 0.0
    c: float = 0.0
    ssw: float = 0.0
    dw: float = 0.0
    lifetimes: int = 0
    rounds: int = 0

    @classmethod
    def of(cls, *sides: Side) -> "Noise":
        """Pooled over ``sides``, each centred on its own mean (a shift between sides is not noise)."""
        sums = [0.0] * 5
        lifetimes = rounds = 0
        for s in sides:
            L = s.n_lifetimes
            if L == 0:
                continue
            centre = s.mean
            sums[0] += sum((m - centre) ** 2 for m in s.means)
            sums[1] += L - 1.0
            sums[2] += (L - 1.0) / L * s.h
            sums[3] += s.ssw
            sums[4] += sum(s.rounds) - L
            lifetimes, rounds = lifetimes + L, rounds + sum(s.rounds)
        return cls(*sums, lifetimes=lifetimes, rounds=rounds)

    def __add__(self, other: "Noise") -> "Noise":
        return Noise(self.ssz + other.ssz, self.dz + other.dz, self.c + other.c, self.ssw + other.ssw,
                     self.dw + other.dw, self.lifetimes + other.lifetimes, self.rounds + other.rounds)

    @property
    def r_ref(self) -> float:
        """Rounds per lifetime at which ``tau2`` holds (a harmonic-type mean of the lifetimes' round counts)."""
        return self.dz / self.c if self.c > 0 else math.nan

    @property
    def tau2(self) -> float:
        """Variance of one lifetime's mean of ``r_ref`` rounds; NaN without two lifetimes in a group."""
        return self.ssz / self.dz if self.dz > 0 else math.nan

    @property
    def sr2(self) -> float:
        return self.ssw / self.dw if self.dw > 0 else math.nan

    @property
    def sl2(self) -> float:
        if not (self.dz > 0 and self.dw > 0):
            return math.nan
        return max(0.0, self.tau2 - self.sr2 / self.r_ref)

    @property
    def sl(self) -> float:
        return math.sqrt(self.sl2) if math.isfinite(self.sl2) else math.nan

    @property
    def sr(self) -> float:
        return math.sqrt(self.sr2) if math.isfinite(self.sr2) else math.nan

    def lifetime_share(self, rounds: float) -> float:
        """How much the lifetime term weighs in the variance of a lifetime mean of ``rounds`` rounds."""
        t = self.sl2 + self.sr2 / rounds
        return self.sl2 / t if t > 0 else math.nan

    def variance(self, baseline_rounds: Sequence[int], current_rounds: Sequence[int]) -> tuple[float, float]:
        """(V, df) of the difference of two sides' statistics with these rounds per lifetime; (inf, 0) when the
        pool holds no two lifetimes of one group (nothing separates a build from a restart)."""
        Lb, Lc = len(baseline_rounds), len(current_rounds)
        if self.dz <= 0 or Lb == 0 or Lc == 0:
            return math.inf, 0.0
        A = 1.0 / Lb + 1.0 / Lc
        B = sum(1.0 / r for r in baseline_rounds) / Lb ** 2 + sum(1.0 / r for r in current_rounds) / Lc ** 2
        a2 = B - A / self.r_ref
        extra = a2 * self.sr2 if a2 > 1e-12 and self.dw > 0 else 0.0  # see the module's docstring
        return A * self.tau2 + extra, self.dz

    def to_dict(self) -> dict[str, float]:
        """What a rounds file stores per config and metric: the estimates, and the sums that pool them."""
        f = lambda x: None if not math.isfinite(x) else float(x)  # noqa: E731
        return {"sL": f(self.sl), "sr": f(self.sr), "df_lifetimes": self.dz, "df_rounds": self.dw,
                "lifetimes": self.lifetimes, "rounds": self.rounds, "ssz": self.ssz, "dz": self.dz, "c": self.c,
                "ssw": self.ssw, "dw": self.dw}


def t_quantile(p: float, df: float) -> float:
    return float(special.ndtri(p)) if math.isinf(df) else float(special.stdtrit(df, p))


@functools.lru_cache(maxsize=512)
def _se_ratios(df: float) -> np.ndarray:
    """Quantile grid of SE_hat / SE = sqrt(chi2_df / df): what the estimated SE does around the true one."""
    if math.isinf(df):
        return np.ones(1)
    u = (np.arange(_GRID) + 0.5) / _GRID
    return np.sqrt(2.0 * special.gammaincinv(df / 2.0, u) / df)


def detection(delta: float, se: float, df: float, alpha: float, threshold: float) -> float:
    """P(the gate says regressed) for a true worse-direction log shift ``delta``: the one-sided t-test at
    ``alpha`` passes AND the point estimate is at least ``threshold`` (the min effect, in log). The SE is estimated
    with ``df`` degrees of freedom, so the test's cut is averaged over its chi-square distribution."""
    if not (se > 0 and df > 0 and math.isfinite(se)):
        return 0.0
    return float(special.ndtr((delta - _cuts(se, df, alpha, threshold)) / se).mean())


def _cuts(se: float, df: float, alpha: float, threshold: float) -> np.ndarray:
    return np.maximum(t_quantile(1 - alpha, df) * se * _se_ratios(round(df, 6)), threshold)


def mdr_log(se: float, df: float, alpha: float, power: float, threshold: float) -> float:
    """Smallest worse-direction log shift detected with probability ``power`` by the decision rule (the test and
    the min effect together, not the test alone: at the min effect itself detection is only about 50%)."""
    if se == 0 and df > 0:
        return threshold  # no noise: any shift at the min effect is caught
    if not (se > 0 and df > 0 and math.isfinite(se)):
        return math.inf
    cuts = _cuts(se, df, alpha, threshold) / se
    # Safeguarded Newton on P(d) - power in units of se: P is a mean of normal CDFs, increasing, its slope the mean
    # of their densities; a step that leaves the bracket [lo, hi] bisects instead.
    lo, hi = float(cuts.min()) - 10.0, float(cuts.max()) + 10.0
    d = float(np.median(cuts)) + float(special.ndtri(power))
    for _ in range(100):
        z = d - cuts
        f = float(special.ndtr(z).mean()) - power
        if f > 0:
            hi = d
        else:
            lo = d
        slope = float(np.exp(-0.5 * z * z).mean()) / math.sqrt(2 * math.pi)
        step = f / slope if slope > 0 else math.inf
        nxt = d - step
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - d) < 1e-10 or hi - lo < 1e-10:
            d = nxt
            break
        d = nxt
    return d * se


def log_threshold(min_effect: float, higher_is_better: bool) -> float:
    """The min effect as a worse-direction log shift: 1 - cur/base >= m (throughput), cur/base - 1 >= m."""
    return -math.log1p(-min_effect) if higher_is_better else math.log1p(min_effect)


def regression_fraction(log_d: float, higher_is_better: bool) -> float:
    """A worse-direction log shift as the fraction a user reads: 1 - cur/base (throughput), cur/base - 1."""
    if math.isinf(log_d):
        return math.inf
    return -math.expm1(-log_d) if higher_is_better else math.expm1(log_d)


def expected_noise(sl: float, sr: float, groups: Sequence[Sequence[int]]) -> Noise:
    """The sums a design's data would give on average if the noise were (sL, sr): each group a list of rounds
    per lifetime (E[SSZ] = DZ sL^2 + C sr^2, E[SSW] = DW sr^2)."""
    total = Noise()
    for rounds in groups:
        L = len(rounds)
        if L == 0:
            continue
        dz, c, dw = L - 1.0, (L - 1.0) / L * sum(1.0 / r for r in rounds), float(sum(rounds) - L)
        total = total + Noise(dz * sl ** 2 + c * sr ** 2, dz, c, dw * sr ** 2, dw, L, sum(rounds))
    return total


def design_mdr(sl: float, sr: float, *, baseline_rounds: Sequence[int], current_rounds: Sequence[int],
               stored_rounds: Sequence[int] = (), alpha: float, power: float, min_effect: float,
               higher_is_better: bool) -> float:
    """MDR (a fraction) a design would have if the noise were known to be (sL, sr): the planning version of what
    the gate prints, through the gate's own variance rule. ``stored_rounds``: lifetimes of stored data pooled into
    the noise only (an A/B's)."""
    noise = expected_noise(sl, sr, [baseline_rounds, current_rounds, stored_rounds])
    v, df = noise.variance(baseline_rounds, current_rounds)
    m = mdr_log(math.sqrt(v), df, alpha, power, log_threshold(min_effect, higher_is_better))
    return regression_fraction(m, higher_is_better)


@dataclass(frozen=True)
class Plan:
    """What a design takes: lifetimes a side (and of the stored baseline), rounds per lifetime, minutes."""

    lifetimes: int
    rounds: int
    baseline_lifetimes: int  # stored-baseline mode: the calibration it needs; A/B: = lifetimes
    load_minutes: float  # of load, a side
    minutes: float  # load and restarts, the whole run (both sides in A/B)
    mdr: float
    met: bool

    def describe(self) -> str:
        how = (f"{self.lifetimes} lifetime(s) x {self.rounds} rounds a side "
               f"({self.load_minutes:.1f} min of load a side, {self.minutes:.1f} min with restarts)")
        return (f"{'needs' if self.met else 'best within limits'}: {how}"
                + (f", against a baseline of {self.baseline_lifetimes} lifetimes" if self.baseline_lifetimes else "")
                + f": MDR {self.mdr:.1%}")


def plan(sl: float, sr: float, *, target: float, alpha: float, power: float, min_effect: float,
         higher_is_better: bool, round_minutes: float, restart_minutes: float, ab: bool,
         baseline_lifetimes: int = 0, baseline_rounds: int = 3, stored_lifetimes: int = 0, stored_rounds: int = 3,
         max_load_minutes: float = math.inf, max_lifetimes: int = 12, max_rounds: int = 12) -> Plan:
    """The cheapest design whose MDR is at most ``target`` within ``max_load_minutes`` of load a side.

    Stored-baseline mode (``ab`` False): the baseline's lifetimes are searched from ``baseline_lifetimes`` up (more
    means recalibrating); A/B mode: both sides get the same lifetimes (ABBA), and ``stored_lifetimes`` x
    ``stored_rounds`` of stored data are pooled into the noise.
    If nothing meets the target, the design of least MDR within the limits, with ``met`` False."""
    best: Plan | None = None
    b_range = [0] if ab else range(max(2, baseline_lifetimes), max_lifetimes + 1)
    for lb in b_range:
        for lc in range(1, max_lifetimes + 1):
            for r in range(2, max_rounds + 1):
                load = lc * r * round_minutes
                if load > max_load_minutes:
                    break
                bl = [r] * lc if ab else [baseline_rounds] * lb
                m = design_mdr(sl, sr, baseline_rounds=bl, current_rounds=[r] * lc,
                               stored_rounds=[stored_rounds] * stored_lifetimes, alpha=alpha,
                               power=power, min_effect=min_effect, higher_is_better=higher_is_better)
                total = (2 if ab else 1) * (load + lc * restart_minutes)
                p = Plan(lc, r, lb, load, total, m, m <= target)
                if best is None or _better(p, best):
                    best = p
        if best is not None and best.met:
            break  # the fewest baseline lifetimes that can meet it
    assert best is not None
    return best


def _better(p: Plan, q: Plan) -> bool:
    if p.met != q.met:
        return p.met
    return (p.minutes, p.mdr) < (q.minutes, q.mdr) if p.met else p.mdr < q.mdr

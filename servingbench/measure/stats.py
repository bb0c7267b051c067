"""Per-metric statistical verdicts for servingbench regression gates.

Why: run-to-run spread differs by ~100x between metrics (throughput ~1%,
TTFT p99 ~50%), so one fixed tolerance either misses real throughput
regressions or fails on TTFT noise. Each metric gets its own test, sized
by its own measured spread.

Everything works on log values: serving metrics are positive and their
noise is multiplicative, and a log-ratio is symmetric (x2 and /2 are
equally far from 1). ``change = exp(mean log cur - mean log base) - 1``.

Decision rule. Let d be the log-ratio turned so that d > 0 means "worse"
(higher is worse unless ``higher_is_better``), with a two-sided (1-2*alpha)
CI, i.e. each bound is a one-sided (1-alpha) bound:

* regressed:    lower bound of d > 0 (one-sided test at alpha) AND the point
                regression >= min_effect (tiny significant shifts never fail);
* improved:     the mirror image in the better direction;
* unchanged:    the whole CI of ``change`` lies in (-min_effect, +min_effect)
                (equivalence test, TOST at alpha);
* inconclusive: anything else (too noisy or too few rounds to tell).

The false-alarm rate per metric is therefore at most alpha (one-sided);
min_effect only lowers it further. "Regression of r" means current is worse
by fraction r: ``cur/base - 1`` for latencies, ``1 - cur/base`` for
throughput; MDR is in the same unit. Note that at exactly min_effect the
detection probability is ~50% (the point estimate must clear it), so the
reported MDR = max(statistical MDR, min_effect) is optimistic at that floor.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, Sequence

import numpy as np
from scipy import special, stats

Status = Literal["regressed", "improved", "unchanged", "inconclusive"]

#: Level of the round-homogeneity (exchangeability) test in compare_samples.
HOMOGENEITY_ALPHA = 0.05
#: Bootstrap replicates for the within-round variance (a variance needs far
#: fewer replicates than a tail percentile, and this runs once per round).
_HOMOGENEITY_REPS = 500
#: Max elements of one resampled (reps, n) matrix, to bound memory.
_CHUNK_ELEMS = 2_000_000


@dataclass(frozen=True)
class Verdict:
    """Outcome of one metric's comparison; plain floats/ints so it serialises."""

    metric: str
    status: Status
    change: float
    ci_low: float
    ci_high: float
    mdr: float
    baseline: float
    current: float
    n_baseline: int
    n_current: int
    higher_is_better: bool
    method: str

    def failed(self) -> bool:
        """Only a significant, material regression fails a gate."""
        return self.status == "regressed"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def _unit(self) -> str:
        # Bootstrap methods count requests; t-test methods count rounds.
        return "requests" if "bootstrap" in self.method else "rounds"

    def describe(self) -> str:
        return (f"{self.metric}: {self.status} {_pct(self.change)} "
                f"[{_pct(self.ci_low)}, {_pct(self.ci_high)}], MDR {_pct(self.mdr, signed=False)} "
                f"({self.method}, {self.n_baseline} vs {self.n_current} {self._unit})")


def _pct(x: float, signed: bool = True) -> str:
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def _check_params(metric: str, min_effect: float, alpha: float, power: float) -> None:
    if not (0.0 < alpha < 0.5):
        raise ValueError(f"{metric}: alpha must be in (0, 0.5), got {alpha}")
    if not (0.0 < power < 1.0):
        raise ValueError(f"{metric}: power must be in (0, 1), got {power}")
    if not (math.isfinite(min_effect) and min_effect >= 0.0):
        raise ValueError(f"{metric}: min_effect must be finite and >= 0, got {min_effect}")


def _positive(metric: str, what: str, values: Sequence[float]) -> np.ndarray:
    """Validate one list of figures; log space needs finite values > 0."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{metric}: {what} is not a list of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{metric}: {what} must be a flat list of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{metric}: {what} is empty")
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{metric}: {what} values must be finite and > 0; got {arr[i]!r} at index {i}")
    return arr


def _rounds(metric: str, side: str, rounds: Sequence[Sequence[float]]) -> list[np.ndarray]:
    if len(rounds) == 0:
        raise ValueError(f"{metric}: {side} has no rounds")
    return [_positive(metric, f"{side} round {i}", r) for i, r in enumerate(rounds)]


def log_spread(values: Sequence[float]) -> float:
    """Sample std (ddof=1) of log(values): the per-metric noise a baseline stores."""
    if len(values) < 2:
        if len(values) == 1:
            _positive("log_spread", "values", values)
        return 0.0
    return float(np.std(np.log(_positive("log_spread", "values", values)), ddof=1))


def _tq(p: float, df: float) -> float:
    """Student-t quantile; df=inf means normal (bootstrap SEs)."""
    return float(special.ndtri(p)) if math.isinf(df) else float(special.stdtrit(df, p))


def _regression_fraction(log_d: float, higher_is_better: bool) -> float:
    """A worse-direction log-ratio as a positive fraction of 'worse'."""
    return (1.0 - math.exp(-log_d)) if higher_is_better else math.expm1(log_d)


def _verdict(metric: str, diff: float, ci_log: tuple[float, float], se: float, df: float,
             base: float, cur: float, nb: int, nc: int, higher_is_better: bool,
             min_effect: float, alpha: float, power: float, method: str) -> Verdict:
    """Apply the module's decision rule to a log-ratio estimate and its CI."""
    change = math.expm1(diff)
    lo, hi = math.expm1(ci_log[0]), math.expm1(ci_log[1])
    sign = -1.0 if higher_is_better else 1.0  # sign * change > 0 means worse
    worse_significant = (ci_log[0] > 0) if not higher_is_better else (ci_log[1] < 0)
    better_significant = (ci_log[1] < 0) if not higher_is_better else (ci_log[0] > 0)
    status: Status
    if worse_significant and sign * change >= min_effect:
        status = "regressed"
    elif better_significant and -sign * change >= min_effect:
        status = "improved"
    elif -min_effect < lo and hi < min_effect:
        status = "unchanged"
    else:
        status = "inconclusive"
    if df > 0 and math.isfinite(se):
        m = (_tq(1 - alpha, df) + _tq(power, df)) * se
        mdr = max(_regression_fraction(m, higher_is_better), min_effect)
    else:
        mdr = math.inf
    return Verdict(metric=metric, status=status, change=float(change), ci_low=float(lo),
                   ci_high=float(hi), mdr=float(mdr), baseline=float(base), current=float(cur),
                   n_baseline=int(nb), n_current=int(nc),
                   higher_is_better=bool(higher_is_better), method=method)


def compare_rounds(metric: str, baseline: Sequence[float], current: Sequence[float], *,
                   higher_is_better: bool, min_effect: float, alpha: float = 0.05,
                   power: float = 0.8, spread: float | None = None) -> Verdict:
    """Compare per-round figures with a Welch t-test on their logs.

    Rounds are the independent units: requests within a round share server
    state (warm-up, batching, thermal), so round figures carry the honest
    run-to-run noise. With >= 2 rounds per side each side's own spread is
    used and `spread` is ignored (the measured spread is current; a stored
    one can be stale). With a single round on a side, the noise comes from
    `spread` if given, else from the other side's rounds, used for both
    sides with df = (rounds of the side it came from) - 1; for the usual
    case (current has 1 round) that is n_baseline - 1. With 1 vs 1 round
    the noise is unknown (no spread) or of unknown reliability (a spread
    with df = 0; using it as exact would break alpha): inconclusive, MDR inf.
    """
    _check_params(metric, min_effect, alpha, power)
    if spread is not None and not (math.isfinite(spread) and spread >= 0):
        raise ValueError(f"{metric}: spread must be finite and >= 0, got {spread}")
    xb = np.log(_positive(metric, "baseline", baseline))
    xc = np.log(_positive(metric, "current", current))
    nb, nc = xb.size, xc.size
    diff = float(xc.mean() - xb.mean())
    base, cur = math.exp(xb.mean()), math.exp(xc.mean())
    if nb >= 2 and nc >= 2:
        vb, vc = xb.var(ddof=1) / nb, xc.var(ddof=1) / nc
        se2 = vb + vc
        # Welch-Satterthwaite; with zero spread on both sides df is moot.
        df = se2 ** 2 / (vb ** 2 / (nb - 1) + vc ** 2 / (nc - 1)) if se2 > 0 else nb + nc - 2.0
        se, method = math.sqrt(se2), "welch-t on log rounds"
    else:
        if spread is not None:
            sd, df = spread, max(nb, nc) - 1.0
            method = "single round: stored spread from baseline" + (
                "" if df > 0 else ", but 1 vs 1 round leaves it no degrees of freedom")
        elif max(nb, nc) >= 2:
            side, name = (xb, "baseline") if nb >= 2 else (xc, "current")
            sd, df = float(side.std(ddof=1)), side.size - 1.0
            method = f"single round: spread from {name} rounds"
        else:
            sd, df = math.inf, 0.0
            method = "single round each and no stored spread: noise unknown"
        se = sd * math.sqrt(1.0 / nb + 1.0 / nc)
    if df > 0 and math.isfinite(se):
        h = _tq(1 - alpha, df) * se
        ci_log = (diff - h, diff + h)
    else:
        ci_log = (-math.inf, math.inf)
    return _verdict(metric, diff, ci_log, se, df, base, cur, nb, nc, higher_is_better,
                    min_effect, alpha, power, method)


def _boot_log_quantile(x: np.ndarray, q: float, rng: np.random.Generator, reps: int) -> np.ndarray:
    """log of the q-quantile (numpy 'linear') of `reps` resamples of x.

    Speed: x is sorted once; a resample is a row of random indices, and
    since indexing sorted x is monotone, sorting the (small-int) indices
    sorts the resampled values. Only the two order statistics around the
    quantile are then gathered. Chunked to bound memory.
    """
    xs = np.sort(x)
    n = xs.size
    h = (n - 1) * q
    k = int(math.floor(h))
    frac, k1 = h - k, min(k + 1, n - 1)
    dtype = np.int16 if n <= np.iinfo(np.int16).max else np.int64
    step = max(1, _CHUNK_ELEMS // n)
    out = np.empty(reps)
    for start in range(0, reps, step):
        b = min(step, reps - start)
        idx = rng.integers(0, n, size=(b, n), dtype=dtype)
        idx.sort(axis=1)
        lo = xs[idx[:, k]]
        out[start:start + b] = lo + frac * (xs[idx[:, k1]] - lo)
    return np.log(out)


def _homogeneity_p(rounds: list[np.ndarray], q: float, rng: np.random.Generator) -> float:
    """p-value that one side's rounds share one distribution (exchangeable).

    Cochran's Q: sum of w_r (y_r - ybar_w)^2 over rounds, y_r = log of the
    round's q-quantile, w_r = 1 / (within-round sampling variance of y_r).
    Under homogeneity Q ~ chi2(R-1); a larger Q means the rounds differ by
    more than request sampling explains (a between-round component). A
    single round's bootstrap variance of a tail quantile is very noisy, so
    it is pooled across rounds as c / n_r with c = mean_r(var_r * n_r).
    """
    y = np.log([np.quantile(r, q) for r in rounds])
    n = np.array([r.size for r in rounds], dtype=float)
    v = np.array([_boot_log_quantile(r, q, rng, _HOMOGENEITY_REPS).var(ddof=1) for r in rounds])
    c = float(np.mean(v * n))
    if c <= 0:  # no sampling noise at all: homogeneous only if identical
        return 1.0 if np.ptp(y) == 0 else 0.0
    w = n / c
    ybar = float(np.sum(w * y) / np.sum(w))
    chi2 = float(np.sum(w * (y - ybar) ** 2))
    return float(stats.chi2.sf(chi2, len(rounds) - 1))


def compare_samples(metric: str, baseline_rounds: Sequence[Sequence[float]],
                    current_rounds: Sequence[Sequence[float]], *, quantile: float,
                    higher_is_better: bool, min_effect: float, alpha: float = 0.05,
                    power: float = 0.8, n_boot: int = 2000, seed: int = 0) -> Verdict:
    """Compare a quantile of per-request samples (e.g. TTFT p99), grouped by round.

    Pooling all requests gives far more power for tail quantiles than R
    per-round figures, but is only valid when rounds are exchangeable. So
    each side (>= 2 rounds) is first tested for homogeneity at
    HOMOGENEITY_ALPHA (see _homogeneity_p). If both pass, requests are
    pooled per side and a seeded bootstrap (resampling requests within each
    side) gives a percentile CI of the log-ratio of pooled quantiles and its
    SE (MDR uses normal quantiles). Otherwise compare_rounds runs on the
    per-round quantiles. With 1 round per side there is no way to test and
    no rounds to fall back on, so the bootstrap is used and the method says
    requests are assumed independent. 1 vs >= 2 rounds falls back to rounds.
    """
    _check_params(metric, min_effect, alpha, power)
    if not (0.0 < quantile < 1.0):
        raise ValueError(f"{metric}: quantile must be in (0, 1), got {quantile}")
    if n_boot < 100:
        raise ValueError(f"{metric}: n_boot must be >= 100, got {n_boot}")
    rb = _rounds(metric, "baseline", baseline_rounds)
    rc = _rounds(metric, "current", current_rounds)
    rng = np.random.default_rng(seed)
    label = f"p{quantile * 100:g}"
    reason = ""
    if len(rb) == 1 and len(rc) == 1:
        method = f"single round: requests assumed independent (pooled bootstrap of {label})"
    elif len(rb) >= 2 and len(rc) >= 2:
        p = min(_homogeneity_p(rb, quantile, rng), _homogeneity_p(rc, quantile, rng))
        if p >= HOMOGENEITY_ALPHA:
            method = f"pooled bootstrap of {label}"
        else:
            reason = f"rounds not exchangeable (homogeneity p={p:.2g})"
    else:
        reason = "one side has a single round, not pooled"
    if reason:
        v = compare_rounds(metric, [np.quantile(r, quantile) for r in rb],
                           [np.quantile(r, quantile) for r in rc],
                           higher_is_better=higher_is_better, min_effect=min_effect,
                           alpha=alpha, power=power)
        core = v.method.replace("single round: ", "").replace("log rounds", f"log per-round {label}")
        if label not in core:
            core += f" (per-round {label})"
        return replace(v, method=f"{reason}: {core}")
    xb, xc = np.concatenate(rb), np.concatenate(rc)
    qb, qc = float(np.quantile(xb, quantile)), float(np.quantile(xc, quantile))
    diff = math.log(qc) - math.log(qb)
    boot = _boot_log_quantile(xc, quantile, rng, n_boot) - _boot_log_quantile(xb, quantile, rng, n_boot)
    se = float(boot.std(ddof=1))
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    pooled = _verdict(metric, diff, (float(lo), float(hi)), se, math.inf, qb, qc, xb.size, xc.size,
                      higher_is_better, min_effect, alpha, power, method)
    if len(rb) < 2 or len(rc) < 2 or pooled.status not in ("regressed", "improved"):
        return pooled
    # Requests of one round share its machine state, so a homogeneity test on few rounds can pass while the pooled
    # bootstrap is still over-confident (an A/A pair on the 2-core machine "regressed" that way). A shift is only
    # called when the per-round quantiles show it too; "unchanged" may rest on the pooled interval alone.
    rounds = compare_rounds(metric, [np.quantile(r, quantile) for r in rb], [np.quantile(r, quantile) for r in rc],
                            higher_is_better=higher_is_better, min_effect=min_effect, alpha=alpha, power=power)
    if rounds.status == pooled.status:
        return replace(pooled, method=f"{method}, confirmed per round", mdr=max(pooled.mdr, rounds.mdr))
    return replace(pooled, status="inconclusive", mdr=max(pooled.mdr, rounds.mdr),
                   method=f"{method} says {pooled.status}, per-round {label} does not (welch-t: {rounds.status})")


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    """Aligned plain-text table, one row per verdict, for logs and CI output."""
    header = ("metric", "status", "change", "CI", "MDR", "baseline", "current", "method")
    rows = [header] + [
        (v.metric, v.status, _pct(v.change), f"[{_pct(v.ci_low)}, {_pct(v.ci_high)}]",
         _pct(v.mdr, signed=False), f"{v.baseline:.4g}", f"{v.current:.4g}",
         f"{v.method} ({v.n_baseline} vs {v.n_current} {v._unit})")
        for v in verdicts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}  # numeric columns
    lines = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right and k else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

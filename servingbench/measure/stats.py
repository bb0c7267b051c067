"""Per-metric statistical verdicts for servingbench regression gates.

Why: run-to-run spread differs by ~100x between metrics (throughput ~1%, TTFT p99 ~50%), and a server restart
moves every figure, so each metric gets its own test, sized by its own measured spread, with the server lifetime
as the independent unit (``measure/noise.py`` has the model and its estimates).

Everything works on log values: serving metrics are positive and their noise is multiplicative.
``change = exp(stat_cur - stat_base) - 1`` where a side's statistic is the mean over its lifetimes of the lifetime
means of log(round figure); for a quantile metric (TTFT p99, ...) the round figure is that round's quantile.

Decision rule. Let d be the log-ratio turned so that d > 0 means "worse", tested one-sided at ``alpha`` with a
t on lifetime means (df from lifetimes); the interval shown is the two-sided (1 - 2 alpha) one, labelled so:

* regressed:    lower bound of d > 0 (one-sided test at alpha) AND the point regression >= min_effect;
* improved:     the mirror image in the better direction;
* unchanged:    the whole interval of ``change`` lies in (-min_effect, +min_effect) (TOST at alpha);
* inconclusive: anything else (too noisy, or too few lifetimes to tell).

The false-alarm rate per metric is at most alpha (one-sided); min_effect only lowers it. "Regression of r" means
current is worse by fraction r: ``cur/base - 1`` for latencies, ``1 - cur/base`` for throughput; the MDR is in
that unit and is the power of this rule, min effect included (``noise.mdr_log``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import stats

from servingbench.measure.noise import (Noise, log_threshold, mdr_log, regression_fraction, side, t_quantile)

Status = Literal["regressed", "improved", "unchanged", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    """Outcome of one metric's comparison; plain floats/ints/strings so it serialises."""

    metric: str
    status: Status
    change: float
    ci_low: float
    ci_high: float
    mdr: float
    baseline: float
    current: float
    n_baseline: int  # rounds used (requests for failure_rate)
    n_current: int
    higher_is_better: bool
    method: str
    ci_level: float = math.nan  # two-sided level of [ci_low, ci_high]: 1 - 2 alpha
    df: float = math.nan
    lifetimes_baseline: int = 0
    lifetimes_current: int = 0
    note: str = ""  # rounds left out, where the noise came from

    def failed(self) -> bool:
        """Only a significant, material regression fails a gate."""
        return self.status == "regressed"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def _sizes(self) -> str:
        if self.metric == "failure_rate":
            return f"{self.n_baseline} vs {self.n_current} requests"
        return (f"{self.lifetimes_baseline} lifetimes/{self.n_baseline} rounds vs "
                f"{self.lifetimes_current}/{self.n_current}")

    def describe(self) -> str:
        ci = "" if not math.isfinite(self.ci_level) else (
            f" [{_pct(self.ci_low)}, {_pct(self.ci_high)}] ({_level(self.ci_level)} CI)")
        return (f"{self.metric}: {self.status} {_pct(self.change)}{ci}, MDR {_pct(self.mdr, signed=False)} "
                f"({self.method}, {self._sizes})" + (f"; {self.note}" if self.note else ""))


def _pct(x: float, signed: bool = True) -> str:
    if math.isnan(x):
        return "-"
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def _level(p: float) -> str:
    return f"{p * 100:.2f}".rstrip("0").rstrip(".") + "%"


def _check_params(metric: str, min_effect: float, alpha: float, power: float) -> None:
    if not (0.0 < alpha < 0.5):
        raise ValueError(f"{metric}: alpha must be in (0, 0.5), got {alpha}")
    if not (0.0 < power < 1.0):
        raise ValueError(f"{metric}: power must be in (0, 1), got {power}")
    if not (math.isfinite(min_effect) and 0.0 <= min_effect < 1.0):
        raise ValueError(f"{metric}: min_effect must be in [0, 1), got {min_effect}")


def log_spread(values: Sequence[float]) -> float:
    """Sample std (ddof=1) of log(values): the total spread of a set of rounds, lifetimes and rounds together."""
    arr = np.asarray(values, dtype=float)
    if arr.size and not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"log_spread: values must be finite and > 0, got {list(values)!r}")
    return float(np.std(np.log(arr), ddof=1)) if arr.size >= 2 else 0.0


def status_of(diff: float, ci_log: tuple[float, float], higher_is_better: bool, min_effect: float) -> Status:
    """The decision rule on a log-ratio ``diff`` (cur over base) and its two-sided interval."""
    change = math.expm1(diff)
    lo, hi = math.expm1(ci_log[0]), math.expm1(ci_log[1])
    worse_sig = ci_log[1] < 0 if higher_is_better else ci_log[0] > 0
    better_sig = ci_log[0] > 0 if higher_is_better else ci_log[1] < 0
    worse = -change if higher_is_better else change  # > 0 means worse, as a fraction of the user's unit
    if worse_sig and worse >= min_effect:
        return "regressed"
    if better_sig and -worse >= min_effect:
        return "improved"
    if -min_effect < lo and hi < min_effect:
        return "unchanged"
    return "inconclusive"


def compare_lifetimes(metric: str, baseline: Sequence[Sequence[float]], current: Sequence[Sequence[float]], *,
                      higher_is_better: bool, min_effect: float, alpha: float = 0.05, power: float = 0.8,
                      noise: Noise | None = None, noise_source: str = "", no_noise: str = "",
                      with_mdr: bool = True) -> Verdict:
    """Compare two sides given as lists of lifetimes, each a list of per-round figures.

    Invalid rounds (NaN, inf, <= 0) are left out, with a note. The noise is pooled from both sides (each centred on
    its own mean) and ``noise`` (stored lifetimes of this hardware, ``noise_source`` says which); with no two
    lifetimes in any group, a build cannot be told from a restart: the verdict is inconclusive with MDR inf and
    ``no_noise`` says how to fix that. ``with_mdr`` False leaves the MDR out (NaN): the status does not depend on
    it, and the A/A simulations that judge the status alone run faster without its root-finding."""
    _check_params(metric, min_effect, alpha, power)
    sb, sc = side(baseline), side(current)
    dropped = [f"{n} invalid {name} round(s) left out" for name, n in (("baseline", sb.dropped),
                                                                          ("current", sc.dropped)) if n]
    notes = list(dropped)
    level = 1.0 - 2.0 * alpha
    sizes = dict(n_baseline=sum(sb.rounds), n_current=sum(sc.rounds), lifetimes_baseline=sb.n_lifetimes,
                 lifetimes_current=sc.n_lifetimes, higher_is_better=bool(higher_is_better))
    if sb.n_lifetimes == 0 or sc.n_lifetimes == 0:
        return Verdict(metric, "inconclusive", math.nan, math.nan, math.nan, math.inf, math.nan, math.nan,
                       method="no valid rounds on a side", ci_level=level, df=0.0, note="; ".join(notes), **sizes)
    pool = Noise.of(sb, sc) + (noise or Noise())
    if noise is not None and noise.dz > 0:
        notes.append(f"noise pooled with {noise_source or 'stored lifetimes'} ({noise.lifetimes} lifetimes)")
    v, df = pool.variance(sb.rounds, sc.rounds)
    diff = sc.mean - sb.mean
    base, cur = math.exp(sb.mean), math.exp(sc.mean)
    if df > 0 and math.isfinite(v):
        se = math.sqrt(v)
        h = t_quantile(1 - alpha, df) * se
        ci_log = (diff - h, diff + h)
        split = (f"sL {pool.sl:.1%} sr {pool.sr:.1%}" if math.isfinite(pool.sl) and math.isfinite(pool.sr)
                 else "one round a lifetime: sL and sr not told apart")
        method = f"t on lifetime means, df {df:.3g}, {split}"
        mdr = regression_fraction(mdr_log(se, df, alpha, power, log_threshold(min_effect, higher_is_better)),
                                  higher_is_better) if with_mdr else math.nan
    else:
        ci_log, mdr = (-math.inf, math.inf), math.inf
        method = "one lifetime a side and no stored lifetime spread: a restart cannot be told from a change"
        if no_noise:
            notes.append(no_noise)
    return Verdict(metric, status_of(diff, ci_log, higher_is_better, min_effect), math.expm1(diff),
                   math.expm1(ci_log[0]), math.expm1(ci_log[1]), float(mdr), base, cur, method=method,
                   ci_level=level, df=float(df), note="; ".join(notes), **sizes)


def compare_failures(baseline_failed: int | None, baseline_requests: int | None, current_failed: int,
                     current_requests: int, *, alpha: float = 0.05, power: float = 0.8) -> Verdict:
    """failure_rate: any failure where the baseline had none is a regression (a healthy server fails no request);
    where the baseline had failures, Fisher's exact test, one-sided at ``alpha``. ``change`` is the difference of
    the rates; the MDR, where the baseline had none, is the rate at which the run sees a failure with ``power``."""
    kw = dict(metric="failure_rate", higher_is_better=False, ci_low=math.nan, ci_high=math.nan)
    rc = current_failed / current_requests if current_requests else math.nan
    if baseline_failed is None or not baseline_requests or not current_requests:
        return Verdict(status="inconclusive", change=math.nan, mdr=math.nan, baseline=math.nan, current=rc,
                       n_baseline=int(baseline_requests or 0), n_current=int(current_requests),
                       method="no failure counts on a side", **kw)  # type: ignore[arg-type]
    rb = baseline_failed / baseline_requests
    mdr = -math.expm1(math.log1p(-power) / current_requests) if baseline_failed == 0 else math.nan
    n = dict(n_baseline=int(baseline_requests), n_current=int(current_requests), baseline=rb, current=rc,
             change=rc - rb, mdr=mdr)
    if baseline_failed == 0:
        status: Status = "regressed" if current_failed > 0 else "unchanged"
        return Verdict(status=status, method="any failure where the baseline had none", **n, **kw)  # type: ignore
    table = [[current_failed, current_requests - current_failed],
             [baseline_failed, baseline_requests - baseline_failed]]
    p_worse = stats.fisher_exact(table, alternative="greater").pvalue
    p_better = stats.fisher_exact(table, alternative="less").pvalue
    status = ("regressed" if p_worse < alpha else "improved" if p_better < alpha
              else "unchanged" if rc <= rb else "inconclusive")
    return Verdict(status=status, method=f"Fisher exact, one-sided p {min(p_worse, p_better):.2g}", **n,
                   **kw)  # type: ignore[arg-type]


def verdict_rows(verdicts: Sequence[Verdict]) -> list[tuple[str, ...]]:
    """The header and one row of cells per verdict, shared by the text table and the Markdown one (CI's job
    summary), so both say the same; the CI header states its level."""
    levels = {v.ci_level for v in verdicts if math.isfinite(v.ci_level)}
    ci = f"CI ({_level(levels.pop())})" if len(levels) == 1 else "CI"
    header = ("metric", "status", "change", ci, "MDR", "baseline", "current", "method")
    return [header] + [
        (v.metric, v.status, _pct(v.change),
         "-" if math.isnan(v.ci_low) else f"[{_pct(v.ci_low)}, {_pct(v.ci_high)}]",
         _pct(v.mdr, signed=False), f"{v.baseline:.4g}", f"{v.current:.4g}",
         f"{v.method} ({v._sizes})" + (f"; {v.note}" if v.note else ""))
        for v in verdicts
    ]


def verdict_table(verdicts: Sequence[Verdict]) -> str:
    """Aligned plain-text table, one row per verdict, for logs and CI output."""
    rows = verdict_rows(verdicts)
    header = rows[0]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}  # numeric columns
    lines = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right and k else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

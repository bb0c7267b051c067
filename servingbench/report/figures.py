"""The report's figures (matplotlib, Agg backend: files only, no display needed).

Every function takes plain numbers and writes one PNG. Conventions, so figures read alike: one colour per config
(``colors``: vLLM blue, HF orange, others after), one marker per engine, units on every axis, a log scale where the
engines differ by more than an order of magnitude (vLLM vs HF often differ 40x), and values printed on bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
MARKERS = {"vllm": "o", "hf": "s"}
DPI = 110


def colors(configs: Sequence[str]) -> dict[str, str]:
    """Stable colours: "vllm" blue and "hf" orange wherever they appear, other configs in order after them."""
    fixed = {"vllm": PALETTE[0], "hf": PALETTE[1]}
    rest = iter(c for c in PALETTE if c not in fixed.values())
    return {name: fixed.get(name) or next(rest, "#333333") for name in dict.fromkeys(configs)}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _log(ax: Axes, which: str, values: Sequence[float]) -> None:
    """Log scale with plain numbers (1,000 not 10^3); minor ticks at 2x and 5x labelled when the axis spans
    at most two decades, so a short log axis still has numbers on it."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    plain = lambda v, _=None: f"{v:,.0f}" if v >= 1 else f"{v:g}"  # noqa: E731
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(plain))
    pos = [v for v in values if v > 0]
    if pos and math.log10(max(pos) / min(pos)) <= 2:
        axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: plain(v) if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    else:
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _bars(ax: Axes, labels: Sequence[str], values: Sequence[float | None], cols: Sequence[str], title: str,
          ylabel: str, log: bool | None = None, pct: bool = False) -> None:
    """Bars with their values written on top; log scale when the values span more than 20x (and log is None)."""
    vals = [v if v is not None else 0.0 for v in values]
    pos = [v for v in vals if v > 0]
    if log is None:
        log = bool(pos) and max(pos) / min(pos) > 20
    ax.bar(range(len(vals)), vals, color=cols, edgecolor="black", linewidth=0.5)
    crowded = max(map(len, labels), default=0) * len(labels) > 24  # would the labels run into each other?
    ax.set_xticks(range(len(vals)), labels, rotation=25 if crowded else 0, ha="right" if crowded else "center")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log and pos:
        _log(ax, "y", [min(pos) / 2, max(pos) * 4])
        ax.set_ylim(min(pos) / 2, max(pos) * 4)
    elif pos:
        ax.set_ylim(0, max(pos) * 1.18)
    else:
        ax.set_ylim(0, 1)  # all zero (e.g. the reference's difference from itself): a flat baseline, not a void
    for i, (v, raw) in enumerate(zip(vals, values)):
        text = "n/a" if raw is None else ((f"{v:.1%}" if v >= 0.1 else f"{v:.2%}") if pct else _fmt(v))
        ax.annotate(text, (i, v if v > 0 else (ax.get_ylim()[0])), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    ax.grid(axis="y", alpha=0.3)


@dataclass
class ConfigBars:
    """One config's headline figures for the comparison chart."""

    config: str
    engine: str
    values: Mapping[str, float | None]


def comparison(items: Sequence[ConfigBars], panels: Sequence[tuple[str, str, str]], path: Path,
               title: str) -> Path:
    """One panel per (metric key, panel title, y label); one bar per config."""
    cmap = colors([i.config for i in items])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.8))
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, (key, ptitle, ylabel) in zip(axes, panels):
        _bars(ax, [i.config for i in items], [i.values.get(key) for i in items], [cmap[i.config] for i in items],
              ptitle, ylabel)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@dataclass
class Curve:
    """One config's measurements of one workload at several concurrency levels."""

    label: str
    config: str
    engine: str
    concurrency: list[int] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)  # output tok/s
    tpot_p50_ms: list[float] = field(default_factory=list)
    ttft_p99_ms: list[float] = field(default_factory=list)


def throughput_latency(curves: Sequence[Curve], path: Path, ttft_slo_ms: float | None = None,
                       tpot_slo_ms: float | None = None, title: str = "") -> Path:
    """Throughput (x) against latency (y), one line per curve; the first curve of each config (pass the longest
    first) is solid with its points labelled by concurrency, repeats of a config are faint and unlabelled."""
    cmap = colors([c.config for c in curves])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, attr, ylabel, slo in ((axes[0], "tpot_p50_ms", "TPOT p50 (ms per output token)", tpot_slo_ms),
                                  (axes[1], "ttft_p99_ms", "TTFT p99 (ms)", ttft_slo_ms)):
        styles = iter(["-", "--", ":", "-."] * 4)
        seen: dict[str, int] = {}
        for c in curves:
            ys = getattr(c, attr)
            n = seen.setdefault(c.config, 0)
            seen[c.config] += 1
            style = "-" if n == 0 else next(styles)
            ax.plot(c.throughput, ys, style, marker=MARKERS.get(c.engine, "^"), color=cmap[c.config], label=c.label,
                    alpha=1.0 if n == 0 else 0.6, markersize=6)
            for i, (x, y, conc) in enumerate(zip(c.throughput, ys, c.concurrency) if n == 0 else ()):
                ax.annotate(f"c={conc}", (x, y), xytext=(4, 4 if i % 2 == 0 else -11), textcoords="offset points",
                            fontsize=7, color=cmap[c.config])
        if slo is not None:
            ax.axhline(slo, color="red", linestyle="--", linewidth=1, label=f"SLO {slo:g} ms")
        allx = [x for c in curves for x in c.throughput if x > 0]
        ally = [y for c in curves for y in getattr(c, attr) if y > 0] + ([slo] if slo else [])
        if allx and max(allx) / min(allx) > 20:
            _log(ax, "x", allx)
        if ally and max(ally) / min(ally) > 20:
            _log(ax, "y", ally)
        ax.set_xlabel("output throughput (tokens/s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_title("decode speed per stream vs throughput", fontsize=10)
    axes[1].set_title("tail time to first token vs throughput", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def efficiency(labels: Sequence[str], configs: Sequence[str], mbu: Sequence[float | None],
               mfu: Sequence[float | None], path: Path, title: str) -> Path:
    """MBU and MFU (% of the hardware peak) per measurement, on a 0-100% scale: the distance to the limit."""
    cmap = colors(list(configs))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(labels) + 4), 4.4), sharey=False)
    for ax, vals, name in ((axes[0], mbu, "MBU: memory bandwidth used / peak"),
                           (axes[1], mfu, "MFU: model FLOP/s / peak (decode tokens)")):
        _bars(ax, list(labels), list(vals), [cmap[c] for c in configs], name, "% of hardware peak", log=False,
              pct=True)
        ax.set_ylim(0, 1.05 if name.startswith("MBU") else max(0.1, max((v or 0) for v in vals) * 1.3))
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def study_panels(x_labels: Sequence[str], panels: Sequence[tuple[str, str, Sequence[float | None]]], path: Path,
                 title: str, xlabel: str, highlight: int | None = None, pct: Sequence[bool] = ()) -> Path:
    """A study as bar panels over its settings (block sizes, KV dtypes, on/off): (title, y label, values) each."""
    cols = [PALETTE[0]] * len(x_labels)
    if highlight is not None:
        cols[highlight] = PALETTE[1]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3.8))
    axes = list(axes) if len(panels) > 1 else [axes]
    for i, (ax, (ptitle, ylabel, vals)) in enumerate(zip(axes, panels)):
        _bars(ax, list(x_labels), list(vals), cols, ptitle, ylabel, log=False, pct=bool(pct[i]) if i < len(pct)
              else False)
        ax.set_xlabel(xlabel)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def scaling(sizes: Sequence[int], throughput: Sequence[float], path: Path, title: str) -> Path:
    """Throughput per tensor-parallel size against the linear ideal n x throughput(TP=1)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(sizes, throughput, "o-", color=PALETTE[0], label="measured")
    if 1 in sizes:
        base = throughput[list(sizes).index(1)]
        ax.plot(sizes, [n * base for n in sizes], "--", color="grey", label="linear (n x TP=1)")
        for n, t in zip(sizes, throughput):
            ax.annotate(f"{t / (n * base):.0%}", (n, t), xytext=(4, -12), textcoords="offset points", fontsize=8)
    ax.set_xticks(list(sizes))
    ax.set_xlabel("tensor parallel size (GPUs)")
    ax.set_ylabel("output throughput (tokens/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _num(v: Any) -> float:
    """A JSON figure as a float; None (not measured) as NaN, which matplotlib leaves out."""
    return float(v) if isinstance(v, (int, float)) else float("nan")


def capacity_curve(caps: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Capacity searches (``<results>/capacity/*.json``): achieved request throughput (solid) and goodput (dashed)
    against offered rate beside y = x, a dotted vertical line at each search's capacity; right, p99 TTFT (solid)
    and p99 TPOT (dashed) against rate with the SLO limits in red. Filled markers met the SLO, hollow ones missed.
    The rate axis is logarithmic where the rates span more than 10x."""
    names = [str(c["config_name"]) for c in caps]
    keys = names if len(set(names)) == len(names) else [
        f"{n} · {(c.get('workload') or {}).get('name')}" for n, c in zip(names, caps)]
    cmap = colors(keys)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    rates = [_num(p["rate"]) for c in caps for p in c["points"]]
    lat: list[float] = []
    for key, c in zip(keys, caps):
        pts = [p for p in c["points"] if p["meets"] is not None]  # an invalid run measured the client
        xs, col = [_num(p["rate"]) for p in pts], cmap[key]
        for ax, series in ((left, (("request_throughput", "-"), ("goodput", "--"))),
                           (right, (("p99_ttft_ms", "-"), ("p99_tpot_ms", "--")))):
            for field_, style in series:  # one legend entry per search: the line styles are in the titles
                ys = [_num(p[field_]) for p in pts]
                ax.plot(xs, ys, style, color=col, label=key if style == "-" else None, linewidth=1.3)
                for x, y, p in zip(xs, ys, pts):
                    ax.plot([x], [y], "o", color=col, markersize=5, markerfacecolor=col if p["meets"] else "white")
                if ax is right:
                    lat += [y for y in ys if y > 0]
        cap = _num(c.get("capacity_rps"))
        if cap > 0:
            left.axvline(cap, color=col, linestyle=":", linewidth=1.2, label=f"capacity {cap:g} req/s")
    if rates:
        lo, hi = min(rates), max(rates)
        left.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="-.", label="y = x (all served)")
    slos = {(k, v) for c in caps for k, v in dict(c.get("slo") or {}).items() if isinstance(v, (int, float))}
    for k, v in sorted(slos):
        right.axhline(v, color="red", linestyle="-" if k == "ttft_ms" else "--", linewidth=1,
                      label=f"SLO {'TTFT' if k == 'ttft_ms' else 'TPOT'} {v:g} ms")
        lat.append(v)
    for ax in (left, right):
        if rates and min(rates) > 0 and max(rates) / min(rates) > 10:
            _log(ax, "x", rates)
        ax.set_xlabel("offered request rate (req/s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if lat and max(lat) / min(lat) > 20:
        _log(right, "y", lat)
    left.set_ylabel("achieved (req/s)")
    right.set_ylabel("latency p99 (ms)")
    left.set_title("request throughput (solid), goodput (dashed) vs offered rate", fontsize=10)
    right.set_title("p99 TTFT (solid), p99 TPOT (dashed) vs offered rate", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)

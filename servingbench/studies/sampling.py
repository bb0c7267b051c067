"""Sample sizes and noise for the studies and their recommendations.

Two rules, so that no figure is read beyond what its sample supports:

- Percentiles. A q-quantile of n samples rests on the n x (1 - q) samples beyond it; it needs at least one, so
  a p99 needs n >= 100, a p90 n >= 10, a p50 n >= 2 (``min_samples``). ``requests_for`` sizes a sweep level for
  the percentile the study reports; where a profile caps the count (the CPU study's wall time), the level is read
  at the highest percentile of ``LADDER`` its sample supports (``supported_percentile``), and its row says so.
- Noise. Two settings' throughputs differ by noise alone as much as two runs of one setting do. The machine's
  run-to-run spread per metric is ``baselines/<hardware key>/rounds.json`` (``servingbench calibrate``: sample std
  of log(round figure), restarts included; ``measure/rounds.py``, ``measure/stats.log_spread``). The ratio of two
  single runs then has a log-std of sqrt(2) x spread, and a difference within ``NOISE_Z`` of those is not told
  apart from noise (``machine_noise``). Without a rounds file for the hardware the stated default applies, and the
  note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from servingbench.measure.measurement import Measurement

LADDER = (0.99, 0.9, 0.5)  # the percentiles a level is read at, highest first
TAIL_SAMPLES = 1  # samples a q-quantile needs beyond it
NOISE_Z = 1.0  # a difference within one std of the log-ratio of two single runs is noise
DEFAULT_NOISE = 0.05  # stated default where no rounds file exists for the hardware
ROUNDS_FILE = "rounds.json"


def percentile_label(q: float) -> str:
    """0.99 -> "p99", 0.5 -> "p50"."""
    return f"p{q * 100:g}"


def percentile_field(q: float, metric: str) -> str:
    """The flat figure name of a percentile: (0.99, "ttft") -> "p99_ttft_ms" (vLLM's field names)."""
    return f"{percentile_label(q)}_{metric}_ms"


def min_samples(q: float) -> int:
    """Samples a q-quantile needs so that ``TAIL_SAMPLES`` lie beyond it: p99 100, p90 10, p50 2."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"a percentile must be in (0, 1), got {q}")
    return math.ceil(round(TAIL_SAMPLES / (1.0 - q), 9))


def supported_percentile(n: int, wanted: float = LADDER[0]) -> float:
    """The highest percentile of ``LADDER`` up to ``wanted`` that ``n`` samples support; p50 at the least (the
    lowest rung is all a tiny sample has, and its label says how little that is)."""
    rungs = [q for q in LADDER if q <= wanted + 1e-12] or [LADDER[-1]]
    return next((q for q in rungs if n >= min_samples(q)), rungs[-1])


def requests_for(level: int, percentile: float, *, per_level: int = 2, min_requests: int = 8,
                 max_requests: int | None = None) -> int:
    """Requests at a sweep level: enough for ``percentile`` (``min_samples``), capped at ``max_requests`` where
    the profile cannot afford it, and never fewer than ``per_level`` x level (every level fills its slots twice)
    or ``min_requests``."""
    if level < 1:
        raise ValueError(f"a concurrency level must be >= 1, got {level}")
    need = min_samples(percentile)
    if max_requests is not None:
        need = min(need, max_requests)
    return max(per_level * level, min_requests, need)


def percentile_note(n: int, wanted: float) -> str:
    """What ``n`` samples let a level report, e.g. "p90: 32 samples (p99 needs >= 100)"."""
    got = supported_percentile(n, wanted)
    note = f"{percentile_label(got)}: {n} samples"
    if got < wanted:
        note += f" ({percentile_label(wanted)} needs >= {min_samples(wanted)})"
    return note


def samples(m: "Measurement") -> int:
    """Latency samples a run's percentiles rest on: its fewest TTFT or TPOT values (one per request)."""
    counts = [d.count for d in (m.metrics.ttft, m.metrics.tpot) if d.count]
    return min(counts) if counts else m.metrics.completed


def level_percentile(m: "Measurement", wanted: float = LADDER[0]) -> float:
    """The percentile a run is judged at: ``wanted`` if its samples support it, else the highest that they do."""
    return supported_percentile(samples(m), wanted)


def hardware_of(ms: Sequence["Measurement"]) -> list[str | None]:
    """The hardware keys the measurements recorded (``environment["hardware"]``)."""
    return [m.environment.get("hardware") for m in ms]


def row_labels(n: int, wanted: float) -> dict[str, str]:
    """What a study row records about its sample: the percentile it supports and why, e.g.
    {"latency_percentile": "p90", "latency_percentile_note": "p90: 32 samples (p99 needs >= 100)"}."""
    return {"latency_percentile": percentile_label(supported_percentile(n, wanted)),
            "latency_percentile_note": percentile_note(n, wanted)}


@dataclass(frozen=True)
class Noise:
    """A relative difference treated as noise, and where it comes from (cited in a verdict)."""

    threshold: float
    source: str
    measured: bool  # from the machine's rounds file, not the stated default

    def describe(self) -> str:
        return f"{self.threshold:.0%} noise threshold ({self.source})"


def default_noise(default: float, why: str) -> Noise:
    """The stated default, with why the machine's spread does not apply ("as no ... exists")."""
    return Noise(default, f"the stated default, as {why}", False)


def machine_noise(hardware_keys: Iterable[str | None], config: str | None, metric: str = "output_throughput",
                  baselines: Path | None = None, default: float = DEFAULT_NOISE) -> Noise:
    """The noise threshold for ``metric`` of ``config`` from ``<baselines>/<key>/rounds.json``:
    expm1(NOISE_Z x sqrt(2) x spread). Falls back to ``default`` (saying why) where the measurements' hardware
    is unknown or mixed, or the file, the config or two rounds of it are missing."""
    from servingbench.measure.rounds import RoundsFile

    keys = sorted({k for k in hardware_keys if k})
    if len(keys) != 1:
        why = ("the measurements record no hardware key" if not keys
               else f"the measurements come from mixed hardware {', '.join(keys)}")
        return default_noise(default, why)
    folder = Path(baselines) if baselines is not None else Path.cwd() / "baselines"
    path = folder / keys[0] / ROUNDS_FILE
    if not path.is_file():
        return default_noise(default, f"no {path} exists for hardware {keys[0]} (record one with `servingbench calibrate`)")
    try:
        rounds = RoundsFile.load(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return default_noise(default, f"{path} is unreadable ({e})")
    configs = sorted({r.config for r in rounds.rounds})
    use = config if config in configs else None
    n = len(rounds.of(use)) if use else 0
    if n < 2:
        return default_noise(default, f"{path} has {n} rounds of config {config!r} (it has: {', '.join(configs)}); "
                                      "a spread needs 2")
    spread = rounds.spread()[use].get(metric, math.nan)
    if not math.isfinite(spread):
        return default_noise(default, f"{path} has no spread of {metric} for {use}")
    threshold = math.expm1(NOISE_Z * math.sqrt(2.0) * spread)
    return Noise(threshold, f"{NOISE_Z:g} x sqrt(2) x the {spread:.1%} run-to-run spread (std of log) of {metric} "
                            f"of {use} over {n} rounds in {path}", True)

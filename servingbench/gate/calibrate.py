"""Calibration in one command: lifetimes of rounds of the lab load, the noise model, proposed table rows.

``servingbench calibrate`` (``make calibrate`` in this repo) runs, on a quiet machine, R rounds of the lab load per
config in each of L server lifetimes (the server restarts between lifetimes), plus one single-stream run per config and
lifetime for batch efficiency. It writes ``baselines/<key>/rounds.json``: every round, and per config and metric
the noise model's estimates (``measure/noise.py``): sL between lifetimes, sr between rounds of one lifetime, their
degrees of freedom, and how much the lifetime term weighs. It proposes ``[[expect]]`` rows for this hardware key in
the table, between markers, with the margin rule in a comment. The user reviews them and commits.

Lifetimes, not rounds, give the gate its degrees of freedom, hence ``DEFAULT_LIFETIMES``.

The margin rule: a bound is the median of the rounds times exp(-/+ m), m = max(K x s, floor), where s is the spread
(std of log) of one future round in a new lifetime about the calibration's centre, ``s^2 = sL^2 + sr^2 + tau^2/L``
(restarts included), K = 4, and the floor is 15% below or above on a CPU and 5% on a GPU. s is estimated from L lifetimes, so 4 x s is not
"under 1 in 1000": the false failures per bound are about P(t_df > 4), df from the lifetimes (0.5% at 5 df, 7.8% at
1 df), and each row's comment says its own. The floor is there because a calibration sees one quiet afternoon,
not every neighbour CI will have.
"""

from __future__ import annotations

import math
import re
import time
from statistics import median
from dataclasses import dataclass
from pathlib import Path

from servingbench.load.workload import single_stream
from servingbench.measure.environment import Hardware, detect
from servingbench.measure import catalog
from servingbench.measure.metrics import batch_efficiency
from servingbench.servers.models import get_model, materialize
from scipy import stats

from servingbench.measure.noise import Noise, design_mdr, side
from servingbench.measure.stats import log_spread
from servingbench.gate.judge import DEFAULT_LIFETIMES as GATE_LIFETIMES, MIN_EFFECT, POWER, alpha_per_test
from servingbench.measure.files import atomic_write_text
from servingbench.measure.rounds import FILENAME, GATED, Round, RoundsFile, by_lifetime
from servingbench.suite.run_settings import RunSettings
from servingbench.suite.bench import Bench
from servingbench.expect.bounds import load_table

K_SPREAD = 4.0
# Lifetimes a calibration records. The gate's t on lifetime means has (L - 1) + (N - 1) degrees of freedom against
# a run of N lifetimes; at the run's per-test level (0.05 / 18 for two configs) the one-sided t quantile is 13.4 at
# 2 df, 5.4 at 4, 4.2 at 6 and 2.8 at infinity: L = 6 with the gate's 2 lifetimes gives 6 df, within 1.5x of the
# normal quantile, where L = 2 (the old default) gives 2 df. With the CPU machine's measured spreads (throughput sL
# 0.029, sr 0.045) the computed throughput MDR is 15.6% at L = 6 and 48.4% at L = 2 (scripts/gate_power.py).
DEFAULT_LIFETIMES = 6
FLOOR = {"cpu": 0.15, "gpu": 0.05}
# (metric, side) of the proposed exact rows: "min" for higher-is-better figures, as the catalog declares them.
ROW_METRICS = tuple((name, catalog.CATALOG[name].bound_side)
                    for name in ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
                                 "median_e2el_ms"))


@dataclass
class CalibrationOptions:
    gpu: bool = False
    model: str | None = None
    hardware_key: str | None = None  # --hardware-key: the key to calibrate (default: detected)
    tensor_parallel_size: int = 1
    table: Path = Path("perf/expected_performance.toml")
    baseline_dir: Path = Path("baselines")
    results_dir: Path | None = None
    configs: tuple[str, ...] = ("vllm", "hf")
    rounds: int = 3  # per server lifetime
    lifetimes: int = DEFAULT_LIFETIMES
    write_table: bool = True
    api_key: str | None = None


def margin(spread: float, hardware: Hardware, bound_side: str) -> float:
    """The margin in log units, K x spread or the floor, whichever is wider. The spreads are of logs, so the bound
    is median x exp(-/+ margin): K spreads on either side, and always positive (median x (1 - K x spread) was
    below zero once the spread passed 25%). The floor stays relative: 15% below a min, 15% above a max on a CPU."""
    floor = FLOOR[hardware.device_class]
    return max(K_SPREAD * spread, -math.log1p(-floor) if bound_side == "min" else math.log1p(floor))


def bound_at(value: float, log_margin: float, bound_side: str) -> tuple[float, float]:
    """(the bound, its relative distance from ``value``) for a margin in log units."""
    factor = math.exp(-log_margin if bound_side == "min" else log_margin)
    return value * factor, abs(factor - 1)


def prediction_spread(noise: Noise, lifetimes: int) -> tuple[float, float]:
    """(s, df): the spread of one future round in a new lifetime about the mean of ``lifetimes`` lifetime means,
    ``s^2 = sL^2 + sr^2 + tau^2/L = tau^2 (1 + 1/L) + sr^2 (1 - 1/R)``, Satterthwaite df; (NaN, 0) without
    two lifetimes."""
    if not (noise.dz > 0 and noise.dw > 0):
        return math.nan, 0.0
    a, b = noise.tau2 * (1 + 1 / lifetimes), noise.sr2 * (1 - 1 / noise.r_ref)
    s2 = a + b
    df = s2 ** 2 / (a ** 2 / noise.dz + b ** 2 / noise.dw) if s2 > 0 else noise.dz
    return math.sqrt(s2), df


def noise_lines(calibration: RoundsFile, configs: int = 2) -> list[str]:
    """Per config and metric: sL, sr, their df, the lifetime term's weight, and the MDR the gate's default design
    (its lifetimes x these rounds) would have against this calibration."""
    out = []
    for config, per in calibration.noise().items():
        rounds = calibration.of(config)
        L = len({r.lifetime for r in rounds})
        R = max(2, round(len(rounds) / max(1, L)))
        out.append(f"calibrate: noise of {config} ({L} lifetimes x {R} rounds; sL between lifetimes, sr between "
                   "rounds of one, std of log):")
        for g in GATED:
            n = per[g.name]
            if not n.dz > 0:
                out.append(f"  {g.name}: no two lifetimes with a figure")
                continue
            mdr = design_mdr(n.sl, n.sr, baseline_rounds=[R] * L, current_rounds=[R] * GATE_LIFETIMES,
                             alpha=alpha_per_test(configs), power=POWER, min_effect=MIN_EFFECT[g.name],
                             higher_is_better=g.higher_is_better)
            out.append(f"  {g.name}: sL {n.sl:.2%} ({n.dz:g} df), sr {n.sr:.2%} ({n.dw:g} df); lifetime term "
                       f"{n.lifetime_share(R):.0%} of a lifetime mean's variance; gate MDR at {GATE_LIFETIMES} x {R} "
                       f"{mdr:.1%}")
    return out


def _sig(x: float, digits: int = 3) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def run(opts: CalibrationOptions, log=print) -> tuple[RoundsFile, str, Path]:
    """Run the rounds; returns the rounds file, the proposed rows (TOML text) and where the rounds were saved."""
    if opts.rounds < 2 or opts.lifetimes < 2:
        raise ValueError(f"calibrate needs >= 2 rounds and >= 2 lifetimes (got {opts.rounds} x {opts.lifetimes}): "
                         "the spread between lifetimes and within one are both estimated")
    hardware = detect(opts.gpu, opts.hardware_key, opts.tensor_parallel_size)
    model = get_model(opts.model or ("llama-2-7b" if opts.gpu else "cpu-llama-36m"))
    table = load_table(opts.table)
    settings = RunSettings(hardware, model, materialize(model), opts.tensor_parallel_size)
    results = opts.results_dir or Path("results") / f"calibrate-{time.strftime('%Y%m%d-%H%M%S')}"
    bench = Bench(settings, Path(results), table.configs, api_key=opts.api_key)
    rounds: list[Round] = []
    singles: dict[str, list[float]] = {}  # single-stream throughput, once per lifetime: batch efficiency's denominator
    workloads = {}
    partial = Path(results) / "partial"  # every round so far, rewritten as each completes: a late failure loses none

    def keep(round_: Round) -> None:
        rounds.append(round_)
        RoundsFile(settings.provenance(), workloads, rounds).save(partial)

    try:
        for lifetime in range(opts.lifetimes):
            for config in opts.configs:
                workload = bench.workload(table, "lab", config)
                workloads[config] = workload.to_dict()
                for i in range(opts.rounds):
                    m = bench.measure(config, workload, round=lifetime * opts.rounds + i)
                    keep(Round.of(m, lifetime, i))
                    log(f"calibrate: {config} lifetime {lifetime} round {i}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in rounds[-1].figures.items()))
                single = bench.measure(config, single_stream(workload), round=lifetime)
                singles.setdefault(config, []).append(single.value("output_throughput"))
                bench.pool.stop()  # the next lifetime starts a fresh server
    except BaseException:
        if rounds:
            log(f"calibrate: stopped after {len(rounds)} round(s); they are kept in {partial / FILENAME}")
        raise
    finally:
        bench.close()
    efficiency = {}
    for config, ones in singles.items():
        loaded = [r.figures["output_throughput"] for r in rounds if r.config == config]
        w = bench.workload(table, "lab", config)
        eff = batch_efficiency(median(loaded), median(ones), w.load.concurrency or w.source.num_requests)
        if eff is not None:  # its spread is the loaded throughput's and the single-stream run's together
            efficiency[config] = (eff, math.hypot(log_spread(loaded), log_spread(ones)))
    calibration = RoundsFile(settings.provenance(), workloads, rounds)
    saved = calibration.save(opts.baseline_dir / hardware.key)
    for line in noise_lines(calibration, len(opts.configs)):
        log(line)
    rows = propose_rows(calibration, hardware, model.name, efficiency, opts)
    if opts.write_table:
        write_rows(opts.table, hardware.key, model.name, rows)
    return calibration, rows, saved


def propose_rows(calibration: RoundsFile, hardware: Hardware, model: str,
                 efficiency: dict[str, tuple[float, float]], opts: CalibrationOptions) -> str:
    """The ``[[expect]]`` rows for this hardware: medians of the rounds, widened by the margin rule."""
    medians, spread, noise = calibration.medians(), calibration.spread(), calibration.noise()
    n = {c: len(calibration.of(c)) for c in medians}
    date = time.strftime("%Y-%m-%d")
    versions = calibration.provenance.get("versions") or {}
    out = []
    for config in medians:
        lifetimes = len({r.lifetime for r in calibration.of(config)})
        lines = ["[[expect]]", f'hardware = "{hardware.key}"', f'model = "{model}"', f'config = "{config}"',
                 f'source = "servingbench calibrate, {date}: median of {n[config]} rounds in {lifetimes} server '
                 f'lifetimes (vLLM {versions.get("vllm")}, torch {versions.get("torch")})"']
        for metric, bound_side in ROW_METRICS:
            med = medians[config].get(metric, math.nan)
            if not math.isfinite(med):
                continue
            s, df = prediction_spread(noise[config][metric], lifetimes)
            if math.isfinite(s):
                why = (f"spread {s:.1%} (sL {noise[config][metric].sl:.1%}, sr {noise[config][metric].sr:.1%}, "
                       f"{df:.2g} df)")
            else:  # one lifetime: the restart's share is unknown, the total spread is all there is
                s, df = spread[config].get(metric, 0.0), max(0.0, n[config] - 1.0)
                why = f"spread {s:.1%} (one lifetime: restarts not in it)"
            log_m = margin(s, hardware, bound_side)
            rate = f", ~{stats.t.sf(log_m / s, df):.2g} false failures" if s > 0 and df > 0 else ""
            bound, m = bound_at(med, log_m, bound_side)
            lines.append(f'{metric} = {{ {bound_side} = {_sig(bound):g} }}    # median {med:.4g}, {why}, margin '
                         f'{m:.0%}{rate}')
        if config in efficiency:
            eff, s = efficiency[config]
            side = "min" if eff >= 0.3 else "max"
            bound, m = bound_at(eff, margin(s, hardware, side), side)
            lines.append(f'batch_efficiency = {{ {side} = {_sig(bound):g} }}    # measured {eff:.3f}, spread {s:.1%}, '
                         f'margin {m:.0%}')
        if config != "hf" and "hf" in medians:
            ratio = medians[config]["output_throughput"] / medians["hf"]["output_throughput"]
            s = math.hypot(spread[config]["output_throughput"], spread["hf"]["output_throughput"])
            bound, m = bound_at(ratio, margin(s, hardware, "min"), "min")
            lines.append(f'"output_throughput/hf" = {{ min = {_sig(bound):g} }}    # measured {ratio:.2f}x, '
                         f'margin {m:.0%}')
        lines.append("failure_rate = { max = 0 }")
        out.append("\n".join(lines))
    head = (f"# Proposed by `servingbench calibrate` on {date} for {hardware.key} ({hardware.cpu or hardware.gpu_name}; "
            f"identity {hardware.identity()}). Margin rule: bound = median x exp(-/+ m), m = max({K_SPREAD:g} x "
            f"spread, the floor: {FLOOR[hardware.device_class]:.0%} below or above); spread = that of one round in a new server lifetime "
            f"(sL^2 + sr^2 + tau^2/L), false failures per bound ~P(t_df > m/spread). Review, then commit.")
    return head + "\n" + "\n\n".join(out) + "\n"


def _markers(key: str, model: str) -> tuple[str, str]:
    return (f"# >>> servingbench calibrate: {key} / {model}", f"# <<< servingbench calibrate: {key} / {model}")


def write_rows(table: Path, key: str, model: str, rows: str) -> None:
    """Put the rows between this key's markers in the table (replacing an earlier proposal), else at the end."""
    start, end = _markers(key, model)
    text = table.read_text()
    block = f"{start}\n{rows}{end}\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    # checked before the table is touched: the new text, beside the table (its relative paths resolve the same)
    trial = table.with_name(f".{table.name}.proposed")
    try:
        trial.write_text(text)
        load_table(trial)
    finally:
        trial.unlink(missing_ok=True)
    atomic_write_text(table.resolve(), text)  # through a symlinked copy to the file itself

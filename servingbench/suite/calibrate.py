"""Calibration in one command: rounds of the lab load, the baseline with its spread, proposed table rows.

``servingbench calibrate`` (``make calibrate``) runs, on a quiet machine, R rounds of the lab load per config in
each of L server lifetimes (the server restarts between lifetimes, so restart-to-restart spread counts), plus one
single-stream run per config and lifetime for batch efficiency (whose spread is that of both runs). It writes ``baselines/<key>/rounds.json`` (every round's
figures and samples, each metric's spread) and proposes ``[[expect]]`` rows for this hardware key in the table,
between markers, with the margin rule in a comment. The user reviews them and commits.

The margin rule: a bound sits outside the median of the rounds by m = max(K x s, floor), where s is the metric's
spread (sample std of log(round figure), restarts included), K = 4, and the floor is 15% on a CPU and 5% on a
GPU: about 4 standard deviations of what was seen, so an untouched run fails well under 1 time in 1000, and never
closer than the floor, because a calibration sees one quiet afternoon, not every neighbour CI will have.
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
from servingbench.measure.metrics import batch_efficiency
from servingbench.suite.models import get_model, materialize
from servingbench.measure.stats import log_spread
from servingbench.suite.rounds import Round, RoundsFile
from servingbench.suite.run_settings import RunSettings
from servingbench.suite.session import BenchSession
from servingbench.suite.thresholds import load_table

K_SPREAD = 4.0
FLOOR = {"cpu": 0.15, "gpu": 0.05}
# (metric, direction) of the proposed exact rows; "min" for higher-is-better figures.
ROW_METRICS = (("output_throughput", "min"), ("median_ttft_ms", "max"), ("p99_ttft_ms", "max"),
               ("median_tpot_ms", "max"), ("median_e2el_ms", "max"))


@dataclass
class CalibrationOptions:
    gpu: bool = False
    model: str | None = None
    hardware_key: str | None = None  # --profile: the key to calibrate (default: detected)
    tensor_parallel_size: int = 1
    table: Path = Path("perf/expected_performance.toml")
    baseline_dir: Path = Path("baselines")
    results_dir: Path | None = None
    configs: tuple[str, ...] = ("vllm", "hf")
    rounds: int = 3  # per server lifetime
    lifetimes: int = 2
    write_table: bool = True
    api_key: str | None = None


def margin(spread: float, hardware: Hardware) -> float:
    return max(K_SPREAD * spread, FLOOR[hardware.device_class])


def _sig(x: float, digits: int = 3) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def run(opts: CalibrationOptions, log=print) -> tuple[RoundsFile, str, Path]:
    """Run the rounds; returns the rounds file, the proposed rows (TOML text) and where the rounds were saved."""
    hardware = detect(opts.gpu, opts.hardware_key, opts.tensor_parallel_size)
    model = get_model(opts.model or ("llama-2-7b" if opts.gpu else "cpu-llama-36m"))
    table = load_table(opts.table)
    settings = RunSettings(hardware, model, materialize(model), opts.tensor_parallel_size)
    results = opts.results_dir or Path("results") / f"calibrate-{time.strftime('%Y%m%d-%H%M%S')}"
    bench = BenchSession(settings, Path(results), table.configs, api_key=opts.api_key)
    rounds: list[Round] = []
    singles: dict[str, list[float]] = {}  # single-stream throughput, once per lifetime: batch efficiency's denominator
    workloads = {}
    try:
        for lifetime in range(opts.lifetimes):
            for config in opts.configs:
                workload = bench.workload(table, "lab", config)
                workloads[config] = workload.to_dict()
                for i in range(opts.rounds):
                    m = bench.measure(config, workload, round=lifetime * opts.rounds + i)
                    rounds.append(Round.of(m, lifetime, i))
                    log(f"calibrate: {config} lifetime {lifetime} round {i}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in rounds[-1].figures.items()))
                single = bench.measure(config, single_stream(workload), round=lifetime)
                singles.setdefault(config, []).append(single.value("output_throughput"))
                bench.pool.stop()  # the next lifetime starts a fresh server
    finally:
        bench.close()
    efficiency = {}
    for config, ones in singles.items():
        loaded = [r.figures["output_throughput"] for r in rounds if r.config == config]
        w = bench.workload(table, "lab", config)
        eff = batch_efficiency(median(loaded), median(ones), w.concurrency or w.num_requests)
        if eff is not None:  # its spread is the loaded throughput's and the single-stream run's together
            efficiency[config] = (eff, math.hypot(log_spread(loaded), log_spread(ones)))
    calibration = RoundsFile(settings.provenance(), workloads, rounds)
    saved = calibration.save(opts.baseline_dir / hardware.key)
    rows = propose_rows(calibration, hardware, model.name, efficiency, opts)
    if opts.write_table:
        write_rows(opts.table, hardware.key, model.name, rows)
    return calibration, rows, saved


def propose_rows(calibration: RoundsFile, hardware: Hardware, model: str,
                 efficiency: dict[str, tuple[float, float]], opts: CalibrationOptions) -> str:
    """The ``[[expect]]`` rows for this hardware: medians of the rounds, widened by the margin rule."""
    medians, spread = calibration.medians(), calibration.spread()
    n = {c: len(calibration.of(c)) for c in medians}
    date = time.strftime("%Y-%m-%d")
    versions = calibration.provenance.get("versions") or {}
    out = []
    for config in medians:
        lines = ["[[expect]]", f'hardware = "{hardware.key}"', f'model = "{model}"', f'config = "{config}"',
                 f'source = "servingbench calibrate, {date}: median of {n[config]} rounds in {opts.lifetimes} server '
                 f'lifetimes (vLLM {versions.get("vllm")}, torch {versions.get("torch")})"']
        for metric, side in ROW_METRICS:
            med, s = medians[config].get(metric, math.nan), spread[config].get(metric, 0.0)
            if not math.isfinite(med):
                continue
            m = margin(s, hardware)
            bound = _sig(med * (1 - m) if side == "min" else med * (1 + m))
            lines.append(f'{metric} = {{ {side} = {bound:g} }}    # median {med:.4g}, spread {s:.1%}, margin {m:.0%}')
        if config in efficiency:
            eff, s = efficiency[config]
            m = margin(s, hardware)
            side, bound = ("min", _sig(eff * (1 - m))) if eff >= 0.3 else ("max", _sig(eff * (1 + m)))
            lines.append(f'batch_efficiency = {{ {side} = {bound:g} }}    # measured {eff:.3f}, spread {s:.1%}, '
                         f'margin {m:.0%}')
        if config != "hf" and "hf" in medians:
            ratio = medians[config]["output_throughput"] / medians["hf"]["output_throughput"]
            s = math.hypot(spread[config]["output_throughput"], spread["hf"]["output_throughput"])
            m = margin(s, hardware)
            lines.append(f'"output_throughput/hf" = {{ min = {_sig(ratio * (1 - m)):g} }}    # measured {ratio:.2f}x, '
                         f'margin {m:.0%}')
        lines.append("failure_rate = { max = 0 }")
        out.append("\n".join(lines))
    head = (f"# Proposed by `servingbench calibrate` on {date} for {hardware.key} ({hardware.cpu or hardware.gpu_name}; "
            f"identity {hardware.identity()}). Margin rule: bound = median x (1 -/+ m), m = max({K_SPREAD:g} x "
            f"spread, {FLOOR[hardware.device_class]:.0%}); spread = std of log(round figure) over the rounds, "
            f"restarts included. Review, then commit.")
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
    table.write_text(text)
    load_table(table)  # what was written must parse, with everything else in the table

"""The concurrency study's sample sizes and the recommendations' noise (review item 3).

A p99 needs >= 100 samples: the sweep is sized by ``sampling.requests_for``, a level whose sample is smaller is
judged at the percentile it supports (and says so), and the noise threshold is the machine's measured spread
from ``baselines/<key>/rounds.json``, else a stated default that the verdict names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import BenchmarkMetrics, Distribution
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.report.goodput import SLOLimits
from servingbench.report.recommend import block_size_advice, recommend_concurrency
from servingbench.studies import sampling
from servingbench.studies.common import load_study_params
from servingbench.measure.rounds import Round, RoundsFile

ROOT = Path(__file__).resolve().parents[2]
STUDIES_TOML = ROOT / "perf" / "studies.toml"
KEY = "cpu-9c-test"


def dist(n: int, p50: float, p90: float, p99: float) -> Distribution:
    return Distribution(p50, p50, 0.0, p50, p99, {50: p50, 90: p90, 95: p90, 99: p99}, n)


def level(c: int, tput: float, n: int, ttft: tuple[float, float, float] = (50.0, 80.0, 100.0),
          tpot: float = 20.0, hardware: str | None = KEY) -> Measurement:
    metrics = BenchmarkMetrics(duration=1.0, completed=n, failed=0, total_input_tokens=64 * n,
                               total_output_tokens=round(tput), request_throughput=float(n), output_throughput=tput,
                               total_token_throughput=tput + 64 * n, request_goodput=None, max_concurrent_requests=c,
                               ttft=dist(n, *ttft), tpot=dist(n, tpot, tpot, tpot), itl=dist(n, tpot, tpot, tpot),
                               e2el=dist(n, 700.0, 800.0, 900.0), queue_time=dist(n, 0.0, 0.0, 0.0))
    return Measurement(key=f"vllm-c{c}", engine="vllm", config_name="vllm", config={},
                       workload={"name": "study-concurrency", "concurrency": c, "num_requests": n, "prompt_len": 64,
                                 "output_len": 32}, metrics=metrics, telemetry=TelemetrySummary(), records=[],
                       started_at=0.0, environment={"hardware": hardware} if hardware else {})


def write_rounds(folder: Path, throughputs: list[float], config: str = "vllm") -> Path:
    rounds = [Round(config, i // 3, i % 3, f"{config}-r{i}", {"output_throughput": t}) for i, t in
              enumerate(throughputs)]
    (folder / KEY).mkdir(parents=True)
    return RoundsFile({"hardware_identity": {"key": KEY}}, {config: {}}, rounds).save(folder / KEY)


# ---- sample sizes ---------------------------------------------------------------------------------------------------

def test_a_percentile_needs_enough_samples() -> None:
    assert [sampling.min_samples(q) for q in (0.99, 0.9, 0.5)] == [100, 10, 2]
    assert sampling.supported_percentile(8) == 0.5  # the old c1-c4 sample: not even a p90
    assert sampling.supported_percentile(32) == 0.9 and sampling.supported_percentile(100) == 0.99
    assert sampling.supported_percentile(500, wanted=0.9) == 0.9  # never above what the study reports
    assert sampling.percentile_note(32, 0.99) == "p90: 32 samples (p99 needs >= 100)"
    assert sampling.requests_for(1, 0.99) == 100 and sampling.requests_for(64, 0.99) == 128
    assert sampling.requests_for(1, 0.99, max_requests=32) == 32
    assert sampling.requests_for(64, 0.99, max_requests=32) == 128  # a cap never starves a level's slots


@pytest.mark.parametrize("gpu", [False, True])
def test_the_sweep_is_sized_for_the_percentile_its_rows_report(gpu: bool) -> None:
    p = load_study_params(STUDIES_TOML, "concurrency", gpu=gpu)
    counts = {c: sampling.requests_for(c, p["percentile"], per_level=p["requests_per_level"],
                                       min_requests=p["min_requests"], max_requests=p.get("max_requests"))
              for c in p["levels"]}
    assert p["percentile"] == 0.99
    assert all(n >= 2 * c for c, n in counts.items())
    got = {c: sampling.percentile_label(sampling.supported_percentile(n, p["percentile"])) for c, n in counts.items()}
    if gpu:
        assert set(got.values()) == {"p99"}, got  # no cap: every level can be read at its p99
    else:  # the CPU's wall-time cap: low levels are read at p90 (and labelled so), never at a p99 of 8 samples
        assert got == {1: "p90", 2: "p90", 4: "p90", 8: "p90", 16: "p90", 32: "p90", 64: "p99"}, got
        assert sum(counts.values()) <= 400, counts  # the CPU study stays minutes long


def test_a_small_level_is_judged_at_the_percentile_its_sample_supports(tmp_path: Path) -> None:
    # 32 requests at c1..c4: their "p99" is the slowest request or two and breaks the 2 s TTFT limit, their p90 not
    tail = (300.0, 900.0, 2600.0)
    sweep = [level(1, 60, 32, tail), level(2, 110, 32, tail), level(4, 200, 32, tail), level(64, 210, 128)]
    rec = recommend_concurrency("vllm", sweep, SLOLimits(), baselines=tmp_path)
    assert rec.choice == 4, rec.verdict
    assert "p90 TTFT 900.0 ms" in rec.verdict and "judged by p90" in rec.verdict and "needs >= 100" in rec.verdict
    assert any(e.startswith("c=64:") and "p99 TTFT 100.0 ms" in e for e in rec.evidence), rec.evidence


# ---- noise ------------------------------------------------------------------------------------------------------

SWEEP = [level(1, 100, 128), level(4, 350, 128), level(8, 385, 128)]  # c8: +10% over c4


def test_noise_comes_from_the_machines_rounds_file(tmp_path: Path) -> None:
    throughputs = [300.0, 360.0, 330.0, 280.0, 350.0, 310.0]
    path = write_rounds(tmp_path, throughputs)
    spread = float(np.std(np.log(throughputs), ddof=1))
    nz = sampling.machine_noise([KEY], "vllm", baselines=tmp_path)
    assert nz.measured and nz.threshold == pytest.approx(math.expm1(math.sqrt(2) * spread)) and str(path) in nz.source
    rec = recommend_concurrency("vllm", SWEEP, SLOLimits(), baselines=tmp_path)
    assert rec.choice == 4, rec.verdict  # +10% is within this machine's noise (~11%): the lower level
    assert f"noise threshold {nz.threshold:.0%} from the measured run-to-run spread" in rec.verdict
    assert any(str(path) in e for e in rec.evidence)
    quiet = tmp_path / "quiet"
    write_rounds(quiet, [300.0, 301.0, 299.5, 300.5, 300.0, 299.0])
    assert recommend_concurrency("vllm", SWEEP, SLOLimits(), baselines=quiet).choice == 8  # +10% is real there


def test_without_a_rounds_file_the_default_is_stated(tmp_path: Path) -> None:
    rec = recommend_concurrency("vllm", SWEEP, SLOLimits(), baselines=tmp_path)
    assert rec.choice == 8
    assert "noise threshold 5%: the stated default, as no " in rec.verdict and "rounds.json exists" in rec.verdict
    unknown = recommend_concurrency("vllm", [level(c, t, 128, hardware=None) for c, t in ((1, 100), (4, 350))],
                                    SLOLimits(), noise=0.1, baselines=tmp_path)
    assert "noise threshold 10%: the stated default, as the measurements record no hardware key" in unknown.verdict
    write_rounds(tmp_path, [300.0, 360.0], config="hf")  # a file without this config's rounds
    assert not sampling.machine_noise([KEY], "vllm", baselines=tmp_path).measured


def test_block_size_advice_takes_the_study_hardwares_noise(tmp_path: Path) -> None:
    rows = [{"block_size": b, "config_name": "vllm" if b == 128 else f"vllm-block{b}", "status": "measured",
             "output_throughput": t} for b, t in ((128, 300.0), (64, 330.0))]
    study = {"hardware": {"profile": KEY, "key": KEY}, "rows": rows}
    assert block_size_advice(study, baselines=tmp_path).choice == 64  # default 5%: +10% pays
    write_rounds(tmp_path, [300.0, 360.0, 330.0, 280.0, 350.0, 310.0])
    keep = block_size_advice(study, baselines=tmp_path)
    assert keep.choice == 128 and "within noise" in keep.verdict, keep.verdict


def test_study_rows_and_the_report_name_the_percentile_a_level_supports() -> None:
    from servingbench.report.doc import Doc
    from servingbench.report.studies import concurrency

    assert sampling.row_labels(32, 0.99) == {"latency_percentile": "p90",
                                             "latency_percentile_note": "p90: 32 samples (p99 needs >= 100)"}
    assert sampling.row_labels(128, 0.99)["latency_percentile"] == "p99"
    rows = [{"key": "c1", "concurrency": 1, "num_requests": 32, "status": "measured", "output_throughput": 60.0,
             "p90_ttft_ms": 120.0, "p99_ttft_ms": 2600.0, "p90_tpot_ms": 15.0, **sampling.row_labels(32, 0.99)},
            {"key": "c2", "concurrency": 2, "num_requests": 8, "status": "measured", "output_throughput": 90.0,
             "median_ttft_ms": 50.0, "p99_ttft_ms": 900.0, "median_tpot_ms": 12.0}]  # an older row: no label
    doc = Doc()
    concurrency(doc, {"hardware": {"cpu": "x"}, "model": {"name": "m"}, "rows": rows}, Path("."))
    md = doc.markdown(Path("."))
    assert "| 1 | 32 | p90 | 60.0 | 120.0 | 15.00 | p90: 32 samples (p99 needs >= 100) |" in md
    assert "| 2 | 8 | p50 | 90.0 | 50.0 | 12.00 | 8 requests |" in md

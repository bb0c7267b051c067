"""The expectations table's tiers, hardware identity, missing figures and calibration's proposed rows.

No server: measurements are built from request records whose timings are known, so every figure is exact.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from servingbench.load.workload import ConfigError, Workload
from servingbench.measure.environment import Hardware, gpu_sku
from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import Distribution, compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.gate.calibrate import CalibrationOptions, prediction_spread, propose_rows, write_rows
from servingbench.measure.rounds import Round, RoundsFile
from servingbench.expect.bounds import Bound, check, load_table
from servingbench.plugin.state import PluginState
from servingbench.plugin.table import summary_text
from servingbench.servers.models import get_model

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "perf" / "expected_performance.toml"
CPU = Hardware("cpu-2c-amx", False, cpu="Intel Xeon", cores=2, cpu_family="GenuineIntel family 6 model 207", isa="amx")
LATENCY = [f"{stat}_{name}_ms" for name in ("ttft", "tpot", "itl", "e2el") for stat in ("mean", "median", "p99")]


def measurement(records: list[RequestRecord], config: str = "vllm", duration: float = 2.0) -> Measurement:
    return Measurement(key=f"{config}--lab", engine="vllm", config_name=config, config={}, workload={},
                       metrics=compute_metrics(records, duration), telemetry=TelemetrySummary(), records=records,
                       started_at=0.0)


def served(n: int = 4, tokens: int = 5, ttft: float = 0.1, itl: float = 0.02) -> list[RequestRecord]:
    out = []
    for i in range(n):
        times = [ttft + itl * k for k in range(tokens)]
        out.append(RequestRecord(f"r{i}", 8, tokens, start=0.0, chunk_times=times, output_tokens=tokens))
    return out


def failed(n: int = 5) -> list[RequestRecord]:
    return [RequestRecord(f"r{i}", 8, 5, start=0.01, error="HTTP 500: engine dead") for i in range(n)]


def bound(metric: str, lo: float | None = None, hi: float | None = None, hardware: str = "cpu-2c-amx") -> Bound:
    return Bound(hardware, "cpu-llama-36m", "vllm", metric, lo, hi, "lab", "test", "t.toml:1")


def lab() -> Workload:
    return Workload.of("lab", 4, 2, prompt_len=8, output_len=5)


# ---- an all-failed run can never pass -------------------------------------------------------------------------------

def test_an_empty_distribution_is_missing_not_zero() -> None:
    d = Distribution.of([])
    assert d.count == 0 and math.isnan(d.median) and math.isnan(d.percentiles[99])
    flat = compute_metrics(failed(), 1.0).to_vllm_json()
    assert flat["median_ttft_ms"] is None and flat["p99_e2el_ms"] is None  # JSON null, never 0.0


@pytest.mark.parametrize("metric", LATENCY + ["output_throughput", "request_throughput"])
def test_an_all_failed_run_fails_every_latency_and_throughput_bound(metric: str) -> None:
    m = measurement(failed())
    with pytest.raises(MissingFigure, match="no successful requests"):
        m.value(metric)
    for b in (bound(metric, hi=1e12), bound(metric, lo=0.0), bound(metric, lo=0.0, hi=1e12)):
        problem = check(b, lambda c, w: m, lambda c: lab())
        assert problem is not None and "no successful requests" in problem and "5 failed" in problem


def test_an_all_failed_run_fails_every_bound_of_the_table_rows() -> None:
    """The committed exact rows of the sequential baseline include max-only bounds that zeros used to pass."""
    table = load_table(TABLE)
    m = measurement(failed(), config="hf")
    hw = Hardware("cpu-2c-avx512", False)
    hf = [b for b in table.for_run(hw, "cpu-llama-36m") if b.config == "hf" and b.tier == "exact"]
    assert hf
    for b in hf:  # memory_utilization too: the memory the server reached under load is unknown when nothing loaded it
        assert check(b, lambda c, w: m, lambda c: lab()) is not None, b


def test_a_served_run_has_its_figures_and_passes_a_bound_it_meets() -> None:
    m = measurement(served())
    assert m.value("median_ttft_ms") == pytest.approx(100.0)
    assert m.value("failure_rate") == 0.0
    assert check(bound("median_ttft_ms", hi=150), lambda c, w: m, lambda c: lab()) is None
    problem = check(bound("median_ttft_ms", hi=50), lambda c, w: m, lambda c: lab())
    assert problem and problem.startswith("[exact tier, cpu-2c-amx / cpu-llama-36m / vllm] median_ttft_ms = 100")


# ---- tiers --------------------------------------------------------------------------------------------------------

def test_the_portable_tier_applies_to_hardware_the_table_has_never_seen() -> None:
    table = load_table(TABLE)
    new_cpu = table.for_run(Hardware("some-new-box", False), "cpu-llama-36m")
    new_gpu = table.for_run(Hardware("some-new-gpu", True, gpu_name="NVIDIA X9"), "llama-2-7b")
    assert len(new_cpu) >= 5 and {b.tier for b in new_cpu} == {"portable"}
    assert len(new_gpu) >= 5 and {b.tier for b in new_gpu} == {"portable"}
    assert {b.base_metric for b in new_cpu} >= {"output_throughput", "batch_efficiency", "single_stream_mbu",
                                                "median_ttft_ms", "failure_rate"}
    assert not any(b.hardware == "any-gpu" for b in new_cpu) and not any(b.hardware == "any-cpu" for b in new_gpu)


def test_profile_some_new_box_collects_at_least_five_portable_bounds() -> None:
    """As a user would see it: pytest's own collection of the generated tests, no skip among them."""
    done = subprocess.run([sys.executable, "-m", "pytest", "perf/expected_performance.toml", "--hardware-key",
                           "some-new-box", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ids = [line for line in done.stdout.splitlines() if "test_expectation[" in line]
    assert len(ids) >= 5, done.stdout
    assert all("[any" in i for i in ids), ids


def test_exact_rows_apply_only_to_their_key_and_a_list_of_keys_works() -> None:
    table = load_table(TABLE)
    exact = [b for b in table.for_run(Hardware("A100-PCIe-40GB", True), "llama-2-7b") if b.tier == "exact"]
    assert exact and all(b.hardware == "A100-PCIe-40GB" for b in exact)
    assert not [b for b in table.for_run(Hardware("A100-SXM-80GB", True), "llama-2-7b") if b.tier == "exact"]


def test_a_ratio_bound_names_its_tier_when_it_fails() -> None:
    fast, slow = measurement(served(itl=0.01)), measurement(served(itl=0.02), config="hf")
    b = Bound("any-cpu", "cpu-llama-36m", "vllm", "output_throughput/hf", 5.0, None, "lab", "s", "t.toml:9")
    problem = check(b, lambda c, w: fast if c == "vllm" else slow, lambda c: lab())
    assert problem is not None and problem.startswith("[portable tier, any-cpu / cpu-llama-36m / vllm]")


# ---- table errors: every problem at once ----------------------------------------------------------------------------

def test_a_bad_table_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('''[workloads.lab]
cpu = { num_requests = 4, concurrency = 2, prompt_len = 8, output_len = 4, colour = "red" }

[configs.vllm]
engine = "vllm"

[configs.tgi]
engine = "tgi"

[[expect]]
hardware = "cpu-2c-amx"
model = "cpu-llama-36m"
config = "nope"
workload = "missing"
output_throughput = { min = "fast" }
median_ttft_ms = { below = 3 }
p99_ttft_ms = 200
''')
    with pytest.raises(ConfigError) as e:
        load_table(bad)
    text = str(e.value)
    for needle in ("unknown field 'colour'", "engine = 'tgi'", "bad.toml:10: config 'nope'",
                   "workload 'missing'", "'output_throughput': min and max must be numbers",
                   "'median_ttft_ms' must be a table with min and/or max", "'p99_ttft_ms' must be a table"):
        assert needle in text, (needle, text)
    assert text.startswith("7 problem(s)")


# ---- hardware identity ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, memory, sku", [
    ("NVIDIA H100 80GB HBM3", 79.6, "H100-SXM-80GB"), ("NVIDIA H100 PCIe", 79.6, "H100-PCIe-80GB"),
    ("NVIDIA H200", 140.4, "H200-SXM-140GB"), ("NVIDIA A100-SXM4-40GB", 39.4, "A100-SXM-40GB"),
    ("NVIDIA A100-PCIE-40GB", 39.4, "A100-PCIe-40GB"), ("NVIDIA A100 80GB PCIe", 79.2, "A100-PCIe-80GB"),
    ("NVIDIA H100 NVL", 93.6, "H100-NVL-94GB"), ("NVIDIA L4", 22.1, "L4-22GB"),
])
def test_the_gpu_sku_tells_sxm_from_pcie(name: str, memory: float, sku: str) -> None:
    assert gpu_sku(name, memory) == sku


def test_identity_is_finer_than_the_key() -> None:
    epyc = Hardware("cpu-2c-avx512", False, cores=2, cpu_family="AuthenticAMD family 25 model 17", isa="avx512")
    xeon = Hardware("cpu-2c-avx512", False, cores=2, cpu_family="GenuineIntel family 6 model 143", isa="avx512")
    assert epyc.key == xeon.key and epyc.identity() != xeon.identity()
    assert CPU.engine_threads == 1 and Hardware("cpu-8c-avx2", False, cores=8).engine_threads == 7


# ---- calibration's proposed rows --------------------------------------------------------------------------------

def _rounds(values: dict[str, list[float]]) -> RoundsFile:
    rounds = []
    for config, tputs in values.items():
        for i, x in enumerate(tputs):
            figures = {"output_throughput": x, "median_ttft_ms": 1000.0 / x * 100, "p99_ttft_ms": 2e5 / x,
                       "median_tpot_ms": 20.0, "p99_tpot_ms": 25.0, "median_itl_ms": 20.0,
                       "median_e2el_ms": 1500.0, "p99_e2el_ms": 1800.0}
            rounds.append(Round(config, i // 3, i % 3, f"{config}-r{i}", figures))
    return RoundsFile({"versions": {"vllm": "0.32.0", "torch": "2.13"}}, {}, rounds)


def test_proposed_rows_follow_the_margin_rule(tmp_path: Path) -> None:
    calibration = _rounds({"vllm": [300, 310, 290, 305, 295, 300], "hf": [70, 69, 71, 70, 70, 70]})
    rows = propose_rows(calibration, CPU, "cpu-llama-36m", {"vllm": (0.41, 0.02), "hf": (0.1, 0.1)},
                        CalibrationOptions())
    # spread of 300 +/- ~2.4% is small: the 15% CPU floor sets the margin
    assert "output_throughput = { min = 255 }" in rows
    assert 'hardware = "cpu-2c-amx"' in rows and "failure_rate = { max = 0 }" in rows
    # batch efficiency's own spread (loaded and single-stream runs together) sets its margin: 15% floor, then 4 x 10%
    # in log (0.1 x exp(0.4))
    assert "batch_efficiency = { min = 0.348 }" in rows and "batch_efficiency = { max = 0.149 }" in rows
    noisy = _rounds({"vllm": [200, 300, 400, 250, 350, 300]})
    wide = propose_rows(noisy, CPU, "cpu-llama-36m", {}, CalibrationOptions())
    # the spread is that of one round in a new lifetime (noise model, lifetimes and rounds), with its false failures
    s, df = prediction_spread(noisy.noise()["vllm"]["output_throughput"], 2)
    m = 1 - math.exp(-4 * s)  # throughput is a min: 4 spreads below in log
    assert m > 0.15 and f"margin {m:.0%}, ~" in wide and f"{df:.2g} df" in wide


def test_proposed_rows_go_between_markers_and_replace_an_earlier_proposal(tmp_path: Path) -> None:
    table = tmp_path / "t.toml"
    table.write_text(TABLE.read_text())
    first = propose_rows(_rounds({"vllm": [300] * 6, "hf": [70] * 6}), CPU, "cpu-llama-36m", {}, CalibrationOptions())
    write_rows(table, "cpu-2c-amx", "cpu-llama-36m", first)
    second = propose_rows(_rounds({"vllm": [400] * 6, "hf": [70] * 6}), CPU, "cpu-llama-36m", {}, CalibrationOptions())
    write_rows(table, "cpu-2c-amx", "cpu-llama-36m", second)
    text = table.read_text()
    assert text.count("# >>> servingbench calibrate: cpu-2c-amx / cpu-llama-36m") == 1
    assert "min = 340" in text and "min = 255" not in text  # 400 x 0.85; the first proposal is gone
    exact = [b for b in load_table(table).for_run(CPU, "cpu-llama-36m") if b.tier == "exact"]
    assert {b.config for b in exact} == {"vllm", "hf"}


def test_a_bad_or_missing_table_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[configs.vllm]\nengine = "vllm"\n\n[[expect]]\nhardware = "x"\nmodel = "m"\nconfig = "nope"\n'
                   'output_throughput = 3\n')
    for table, needles in ((bad, ["3 problem(s)", "bad.toml:4: config 'nope'", "workload 'lab' is not defined",
                                  "'output_throughput' must be a table"]),
                           (tmp_path / "missing.toml", [f"--expectations {tmp_path / 'missing.toml'}: no such file"])):
        done = subprocess.run([sys.executable, "-m", "pytest", "perf/test_lab_load.py", "--collect-only", "-q",
                               "-p", "no:cacheprovider", "--expectations", str(table)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 4, done.stdout + done.stderr
        assert "INTERNALERROR" not in done.stdout + done.stderr and "Traceback" not in done.stderr
        for needle in needles:
            assert needle in done.stderr, (needle, done.stderr)


def _state(key: str, model: str) -> PluginState:
    return PluginState(True, Hardware(key, True, cores=16), get_model(model), TABLE, load_table(TABLE))


def test_the_thresholds_line_tells_rows_deselected_from_rows_the_table_lacks() -> None:
    """Seen on the H100 of 2026-12-07 (`-k "hf and batch_efficiency"`): the line said the table had no exact rows for
    H100-SXM-80GB, listing H100-SXM-80GB among the keys it has; its rows were there, only deselected."""
    state = _state("H100-SXM-80GB", "llama-2-7b")
    applying = state.bounds()
    exact = [b for b in applying if b.tier == "exact"]
    assert exact, "the table's H100 rows for llama-2-7b (what this test is about)"
    line = summary_text(state, [])
    assert "0 exact bound(s)" in line and "no exact rows" not in line and "calibrate" not in line, line
    assert f"{len(applying)} more bound(s)" in line and "deselected" in line, line
    assert f"{len(exact)} exact bound(s)" in summary_text(state, applying)
    other_model = summary_text(_state("H100-SXM-80GB", "mistral-7b"), [])
    assert "the table's exact rows for H100-SXM-80GB are for model(s) llama-2-7b, not mistral-7b" in other_model
    new_box = summary_text(_state("B200-SXM-180GB", "llama-2-7b"), [])
    assert "the table has no exact rows for B200-SXM-180GB (it has: " in new_box and "H100-SXM-80GB" in new_box

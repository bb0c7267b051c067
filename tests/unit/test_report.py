"""The performance report, from REAL results directories: one produced here by an inner perf session against real
HF servers (two configs playing the two engines: one request at a time, and static batches of 4), and
measurements made here with an H100's recorded environment. Plus the MBU/MFU math and the recommendation rules on
hand-computed inputs.

Checked: the figures are valid PNG images, the tables hold the measured numbers (the JSON values, formatted), the
efficiency figures follow the stated formulas, and a recommendation changes when the data or the SLO change.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import PERCENTILES, BenchmarkMetrics, Distribution
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.figures import efficiency as eff
from servingbench.servers.models import get_model
from servingbench.report.goodput import SLOLimits
from servingbench.report.recommend import block_size_advice, kv_quant_advice, recommend_concurrency
from servingbench.report.write import write_report
from servingbench.studies.common import block_size_findings, kv_dtype_findings, offline_findings, prefix_findings
from servingbench.studies.tensor_parallel import tp_findings

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"

# ---- MBU / MFU: hand-computed --------------------------------------------------------------------------------------
# Llama-2-7B: embeddings 32000 x 4096 = 131,072,000; per layer 4 x 4096^2 (attention) + 3 x 4096 x 11008 (MLP)
# + 2 x 4096 (norms) = 202,383,360; x 32 = 6,476,267,520; + final norm 4096 + LM head 131,072,000
# = 6,738,415,616 parameters, of which a decode step streams all but the input embedding: 6,607,343,616.
LLAMA7B = eff.ModelShape.from_config(get_model("llama-2-7b").config)
H100_SXM = eff.DevicePeaks("H100 SXM", 3350.0, {"float16": 989.4}, "datasheet")


def test_llama_2_7b_sizes() -> None:
    assert LLAMA7B.num_parameters == 6_738_415_616
    assert LLAMA7B.streamed_parameters == 6_607_343_616
    assert LLAMA7B.kv_bytes_per_token(2) == 2 * 32 * 32 * 128 * 2 == 524_288  # K and V, fp16
    assert LLAMA7B.attention_flops_per_token(640) == 4 * 32 * 32 * 128 * 640 == 335_544_320


def test_mbu_and_mfu_by_hand() -> None:
    # batch 8, context 640, 1000 output tok/s on an H100 SXM (3.35 TB/s, 989.4 TFLOP/s fp16):
    # bytes/token = 6,607,343,616 x 2 / 8 + 640 x 524,288 = 1,651,835,904 + 335,544,320 = 1,987,380,224
    # MBU = 1000 x 1,987,380,224 / 3.35e12 = 0.593248...
    # FLOPs/token = 2 x 6,607,343,616 + 335,544,320 = 13,550,231,552; MFU = 1000 x that / 989.4e12 = 0.0136954...
    e = eff.compute_efficiency(LLAMA7B, output_tokens_per_s=1000, batch=8, context=640, weight_dtype="float16",
                               kv_dtype="auto", peaks=H100_SXM)
    assert e.bytes_per_token == 1_987_380_224
    assert e.mbu == pytest.approx(1_987_380_224e3 / 3.35e12) == pytest.approx(0.593248, abs=1e-6)
    assert e.flops_per_token == 13_550_231_552
    assert e.mfu == pytest.approx(0.0136954, abs=1e-7)
    # batch 1: the whole weight set per token -> 13,550,231,552 bytes/token (the same number as FLOPs, by chance
    # of fp16 weights and MHA): 1000 tok/s would need 13.55 TB/s, four times the H100's bandwidth
    one = eff.compute_efficiency(LLAMA7B, output_tokens_per_s=1000, batch=1, context=640, weight_dtype="float16",
                                 kv_dtype="auto", peaks=H100_SXM)
    assert one.bytes_per_token == 13_214_687_232 + 335_544_320
    assert one.mbu == pytest.approx(4.04484, abs=1e-5)


def test_gqa_and_fp8_kv_shrink_the_kv_term_only() -> None:
    mistral = eff.ModelShape.from_config(get_model("mistral-7b").config)
    assert mistral.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131_072  # 8 KV heads, not 32
    a = eff.compute_efficiency(mistral, output_tokens_per_s=100, batch=4, context=1000, weight_dtype="bfloat16",
                               kv_dtype="auto", peaks=None)
    b = eff.compute_efficiency(mistral, output_tokens_per_s=100, batch=4, context=1000, weight_dtype="bfloat16",
                               kv_dtype="fp8_e4m3", peaks=None)
    assert a.kv_bytes_per_sequence == 131_072_000 and b.kv_bytes_per_sequence == 65_536_000
    assert a.weight_bytes == b.weight_bytes and a.mbu is None and a.mfu is None  # no peaks: no utilization


def test_prefill_flops_skip_the_lm_head_and_attend_half_the_prompt() -> None:
    # per prompt token of a 512-token prompt: 2 x (6,607,343,616 - 131,072,000) + 4 x 32 x 4096 x 256
    assert LLAMA7B.prefill_flops_per_token(512) == 2 * 6_476_271_616 + 134_217_728


def test_decode_batch_is_what_the_server_batched() -> None:
    def rec(first: float, last: float) -> RequestRecord:
        return RequestRecord("r", prompt_len=8, max_tokens=3, chunk_times=[first, (first + last) / 2, last],
                             output_tokens=3)

    # a sequential server: 3 requests decode one after another -> 1.0 whatever the client's concurrency
    assert eff.decode_batch([rec(0, 1), rec(1, 2), rec(2, 3)]) == pytest.approx(1.0)
    # two overlapping the whole time, then one alone: (2 + 2 + 1) seconds of decoding over a 3 s union
    assert eff.decode_batch([rec(0, 2), rec(0, 2), rec(2, 3)]) == pytest.approx(5 / 3)
    assert eff.decode_batch([RequestRecord("r", 8, 3, chunk_times=[1.0])]) is None  # one chunk: no decode step seen
    assert eff.mean_context([rec(0, 1)]) == 8 + 3 / 2


def test_peaks_lookup() -> None:
    table = eff.load_peak_table()
    assert eff.find_peaks("H100-SXM-80GB", "NVIDIA H100 80GB HBM3", table).memory_bandwidth_gb_s == 3350
    assert eff.find_peaks("H100-PCIe-80GB", "NVIDIA H100 PCIe", table).memory_bandwidth_gb_s == 2000
    assert eff.find_peaks("A100-SXM-40GB", None, table).flops_per_s("bfloat16") == 312e12
    h200x2 = eff.find_peaks("H200-SXM-140GB-x2", "NVIDIA H200", table)
    assert h200x2.count == 2 and h200x2.bandwidth_bytes_per_s == 2 * 4.8e12
    assert eff.find_peaks("test-hw", None, table) is None


# ---- recommendation rules on hand-built rows ----------------------------------------------------------------------

def flat(ms: float) -> Distribution:
    """A latency distribution whose every percentile is ``ms``."""
    return Distribution(ms, ms, 0.0, ms, ms, {p: ms for p in PERCENTILES}, 1)


def level(c: int, tput: float, ttft99: float, tpot99: float) -> Measurement:
    metrics = BenchmarkMetrics(duration=1.0, completed=2 * c, failed=0, total_input_tokens=2 * c * 512,
                               total_output_tokens=round(tput), request_throughput=2.0 * c, output_throughput=tput,
                               total_token_throughput=tput + 2 * c * 512, request_goodput=None,
                               max_concurrent_requests=c, ttft=flat(ttft99), tpot=flat(tpot99), itl=flat(tpot99),
                               e2el=flat(ttft99 + 255 * tpot99), queue_time=flat(0.0))
    m = Measurement(key=f"x-c{c}", engine="vllm", config_name="x", config={},
                    workload={"name": "s", "concurrency": c, "num_requests": 2 * c, "prompt_len": 512,
                              "output_len": 256}, metrics=metrics, telemetry=TelemetrySummary(), records=[],
                    started_at=0.0)
    assert (m.value("output_throughput"), m.value("p99_ttft_ms"), m.value("p99_tpot_ms")) == (tput, ttft99, tpot99)
    return m


SWEEP = [level(1, 100, 30, 6), level(8, 700, 120, 7), level(32, 2000, 900, 11), level(64, 2600, 2500, 16)]


def test_concurrency_is_the_fastest_level_within_the_slo() -> None:
    assert recommend_concurrency("x", SWEEP, SLOLimits()).choice == 32  # c=64 breaks TTFT p99 <= 2 s
    assert recommend_concurrency("x", SWEEP, SLOLimits(tpot_p99_ms=10)).choice == 8
    assert recommend_concurrency("x", SWEEP, SLOLimits(ttft_p99_ms=10)).choice is None
    top = recommend_concurrency("x", SWEEP, SLOLimits(ttft_p99_ms=5000))
    assert top.choice == 64 and "did not bind" in top.verdict
    # a level that adds under 5% throughput only adds latency: the lower one is recommended
    flat = [level(1, 100, 30, 6), level(4, 390, 60, 6.5), level(8, 400, 120, 7)]
    assert recommend_concurrency("x", flat, SLOLimits(), noise=0.05).choice == 4
    assert recommend_concurrency("x", flat, SLOLimits(), noise=0.0).choice == 8


def test_block_size_and_kv_quantization_rules() -> None:
    rows = [{"block_size": b, "config_name": "vllm" if b == 16 else f"vllm-block{b}", "status": "measured",
             "output_throughput": t, "median_ttft_ms": 50, "median_tpot_ms": 7} for b, t in ((16, 1000), (32, 1030))]
    assert block_size_advice({"rows": rows}, noise=0.05).choice == 16  # +3% is noise
    rows[1]["output_throughput"] = 1100
    assert block_size_advice({"rows": rows}, noise=0.05).choice == 32
    study = {"rows": [{"key": "fp8", "status": "measured", "capacity_gain": 2.0, "expected_capacity_gain": 2.0,
                       "prompt_top1_agreement": 0.97, "prompt_logprob_mae": 0.02}]}
    load = [level(64, 2600, 500, 16)]  # 64 x 768 = 49,152 tokens of KV
    assert kv_quant_advice(study, 118_192, load, 0.8, 0.25).choice is False  # capacity does not bind
    assert kv_quant_advice(study, 40_000, load, 0.8, 0.25).choice == "fp8"
    assert kv_quant_advice(study, 40_000, load, 0.99, 0.25).choice is False  # not accurate enough
    unscored = {"rows": [{"key": "fp8", "status": "measured", "capacity_gain": 2.0, "expected_capacity_gain": 2.0}]}
    advice = kv_quant_advice(unscored, 40_000, load, 0.8, 0.25)  # dummy weights: capacity only
    assert advice.choice is None and "up to 2x tokens per GiB" in advice.verdict
    assert "llama-2-7b-seeded" in advice.verdict


# ---- loading: measurement files read back as Measurements ---------------------------------------------------------

H100_ENV = {"hardware": "H100-80GB", "model": "llama-2-7b",
            "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_total_gib": 79.6, "driver": "570.1"}],
            "versions": {"vllm": "0.26.0"}}


def made(c: int, started_at: float, gap: float = 0.01, n: int | None = None, config: str = "vllm",
         error: str | None = None) -> Measurement:
    """A vLLM run of n (default 2c) requests at concurrency c (512 prompt / 16 output tokens), its metrics from its
    records; ``error``: every request failed with it."""
    from servingbench.measure.metrics import compute_metrics

    n = n or 2 * c
    records = [RequestRecord(f"r{i}", 512, 16, queued_at=0.0, start=(i // c) * 0.5, error=error,
                             chunk_times=[] if error else [(i // c) * 0.5 + 0.1 + gap * j for j in range(16)],
                             output_tokens=None if error else 16) for i in range(n)]
    w = {"name": "lab", "num_requests": n, "concurrency": c, "prompt_len": 512, "output_len": 16}
    duration = max((r.chunk_times[-1] for r in records if r.chunk_times), default=1.0)
    return Measurement(key=f"{config}--lab-n{n}-c{c}-p512-o16", engine="vllm", config_name=config,
                       config={"device": "cuda", "gpu_memory_utilization": 0.9, "dtype": "float16"}, workload=w,
                       metrics=compute_metrics(records, duration), telemetry=TelemetrySummary(),
                       records=records, started_at=started_at, environment=H100_ENV)


def test_load_run_reads_measurements_typed(tmp_path: Path) -> None:
    from servingbench.measure.metrics import batch_efficiency
    from servingbench.report.data import batch_efficiency as report_batch_efficiency, load_run

    a, b = tmp_path / "a", tmp_path / "b"
    made(4, started_at=1.0).save(a)
    made(1, started_at=1.0).save(a)
    made(4, started_at=2.0, gap=0.005).save(b)  # the same key, run later (and faster)
    (a / "measurements" / "broken.json").write_text("{not json")
    (a / "other.json").write_text(json.dumps({"schema": "something/else"}))
    (a / "summary.json").write_text(json.dumps({"notes": ["lease ended"]}))
    for dirs in ([a, b], [b, a]):  # whichever directory comes first, the later run is kept
        data = load_run(dirs)
        assert [(m.key, m.started_at) for m in data.measurements] == [("vllm--lab-n2-c1-p512-o16", 1.0),
                                                                      ("vllm--lab-n8-c4-p512-o16", 2.0)]
        assert all(isinstance(m, Measurement) for m in data.measurements)
        assert sum("appears twice" in n for n in data.notes) == 1
        assert sum(n.startswith(f"skipped unreadable {a / 'measurements' / 'broken.json'}") for n in data.notes) == 1
        assert "session note: lease ended" in data.notes and not any("other.json" in n for n in data.notes)
    assert (data.hardware, data.model, data.gpu) == ("H100-80GB", "llama-2-7b", True)
    one, four = data.measurements
    assert report_batch_efficiency(four, data.measurements) == batch_efficiency(
        four.metrics.output_throughput, one.metrics.output_throughput, 4)
    assert report_batch_efficiency(one, data.measurements) is None  # concurrency 1: undefined
    with pytest.raises(FileNotFoundError, match="results directory .* does not exist"):
        load_run([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no servingbench measurements or studies under"):
        load_run([tmp_path / "empty"])


def test_report_of_made_measurements(tmp_path: Path) -> None:
    made(4, started_at=1.0).save(tmp_path / "r")
    made(1, started_at=1.0).save(tmp_path / "r")
    md = write_report([tmp_path / "r"], tmp_path / "out").read_text()
    machine = json.loads((tmp_path / "out" / "report.json").read_text())
    four = made(4, 1.0)
    e = eff.measurement_efficiency(four, eff.peaks_for(four, eff.load_peak_table()))
    assert e.peaks is not None and e.peaks.memory_bandwidth_gb_s == 3350  # H100 SXM, from the recorded GPU name
    assert machine["efficiency"][four.key]["mbu"] == pytest.approx(e.mbu)
    row = table_row(md.split("## All measurements")[1], four.key)
    assert row[1:4] == ["vllm", "8/0", f"{four.metrics.output_throughput:.1f}"]
    assert row[4] == f"{four.value('median_ttft_ms'):.1f}" and row[-2] == f"{e.mbu:.1%}"
    be = four.metrics.output_throughput / (4 * made(1, 1.0).metrics.output_throughput)
    assert table_row(md, "batch efficiency: T(C) / (C x T(1))")[1] == f"{be:.3f}"
    assert table_row(md, "memory utilization (of GPU, else host RAM)")[1] == "n/a"  # no telemetry: not 0%
    assert machine["headlines"] == {"vllm": four.key}
    # report.html is self-contained: every figure inlined, none linked
    pngs = list((tmp_path / "out" / "figures").glob("*.png"))
    html = (tmp_path / "out" / "report.html").read_text()
    assert pngs and html.count("data:image/png;base64,") == len(pngs)
    assert "src='figures/" not in html


H100_TABLE = """
[workloads.lab]
cpu = { num_requests = 8, concurrency = 4, prompt_len = 512, output_len = 16, warmup_requests = 0 }
gpu = { num_requests = 8, concurrency = 4, prompt_len = 512, output_len = 16, warmup_requests = 0 }

[configs.vllm]
engine = "vllm"

[configs.vllm-broken]
engine = "vllm"

[configs.hf]
engine = "hf"

[[expect]]
hardware = "H100-80GB"
model = "llama-2-7b"
config = "vllm"
source = "made up"
output_throughput = { min = 100 }
batch_efficiency = { min = 0.5 }
mbu = { min = 0.1 }
median_ttft_ms = { max = 0.001 }
"output_throughput/hf" = { min = 5 }

[[expect]]
hardware = "H100-80GB"
model = "llama-2-7b"
config = "vllm-broken"
source = "made up"
median_ttft_ms = { max = 1000 }
"""


def test_expectation_rows_check_bounds_as_the_session_does(tmp_path: Path) -> None:
    from servingbench.report.build import expectation_rows
    from servingbench.report.data import load_run

    four, one = made(4, 1.0), made(1, 1.0, n=8)  # the table's lab load and its single-stream variant
    broken = made(4, 1.0, config="vllm-broken", error="HTTP 500")  # measured, but no request succeeded
    for m in (four, one, broken):
        m.save(tmp_path / "r")
    (tmp_path / "expected.toml").write_text(H100_TABLE)
    rows, note = expectation_rows(tmp_path / "expected.toml", load_run([tmp_path / "r"]), eff.load_peak_table())
    got = {(r[0], r[1]): r[2:] for r in rows}
    e = eff.measurement_efficiency(four, eff.peaks_for(four, eff.load_peak_table()))
    be = four.metrics.output_throughput / (4 * one.metrics.output_throughput)
    assert got[("vllm", "output_throughput")] == [">= 100", f"{four.metrics.output_throughput:.4g}", "pass",
                                                  "expected.toml:15"]
    assert got[("vllm", "batch_efficiency")][1:3] == [f"{be:.4g}", "pass"]
    assert got[("vllm", "mbu")][1:3] == [f"{e.mbu:.4g}", "pass"]
    assert got[("vllm", "median_ttft_ms")][1:3] == [f"{four.value('median_ttft_ms'):.4g}", "**FAIL**"]
    assert got[("vllm", "output_throughput/hf")][1:3] == ["n/a", "not measured"]  # no hf run
    assert got[("vllm-broken", "median_ttft_ms")][1:3] == ["n/a", "**FAIL**"]  # no figure: the bound fails
    assert note == f"bounds of {tmp_path / 'expected.toml'} for H100-80GB / llama-2-7b; sources: made up"


# ---- helpers ---------------------------------------------------------------------------------------------------------

def table_row(md: str, first_cell: str) -> list[str]:
    line = next(l for l in md.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def check_pngs(out: Path, names: set[str]) -> None:
    found = {p.name for p in (out / "figures").glob("*.png")}
    assert names <= found, found
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == PNG
        img = matplotlib.image.imread(p)
        assert img.shape[0] >= 300 and img.shape[1] >= 400 and img.shape[2] in (3, 4), (p, img.shape)
        assert img.std() > 0.05, f"{p} is blank"


# ---- a results directory made here: an inner perf session on real HF servers -------------------------------------

TABLE = """
[workloads.lab]
cpu = { num_requests = 8, concurrency = 4, prompt_len = 32, output_len = 16, warmup_requests = 0 }
gpu = { num_requests = 8, concurrency = 4, prompt_len = 32, output_len = 16, warmup_requests = 0 }

[configs.hf]
engine = "hf"

[configs.hf-b4]
engine = "hf"
max_batch_size = 4

[[expect]]
hardware = "test-hw"
model = "cpu-llama-36m"
config = "hf-b4"
source = "test"
output_throughput = { min = 0.001 }
batch_efficiency = { min = 0.0 }
"output_throughput/hf" = { min = 0.001 }

[[expect]]
hardware = "test-hw"
model = "cpu-llama-36m"
config = "hf"
source = "test"
median_ttft_ms = { max = 0.001 }
batch_efficiency = { max = 100 }
"""

TESTS = '''
def test_third_level(bench, expectations):
    w = bench.workload(expectations, "lab", "hf-b4")
    assert bench.measure("hf-b4", w.replace(concurrency=2)).metrics.failed == 0
'''

PEAKS = """
[[device]]
name = "test device"
profiles = ["test-hw"]
memory_bandwidth_gb_s = 20
peak_tflops = { float32 = 0.1 }
source = "made up for the test"
"""


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results of a real perf session: configs hf (one at a time) and hf-b4 (batches of 4) at c4, c1, and c2 for
    hf-b4, with --report. One session for the module (~40 s)."""
    d = tmp_path_factory.mktemp("inner")
    (d / "expected.toml").write_text(TABLE)
    (d / "test_perf.py").write_text(TESTS)
    (d / "pytest.ini").write_text("[pytest]\n")
    (d / "step_summary.md").write_text("an earlier step's summary\n")  # as GitHub Actions gives it: appended to
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--expectations", "expected.toml", "--profile", "test-hw", "--results-dir",
                           str(d / "results"), "--report", "-v", "--junitxml", str(d / "junit.xml"),
                           "expected.toml", "test_perf.py"], cwd=d, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GITHUB_STEP_SUMMARY": str(d / "step_summary.md")})
    out = proc.stdout + proc.stderr
    assert re.search(r"1 failed, 5 passed", out), out  # hf's TTFT bound of 0.001 ms is meant to fail
    assert f"report: {d / 'results' / 'report' / 'report.md'}" in out, out
    (d / "peaks.toml").write_text(PEAKS)
    return d


def test_ci_gets_the_summary_in_markdown_and_each_bounds_figures_in_junit(session_dir: Path) -> None:
    """$GITHUB_STEP_SUMMARY: the session summary appended in Markdown; --junitxml: each bound test's measured
    value, bound and tier as properties, the failing one's too."""
    md = (session_dir / "step_summary.md").read_text()
    assert md.startswith("an earlier step's summary\n## servingbench: test-hw / cpu-llama-36m\n"), md[:300]
    assert re.search(r"^\| hf-b4 \| lab n8 c4 32/16 \| 8/0 \|", md, re.M), md
    assert "- note: thresholds: hardware test-hw with model cpu-llama-36m: 5 exact bound(s), 0 portable" in md, md
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in ET.parse(session_dir / "junit.xml").getroot().iter("testcase")}
    bounds = {name: props for name, props in cases.items() if name.startswith("test_expectation[")}
    assert len(bounds) == 5, cases
    ttft = bounds["test_expectation[test-hw:hf:median_ttft_ms]"]
    assert ttft["tier"] == "exact" and ttft["bound"] == "<= 0.001" and ttft["metric"] == "median_ttft_ms", ttft
    assert float(ttft["measured"]) > 0.001, ttft  # the failing bound carries the figure that failed it
    assert re.fullmatch(r"expected\.toml:\d+", ttft["location"]), ttft  # as --expectations named it
    assert all(float(p["measured"]) >= 0 for p in bounds.values()), bounds


def report(src: Path, out: Path, *flags: str) -> tuple[str, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "servingbench.cli", "report", str(src), "-o", str(out),
                           "--expectations", str(src.parent / "expected.toml"), *flags],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (out / "report.md").read_text(), json.loads((out / "report.json").read_text())


def measurements(results: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "measurements").glob("*.json")}


def test_session_report_holds_the_measured_numbers(session_dir: Path) -> None:
    results = session_dir / "results"
    ms = measurements(results)
    assert set(ms) == {"hf--lab-n8-c4-p32-o16", "hf--lab-n8-c1-p32-o16", "hf-b4--lab-n8-c4-p32-o16",
                       "hf-b4--lab-n8-c1-p32-o16", "hf-b4--lab-n8-c2-p32-o16"}
    md = (results / "report" / "report.md").read_text()  # written by the pytest --report option
    one, four = ms["hf--lab-n8-c4-p32-o16"], ms["hf-b4--lab-n8-c4-p32-o16"]
    header = next(l for l in md.splitlines() if l.startswith("| metric |"))
    assert "hf-b4 (lab c4 n8 32/16)" in header and "hf-b4 vs hf" in header
    col: dict[str, int] = {}
    for i, cell in enumerate(header.strip("|").split("|")):
        col.setdefault(cell.strip().split(" ")[0], i)
    row = table_row(md, "output throughput (tok/s)")
    assert row[col["hf"]] == f"{one['output_throughput']:.1f}"
    assert row[col["hf-b4"]] == f"{four['output_throughput']:.1f}"
    assert row[-1] == f"{four['output_throughput'] / one['output_throughput']:.3g}x"  # hf-b4 vs hf
    for label, key, spec in (("TTFT p99 (ms)", "p99_ttft_ms", "{:.1f}"), ("TPOT p50 (ms)", "median_tpot_ms", "{:.2f}"),
                             ("E2E latency p99 (ms)", "p99_e2el_ms", "{:.0f}")):
        r = table_row(md, label)
        assert (r[col["hf"]], r[col["hf-b4"]]) == (spec.format(one[key]), spec.format(four[key])), label
    be = four["output_throughput"] / (4 * ms["hf-b4--lab-n8-c1-p32-o16"]["output_throughput"])
    assert table_row(md, "batch efficiency: T(C) / (C x T(1))")[col["hf-b4"]] == f"{be:.3f}"
    # the expectations table: each bound with its measured value and verdict (hf's TTFT bound fails on purpose)
    ttft = table_row(md, "hf | median_ttft_ms")
    assert ttft[3:5] == [f"{one['median_ttft_ms']:.4g}", "**FAIL**"]
    assert table_row(md, "hf-b4 | output_throughput")[3:5] == [f"{four['output_throughput']:.4g}", "pass"]
    # the sweep table lists hf-b4 at c1, c2, c4; no peaks known for "test-hw": MBU says so
    assert [r.split("|")[3].strip() for r in md.splitlines() if r.startswith("| hf-b4 | lab |")] == ["1", "2", "4"]
    assert "no peak figures for hardware test-hw" in md
    check_pngs(results / "report", {"comparison.png", "throughput_latency.png"})


def test_session_mbu_with_given_peaks(session_dir: Path, tmp_path: Path) -> None:
    md, machine = report(session_dir / "results", tmp_path, "--peaks", str(session_dir / "peaks.toml"))
    m = measurements(session_dir / "results")["hf--lab-n8-c1-p32-o16"]
    shape = eff.ModelShape.from_config(get_model("cpu-llama-36m").config)
    # fp32 weights: (params - 8192 x 512 input embedding) x 4 bytes; KV per token 2 x 8 layers x 8 heads x 64 x 4
    w = (shape.num_parameters - 8192 * 512) * 4
    kv_tok = 2 * 8 * 8 * 64 * 4
    recs = m["records"]
    batch = eff.decode_batch([RequestRecord.from_dict(r) for r in recs])
    assert batch == pytest.approx(1.0, abs=0.05)  # one request at a time
    ctx = sum(r["prompt_len"] + r["output_tokens"] / 2 for r in recs) / len(recs)
    mbu = m["output_throughput"] * (w / batch + ctx * kv_tok) / 20e9
    mfu = m["output_throughput"] * (2 * (shape.num_parameters - 8192 * 512) + 4 * 8 * 512 * ctx) / 0.1e12
    assert machine["efficiency"][m["key"]]["mbu"] == pytest.approx(mbu)
    assert machine["efficiency"][m["key"]]["mfu"] == pytest.approx(mfu)
    row = table_row(md, m["key"])
    assert (row[6], row[9]) == (f"{mbu:.1%}", f"{mfu:.2%}")
    check_pngs(tmp_path, {"efficiency.png"})


def edited_copy(src: Path, dst: Path, key: str, change: Any) -> Path:
    shutil.copytree(src, dst)
    path = dst / "measurements" / f"{key}.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))
    return dst


def test_recommendations_follow_the_data(session_dir: Path, tmp_path: Path) -> None:
    results = session_dir / "results"
    _, machine = report(results, tmp_path / "a")
    recs = {r["topic"]: r for r in machine["recommendations"]}
    best = recs["config"]["choice"]
    assert best in ("hf", "hf-b4")
    other = {"hf": "hf-b4", "hf-b4": "hf"}[best]

    def slow_first_token(m: dict[str, Any]) -> None:  # every request's chunks 5 s later: TTFT > the 2 s SLO
        for r in m["records"]:
            r["chunk_times"] = [t + 5.0 for t in r["chunk_times"]]
        m["p99_ttft_ms"] += 5000.0

    def slow_decode(m: dict[str, Any]) -> None:  # every request's TPOT 10 s: p99 TPOT 10,000 ms > the 200 ms SLO
        for r in m["records"]:
            c, n = r["chunk_times"], r["output_tokens"] or 0
            if len(c) > 1 and n > 1:
                r["chunk_times"] = [c[0] + 10.0 * (n - 1) * i / (len(c) - 1) for i in range(len(c))]
        m["p99_tpot_ms"] = 10_000.0

    copy = edited_copy(results, tmp_path / "edited", machine["headlines"][best], slow_first_token)
    _, edited = report(copy, tmp_path / "b")
    assert next(r for r in edited["recommendations"] if r["topic"] == "config")["choice"] == other

    # the concurrency of hf-b4: the fastest level whose p99s meet the SLO; tighten the SLO below that level's p99
    ms = [m for m in measurements(results).values() if m["config_name"] == "hf-b4"]
    levels = {m["workload"]["concurrency"]: m for m in ms}
    chosen = recs["concurrency (hf-b4)"]["choice"]
    fastest = max(m["output_throughput"] for m in levels.values())  # all levels meet the default SLO
    assert chosen == min(c for c, m in levels.items() if m["output_throughput"] >= 0.95 * fastest)
    # 8-request levels are judged at the percentile their sample supports (p50), not at p99 (studies/sampling.py)
    for flag, key in (("--slo-ttft-ms", "median_ttft_ms"), ("--slo-tpot-ms", "median_tpot_ms")):
        lower = [m[key] for m in ms if m[key] < levels[chosen][key]]
        if lower:
            limit = (max(lower) + levels[chosen][key]) / 2
            ok = [c for c, m in levels.items() if m[key] <= limit]
            top = max(levels[c]["output_throughput"] for c in ok)
            expected = min(c for c in ok if levels[c]["output_throughput"] >= 0.95 * top)
            _, tight = report(results, tmp_path / flag, flag, f"{limit}")
            got = next(r for r in tight["recommendations"] if r["topic"] == "concurrency (hf-b4)")["choice"]
            assert got == expected != chosen, (flag, limit, got)
            break
    else:  # the chosen level was also the quickest on both p99s: break its TPOT in a copy instead
        copy = edited_copy(results, tmp_path / "tpot", levels[chosen]["key"], slow_decode)
        _, tight = report(copy, tmp_path / "tpot-report")
        got = next(r for r in tight["recommendations"] if r["topic"] == "concurrency (hf-b4)")["choice"]
        assert got != chosen and got in levels


# ---- study sections: files in the studies' own shape (rows + findings from servingbench.studies.common) --------------

def study(name: str, rows: list[dict[str, Any]], findings: dict[str, Any]) -> dict[str, Any]:
    return {"schema": "servingbench.study/1", "study": name, "hardware": {"profile": "test-hw", "cpu": "test cpu",
            "cores": 2}, "model": {"name": "cpu-llama-36m"}, "rows": rows, "findings": findings,
            "extra_field_from_a_newer_version": 1}


def serving(tput: float, ttft: float, tpot: float) -> dict[str, Any]:
    return {"output_throughput": tput, "median_ttft_ms": ttft, "p99_ttft_ms": 2 * ttft, "median_tpot_ms": tpot,
            "p99_tpot_ms": 1.5 * tpot, "rss_peak_gib": 4.2, "gpu_memory_used_gib": 0.0}


def write_studies(d: Path, block64_tput: float) -> None:
    (d / "studies").mkdir(exist_ok=True)
    blocks = [{"key": "block16", "block_size": 16, "config_name": "vllm-block16", "status": "skipped",
               "reason": "ValueError: block size 16 is not supported"},
              {"key": "block64", "block_size": 64, "config_name": "vllm-block64", "status": "measured",
               "kv_capacity_tokens": 65536, "kv_cache_gib": 2.0, "tokens_per_gib": 32768.0,
               **serving(block64_tput, 90.0, 14.0)},
              {"key": "block128", "block_size": 128, "config_name": "vllm", "status": "measured",
               "kv_capacity_tokens": 65536, "kv_cache_gib": 2.0, "tokens_per_gib": 32768.0,
               **serving(215.5, 80.0, 13.0)}]
    kv = [{"key": "auto", "requested": "auto", "kv_cache_dtype": "auto", "status": "measured",
           "kv_capacity_tokens": 65536, "tokens_per_gib": 32768.0, "capacity_gain": 1.0},
          {"key": "fp8", "requested": "fp8", "kv_cache_dtype": "fp8_e4m3", "status": "measured",
           "kv_capacity_tokens": 262144, "tokens_per_gib": 131072.0, "capacity_gain": 4.0,
           "expected_capacity_gain": 4.0, "prompt_top1_agreement": 0.962, "prompt_logprob_mae": 0.0431,
           "greedy_exact_match": 0.75},
          {"key": "int8", "requested": "int8", "kv_cache_dtype": "int8", "status": "skipped",
           "reason": "NotImplementedError: int8 KV cache needs a GPU"}]
    prefix = [{"key": k, "config_name": c, "status": "measured", "hit_rate": hr, "expected_hit_rate": ehr,
               "prefix_len": 256, "prompt_len": 288, "num_requests": 24, "blocks_saved": bs, "kv_gib_saved": g,
               **serving(t, ttft, 13.0)}
              for k, c, hr, ehr, bs, g, t, ttft in (("off", "vllm-no-prefix-cache", 0.0, 0.0, 0.0, 0.0, 120.0, 400.0),
                                                    ("on", "vllm", 0.852, 0.852, 46.0, 0.18, 155.4, 91.6))]
    tp = [{"key": "tp1", "tensor_parallel_size": 1, "status": "measured", **serving(1000.0, 100.0, 7.0)},
          {"key": "tp2", "tensor_parallel_size": 2, "status": "measured", **serving(1700.0, 80.0, 5.0)},
          {"key": "tp4", "tensor_parallel_size": 4, "status": "skipped", "reason": "needs 4 GPUs; 2 visible"}]
    off = [{"key": "hf", "label": "hf-batch8-n32-p128-o64", "engine": "hf", "block_size": None, "status": "measured",
            "num_prompts": 32, "output_tokens_per_s": 161.1, "total_tokens_per_s": 483.3, "peak_rss_gib": 0.64},
           {"key": "v", "label": "vllm-block128-n32-p128-o64", "engine": "vllm", "block_size": 128,
            "status": "measured", "num_prompts": 32, "output_tokens_per_s": 345.1, "total_tokens_per_s": 1035.4,
            "peak_rss_gib": 4.26}]
    for name, rows, f in (("block_size", blocks, block_size_findings(blocks)), ("kv_cache_dtype", kv,
                          kv_dtype_findings(kv)), ("prefix_cache", prefix, prefix_findings(prefix, 0.03)),
                          ("tensor_parallel", tp, tp_findings(tp)), ("offline", off, offline_findings(off, 128))):
        (d / "studies" / f"{name}.json").write_text(json.dumps(study(name, rows, f)))


def test_study_sections_show_the_study_numbers(session_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "with-studies"
    shutil.copytree(session_dir / "results", src)
    write_studies(src, block64_tput=210.0)
    md, machine = report(src, tmp_path / "r")
    assert table_row(md, "64")[1:6] == ["measured", "65,536", "2.00", "32,768", "210.0"]
    assert md.count("Measured on test cpu with model cpu-llama-36m.") == 5  # each study says where it ran
    assert "ValueError: block size 16 is not supported" in table_row(md, "16")[-1]
    fp8 = table_row(md, "fp8")
    assert fp8[1] == "fp8_e4m3" and fp8[5:9] == ["4.00x", "4.00x", "0.962", "0.0431"]
    assert "NotImplementedError: int8 KV cache needs a GPU" in table_row(md, "int8")[-1]
    assert table_row(md, "on")[2:4] == ["85.2%", "85.2%"] and table_row(md, "off")[6] == "400.0"
    assert table_row(md, "2")[2] == "85.0%"  # TP: 1700 / (2 x 1000)
    assert "vLLM over HF, output tokens/s: 2.14x." in md
    recs = {r["topic"]: r for r in machine["recommendations"]}
    assert recs["block_size"]["choice"] == 128 and recs["prefix_caching"]["choice"] is True
    # no vLLM load was measured in this session: how much KV it would need is unknown, and the verdict says so
    assert recs["kv_quantization"]["choice"] is None and "capacity need unknown" in recs["kv_quantization"]["verdict"]
    check_pngs(tmp_path / "r", {"block_size.png", "kv_dtype.png", "prefix_cache.png", "tensor_parallel.png",
                                "offline.png"})
    # faster block 64 in the data -> the block-size recommendation moves to it
    write_studies(src, block64_tput=260.0)
    _, changed = report(src, tmp_path / "r2")
    assert next(r for r in changed["recommendations"] if r["topic"] == "block_size")["choice"] == 64

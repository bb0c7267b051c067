"""The static-batch HF engine (config hf-batch8) beside the sequential one: in the session's terminal summary,
in summary.md/json and in the report, with vLLM's ratio over each, whenever hf-batch8 was measured."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.report.data import ReportOptions
from servingbench.report.write import write_report

LOAD = "lab c10 512/16"


def measured(config: str, engine: str, tput: float, n: int = 100, **server: Any) -> Measurement:
    """A run of the lab load (n requests at concurrency 10, 512/16 tokens) at ``tput`` output tok/s; its metrics from
    its records, as a saved measurement's are when the report reads it back."""
    duration = n * 16 / tput
    step = duration / n
    records = [RequestRecord(f"r{i}", 512, 16, queued_at=0.0, start=i * step,
                             chunk_times=[i * step + (j + 1) * step / 16 for j in range(16)], output_tokens=16)
               for i in range(n)]
    w = {"name": "lab", "num_requests": n, "concurrency": 10, "prompt_len": 512, "output_len": 16}
    return Measurement(key=f"{config}--lab-n{n}-c10-p512-o16", engine=engine, config_name=config,
                       config={"dtype": "float16", "device": "cpu", **server}, workload=w,
                       metrics=compute_metrics(records, duration), telemetry=TelemetrySummary(), records=records,
                       started_at=1.0, environment={"hardware": "cpu-2c-amx", "model": "cpu-llama-36m"})


VLLM = measured("vllm", "vllm", 1200.0)
HF = measured("hf", "hf", 30.0, n=30, max_batch_size=1)
HF8 = measured("hf-batch8", "hf", 200.0, n=30, max_batch_size=8)


def test_summary_lines_put_hf_batch8_beside_hf() -> None:
    from servingbench.report.summary import hf_lines, hf_ratios

    lines = hf_lines([VLLM, HF, HF8])
    assert lines[0] == (f"vLLM/HF output tok/s at {LOAD}: vllm 1200.0 = 40.0x hf (30.0; one request at a time, FIFO), "
                        "6.0x hf-batch8 (200.0; static batches of up to 8)")
    assert lines[1].startswith(f"at {LOAD}: vllm/hf 40.0x = 6.7x from static batching alone (hf-batch8/hf) x 6.0x "
                               "vLLM over static batching (vllm/hf-batch8")
    ratios = {(r["config"], r["hf"]): r["ratio"] for r in hf_ratios([HF8, VLLM, HF])}
    assert ratios == {("vllm", "hf"): pytest.approx(40.0), ("vllm", "hf-batch8"): pytest.approx(6.0)}
    # not measured: no hf-batch8 anywhere, only the sequential ratio
    assert hf_lines([VLLM, HF]) == [f"vLLM/HF output tok/s at {LOAD}: vllm 1200.0 = 40.0x hf (30.0; one "
                                          "request at a time, FIFO)"]
    other_load = measured("hf-batch8", "hf", 200.0, max_batch_size=8)
    other_load.workload["concurrency"] = 4  # another load: not comparable, left out
    assert len(hf_lines([VLLM, HF, other_load])) == 1


def test_summary_files_hold_the_batch8_ratio(tmp_path: Path) -> None:
    from servingbench.report.summary import write_summary

    write_summary(tmp_path, [VLLM, HF, HF8], {"hardware": "cpu-2c-amx"}, ["a note"])
    md = (tmp_path / "summary.md").read_text()
    assert "6.0x hf-batch8 (200.0; static batches of up to 8)" in md and "- a note" in md
    rows = json.loads((tmp_path / "summary.json").read_text())["hf_ratios"]
    assert [(r["hf"], r["hf_max_batch_size"], round(r["ratio"], 3)) for r in rows] == [
        ("hf", 1, 40.0), ("hf-batch8", 8, 6.0)]


def test_terminal_summary_prints_the_batch8_ratio(tmp_path: Path) -> None:
    from servingbench.plugin import hooks
    from servingbench.plugin.state import STATE

    hardware, model = SimpleNamespace(key="cpu-2c-amx", device_class="cpu"), SimpleNamespace(name="cpu-llama-36m")
    session = SimpleNamespace(measurements={m.key: m for m in (VLLM, HF, HF8)}, errors={}, results_dir=tmp_path,
                              settings=SimpleNamespace(hardware=hardware, model=model))
    state = SimpleNamespace(session=session, hardware=hardware, model=model, table=None, bounds=lambda: [],
                            asserted=[])
    config = SimpleNamespace(stash={STATE: state}, getoption=lambda name, default=None: None)
    written: list[str] = []
    tr = SimpleNamespace(section=lambda *a, **k: None, write_line=lambda line, **k: written.append(line))
    hooks._session_summary(tr, config)
    out = "\n".join(written)
    assert "vllm 1200.0 = 40.0x hf (30.0; one request at a time, FIFO), 6.0x hf-batch8" in out
    assert out.index("6.7x from static batching alone") < out.index("note: thresholds")  # before the notes


def test_report_compares_vllm_with_hf_batch8(tmp_path: Path) -> None:
    for m in (VLLM, HF, HF8):
        m.save(tmp_path / "r")
    md = write_report([tmp_path / "r"], tmp_path / "out",
                      ReportOptions(expectations=tmp_path / "no-table.toml", html=False)).read_text()
    machine = json.loads((tmp_path / "out" / "report.json").read_text())
    assert machine["reference"] == "hf" and machine["static_hf_configs"] == ["hf-batch8"]
    assert machine["output_throughput_ratios"] == {"vllm/hf": pytest.approx(40.0), "hf-batch8/hf": pytest.approx(
        200 / 30), "vllm/hf-batch8": pytest.approx(6.0)}
    table = md.split("## Engines compared at the same load")[1].split("\n\n")
    header = next(t for t in table if t.startswith("| metric")).splitlines()[0]
    assert header.endswith("| vllm vs hf (x, >1 = better) | hf-batch8 vs hf (x, >1 = better) "
                           "| vllm vs hf-batch8 (x, >1 = better) |")
    row = next(line for line in md.splitlines() if line.startswith("| output throughput (tok/s)"))
    assert [c.strip() for c in row.strip("|").split("|")][-3:] == ["40x", "6.67x", "6x"]
    assert "vllm delivers 6x the output throughput of hf-batch8 (HF with static batches of up to 8" in md
    assert "; vllm/hf 40x = 6.67x from static batching alone (hf-batch8/hf) x 6x over static batching" in md
    # without hf-batch8: the report is as before, no static-batch column
    for p in (tmp_path / "r").rglob("hf-batch8*.json"):
        p.unlink()
    md = write_report([tmp_path / "r"], tmp_path / "out2",
                      ReportOptions(expectations=tmp_path / "no-table.toml", html=False)).read_text()
    assert "hf-batch8" not in md

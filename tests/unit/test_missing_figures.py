"""A figure nothing measured is missing, never a number a bound can pass (#28 items 3 and 4).

No server: measurements are built from request records and telemetry summaries whose values are known.
"""

from __future__ import annotations

import pytest

from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.report.summary import text_table
from servingbench.studies.common import serving_row
from servingbench.expect.bounds import Bound, check

MEMORY_FIGURES = ["memory_utilization", "memory_gib", "gpu_memory_used_gib", "gpu_utilization", "rss_peak_gib"]


def served(n: int = 3, turns: int | None = None) -> list[RequestRecord]:
    out = []
    for i in range(n):
        times = [0.1 + 0.02 * k for k in range(5)]
        out.append(RequestRecord(f"r{i}", 8, 5, start=0.0, chunk_times=times, output_tokens=5,
                                 turn=(i % turns) + 1 if turns else None))
    return out


def failed(n: int = 3) -> list[RequestRecord]:
    return [RequestRecord(f"r{i}", 8, 5, start=0.01, error="HTTP 500: engine dead") for i in range(n)]


def measurement(records: list[RequestRecord], telemetry: TelemetrySummary | None = None,
                figures: dict[str, float] | None = None, memory_total_gib: float = 16.0) -> Measurement:
    return Measurement(key="vllm--lab", engine="vllm", config_name="vllm", config={},
                       workload={"name": "lab", "concurrency": 2, "num_requests": len(records), "prompt_len": 8,
                                 "output_len": 5},
                       metrics=compute_metrics(records, 1.0), telemetry=telemetry or TelemetrySummary(),
                       records=records, started_at=0.0, memory_total_gib=memory_total_gib,
                       figures=dict(figures or {}))


CPU_SAMPLED = TelemetrySummary(samples=4, rss_peak_gib=2.0, rss_mean_gib=1.5)
GPU_SAMPLED = TelemetrySummary(samples=4, rss_peak_gib=2.0, rss_mean_gib=1.5, gpu_memory_used_peak_gib=[72.0],
                               gpu_memory_total_gib=[80.0], gpu_memory_utilization_peak=[0.9],
                               gpu_utilization_mean=[85.0], gpu_utilization_max=[100.0])


def memory_bound(hi: float) -> Bound:
    return Bound("cpu-2c-amx", "cpu-llama-36m", "vllm", "memory_utilization", None, hi, "lab", "test", "t.toml:1")


# ---- item 3: memory figures with nothing sampled ------------------------------------------------------------------

@pytest.mark.parametrize("name", MEMORY_FIGURES)
def test_a_figure_of_a_server_nothing_sampled_is_missing(name: str) -> None:
    """--server-url: the deployment is not this machine's process, so no telemetry: no figure, not 0.0."""
    m = measurement(served())
    with pytest.raises(MissingFigure, match=f"{name}: .*sampled"):
        m.value(name)


def test_a_max_bound_on_unsampled_memory_fails() -> None:
    m = measurement(served())
    problem = check(memory_bound(0.3), lambda c, w: m, lambda c: None)
    assert problem is not None and "memory_utilization" in problem and "sampled" in problem


@pytest.mark.parametrize("name", MEMORY_FIGURES)
def test_an_all_failed_run_has_no_memory_figures(name: str) -> None:
    """What memory the server reached under load is unknown when no request loaded it."""
    m = measurement(failed(), telemetry=GPU_SAMPLED)
    with pytest.raises(MissingFigure, match="no successful requests"):
        m.value(name)


def test_sampled_memory_figures_are_given() -> None:
    cpu = measurement(served(), telemetry=CPU_SAMPLED)
    assert cpu.value("memory_utilization") == pytest.approx(2.0 / 16.0)
    assert cpu.value("memory_gib") == cpu.value("rss_peak_gib") == 2.0
    for name in ("gpu_memory_used_gib", "gpu_utilization"):  # a CPU run sampled no GPU
        with pytest.raises(MissingFigure, match=f"{name}: no GPU"):
            cpu.value(name)
    gpu = measurement(served(), telemetry=GPU_SAMPLED)
    assert gpu.value("memory_utilization") == 0.9 and gpu.value("memory_gib") == 72.0
    assert gpu.value("gpu_utilization") == 85.0


def test_the_summary_and_study_rows_show_unsampled_figures_as_missing() -> None:
    m = measurement(served())
    assert "nan" in text_table([m]).splitlines()[-1]
    row = serving_row(m)
    assert row["rss_peak_gib"] is None and row["gpu_memory_used_gib"] is None

# ---- item 4: workload figures a run does not have -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["prefix_cache_hit_rate", "median_ttft_ms_turn3", "p99_ttft_ms_turn2",
                                  "ttft_last_over_first_turn", "expected_prefix_hit_rate_low"])
def test_an_absent_workload_figure_is_missing_not_unknown(name: str) -> None:
    m = measurement(served())
    with pytest.raises(MissingFigure, match=name):
        m.value(name)
    bound = Bound("cpu-2c-amx", "cpu-llama-36m", "vllm", name, 0.0, None, "lab", "test", "t.toml:1")
    problem = check(bound, lambda c, w: m, lambda c: None)
    assert problem is not None and name in problem


def test_a_turn_past_those_served_is_missing_and_says_which_turns_were() -> None:
    m = measurement(served(4, turns=2), figures={"median_ttft_ms_turn1": 100.0, "median_ttft_ms_turn2": 80.0})
    assert m.value("median_ttft_ms_turn2") == 80.0
    with pytest.raises(MissingFigure, match=r"median_ttft_ms_turn5: no successful request at turn 5 .*: 1, 2\)"):
        m.value("median_ttft_ms_turn5")


def test_a_name_that_is_no_figure_at_all_is_still_unknown() -> None:
    with pytest.raises(KeyError, match="unknown metric 'median_ttft_turn3'"):
        measurement(served()).value("median_ttft_turn3")

"""Energy per output token (issue #26 item 2): counters read as differences over the run, only the server's own
GPUs, RAPL's package zones across a wrap, and a figure that is missing with its reason, never 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from servingbench.measure.energy import EnergyMeter, RaplCounter, difference, open_counter
from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.report.summary import text_table
from servingbench.suite.bench import server_energy_meter
from servingbench.expect.bounds import Bound, check


class FakeNvml:
    """NVML's counter API with per-GPU millijoule counters that the test advances (another tenant's GPU too)."""

    def __init__(self, mj: list[int]) -> None:
        self.mj = list(mj)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return self.mj[h]


def test_nvml_counts_only_the_servers_gpus_as_a_difference_over_the_run() -> None:
    nvml = FakeNvml([5_000_000, 9_000_000, 1_000])
    meter = EnergyMeter(gpus=[0, 2], nvml=nvml)
    meter.start()
    nvml.mj[0] += 120_000  # the server's GPUs: 120 J + 30 J
    nvml.mj[2] += 30_000
    nvml.mj[1] += 999_000  # another tenant's GPU on the same host: not the server's cost
    r = meter.stop()
    assert r.source == "nvml" and r.joules == pytest.approx(150.0) and r.seconds >= 0


def test_a_gpu_without_the_counter_is_not_measured_with_the_reason() -> None:
    class OldGpu(FakeNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    counter, note = open_counter([0], nvml=OldGpu([0]))
    assert counter is None and "Volta" in note and "NOT_SUPPORTED" in note
    r = EnergyMeter(gpus=[0], nvml=OldGpu([0]))
    r.start()
    assert r.stop().joules is None


def _zone(root: Path, name: str, uj: int, max_uj: int = 262_143_328_850) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


def test_rapl_sums_package_zones_not_their_subzones_across_a_wrap(tmp_path: Path) -> None:
    p0 = _zone(tmp_path, "intel-rapl:0", 1_000_000_000, max_uj=1_010_000_000)
    p1 = _zone(tmp_path, "intel-rapl:1", 50_000_000)
    core = _zone(tmp_path, "intel-rapl:0:0", 7_000_000)  # a part of package 0: counting it would count twice
    assert [z.name for z in RaplCounter(tmp_path).zones] == ["intel-rapl:0", "intel-rapl:1"]
    meter = EnergyMeter(gpus=(), root=tmp_path)
    meter.start()
    (p0 / "energy_uj").write_text("5000000\n")  # wrapped at 1010 J: 10 J to the top, then 5 J
    (p1 / "energy_uj").write_text("80000000\n")  # 30 J
    (core / "energy_uj").write_text("999000000\n")
    r = meter.stop()
    assert r.source == "rapl" and r.joules == pytest.approx(45.0)
    assert "whole CPU package" in r.note


def test_a_counter_that_goes_back_with_no_wrap_range_is_an_error_not_a_negative_energy() -> None:
    with pytest.raises(ValueError, match="went back"):
        difference([10.0], [4.0], [0.0])


def test_a_machine_without_powercap_says_so_and_how_to_measure(tmp_path: Path) -> None:
    counter, note = open_counter([], root=tmp_path / "absent")
    assert counter is None and "not measured" in note and "powercap" in note
    counter, note = open_counter([], root=tmp_path)  # present but with no package zone
    assert counter is None and "no package zone" in note


def test_an_unreadable_rapl_counter_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _zone(tmp_path, "intel-rapl:0", 1)

    def denied(self: RaplCounter) -> list[float]:
        raise PermissionError("energy_uj")

    monkeypatch.setattr(RaplCounter, "read", denied)
    counter, note = open_counter([], root=tmp_path)
    assert counter is None and "chmod" in note


def test_a_remote_deployment_is_not_metered() -> None:
    r = server_energy_meter(None, [])
    r.start()
    reading = r.stop()
    assert reading.joules is None and "--server-url" in reading.note


def _measurement(energy_j: float | None, seconds: float = 10.0, note: str = "") -> Measurement:
    records = [RequestRecord(f"r{i}", 8, 5, start=0.0, chunk_times=[0.1 + 0.02 * k for k in range(5)],
                             output_tokens=5) for i in range(4)]  # 20 output tokens
    t = TelemetrySummary(energy_j=energy_j, energy_s=seconds, energy_source="nvml" if energy_j else "",
                         energy_note=note)
    return Measurement(key="vllm--lab", engine="vllm", config_name="vllm", config={},
                       workload={"name": "lab", "concurrency": 2, "num_requests": 4, "prompt_len": 8,
                                 "output_len": 5},
                       metrics=compute_metrics(records, 1.0), telemetry=t, records=records, started_at=0.0)


def test_energy_figures_per_output_token() -> None:
    m = _measurement(50.0, seconds=10.0)
    assert m.value("energy_j") == 50.0
    assert m.value("mean_power_w") == pytest.approx(5.0)
    assert m.value("joules_per_output_token") == pytest.approx(2.5)
    assert m.value("output_tokens_per_joule") == pytest.approx(0.4)
    assert "2.5" in text_table([m])


def test_energy_not_measured_is_missing_with_the_meters_reason() -> None:
    m = _measurement(None, note="energy not measured: this machine exposes no RAPL counters")
    with pytest.raises(MissingFigure, match="no RAPL counters"):
        m.value("joules_per_output_token")
    assert "nan" in text_table([m])


def _bound(lo: float | None, hi: float | None, metric: str = "joules_per_output_token") -> Bound:
    return Bound("H200-SXM-140GB", "llama-2-7b", "vllm", metric, lo, hi, "lab", "test", "t.toml:1")


def test_a_bound_on_energy_per_token_passes_and_fails_on_the_measured_figure() -> None:
    m = _measurement(50.0)  # 2.5 J per output token
    assert check(_bound(None, 3.0), lambda c, w: m, lambda c: None) is None
    problem = check(_bound(None, 2.0), lambda c, w: m, lambda c: None)
    assert problem is not None and "joules_per_output_token" in problem
    problem = check(_bound(0.5, None, "output_tokens_per_joule"), lambda c, w: m, lambda c: None)
    assert problem is not None  # 0.4 tok/J under a 0.5 floor
    missing = check(_bound(None, 3.0), lambda c, w: _measurement(None, note="energy not measured: x"),
                    lambda c: None)
    assert missing is not None and "not measured" in missing


def test_the_reports_energy_table_shows_a_counter_that_did_not_move_as_missing_not_a_crash() -> None:
    from servingbench.report.build import energy_table
    from servingbench.report.doc import Doc

    class Data:
        measurements = [_measurement(0.0, seconds=0.0), _measurement(50.0)]

    doc = Doc()
    energy_table(doc, Data())  # type: ignore[arg-type]
    (_, (header, rows)), = [b for b in doc.blocks if b[0] == "table"]
    moved_not = dict(zip(header, rows[0]))
    assert moved_not["energy J"] == "0" and moved_not["mean W"] == "n/a"  # no window: no power, and no crash
    assert moved_not["output tokens per J"] == "n/a"
    measured = dict(zip(header, rows[1]))
    assert measured["J per output token"] == "2.5" and measured["mean W"] == "5"

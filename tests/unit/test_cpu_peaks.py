"""CPU peaks count the cores the engine computes on, for MFU and MBU alike (review item 19).

vLLM's CPU build computes on cores - 1 threads (``Hardware.engine_threads``); the bandwidth is measured on that
many threads, so the FLOP/s peak must be for that many cores too, or MFU is understated against MBU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servingbench.measure import probes
from servingbench.measure.environment import Hardware
from servingbench.figures import efficiency as eff
from servingbench.servers.models import get_model

CPU_MODEL = eff.ModelShape.from_config(get_model("cpu-llama-36m").config)


def cpu_entries() -> list[dict]:
    entries = [d for d in eff.load_peak_table() if any(p.startswith("cpu-") for p in d["profiles"])]
    assert entries, "the shipped table has no CPU entry"
    return entries


def test_cpu_flops_and_bandwidth_peaks_count_the_same_cores() -> None:
    for d in cpu_entries():
        cores = d["cores_counted"]
        assert d["bandwidth_threads"] == cores, d["name"]  # the MBU peak's cores
        for dtype, tf in d["peak_tflops"].items():  # the MFU peak's cores
            assert tf * 1e3 / (d["clock_ghz"] * d["flop_per_cycle"][dtype]) == pytest.approx(cores, rel=0.01), dtype
        for profile in d["profiles"]:  # and those are the cores the engine computes on for that profile
            host_cores = int(profile.split("-")[1].removesuffix("c"))
            assert cores == Hardware(profile, False, cores=host_cores).engine_threads == 1, profile


def test_the_efficiency_output_records_the_cores_counted() -> None:
    peaks = eff.find_peaks("cpu-2c-avx512", None, eff.load_peak_table())
    assert peaks is not None and peaks.cores_counted == 1 and peaks.count == 1
    e = eff.compute_efficiency(CPU_MODEL, output_tokens_per_s=100.0, batch=4, context=96, weight_dtype="float32",
                               kv_dtype="auto", peaks=peaks)
    assert e.cores_counted == 1 and e.to_dict()["cores_counted"] == 1
    one_core_flops = 1 * 2.596e9 * 32  # 1 core x clock x FP32 FLOP/cycle: the core the bandwidth was measured on
    assert e.mfu == pytest.approx(e.achieved_tflops * 1e12 / one_core_flops, rel=0.01)
    assert e.mbu == pytest.approx(e.achieved_gb_s / 25.0)
    gpu = eff.compute_efficiency(CPU_MODEL, output_tokens_per_s=100.0, batch=4, context=96, weight_dtype="float16",
                                 kv_dtype="auto", peaks=eff.find_peaks("A100-SXM-40GB", None, eff.load_peak_table()))
    assert gpu.cores_counted is None


OLD_ENTRY = """
[[device]]
name = "2 cores of FLOP/s against a 1-thread bandwidth"
profiles = ["cpu-2c-test"]
memory_bandwidth_gb_s = 25.0
peak_tflops = { float32 = 0.166 }
source = "test"
"""


@pytest.mark.parametrize("extra, match", [
    ("", "needs cores_counted"),
    ("cores_counted = 1\nbandwidth_threads = 2\nclock_ghz = 2.596\nflop_per_cycle = { float32 = 32 }\n",
     "measured on 2 threads but the peaks count 1"),
    ("cores_counted = 1\nbandwidth_threads = 1\nclock_ghz = 2.596\nflop_per_cycle = { float32 = 32 }\n",
     "not the cores_counted"),  # 0.166 TFLOP/s is 2 cores' worth
])
def test_a_cpu_entry_with_mixed_core_counts_is_refused(tmp_path: Path, extra: str, match: str) -> None:
    path = tmp_path / "peaks.toml"
    path.write_text(OLD_ENTRY.replace('source = "test"', extra + 'source = "test"'))
    with pytest.raises(eff.EfficiencyError, match=match):
        eff.load_peak_table(path)


def test_peaks_for_other_cores_are_not_used(tmp_path: Path) -> None:
    table = eff.load_peak_table()
    entry = next(d for d in table if "cpu-2c-avx512" in d["profiles"])
    four = [{**entry, "profiles": ["cpu-4c-avx512"]}]  # 1 core's peaks, but a 4-core host computes on 3
    assert eff.find_peaks("cpu-4c-avx512", None, four) is None


def test_a_probed_cpu_peak_counts_the_engine_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake(key: str, *, gpu: bool, threads: int, cache_dir: Path, cache_only: bool) -> probes.BandwidthPeak:
        seen["threads"] = threads
        return probes.BandwidthPeak(30.0, "triad", threads, "cpu", "2026-12-01T00:00:00+00:00")

    monkeypatch.setattr(probes, "measured_bandwidth", fake)
    peaks = eff.probed_peaks(Hardware("cpu-4c-amx", False, cores=4))
    assert seen["threads"] == 3 and peaks is not None and peaks.cores_counted == 3

"""Every hardware key that gpu_sku gives for a GPU with a datasheet entry finds that entry (#28 item 1).

The keys changed from "H100-80GB" to "H100-SXM-80GB" and the table kept the old ones: every lookup but the H200's
missed, MBU divided by the copy probe's bandwidth instead of the datasheet's, and MFU was gone. These cases are the
names NVML reports for each datasheet part (and the memory it reports, in GiB), run through gpu_sku as a session
does, so a change to either side that loses a part fails here.
"""

from __future__ import annotations

import pytest

from servingbench.measure.environment import gpu_sku
from servingbench.figures import efficiency as eff

# (NVML name, memory NVML reports in GiB, the key gpu_sku must give, the datasheet's bandwidth in GB/s and dense
# BF16 TFLOP/s: MBU's peak and MFU's)
DATASHEET_PARTS = [
    ("NVIDIA H100 80GB HBM3", 79.6, "H100-SXM-80GB", 3350, 989.4),
    ("NVIDIA H100 PCIe", 79.6, "H100-PCIe-80GB", 2000, 756.0),
    ("NVIDIA H100 NVL", 93.6, "H100-NVL-94GB", 3900, 835.5),
    ("NVIDIA H200", 140.4, "H200-SXM-140GB", 4800, 989.4),
    ("NVIDIA H200 NVL", 140.4, "H200-NVL-140GB", 4800, 835.5),
    ("NVIDIA A100-SXM4-40GB", 39.4, "A100-SXM-40GB", 1555, 312.0),
    ("NVIDIA A100-PCIE-40GB", 39.4, "A100-PCIe-40GB", 1555, 312.0),
    ("NVIDIA A100-SXM4-80GB", 79.2, "A100-SXM-80GB", 2039, 312.0),
    ("NVIDIA A100 80GB PCIe", 79.2, "A100-PCIe-80GB", 1935, 312.0),
]


@pytest.mark.parametrize("name, gib, key, bandwidth, bf16_tflops", DATASHEET_PARTS,
                         ids=[p[2] for p in DATASHEET_PARTS])
def test_every_datasheet_key_finds_its_entry(name: str, gib: float, key: str, bandwidth: float,
                                             bf16_tflops: float) -> None:
    table = eff.load_peak_table()
    assert gpu_sku(name, gib) == key
    found = eff.find_peaks(key, name, table)
    assert found is not None, f"{key} ({name}) has no entry in hardware_peaks.toml"
    assert found.memory_bandwidth_gb_s == bandwidth
    assert found.flops_per_s("bfloat16") == pytest.approx(bf16_tflops * 1e12)
    # the key alone names the part (a --profile run against --server-url knows no GPU name)
    assert eff.find_peaks(key, None, table) == found
    two = eff.find_peaks(f"{key}-x2", name, table)
    assert two is not None and two.bandwidth_bytes_per_s == 2 * found.bandwidth_bytes_per_s


def test_every_gpu_entry_is_reached_by_a_datasheet_part() -> None:
    """No entry of the table is dead: each GPU entry is the one some part's key resolves to."""
    table = eff.load_peak_table()
    reached = {eff.find_peaks(key, name, table).name for name, _, key, _, _ in DATASHEET_PARTS}
    gpu_entries = {d["name"] for d in table if not any(p.startswith("cpu-") for p in d["profiles"])}
    assert gpu_entries - reached == set()


@pytest.mark.parametrize("key, name, bandwidth", [
    ("H100-80GB", "NVIDIA H100 80GB HBM3", 3350),  # the key baselines/H100-80GB was measured under
    ("H100-80GB", "NVIDIA H100 PCIe", 2000),
    ("H100-80GB", None, 3350),
    ("H200-140GB", "NVIDIA H200", 4800),
])
def test_keys_of_saved_runs_still_resolve(key: str, name: str | None, bandwidth: float) -> None:
    assert eff.find_peaks(key, name, eff.load_peak_table()).memory_bandwidth_gb_s == bandwidth


def test_an_override_key_falls_back_to_the_gpu_sku() -> None:
    """--profile my-lab names the rows, not the part: the peaks come from the SKU the run recorded."""
    table = eff.load_peak_table()
    found = eff.find_peaks_for_sku("my-lab", "H100-SXM-80GB", "NVIDIA H100 80GB HBM3", table, count=2)
    assert found is not None and found.memory_bandwidth_gb_s == 3350 and found.count == 2
    assert eff.find_peaks_for_sku("my-lab", None, None, table) is None

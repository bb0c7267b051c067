import json
import math
from pathlib import Path

import pytest
import torch

from servingbench.measure.probes import SCHEMA, BandwidthPeak, cpu_triad_gb_s, gpu_copy_gb_s, main, measured_bandwidth

HERE = Path(__file__).resolve().parent


def _fixed(gb_s: float = 12.5, threads: int | None = 1) -> BandwidthPeak:
    return BandwidthPeak(gb_s, "fake probe", threads, "cpu", "2024-01-01T00:00:00+00:00")


class CountingProbe:
    def __init__(self, peak: BandwidthPeak) -> None:
        self.peak, self.calls = peak, 0

    def __call__(self) -> BandwidthPeak:
        self.calls += 1
        return self.peak


def test_cpu_triad_plausible_and_restores_threads():
    original = torch.get_num_threads()
    torch.set_num_threads(2)  # a value != 1, so a missing restore would show
    try:
        peak = cpu_triad_gb_s(1, mib=32, repeats=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)
    assert math.isfinite(peak.gb_s) and 0.1 < peak.gb_s < 2000
    assert peak.threads == 1 and peak.device == "cpu"
    assert "12 bytes/element" in peak.method and "torch" in peak.method


def test_roundtrip_and_strict_from_dict():
    p = _fixed()
    assert BandwidthPeak.from_dict(p.to_dict()) == p
    for bad in ({**p.to_dict(), "schema": "other/1"}, {**p.to_dict(), "gb_s": float("nan")},
                {k: v for k, v in p.to_dict().items() if k != "device"}):
        with pytest.raises((ValueError, KeyError)):
            BandwidthPeak.from_dict(bad)


def test_measured_bandwidth_cache(tmp_path):
    probe = CountingProbe(_fixed())
    first = measured_bandwidth("host-a", gpu=False, threads=1, cache_dir=tmp_path, probe=probe)
    path = tmp_path / "bandwidth" / "host-a-cpu1t.json"
    assert probe.calls == 1 and path.is_file() and first == probe.peak
    assert json.loads(path.read_text())["schema"] == SCHEMA

    again = measured_bandwidth("host-a", gpu=False, threads=1, cache_dir=tmp_path, probe=probe)
    assert probe.calls == 1 and again == first

    measured_bandwidth("host-b", gpu=False, threads=1, cache_dir=tmp_path, probe=probe)
    assert probe.calls == 2
    measured_bandwidth("host-a", gpu=False, threads=2, cache_dir=tmp_path, probe=probe)
    assert probe.calls == 3
    measured_bandwidth("host-a", gpu=True, threads=1, cache_dir=tmp_path, probe=probe)
    assert probe.calls == 4
    names = sorted(f.name for f in (tmp_path / "bandwidth").iterdir())
    assert names == ["host-a-cpu1t.json", "host-a-cpu2t.json", "host-a-gpu.json",
                     "host-b-cpu1t.json"]  # no leftover temp files


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"schema": "servingbench.bandwidth/1"}', ""])
def test_corrupt_cache_is_reprobed(tmp_path, garbage):
    path = tmp_path / "bandwidth" / "h-cpu1t.json"
    path.parent.mkdir(parents=True)
    path.write_text(garbage)
    probe = CountingProbe(_fixed(7.0))
    assert measured_bandwidth("h", gpu=False, threads=1, cache_dir=tmp_path, probe=probe).gb_s == 7.0
    assert probe.calls == 1
    assert BandwidthPeak.from_dict(json.loads(path.read_text())).gb_s == 7.0


def test_machine_key_is_sanitised(tmp_path):
    probe = CountingProbe(_fixed())
    measured_bandwidth("a/b c:d", gpu=False, threads=1, cache_dir=tmp_path, probe=probe)
    assert (tmp_path / "bandwidth" / "a_b_c_d-cpu1t.json").is_file()


def test_cli_prints_valid_json(capsys):
    assert main(["--cpu-threads", "1", "--mib", "16"]) == 0
    peak = BandwidthPeak.from_dict(json.loads(capsys.readouterr().out))
    assert peak.threads == 1 and "16 MiB" in peak.method


def test_default_probe_runs_in_child(tmp_path, monkeypatch):
    peak = measured_bandwidth("child", gpu=False, threads=1, cache_dir=tmp_path)
    assert peak.threads == 1 and 0.1 < peak.gb_s < 2000
    assert (tmp_path / "bandwidth" / "child-cpu1t.json").is_file()


def test_child_failure_raises_with_command_and_stderr(tmp_path):
    with pytest.raises(RuntimeError) as e:
        measured_bandwidth("x", gpu=False, threads=1, cache_dir=tmp_path,
                           module="no_such_module_for_probes")
    assert "-m no_such_module_for_probes --cpu-threads 1" in str(e.value)
    assert "No module named" in str(e.value)
    assert not (tmp_path / "bandwidth" / "x-cpu1t.json").exists()


def test_gpu_copy():
    if torch.cuda.is_available():  # on a GPU host, check it really measures
        peak = gpu_copy_gb_s(gib=0.25, repeats=2)
        assert peak.threads is None and 1 < peak.gb_s < 20000
        return
    with pytest.raises(RuntimeError, match="no CUDA"):
        gpu_copy_gb_s(gib=0.01, repeats=1)


def test_gpu_through_child(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        peak = measured_bandwidth("g", gpu=True, threads=1, cache_dir=tmp_path)
        assert peak.threads is None and peak.gb_s > 1
        return
    with pytest.raises(RuntimeError, match="no CUDA") as e:
        measured_bandwidth("g", gpu=True, threads=1, cache_dir=tmp_path)
    assert "--gpu" in str(e.value)

"""Which server lifetime each saved run belongs to, as `servingbench gate` over saved runs reads it: a
measurement's recorded server start, a rounds file's own lifetimes, a user's PATH@N, else one lifetime per file
(and said). The gate's statistics themselves are proven in test_gate_power.py; here the rounds it is handed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.gate.saved_runs import SavedRunError, gate_saved, read_side, split_spec

ROOT = Path(__file__).resolve().parents[2]


def saved(results: Path, key: str, started: float | None, ttft: float = 0.1) -> Path:
    recs = [RequestRecord(f"r{i}", 8, 4, start=float(i), chunk_times=[i + ttft + 0.01 * k for k in range(4)],
                          output_tokens=4) for i in range(8)]
    m = Measurement(key, "vllm", "vllm", {}, {"name": "lab"}, compute_metrics(recs, 8.0), TelemetrySummary(),
                    recs, 0.0, server_url="http://127.0.0.1:8000", server_started_at=started)
    return m.save(results)


def test_lifetimes_come_from_the_recorded_server_start(tmp_path: Path) -> None:
    paths = [saved(tmp_path, f"m{i}", started) for i, started in enumerate([100.0, 100.0, 200.0, 200.0])]
    side = read_side([str(p) for p in paths], "vllm")
    assert [r.lifetime for r in side.rounds] == [0, 0, 1, 1] and side.unknown_lifetime == []
    folder = read_side([str(tmp_path)], "vllm")  # a results folder: every measurement in it
    assert sorted(r.lifetime for r in folder.rounds) == [0, 0, 1, 1]


def test_without_a_recorded_start_each_file_is_its_own_lifetime_unless_marked(tmp_path: Path) -> None:
    paths = [str(saved(tmp_path, f"m{i}", None)) for i in range(3)]
    side = read_side(paths, "vllm")
    assert [r.lifetime for r in side.rounds] == [0, 1, 2] and side.unknown_lifetime == paths
    marked = read_side([f"{paths[0]}@7", f"{paths[1]}@7", f"{paths[2]}@8"], "vllm")
    assert [r.lifetime for r in marked.rounds] == [0, 0, 1] and marked.unknown_lifetime == []
    assert split_spec("a@b/x.json") == (Path("a@b/x.json"), None) and split_spec("x.json@3") == (Path("x.json"), 3)


def test_a_rounds_file_keeps_its_lifetimes_and_names_a_missing_config() -> None:
    path = ROOT / "baselines" / "cpu-2c-avx2" / "rounds.json"
    stored = json.loads(path.read_text())
    side = read_side([str(path)], "hf")
    want = [r["lifetime"] for r in stored["rounds"] if r["config"] == "hf"]
    assert len(side.rounds) == len(want) and len({r.lifetime for r in side.rounds}) == len(set(want))
    with pytest.raises(SavedRunError, match="no rounds of config 'nope'; choose one with --config"):
        read_side([str(path)], "nope")


def test_bad_input_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SavedRunError, match="x.json: not a JSON file"):
        read_side([str(tmp_path / "x.json")], "vllm")
    (tmp_path / "y.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(SavedRunError, match="neither a vllm bench serve result"):
        read_side([str(tmp_path / "y.json")], "vllm")
    with pytest.raises(SavedRunError, match="no such file or folder"):
        read_side([str(tmp_path / "missing.json")], "vllm")
    one = str(saved(tmp_path / "r", "m0", 1.0))
    two = [str(saved(tmp_path / "r", f"m{i}", 1.0)) for i in (1, 2)]
    with pytest.raises(SavedRunError, match="baseline side has 1 round.*at least 2 a side"):
        gate_saved([one], two)

"""Calibration keeps what it measured (issue #28 item 11): each round is saved as it completes, so a lifetime that
fails late loses none of the earlier ones; proposed rows are checked before the table is touched, and the table is
replaced atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servingbench.load.workload import Workload
from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.servers.pool import ServerUnavailable
from servingbench.gate import calibrate
from servingbench.measure.rounds import RoundsFile
from servingbench.expect.bounds import load_table

TABLE = """
[workloads.lab]
cpu = { num_requests = 4, concurrency = 2, prompt_len = 8, output_len = 4 }

[configs.hf]
engine = "hf"
"""


class DyingSession:
    """Stands in for the session (no server): rounds of known figures; the server of lifetime 1 dies."""

    def __init__(self, settings: Any, results: Path, configs: Any, api_key: Any = None) -> None:
        self.lifetime, self.pool = 0, self

    def workload(self, table: Any, name: str, config: str) -> Workload:
        return Workload.of(name, 4, 2, prompt_len=8, output_len=4)

    def measure(self, config: str, workload: Workload, round: int = 0) -> Measurement:
        if self.lifetime == 1 and round == 3:
            raise ServerUnavailable("hf: the server died (log tail: Killed)")
        step = 0.01 * (1 + round / 10)
        recs = [RequestRecord(f"r{i}", 8, 4, start=i, chunk_times=[i + 0.1 + k * step for k in range(4)],
                              output_tokens=4) for i in range(4)]
        return Measurement(f"hf--r{round}", "hf", config, {}, workload.to_dict(), compute_metrics(recs, 4.0),
                           TelemetrySummary(), recs, 0.0)

    def stop(self) -> None:
        self.lifetime += 1

    def close(self) -> None:
        pass


def test_a_lifetime_that_fails_late_keeps_every_round_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibrate, "Bench", DyingSession)
    monkeypatch.setattr(calibrate, "materialize", lambda model: str(tmp_path / "model"))
    (tmp_path / "table.toml").write_text(TABLE)
    said: list[str] = []
    opts = calibrate.CalibrationOptions(table=tmp_path / "table.toml", baseline_dir=tmp_path / "baselines",
                                        results_dir=tmp_path / "results", configs=("hf",), rounds=2, lifetimes=3,
                                        hardware_key="test-hw")
    with pytest.raises(ServerUnavailable, match="died"):
        calibrate.run(opts, log=said.append)
    kept = RoundsFile.load(tmp_path / "results" / "partial" / "rounds.json")
    assert [(r.lifetime, r.index) for r in kept.rounds] == [(0, 0), (0, 1), (1, 0)]
    assert kept.rounds[0].figures["output_throughput"] > 0
    assert any("stopped after 3 round(s)" in line and "partial" in line for line in said), said
    assert not (tmp_path / "baselines").exists()  # the stored baseline is only ever a finished calibration


def test_rows_that_would_break_the_table_leave_it_as_it_was(tmp_path: Path) -> None:
    table = tmp_path / "expected_performance.toml"
    table.write_text(TABLE)
    bad = '[[expect]]\nhardware = "test-hw"\nmodel = "m"\nconfig = "no-such-config"\noutput_throughput = { min = 1 }\n'
    with pytest.raises(Exception, match="no-such-config"):
        calibrate.write_rows(table, "test-hw", "m", bad)
    assert table.read_text() == TABLE and sorted(p.name for p in tmp_path.iterdir()) == [table.name]
    good = '[[expect]]\nhardware = "test-hw"\nmodel = "m"\nconfig = "hf"\nworkload = "lab"\noutput_throughput = { min = 1 }\n'
    calibrate.write_rows(table, "test-hw", "m", good)
    assert "# >>> servingbench calibrate: test-hw / m" in table.read_text()
    assert load_table(table).bounds and sorted(p.name for p in tmp_path.iterdir()) == [table.name]

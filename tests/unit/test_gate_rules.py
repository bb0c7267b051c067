"""The gate's rules around the statistics (servingbench/gate/judge.py, rounds.py): the false-alarm split, the round
and lifetime orders, the provenance check, failure_rate, invalid rounds and the rounds file's schemas."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from servingbench.plugin.options import _gate_rounds
from servingbench.gate.judge import (GateReport, abba, alpha_per_test, check_rounds, judge, provenance_mismatches,
                                     refuse_mismatches, run_abba, run_interleaved, run_lifetimes, n_tests_per_config,
                                     verdicts, what_it_takes)
from servingbench.measure.rounds import GATED, SCHEMA, Round, RoundsFile

REPO = Path(__file__).resolve().parents[2]


def rounds(seed: int, lifetimes: int, per: int, *, scale: float = 1.0, tput: float = 1.0, sl: float = 0.01,
           failed: int = 0, config: str = "vllm") -> list[Round]:
    """Rounds of every gated metric with lifetime and round noise; ``scale`` multiplies the latencies."""
    rng = np.random.default_rng(seed)
    out = []
    for lt in range(lifetimes):
        a = rng.normal(0, sl)
        for i in range(per):
            f = math.exp(a + rng.normal(0, 0.01))
            figures = {g.name: (1000.0 * tput / f if g.higher_is_better else 100.0 * scale * f) for g in GATED}
            out.append(Round(config, lt, i, f"{config}-{lt}-{i}", figures, {}, requests=100, failed=failed,
                             duration_s=30.0, startup_s=60.0 if i == 0 else None))
    return out


def test_the_false_alarm_budget_is_split_over_metrics_and_configs() -> None:
    assert n_tests_per_config() == len(GATED) + 1
    assert alpha_per_test(2) == pytest.approx(0.05 / 18) and alpha_per_test(1) == pytest.approx(0.05 / 9)
    vs = verdicts(rounds(1, 6, 3), rounds(2, 2, 3), configs=2)
    assert {round(v.ci_level, 6) for v in vs if math.isfinite(v.ci_level)} == {round(1 - 2 * 0.05 / 18, 6)}


def test_at_least_two_rounds() -> None:
    assert check_rounds(2) == 2
    with pytest.raises(ValueError, match="--gate-rounds 2 or more"):
        check_rounds(1)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 2 rounds per lifetime"):
        _gate_rounds("1")


def test_orders_and_restarts() -> None:
    assert abba(1) == [0, 1] and abba(2) == [0, 1, 1, 0] and abba(3) == [0, 1, 1, 0, 0, 1]
    log: list[str] = []
    restart = lambda: log.append("restart")  # noqa: E731

    def measure(name: str):
        return lambda lt, i: (log.append(f"{name}{lt}.{i}"), Round(name, lt, i, "", {}))[1]

    a, b = run_abba(measure("A"), measure("B"), restart, 2, 2)
    assert log == ["restart", "A0.0", "A0.1", "restart", "B0.0", "B0.1", "restart", "B1.0", "B1.1",
                   "restart", "A1.0", "A1.1"]
    assert [r.lifetime for r in a] == [0, 0, 1, 1] and [r.lifetime for r in b] == [0, 0, 1, 1]
    log.clear()
    assert len(run_lifetimes(measure("C"), restart, 3, 2)) == 6 and log.count("restart") == 3
    log.clear()
    a, b = run_interleaved(measure("A"), measure("B"), 3)
    assert log == ["A0.0", "B0.0", "B0.1", "A0.1", "A0.2", "B0.2"] and {r.lifetime for r in a + b} == {0}


def test_an_unchanged_run_passes_and_planted_regressions_fail() -> None:
    base = rounds(1, 6, 3)
    same = verdicts(base, rounds(2, 2, 3))
    assert not [v for v in same if v.failed()], [v.describe() for v in same]
    worse = {v.metric: v for v in verdicts(base, rounds(3, 2, 3, scale=1.3, tput=0.8))}
    assert worse["output_throughput"].status == "regressed" and worse["median_tpot_ms"].status == "regressed"
    assert worse["output_throughput"].change == pytest.approx(-0.2, abs=0.03)
    assert worse["failure_rate"].status == "unchanged"


def test_one_lifetime_a_side_needs_stored_lifetimes() -> None:
    a, b = rounds(1, 1, 3), rounds(2, 1, 3)
    vs, _ = judge(a, b)
    assert all(v.status == "inconclusive" for v in vs if v.metric != "failure_rate")
    assert all("servingbench calibrate" in v.note for v in vs if v.metric != "failure_rate")
    vs, noises = judge(a, b, stored=rounds(5, 6, 3), stored_source="baselines/x/rounds.json")
    assert all(math.isfinite(v.mdr) for v in vs if v.metric != "failure_rate")
    assert noises["output_throughput"].dz == 5 and "baselines/x/rounds.json" in vs[0].note


def test_failures_where_the_baseline_had_none_fail_the_run() -> None:
    vs = {v.metric: v for v in verdicts(rounds(1, 6, 3), rounds(2, 2, 3, failed=1))}
    assert vs["failure_rate"].status == "regressed" and vs["failure_rate"].failed()


def test_an_invalid_round_is_left_out_with_a_note(tmp_path: Path) -> None:
    base = rounds(1, 6, 3)
    base[4].figures = {k: math.nan for k in base[4].figures}
    path = RoundsFile({"model": "m"}, {"vllm": {}}, base).save(tmp_path)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["rounds"][4]["figures"]["output_throughput"] is None
    noise = data["noise"]["vllm"]["output_throughput"]
    assert noise["lifetimes"] == 6 and noise["rounds"] == 17 and noise["sL"] is not None
    loaded = RoundsFile.load(path)
    vs = verdicts(loaded.of("vllm"), rounds(2, 2, 3))
    assert all("1 invalid baseline round(s) left out" in v.note for v in vs if v.metric != "failure_rate")
    assert not [v for v in vs if v.failed()]


@pytest.mark.parametrize("key", ["H200-SXM-140GB", "cpu-2c-amx"])
def test_committed_v1_rounds_files_still_load(key: str) -> None:
    path = REPO / "baselines" / key / "rounds.json"
    f = RoundsFile.load(path)
    assert json.loads(path.read_text())["schema"] == "servingbench.rounds/1"
    assert all(r.requests == 100 and r.failed == 0 for r in f.rounds)  # from the samples: only successes have them
    n = f.noise()["vllm"]["output_throughput"]
    assert n.lifetimes == 2 and n.dz == 1 and n.dw == 4
    vs = verdicts(f.of("vllm"), f.of("vllm")[:3])  # lifetime 0 against itself: nothing regressed
    assert not [v for v in vs if v.failed()]


def test_a_baseline_of_another_model_workload_or_version_is_refused() -> None:
    stored = RoundsFile({"model": "llama-2-7b", "versions": {"vllm": "0.26.0", "torch": "2.11.0"}},
                        {"vllm": {"num_requests": 100, "concurrency": 10}}, [])
    run = {"model": "llama-2-7b", "versions": {"vllm": "0.32.0", "torch": "2.11.0"}}
    assert provenance_mismatches(stored, "vllm", run, {"num_requests": 100, "concurrency": 10, "new": 1}, "vllm") \
        == ["versions.vllm: baseline '0.26.0', run '0.32.0'"]
    found = provenance_mismatches(stored, "vllm", {**run, "model": "mistral-7b"}, {"num_requests": 50}, "vllm")
    assert [m.split(":")[0] for m in found] == ["model", "workload.num_requests", "versions.vllm"]
    refused = r"model: baseline 'llama-2-7b', run 'mistral-7b'.*--gate-allow-mismatch model"
    with pytest.raises(ValueError, match=refused):
        refuse_mismatches(found, ["versions", "workload"], Path("rounds.json"))
    assert refuse_mismatches(found, ["all"], Path("rounds.json")) == found
    assert refuse_mismatches(found[1:], ["workload.num_requests", "versions.vllm"], Path("r")) == found[1:]


def test_what_it_would_take_when_a_goal_is_missed() -> None:
    base, cur = rounds(1, 2, 3, sl=0.05), rounds(2, 1, 3, sl=0.05)
    vs, noises = judge(base, cur, configs=2)
    lines = what_it_takes(vs, noises, device_class="cpu", ab=False, current=cur, baseline=base, alpha=alpha_per_test(2))
    assert len(lines) == 1 and lines[0].startswith("output_throughput: MDR")
    assert "goal of 10%" in lines[0] and "needs: 6 lifetime(s) x 2 rounds a side" in lines[0]
    assert "min of load a side" in lines[0] and "against a baseline of 2 lifetimes" in lines[0]
    # noisier lifetimes: the 2-lifetime baseline cannot do it in 15 minutes of load; a recalibration can
    base, cur = rounds(1, 2, 3, sl=0.08), rounds(2, 1, 3, sl=0.08)
    vs, noises = judge(base, cur, configs=2)
    more = what_it_takes(vs, noises, device_class="cpu", ab=False, current=cur, baseline=base, alpha=alpha_per_test(2))
    assert "recalibrate with `servingbench calibrate --lifetimes 3`" in more[0]
    report = GateReport("vllm", "stored baseline x", 3, vs, lifetimes=1, alpha=alpha_per_test(2), notes=lines)
    assert "each test one-sided at 0.00278" in report.table() and "note: output_throughput" in report.table()
    assert report.to_dict()["alpha_per_test"] == pytest.approx(0.05 / 18)


def test_the_gate_reads_itl_as_the_report_does() -> None:
    """#28 item 8: zero gaps (two chunks in one socket read) count in the gate's ITL as in ``median_itl_ms``."""
    from servingbench.measure.measurement import Measurement
    from servingbench.measure.metrics import compute_metrics
    from servingbench.measure.records import RequestRecord
    from servingbench.measure.telemetry import TelemetrySummary
    from servingbench.measure.rounds import Round, request_samples

    # each request's chunks: two land together (gap 0), then 10 ms apart
    recs = [RequestRecord(f"r{i}", 4, 5, start=i, chunk_times=[i + 0.1, i + 0.1, i + 0.1, i + 0.11, i + 0.12],
                          output_tokens=5) for i in range(3)]
    m = Measurement("k", "vllm", "vllm", {}, {}, compute_metrics(recs, 3.0), TelemetrySummary(), recs, 0.0)
    samples = request_samples(m)
    assert len(samples["itl"]) == 12 and samples["itl"].count(0.0) == 6
    report = m.value("median_itl_ms")
    assert Round.of(m, 0, 0).figures["median_itl_ms"] == report
    assert float(np.median(samples["itl"])) == pytest.approx(report, abs=1e-3)


@pytest.mark.parametrize("text", ["0", "-0.1", "0.5", "nan", "five"])
def test_gate_alpha_out_of_range_names_the_range(text: str) -> None:
    import argparse

    from servingbench.plugin.options import _gate_alpha

    with pytest.raises(argparse.ArgumentTypeError, match=r"--gate-alpha must be a number in \(0, 0.2\]"):
        _gate_alpha(text)
    assert _gate_alpha("0.001") == 0.001

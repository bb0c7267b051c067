"""``load/run.py`` is the one door every workload kind goes through: which sender each kind and topology reaches,
with which schedule. The senders themselves run against real servers in tests/integration (test_workloads,
test_trace_replay, test_ray_workers); here they are replaced by recorders, so only the routing is under test."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest

from servingbench.load import run as load_run
from servingbench.load.run import Target, run
from servingbench.load.workload import Workload

TARGET = Target("http://127.0.0.1:9", "m", vocab_size=512, max_model_len=256)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    def recorder(name: str, asynchronous: bool) -> Any:
        def record(url: str, model: str, items: Any, shape: Any, **kw: Any) -> Any:
            seen.append((name, {"items": items, "shape": shape, **kw}))
            return name
        if not asynchronous:
            return record

        async def arecord(*a: Any, **kw: Any) -> Any:
            return record(*a, **kw)
        return arecord

    monkeypatch.setattr(load_run, "run_load", recorder("run_load", True))
    monkeypatch.setattr(load_run, "run_conversations", recorder("run_conversations", True))
    monkeypatch.setattr(load_run, "run_load_workers", recorder("run_load_workers", False))
    return seen


def test_a_closed_loop_in_one_process(calls: list) -> None:
    w = Workload.of("lab", 6, 2, prompt_len=16, output_len=4, warmup_requests=1, client_workers=1)
    sent = run(TARGET, w, seed=1, timeout_s=30.0)
    (name, kw), = calls
    assert name == "run_load" and sent.result == "run_load" and sent.trace is None
    assert len(kw["items"]) == 6 and len(kw["warmup_specs"]) == 1 and kw["shape"].concurrency == 2
    assert kw["shape"].timeout_s == 30.0 and kw["shape"].offsets is None


def test_worker_processes_and_ray_hosts(calls: list) -> None:
    run(TARGET, Workload.of("lab", 8, 4, prompt_len=16, output_len=4, client_workers=2), seed=1, timeout_s=30.0)
    assert calls[-1][0] == "run_load_workers" and calls[-1][1]["workers"] == 2

    class Hosts:
        def per_node(self, in_flight: int, client_workers: int | None) -> int:
            return 3

        def run(self, url: str, model: str, specs: Any, shape: Any, **kw: Any) -> str:
            calls.append(("ray", kw))
            return "ray"

    sent = run(TARGET, Workload.of("lab", 8, 4, prompt_len=16, output_len=4), seed=1, timeout_s=30.0,
               hosts=Hosts(), label="k")  # type: ignore[arg-type]
    assert sent.result == "ray" and calls[-1][1]["per_node"] == 3 and calls[-1][1]["label"] == "k"


def test_a_conversation_stays_in_one_process_even_with_hosts(calls: list) -> None:
    w = Workload.of("chat", 2, 2, prompt_len=16, output_len=4, kind="conversation", turns=3, endpoint="chat")
    run(TARGET, w, seed=1, timeout_s=30.0, hosts=None)
    (name, kw), = calls
    assert name == "run_conversations" and len(kw["items"]) == 2 and kw["think_time_s"] == 0.0


def test_a_trace_brings_its_own_schedule(calls: list) -> None:
    path = str(resources.files("servingbench.data").joinpath("traces/mooncake_sample.jsonl"))
    w = Workload.of("t", 5, None, kind="trace", dataset=path, time_scale=0.5, warmup_requests=0, block_tokens=16)
    sent = run(TARGET, w, seed=1, timeout_s=30.0)
    (name, kw), = calls
    assert name == "run_load" and sent.trace is not None and len(kw["items"]) == 5
    assert kw["shape"].offsets == sent.trace.offsets and kw["shape"].offsets[0] == 0.0

"""A Workload is a name and four parts (source, load, sweep, client), and what is persisted did not move.

The label (saved measurements are found by it) and ``to_dict`` (stored in measurements and in the committed
``baselines/*/rounds.json``, compared field by field by the gate) are pinned here to the values the flat
``Workload`` gave before the split (computed by running that code, commit 1818fc8): the same strings, the same
keys in the same order, the same values and types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from servingbench.errors import ConfigError
from servingbench.load.generator import LoadShape
from servingbench.load.source import RequestSource
from servingbench.load.workload import ClientTopology, Sweep, Workload, single_stream, workload_from

# Pre-split values: to_dict() of workload_from("lab", {num_requests = 100, concurrency = 10, prompt_len = 128,
# output_len = 64}) before the split; the other workloads below differ from it only where listed.
DEFAULT_DICT: dict[str, Any] = {
    "name": "lab", "num_requests": 100, "concurrency": 10, "prompt_len": 128, "output_len": 64, "request_rate": None,
    "kind": "random", "prefix_len": 0, "num_prefixes": 1, "warmup_requests": 2, "endpoint": "completions",
    "prompt_dist": None, "output_dist": None, "dataset": "", "dataset_format": None, "ignore_eos": True,
    "temperature": 0.0, "top_p": None, "sampling_seed": None, "burstiness": 1.0, "turns": 1, "think_time_s": 0.0,
    "rates": [], "slo_ttft_ms": None, "slo_tpot_ms": None, "capacity_steps": 3, "rate_seconds": 30.0,
    "deadline_s": None, "max_schedule_lag_ms": 100.0, "max_queue_ms": 100.0, "client_workers": None,
    "client_hosts": "local", "max_client_ttft_error_ms": 25.0, "trace_format": None, "time_scale": 1.0,
    "trace_start": 0, "block_tokens": 512, "trace_block_tokens": 512,
}

SWEEP = {"num_requests": 40, "concurrency": None, "rates": [1.0, 4, 16.5], "slo_ttft_ms": 500.0, "slo_tpot_ms": 50,
         "capacity_steps": 2, "rate_seconds": 10.0, "burstiness": 0.5}
WIDE = {"num_requests": 512, "concurrency": 256, "client_workers": 4, "client_hosts": "ray",
        "max_client_ttft_error_ms": 40.0, "request_rate": 64.0, "deadline_s": 900.0, "max_schedule_lag_ms": 200.0,
        "max_queue_ms": 50.0}


def workloads() -> dict[str, Workload]:
    ws = {
        "random": workload_from("lab", {"num_requests": 100, "concurrency": 10, "prompt_len": 128, "output_len": 64}),
        "shared_prefix": workload_from("prefix", {"num_requests": 32, "concurrency": 8, "kind": "shared-prefix",
                                                  "prompt_len": 512, "prefix_len": 384, "num_prefixes": 4,
                                                  "output_len": 32}),
        "sweep": workload_from("sweep", SWEEP),
        "dataset": workload_from("data", {"num_requests": 16, "concurrency": 4, "kind": "dataset",
                                          "dataset": "data/prompts.jsonl", "dataset_format": "chat",
                                          "ignore_eos": False, "temperature": 0.7, "top_p": 0.9, "sampling_seed": 3,
                                          "output_len": 256}, Path("/tmp/tables")),
        "trace": workload_from("tr", {"num_requests": 20, "concurrency": None, "kind": "trace",
                                      "dataset": "/x/mooncake.jsonl", "time_scale": 0.5, "trace_start": 10,
                                      "block_tokens": 16, "trace_format": "mooncake", "warmup_requests": 0}),
        "clients": workload_from("wide", WIDE),
        "conversation": workload_from("chat", {"num_requests": 6, "concurrency": 3, "kind": "conversation",
                                               "turns": 3, "think_time_s": 0.5, "endpoint": "chat",
                                               "prompt_dist": {"dist": "lognormal", "mean": 100, "stdev": 50},
                                               "output_dist": {"dist": "uniform", "mean": 30, "range_ratio": 0.5}}),
    }
    ws["at_rate"] = ws["sweep"].at_rate(8)
    ws["single"] = single_stream(ws["clients"])
    return ws


# Pre-split values: each workload's label and its to_dict() as changes to DEFAULT_DICT.
EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("lab-n100-c10-p128-o64", {}),
    "shared_prefix": ("prefix-n32-c8-p512-o32", {
        "name": "prefix", "num_requests": 32, "concurrency": 8, "prompt_len": 512, "output_len": 32,
        "kind": "shared-prefix", "prefix_len": 384, "num_prefixes": 4}),
    "sweep": ("sweep-n40-cinf-p128-o128-cdd64e10", {
        "name": "sweep", "num_requests": 40, "concurrency": None, "output_len": 128, "burstiness": 0.5,
        "rates": [1.0, 4, 16.5], "slo_ttft_ms": 500.0, "slo_tpot_ms": 50, "capacity_steps": 2,
        "rate_seconds": 10.0}),
    "dataset": ("data-n16-c4-p128-o256-5bd75c58", {
        "name": "data", "num_requests": 16, "concurrency": 4, "output_len": 256, "kind": "dataset",
        "dataset": "/tmp/tables/data/prompts.jsonl", "dataset_format": "chat", "ignore_eos": False,
        "temperature": 0.7, "top_p": 0.9, "sampling_seed": 3}),
    "trace": ("tr-n20-cinf-p128-o128-b7b3610b", {
        "name": "tr", "num_requests": 20, "concurrency": None, "output_len": 128, "kind": "trace",
        "warmup_requests": 0, "dataset": "/x/mooncake.jsonl", "trace_format": "mooncake", "time_scale": 0.5,
        "trace_start": 10, "block_tokens": 16}),
    "clients": ("wide-n512-c256-rate64-p128-o128-2599f99f", {
        "name": "wide", "num_requests": 512, "concurrency": 256, "output_len": 128, "request_rate": 64.0,
        "deadline_s": 900.0, "max_schedule_lag_ms": 200.0, "max_queue_ms": 50.0, "client_workers": 4,
        "client_hosts": "ray", "max_client_ttft_error_ms": 40.0}),
    "conversation": ("chat-n6-c3-p128-o128-3bbca451", {
        "name": "chat", "num_requests": 6, "concurrency": 3, "output_len": 128, "kind": "conversation",
        "endpoint": "chat", "prompt_dist": {"dist": "lognormal", "mean": 100, "stdev": 50},
        "output_dist": {"dist": "uniform", "mean": 30, "range_ratio": 0.5}, "turns": 3, "think_time_s": 0.5}),
    "at_rate": ("sweep-n80-cinf-rate8-p128-o128-1b2e5fa2", {
        "name": "sweep", "num_requests": 80, "concurrency": None, "output_len": 128, "request_rate": 8.0,
        "burstiness": 0.5, "slo_ttft_ms": 500.0, "slo_tpot_ms": 50, "capacity_steps": 2, "rate_seconds": 10.0}),
    "single": ("wide-n8-c1-p128-o128-2599f99f", {
        "name": "wide", "num_requests": 8, "concurrency": 1, "output_len": 128, "deadline_s": 900.0,
        "max_schedule_lag_ms": 200.0, "max_queue_ms": 50.0, "client_workers": 4, "client_hosts": "ray",
        "max_client_ttft_error_ms": 40.0}),
}


@pytest.mark.parametrize("key", list(EXPECTED))
def test_label_and_to_dict_are_the_pre_split_values(key: str) -> None:
    w = workloads()[key]
    label, changes = EXPECTED[key]
    expected = {**DEFAULT_DICT, **changes}
    assert w.label == label
    d = w.to_dict()
    assert list(d) == list(DEFAULT_DICT)  # the same keys, in the same order
    assert json.dumps(d) == json.dumps(expected)  # the same values, ints staying ints


def test_each_field_lives_in_one_part() -> None:
    w = workload_from("wide", WIDE)
    assert w.source == RequestSource(num_requests=512)
    assert w.load == LoadShape(concurrency=256, request_rate=64.0, deadline_s=900.0, max_schedule_lag_ms=200.0,
                               max_queue_ms=50.0)
    assert w.sweep == Sweep() and w.client == ClientTopology(workers=4, hosts="ray", max_ttft_error_ms=40.0)
    assert w == Workload("wide", w.source, w.load, client=w.client)
    assert not hasattr(w, "concurrency") and not hasattr(w, "num_requests") and not hasattr(w, "rates")


def test_the_run_shape_is_the_declared_one_with_the_run_fields() -> None:
    w = workload_from("wide", WIDE)
    shape = w.shape(seed=7, timeout_s=60.0)
    assert shape.seed == 7 and shape.timeout_s == 60.0 and shape.offsets is None and shape.deadline_s == 900.0
    assert (shape.concurrency, shape.request_rate, shape.max_queue_ms) == (256, 64.0, 50.0)
    chat = workloads()["conversation"].shape(seed=1, timeout_s=60.0)
    assert chat.endpoint == "chat" and chat.deadline_s == pytest.approx(191.112)  # the pre-split value


def test_flat_names_route_to_their_part_and_an_unknown_one_is_named() -> None:
    w = Workload.of("w", 8, 2, prompt_len=16, client_workers=2, rates=(1.0,), slo_ttft_ms=100.0)
    assert (w.source.prompt_len, w.client.workers, w.sweep.rates, w.load.concurrency) == (16, 2, (1.0,), 2)
    moved = w.replace(concurrency=4, num_requests=9, client_hosts="ray", name="v")
    assert (moved.name, moved.load.concurrency, moved.source.num_requests, moved.client.hosts) == ("v", 4, 9, "ray")
    with pytest.raises(ConfigError, match="'concurency'"):
        w.replace(concurency=4)
    with pytest.raises(ConfigError, match="'workers'"):
        Workload.of("w", 8, 2, workers=3)
    with pytest.raises(ConfigError, match="workload 'w': concurrency must be >= 1"):
        Workload.of("w", 8, 0)

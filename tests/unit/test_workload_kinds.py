"""The client-side rules of the workload kinds: which chunks are tokens (vLLM's definition), token counts from
usage, the run's validity preconditions, workload entries and their errors, the multi-turn hit-rate range and the
capacity search. Timings here are injected (known sizes); the integration tests measure real servers."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from servingbench.load.conversation import expected_hit_range
from servingbench.load.generator import LoadResult, LoadShape, OpenAIClient, preconditions
from servingbench.load.synthetic import RequestSpec
from servingbench.load.sse import read_stream
from servingbench.load.workload import ConfigError, Workload, workload_from
from servingbench.measure.measurement import InvalidRun, Measurement, MissingFigure
from servingbench.measure.metrics import compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.measure.telemetry import TelemetrySummary
from servingbench.figures.capacity import Capacity, find_capacity
from servingbench.expect.bounds import Bound, check
from servingbench.figures.workload import token_count_notes


def _read(chat: bool, *events: str) -> RequestRecord:
    async def gen():  # type: ignore[no-untyped-def]
        for e in events:
            yield (e + "\n\n").encode()

    r = RequestRecord("x", 4, 3, start=0.0)
    asyncio.run(read_stream(gen(), r, chat=chat))
    return r


def text_chunk(text: str, finish: str | None = None) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


USAGE = "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})


# -- #18 item 1: every chunk with choices is a token, as vllm bench serve times them ------------------------
def test_a_token_that_decodes_to_nothing_still_times_ttft_and_itl() -> None:
    r = _read(False, text_chunk(""), text_chunk("b"), text_chunk("c", "length"), USAGE, "data: [DONE]")
    assert r.error is None and len(r.chunk_times) == 3 and len(r.itls) == 2
    assert r.generated_text == "bc"


def test_chat_finish_only_chunk_counts_and_role_only_does_not() -> None:
    chunk = lambda delta, finish=None: "data: " + json.dumps(  # noqa: E731
        {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    r = _read(True, chunk({"role": "assistant", "content": ""}), chunk({"content": "a"}), chunk({"content": ""}),
              chunk({}, "length"), USAGE, "data: [DONE]")
    assert r.error is None and len(r.chunk_times) == 3


def test_prompt_tokens_come_from_usage() -> None:
    r = _read(False, text_chunk("a"), USAGE, "data: [DONE]")
    assert r.prompt_tokens == 9 and r.input_tokens == 9 and r.prompt_len == 4
    m = compute_metrics([r], 1.0)
    assert m.total_input_tokens == 9 and m.estimated_output_tokens == 0


# -- #18 item 2: the output-token fallback is marked ----------------------------------------------------------
def test_output_tokens_without_usage_are_counted_as_estimated() -> None:
    r = _read(False, text_chunk("a"), text_chunk("b"), "data: [DONE]")
    m = compute_metrics([r], 1.0)
    assert r.output_tokens is None and m.total_output_tokens == 2 and m.estimated_output_tokens == 1


def test_token_count_notes_name_the_disagreement() -> None:
    ok = RequestRecord("a", 10, 4, start=1.0, chunk_times=[1.1], prompt_tokens=10, output_tokens=1)
    off = RequestRecord("b", 10, 4, start=1.0, chunk_times=[1.1], prompt_tokens=12, output_tokens=1)
    assert token_count_notes([ok], exact=True) == []
    (note,) = token_count_notes([ok, off], exact=True)
    assert "1 of 2 prompts" in note and "12 tokens where the client counted 10" in note
    assert token_count_notes([ok, off], exact=False) == []  # an estimate is not a disagreement


@pytest.mark.parametrize("fields, text", [
    ({}, False), ({"kind": "shared-prefix", "prefix_len": 64}, False), ({"endpoint": "chat"}, True),
    ({"kind": "dataset", "dataset": "d.jsonl"}, True), ({"kind": "conversation"}, True),
])
def test_only_text_workloads_need_the_tokenizer(fields: dict, text: bool) -> None:
    """Token-id prompts are counted exactly by the client without one; text prompts need the model's own."""
    assert Workload.of("w", 4, 1, **fields).sends_text is text


# -- the payload: natural stops and sampling ---------------------------------------------------------------
def test_payload_carries_sampling_and_natural_stops() -> None:
    client = OpenAIClient("http://127.0.0.1:1", "m", LoadShape(ignore_eos=False, temperature=0.7, top_p=0.9,
                                                               sampling_seed=5))
    path, body = client.payload(RequestSpec(prompt=[1, 2], prompt_len=2, max_tokens=3))
    assert path == "/v1/completions" and "ignore_eos" not in body
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 5)
    msgs = ({"role": "system", "content": "s"}, {"role": "user", "content": "u"})
    path, body = client.payload(RequestSpec(prompt="u", prompt_len=2, max_tokens=3, messages=msgs))
    assert path == "/v1/chat/completions" and body["messages"] == list(msgs)


# -- validity preconditions -----------------------------------------------------------------------------------
def _result(shape: LoadShape, records: list[RequestRecord], **kw: object) -> LoadResult:
    return LoadResult(records, 10.0, shape, 0.0, **kw)  # type: ignore[arg-type]


def test_open_loop_behind_schedule_is_invalid() -> None:
    shape = LoadShape(request_rate=10.0)
    late = [RequestRecord(f"r{i}", 4, 4, scheduled_at=i * 0.1, queued_at=i * 0.1 + 0.3, start=i * 0.1 + 0.3,
                          chunk_times=[i * 0.1 + 0.4]) for i in range(20)]
    (problem,) = preconditions(_result(shape, late))
    assert problem.startswith("behind schedule") and "300 ms > 100 ms" in problem and "10/s" in problem
    on_time = [RequestRecord(f"r{i}", 4, 4, scheduled_at=i * 0.1, queued_at=i * 0.1 + 0.002, start=i * 0.1 + 0.002,
                             chunk_times=[i * 0.1 + 0.1]) for i in range(20)]
    assert preconditions(_result(shape, on_time)) == []


def test_a_stall_of_the_machine_is_not_a_client_behind_schedule() -> None:
    """Two requests of 40 late by one VM stall (160 ms, as a CI run saw) keep the run valid; a client late on a
    fifth of its requests by as much does not."""
    shape = LoadShape(request_rate=8.0)

    def run(late: set[int]) -> list[RequestRecord]:
        lag = lambda i: 0.16 if i in late else 0.001  # noqa: E731
        return [RequestRecord(f"r{i}", 4, 4, scheduled_at=i / 8, queued_at=i / 8 + lag(i), start=i / 8 + lag(i),
                              chunk_times=[i / 8 + 0.2]) for i in range(40)]

    assert preconditions(_result(shape, run({17, 18}))) == []
    (problem,) = preconditions(_result(shape, run(set(range(0, 40, 5)))))
    assert problem.startswith("behind schedule") and "p90 160 ms > 100 ms" in problem and "p99 160 ms" in problem


def test_open_loop_throttled_by_its_cap_is_invalid() -> None:
    shape = LoadShape(request_rate=10.0, concurrency=2)
    queued = [RequestRecord(f"r{i}", 4, 4, scheduled_at=0.0, queued_at=0.0, start=0.5, chunk_times=[0.6])
              for i in range(5)]
    (problem,) = preconditions(_result(shape, queued))
    assert problem.startswith("client queue") and "2 slots" in problem
    assert preconditions(_result(LoadShape(concurrency=2), queued)) == []  # closed loop: queueing is the design


def test_saturated_client_and_passed_deadline_are_invalid() -> None:
    r = RequestRecord("r", 4, 4, start=1.0, error="deadline: ...")
    problems = preconditions(_result(LoadShape(deadline_s=5.0), [r], loop_lag_ms_p90=80.0, client_cpu_fraction=0.9,
                                     deadline_exceeded=True))
    assert [p.split(":")[0] for p in problems] == ["deadline", "client saturated"]
    assert "1 request(s) open" in problems[0] and "more client processes" in problems[1]


def test_an_invalid_run_fails_every_figure_with_the_reason() -> None:
    r = RequestRecord("r", 4, 4, start=1.0, chunk_times=[1.1, 1.2], output_tokens=2)
    m = Measurement("k", "vllm", "vllm", {}, {}, compute_metrics([r], 1.0), TelemetrySummary(), [r], 0.0,
                    invalid=["behind schedule: ..."])
    assert m.value("output_throughput") > 0  # still shown (the summary marks it) ...
    with pytest.raises(InvalidRun, match="output_throughput: the run is invalid: behind schedule"):
        m.require_valid("output_throughput")  # ... but nothing asserts on it
    from servingbench.expect.bounds import Bound, check

    bound = Bound("any-cpu", "*", "vllm", "output_throughput", 1.0, None, "lab", "test", "t.toml:1")
    problem = check(bound, lambda c, w: m, lambda c: Workload.of("lab", 1, 1))
    assert problem is not None and "the run is invalid: behind schedule" in problem


# -- workload entries ------------------------------------------------------------------------------------------
def test_workload_entries_report_every_problem() -> None:
    with pytest.raises(ConfigError) as e:
        workload_from("w", {"num_requests": 0, "concurrency": 2, "kind": "dataset", "rates": [4, 2]})
    msg = str(e.value)
    for part in ("num_requests = 0: input should be greater than or equal to 1", 'kind "dataset" needs dataset', "rates must be ascending",
                 "needs an SLO"):
        assert part in msg, msg
    with pytest.raises(ConfigError, match="unknown field"):
        workload_from("w", {"num_requests": 1, "concurrency": 1, "prompt_length": 3})
    with pytest.raises(ConfigError, match="prompt_dist"):
        workload_from("w", {"num_requests": 1, "concurrency": 1, "prompt_dist": {"dist": "zipf", "mean": 3}})


def test_new_fields_change_the_label_and_old_workloads_keep_theirs() -> None:
    base = workload_from("lab", {"num_requests": 100, "concurrency": 10, "prompt_len": 128, "output_len": 64})
    assert base.label == "lab-n100-c10-p128-o64"  # the keys of saved measurements and baselines
    sampled = base.replace(temperature=0.8)
    assert sampled.label.startswith("lab-n100-c10-p128-o64-") and sampled.label != base.label
    assert base.at_rate(4).label == "lab-n120-cinf-rate4-p128-o64"  # sized by duration: 4 req/s x 30 s


def test_derived_deadline_bounds_a_wedged_server_far_below_n_over_c_timeouts() -> None:
    lab = workload_from("lab", {"num_requests": 100, "concurrency": 10, "prompt_len": 128, "output_len": 64})
    deadline = lab.shape(0, 600.0).deadline_s
    assert deadline is not None and 600 < deadline < 0.25 * math.ceil(100 / 10) * 600
    assert lab.replace(deadline_s=30.0).shape(0, 600.0).deadline_s == 30.0


# -- multi-turn: the hit rate the histories imply ------------------------------------------------------------
def test_expected_hit_range_from_histories() -> None:
    def turn(conv: int, t: int, prompt: int, out: int) -> RequestRecord:
        return RequestRecord(f"c{conv}t{t}", 0, out, start=1.0, chunk_times=[1.1], prompt_tokens=prompt,
                             output_tokens=out, conversation=conv, turn=t)

    # turn 2 (300 tokens) starts with turn 1's 140-token prompt and its 40-token answer; block 64
    records = [turn(0, 1, 140, 40), turn(0, 2, 300, 40)]
    low, high = expected_hit_range(records, 64)
    assert low == pytest.approx(128 / 440) and high == pytest.approx(128 / 440)  # 140 -> 2 blocks; 179 -> 2
    records = [turn(0, 1, 140, 60), turn(0, 2, 300, 40)]
    low, high = expected_hit_range(records, 64)
    assert low == pytest.approx(128 / 440) and high == pytest.approx(192 / 440)  # 199 tokens fill 3 blocks


# -- capacity search --------------------------------------------------------------------------------------------
def _measurement_at(rate: float, capacity: float) -> Measurement:
    """A run whose p99 TTFT is 100 ms below the capacity and 2 s above it (injected)."""
    ttft = 0.1 if rate <= capacity else 2.0
    recs = [RequestRecord(f"r{i}", 4, 4, start=i, chunk_times=[i + ttft, i + ttft + 0.01], output_tokens=2)
            for i in range(10)]
    return Measurement(f"m{rate}", "vllm", "vllm", {}, {"request_rate": rate}, compute_metrics(recs, 10.0),
                       TelemetrySummary(), recs, 0.0)


def test_capacity_search_bisects_between_met_and_missed() -> None:
    w = Workload.of("s", 10, None, rates=(1.0, 4.0, 16.0), slo_ttft_ms=500.0, capacity_steps=3)
    seen: list[float] = []

    def measure(x: Workload) -> Measurement:
        seen.append(x.load.request_rate)
        assert x.load.concurrency is None and not x.sweep.rates
        return _measurement_at(x.load.request_rate, capacity=6.0)

    cap = find_capacity(w, measure)
    assert seen[:3] == [1.0, 4.0, 16.0] and len(seen) == 6
    assert cap.bounded_by == "search" and 4.0 <= cap.capacity_rps <= 6.0 and cap.capacity_rps > 5.0, cap
    assert find_capacity(w, lambda x: _measurement_at(x.load.request_rate, 100.0)).bounded_by == "top"
    bottom = find_capacity(w, lambda x: _measurement_at(x.load.request_rate, 0.5))
    assert (bottom.capacity_rps, bottom.bounded_by) == (0.0, "bottom")


LATE = "behind schedule: the open-loop client sent requests late"


def _search_with_invalid(bad_at: int, capacity: float = 6.0) -> tuple[Capacity, list[float]]:
    """The search of rates 1, 4, 16 with 3 bisections, where the ``bad_at``-th run is invalid (client late)."""
    w = Workload.of("s", 10, None, rates=(1.0, 4.0, 16.0), slo_ttft_ms=500.0, capacity_steps=3)
    seen: list[float] = []

    def measure(x: Workload) -> Measurement:
        m = _measurement_at(x.load.request_rate, capacity)
        if len(seen) == bad_at:
            m.invalid = [LATE]
        seen.append(x.load.request_rate)
        return m

    return find_capacity(w, measure), seen


def test_an_invalid_run_caps_the_search_which_goes_on_below_it() -> None:
    """Whichever run of the search is invalid, it is kept unjudged with its reason, and no rate at or above it is
    judged afterwards; the capacity is the highest rate met below the lowest miss and the lowest invalid rate, never
    above the true capacity (6 req/s); it is a lower bound ("client") unless a miss below the invalid rate closed
    the search ("search"). Expected per position, by hand: 1 invalid -> no figure; 4 -> 1, 2, 2.828, 3.363 met;
    16 -> 8 missed, so the usual 5.657; 8 -> 5.657 met, 6.727 missed; 5.657 -> 4.757 met; 6.727 -> 5.657."""
    expected = {0: (None, "invalid"), 1: (3.363, "client"), 2: (5.657, "search"), 3: (5.657, "search"),
                4: (4.757, "client"), 5: (5.657, "client")}
    for bad_at, (rps, by) in expected.items():
        cap, seen = _search_with_invalid(bad_at)
        assert (cap.capacity_rps, cap.bounded_by) == (rps, by), (bad_at, seen, cap)
        assert [p.rate for p in cap.points] == seen
        bad = cap.points[bad_at]
        assert bad.meets is None and bad.invalid == (LATE,) and cap.stopped_by is bad
        assert all(p.meets is not None for i, p in enumerate(cap.points) if i != bad_at)
        assert all(p.rate < bad.rate for p in cap.points[bad_at + 1:]), (bad_at, seen)
        if rps is not None:
            assert rps <= 6.0 and all(p.meets for p in cap.points if p.rate <= rps)
        saved = {p["rate"]: p for p in cap.to_dict()["points"]}
        assert saved[bad.rate]["invalid"] == [LATE] and saved[bad.rate]["meets"] is None


def test_a_capacity_known_from_below_decides_a_min_and_an_exceeded_max_only() -> None:
    client, _ = _search_with_invalid(4)  # at least 4.757 req/s
    assert client.at_least and client.figure() == 4.757
    with pytest.raises(MissingFigure, match=r"at least 4\.757 req/s, since the client could not offer 5\.657 "
                                            r"req/s on this machine \(behind schedule"):
        client.figure(lower_bound_decides=False)
    top = find_capacity(Workload.of("s", 10, None, rates=(1.0, 4.0), slo_ttft_ms=500.0),
                        lambda x: _measurement_at(x.load.request_rate, 100.0))
    with pytest.raises(MissingFigure, match="at least 4 req/s, since every swept rate met the SLO"):
        top.figure(lower_bound_decides=False)
    none, _ = _search_with_invalid(0)
    with pytest.raises(MissingFigure, match=r"the run at the lowest rate, 1 req/s, is invalid.*behind schedule"):
        none.figure()
    searched, _ = _search_with_invalid(3)
    assert not searched.at_least and searched.figure(lower_bound_decides=False) == 5.657

    # through the table's check: a min is settled by the lower bound; a max only once the lower bound exceeds it
    w = Workload.of("s", 10, None, rates=(1.0, 4.0, 16.0), slo_ttft_ms=500.0, capacity_steps=3)

    def verdict(lo: float | None, hi: float | None) -> str | None:
        calls: list[float] = []

        def measure(config: str, x: Workload) -> Measurement:
            m = _measurement_at(x.load.request_rate, 6.0)
            if len(calls) == 4:
                m.invalid = [LATE]
            calls.append(x.load.request_rate)
            return m

        b = Bound("any-cpu", "*", "vllm", "capacity_rps", lo, hi, "s", "test", "t.toml:1")
        return check(b, measure, lambda config: w)

    assert verdict(4.0, None) is None
    assert "capacity_rps = 4.757, expected >= 5" in (verdict(5.0, None) or "")  # a lower bound below a min fails
    assert "no value to check against <= 10" in (verdict(None, 10.0) or "")  # undecided: missing, never a pass
    assert "capacity_rps = 4.757, expected <= 4" in (verdict(None, 4.0) or "")  # already above the max: fails



# -- #18 item 9: a memory bound that does not read back the suite's own setting -------------------------------
def test_kv_capacity_is_a_figure_and_its_absence_is_named() -> None:
    r = RequestRecord("r", 4, 4, start=1.0, chunk_times=[1.1, 1.2], output_tokens=2)
    m = Measurement("k", "vllm", "vllm", {}, {}, compute_metrics([r], 1.0), TelemetrySummary(), [r], 0.0,
                    kv_cache={"block_size": "16", "num_gpu_blocks": "7387", "capacity_tokens": 118192})
    assert m.value("kv_capacity_tokens") == 118192
    m.kv_cache = {}
    with pytest.raises(MissingFigure, match="kv_capacity_tokens: the server's /metrics gave no"):
        m.value("kv_capacity_tokens")


def test_each_rate_of_a_sweep_runs_for_the_same_time_not_the_same_count() -> None:
    """#28 item 7: with a fixed count, 40 requests at 64 req/s arrived within 0.6 s (no steady state); each rate now
    gets ``rate_seconds`` of arrivals, with ``num_requests`` as the floor, and a sweep judged on p99s of fewer than
    100 requests says so."""
    w = Workload.of("s", 40, None, rates=(1.0, 4.0, 64.0), slo_ttft_ms=500.0)
    assert w.sweep.rate_seconds == 30.0
    assert [w.at_rate(r).source.num_requests for r in (1.0, 4.0, 64.0, 0.5)] == [40, 120, 1920, 40]
    short = w.replace(rate_seconds=2.5)
    assert [short.at_rate(r).source.num_requests for r in (1.0, 16.0, 16.1)] == [40, 40, 41]
    assert w.replace(rate_seconds=None).at_rate(64.0).source.num_requests == 40  # the old fixed count, where asked for
    for bad in (0, -1.0, math.inf, "10"):
        with pytest.raises(ConfigError, match="rate_seconds"):
            workload_from("s", {"num_requests": 4, "concurrency": None, "rates": [1], "slo_ttft_ms": 100, "rate_seconds": bad})
    cap = find_capacity(short.replace(rates=(1.0, 4.0)), lambda x: _measurement_at(x.load.request_rate, 100.0))
    assert [p.requests for p in cap.points] == [10, 10]  # the injected runs hold 10 requests each
    assert cap.notes == ["the p99s at 1, 4 req/s are over fewer than 100 requests, where a p99 is close to the "
                         "maximum; raise num_requests or rate_seconds"] and cap.to_dict()["notes"] == cap.notes

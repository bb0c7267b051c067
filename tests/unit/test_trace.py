"""Trace replay (kind "trace"): the three file formats and their errors, the schedule (scale and slice), prompts
whose shared hash ids are shared token blocks, the hit rate the blocks imply, the workload entry and the open
loop's lateness rule on a recorded schedule. The integration test (tests/integration/test_trace_replay.py)
replays the shipped samples on the real vLLM CPU server and checks the measured hit rate against these figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from servingbench.errors import ConfigError
from servingbench.load.dataset_files import DatasetError
from servingbench.load.generator import LoadResult, LoadShape, preconditions
from servingbench.load.trace import (build_prompt, expected_hit_rate, hit_range, replay, scaled, schedule,
                                     select, server_blocks)
from servingbench.load.trace_files import TraceRequest, detect_format, read_trace
from servingbench.load.trace_samples import SAMPLES, samples_dir, write_samples
from servingbench.load.workload import Workload, workload_from
from servingbench.load.workload_schema import TRACE_FORMATS as SCHEMA_FORMATS
from servingbench.load.trace_files import TRACE_FORMATS
from servingbench.measure.records import RequestRecord

VOCAB = 8192


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def mooncake(tmp_path: Path, rows: list[dict]) -> Path:
    return write(tmp_path, "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


# -- the three formats ---------------------------------------------------------------------------------------------
def test_mooncake_lines_read_with_ms_timestamps(tmp_path: Path) -> None:
    p = mooncake(tmp_path, [{"timestamp": 1500, "input_length": 700, "output_length": 9, "hash_ids": [3, 4]},
                            {"timestamp": 27482, "input_length": 6955, "output_length": 52,
                             "hash_ids": list(range(46, 60)), "extra": "ignored"}])
    fmt, reqs = read_trace(p)
    assert fmt == "mooncake"
    assert reqs == [TraceRequest(1.5, 700, 9, (3, 4), 1), TraceRequest(27.482, 6955, 52, tuple(range(46, 60)), 2)]


def test_azure_datetime_stamps_to_seconds(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                 "2023-11-16 18:15:46.6805900,374,44\n\n"
                                 "2023-11-16 18:15:48.1805900,1020,7\n")
    fmt, reqs = read_trace(p)
    assert fmt == "azure" and [(r.input_len, r.output_len, r.hash_ids, r.line) for r in reqs] == \
        [(374, 44, None, 2), (1020, 7, None, 4)]
    assert reqs[1].time_s - reqs[0].time_s == pytest.approx(1.5)


def test_burstgpt_columns_by_name_and_failed_requests_kept(tmp_path: Path) -> None:
    p = write(tmp_path, "b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                                 "5,ChatGPT,472,18,490,Conversation log\n"
                                 "5,GPT-4,30,0,30,API log\n"
                                 "9.5,ChatGPT,100,200,300,Conversation log\n")
    fmt, reqs = read_trace(p)
    assert fmt == "burstgpt" and [(r.time_s, r.input_len, r.output_len) for r in reqs] == \
        [(5.0, 472, 18), (5.0, 30, 0), (9.5, 100, 200)]


def test_requests_are_replayed_in_time_order_ties_in_file_order(tmp_path: Path) -> None:
    p = write(tmp_path, "b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                                 "7,m,1,1,2,x\n5,m,2,1,3,x\n5,m,3,1,4,x\n")
    assert [r.input_len for r in read_trace(p)[1]] == [2, 3, 1]


@pytest.mark.parametrize("first,fmt", [('{"timestamp": 0}', "mooncake"),
                                       ("TIMESTAMP,ContextTokens,GeneratedTokens", "azure"),
                                       ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
                                        "burstgpt"), ("a,b,c", None)])
def test_format_detected_from_the_first_line(first: str, fmt: str | None) -> None:
    assert detect_format(first) == fmt


def test_the_schema_and_the_reader_know_the_same_formats() -> None:
    assert SCHEMA_FORMATS == TRACE_FORMATS


# -- bad lines -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,expected", [
    ("{not json", ["t.jsonl:2:", "not valid JSON", "one object per line"]),
    ('{"timestamp": 5, "input_length": 10}', ["t.jsonl:2:", "'output_length'", "'hash_ids'", "a mooncake line is"]),
    ('{"timestamp": 5, "input_length": -3, "output_length": 1, "hash_ids": []}',
     ["t.jsonl:2:", "'input_length' must be a whole number of tokens >= 0, got -3", '"input_length": 6955']),
    ('{"timestamp": "soon", "input_length": 3, "output_length": 1, "hash_ids": []}',
     ["t.jsonl:2:", "'timestamp' is 'soon', not a number", "27482 (ms)"]),
    ('{"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": ["a"]}',
     ["t.jsonl:2:", "'hash_ids' must be a list of block ids", "[46, 47, 48]"]),
])
def test_a_bad_mooncake_line_names_file_line_and_fix(tmp_path: Path, line: str, expected: list[str]) -> None:
    good = '{"timestamp": 0, "input_length": 3, "output_length": 1, "hash_ids": [0]}'
    p = write(tmp_path, "t.jsonl", good + "\n" + line + "\n")
    with pytest.raises(ConfigError) as e:
        read_trace(p)
    for text in expected:
        assert text in str(e.value), str(e.value)


def test_bad_csv_rows_are_all_listed_with_their_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                 "2023-11-16 18:15:46.68,374,44\n"
                                 "yesterday,374,44\n"
                                 "2023-11-16 18:15:47.68,many,44\n")
    with pytest.raises(DatasetError) as e:
        read_trace(p)
    msg = str(e.value)
    assert "2 problems in this trace file" in msg and [no for no, _ in e.value.problems] == [3, 4], msg
    assert "a.csv:3: 'TIMESTAMP' is 'yesterday', not a date and time; write it as 2023-11-16" in msg
    assert "a.csv:4: 'ContextTokens' is 'many', not a number; write a whole number of tokens" in msg


def test_a_csv_without_its_columns_or_rows(tmp_path: Path) -> None:
    p = write(tmp_path, "b.csv", "time,prompt,answer\n5,1,1\n")
    with pytest.raises(DatasetError, match=r"b.csv:1: line 1 \('time,prompt,answer'\) is neither a JSON object "
                                           r"nor a known CSV header; the trace formats are mooncake"):
        read_trace(p)  # no format's columns: nothing to detect
    with pytest.raises(DatasetError, match=r"b.csv:1: the CSV header .* lacks column\(s\) 'GeneratedTokens'"):
        read_trace(write(tmp_path, "b.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,1\n"), "azure")
    with pytest.raises(DatasetError, match="has a header but no rows"):
        read_trace(write(tmp_path, "b.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"))
    with pytest.raises(DatasetError, match="is empty"):
        read_trace(write(tmp_path, "b.csv", "\n"))
    with pytest.raises(DatasetError, match="cannot read the trace file"):
        read_trace(tmp_path / "nope.csv")


def test_a_forced_format_that_the_file_contradicts(tmp_path: Path) -> None:
    p = mooncake(tmp_path, [{"timestamp": 0, "input_length": 3, "output_length": 1, "hash_ids": [0]}])
    with pytest.raises(DatasetError, match='looks like a \'mooncake\' trace but trace_format = \'azure\'; set '
                                           'trace_format = "mooncake"'):
        read_trace(p, "azure")


# -- schedule, slice and scaling -----------------------------------------------------------------------------------
def reqs(*times: float) -> list[TraceRequest]:
    return [TraceRequest(t, 10, 5, None, i + 1) for i, t in enumerate(times)]


def test_offsets_from_the_first_request_scaled() -> None:
    assert schedule(reqs(10.0, 10.5, 12.0), 1.0) == (0.0, 0.5, 2.0)
    assert schedule(reqs(10.0, 10.5, 12.0), 0.5) == (0.0, 0.25, 1.0)  # twice as fast
    with pytest.raises(ValueError):
        schedule(reqs(1.0), 0.0)


def test_a_slice_starts_its_own_clock(tmp_path: Path) -> None:
    p = mooncake(tmp_path, [{"timestamp": 1000 * i, "input_length": 100, "output_length": 10, "hash_ids": [i]}
                            for i in range(6)])
    r = replay(p, vocab_size=VOCAB, seed=1, start=2, count=3, time_scale=2.0)
    assert r.offsets == (0.0, 2.0, 4.0) and [s.source for s in r.specs] == ["t.jsonl:3", "t.jsonl:4", "t.jsonl:5"]
    with pytest.raises(DatasetError, match=r"holds 6 request\(s\); workload 'trace' asks for trace_start = 4 \+ "
                                           r"num_requests = 3 = 7; lower num_requests or trace_start"):
        select(read_trace(p)[1], 4, 3, str(p), "trace")


def test_lengths_scale_up_so_a_prompt_keeps_its_blocks() -> None:
    # 6955 tokens in 14 blocks of 512; at 32 tokens a block: 435 tokens, still 14 blocks (13 full and a partial)
    assert scaled(6955, 32 / 512) == 435 and math.ceil(435 / 32) == 14
    assert scaled(512, 32 / 512) == 32 and scaled(513, 32 / 512) == 33
    assert scaled(0, 1 / 16) == 1 and scaled(52, 1 / 16) == 4  # at least one token each way


def test_a_request_too_long_once_scaled_names_its_line_and_the_fix(tmp_path: Path) -> None:
    p = mooncake(tmp_path, [{"timestamp": 0, "input_length": 500, "output_length": 10, "hash_ids": [0]},
                            {"timestamp": 5, "input_length": 9000, "output_length": 400, "hash_ids": list(range(18))}])
    with pytest.raises(DatasetError) as e:
        replay(p, vocab_size=VOCAB, seed=1, count=2, block_tokens=64, max_model_len=1024)
    assert str(e.value).startswith(f"{p}:2: input 9000 and output 400 tokens scale by block_tokens / "
                                   "trace_block_tokens = 64/512 to 1125 + 50 = 1175 tokens, which do not fit "
                                   "max_model_len 1024; lower block_tokens"), str(e.value)
    assert len(replay(p, vocab_size=VOCAB, seed=1, count=2, block_tokens=32, max_model_len=1024).specs) == 2


# -- prompts -------------------------------------------------------------------------------------------------------
def test_equal_hash_ids_give_equal_token_blocks() -> None:
    a = TraceRequest(0, 4 * 512, 1, (7, 8, 9, 10), 1)
    b = TraceRequest(1, 3 * 512 - 100, 1, (7, 8, 11), 2)  # shares blocks 7, 8; its last block is partial
    c = TraceRequest(2, 2 * 512, 1, (20, 8), 3)  # block 8 at another place, after a different block
    pa, pb, pc = (build_prompt(r, i, scaled(r.input_len, 16 / 512), 16, VOCAB, seed=5) for i, r in enumerate((a, b, c)))
    assert (len(pa), len(pb), len(pc)) == (64, 45, 32)
    assert pa[:32] == pb[:32] and pa[32:48] != pb[32:48]  # the two shared blocks, then their own
    assert pc[16:32] == pa[16:32] and pc[:16] != pa[:16]  # the same id is the same block wherever it is
    assert build_prompt(a, 0, 64, 16, VOCAB, seed=6)[:32] != pa[:32]  # a fresh seed: a fresh cache's content
    assert all(16 <= t < VOCAB for t in pa + pb + pc)


def test_tokens_beyond_the_blocks_and_prompts_without_hash_ids_are_their_own() -> None:
    short = TraceRequest(0, 2000, 1, (1,), 1)  # more tokens than its one block holds
    p1 = build_prompt(short, 0, 40, 16, VOCAB, seed=1)
    p2 = build_prompt(TraceRequest(0, 2000, 1, (1,), 2), 1, 40, 16, VOCAB, seed=1)
    assert p1[:16] == p2[:16] and p1[16:] != p2[16:] and len(p1) == 40
    azure = [build_prompt(TraceRequest(0, 100, 1, None, i), i, 30, 16, VOCAB, seed=1) for i in range(3)]
    assert len({tuple(p[:16]) for p in azure}) == 3


# -- the hit rate the blocks imply ---------------------------------------------------------------------------------
def test_expected_hit_rate_counts_blocks_already_seen() -> None:
    # trace blocks of 16 tokens, server blocks of 16: [A B C] then [A B D] then [E]: the second finds A and B
    pa, pb = [1] * 16 + [2] * 16 + [3] * 16, [1] * 16 + [2] * 16 + [4] * 16
    pe = [5] * 16
    assert expected_hit_rate([pa, pb, pe], 16) == pytest.approx(32 / 112)
    # server blocks of 32: A+B is one block, found; of 64: the shared 32 tokens fill no block, nothing is found
    assert expected_hit_rate([pa, pb, pe], 32) == pytest.approx(32 / 112)
    assert expected_hit_rate([pa, pb, pe], 64) == 0.0
    # the same prompt twice: the block of its last token is computed again (vLLM's num_tokens - 1)
    assert expected_hit_rate([pa, pa], 16) == pytest.approx(32 / 96)
    assert expected_hit_rate([pa, pa + [9]], 16) == pytest.approx(48 / 97)


def test_at_the_trace_block_size_it_is_the_share_of_blocks_seen_before(tmp_path: Path) -> None:
    """Mooncake's own measure: blocks already seen over all blocks (full blocks, not a prompt's last)."""
    r = replay(samples_dir() / SAMPLES["mooncake"], vocab_size=VOCAB, seed=3, count=32, block_tokens=32)
    _, trace = read_trace(samples_dir() / SAMPLES["mooncake"])
    seen, found, tokens = set(), 0, 0
    for req, spec in zip(trace, r.specs):
        usable = (spec.prompt_len - 1) // 32  # full blocks before the last token's
        for h in req.hash_ids[:usable]:
            if h not in seen:
                break
            found += 1
        seen.update(req.hash_ids[:spec.prompt_len // 32])
        tokens += spec.prompt_len
    assert expected_hit_rate(r.prompts, 32) == pytest.approx(found * 32 / tokens)
    assert 0.5 < expected_hit_rate(r.prompts, 128) < expected_hit_rate(r.prompts, 32)  # coarser blocks find less


def record(start: float, ttft: float | None) -> RequestRecord:
    r = RequestRecord("r", 0, 1, start=start, queued_at=start)
    if ttft is not None:
        r.chunk_times = [start + ttft]
    return r


def test_hit_range_follows_the_run_timing() -> None:
    pa, pb = [1] * 32 + [2] * 16, [1] * 32 + [3] * 16
    # one after the other: the second was sent after the first's prompt was in the cache
    low, high = hit_range([pa, pb], [record(1.0, 0.1), record(2.0, 0.1)], 16)
    assert low == high == pytest.approx(expected_hit_rate([pa, pb], 16)) == pytest.approx(32 / 96)
    # both at once: neither was cached when the other was sent; either may find the other's blocks
    low, high = hit_range([pa, pb], [record(1.0, 0.5), record(1.001, 0.5)], 16)
    assert low == 0.0 and high == pytest.approx(64 / 96)
    # a failed request never caches for the low bound
    assert hit_range([pa, pb], [record(1.0, None), record(2.0, 0.1)], 16)[0] == 0.0
    assert server_blocks(pa, 16) != server_blocks(pb, 16) and server_blocks(pa, 16)[:2] == server_blocks(pb, 16)[:2]


# -- the workload entry and the open loop's rule ---------------------------------------------------------------------
TRACE = {"kind": "trace", "dataset": "t.jsonl", "num_requests": 4, "concurrency": 8, "time_scale": 0.5,
         "block_tokens": 32, "trace_start": 2, "trace_format": "mooncake"}


def test_a_trace_entry_loads_with_its_fields(tmp_path: Path) -> None:
    w = workload_from("tr", TRACE, base_dir=tmp_path)
    s = w.source
    assert (s.kind, s.dataset, s.time_scale, s.block_tokens, s.trace_block_tokens, s.trace_start) == \
        ("trace", str(tmp_path / "t.jsonl"), 0.5, 32, 512, 2)
    assert not w.sends_text and w.label != workload_from("tr", {**TRACE, "time_scale": 1.0}).label


@pytest.mark.parametrize("change,expected", [
    ({"time_scale": 0}, "time_scale = 0: input should be greater than 0"),
    ({"time_scale": float("inf")}, "time_scale = inf"),
    ({"block_tokens": 0}, "block_tokens = 0: input should be greater than or equal to 1"),
    ({"trace_start": -1}, "trace_start = -1: input should be greater than or equal to 0"),
    ({"trace_format": "csv"}, "trace_format = 'csv': input should be 'mooncake', 'azure' or 'burstgpt'"),
    ({"dataset": ""}, 'kind "trace" needs dataset = "path/to/trace"'),
    ({"rates": [1, 2], "slo_ttft_ms": 100}, "a trace sends at its recorded times: leave out rates and request_rate"),
    ({"request_rate": 4}, "leave out rates and request_rate (use time_scale)"),
    ({"endpoint": "chat"}, "token-id prompts (its shared blocks exact) on completions"),
    ({"dataset_format": "prompt"}, "a trace's format is trace_format"),
    ({"kind": "random"}, 'trace_format, time_scale, trace_start, block_tokens: read by kind "trace" only'),
])
def test_a_bad_trace_entry_names_the_field_and_the_fix(change: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        workload_from("tr", {**TRACE, **change})
    assert expected in str(e.value), str(e.value)


def test_a_trace_runs_open_loop_on_its_schedule_with_a_deadline_past_its_span() -> None:
    w = Workload.of("tr", 3, 8, kind="trace", dataset="t.jsonl")
    shape = w.shape(seed=1, timeout_s=60, offsets=(0.0, 1.0, 100.0))
    assert shape.open_loop and shape.arrivals(3) == [0.0, 1.0, 100.0]
    assert shape.deadline_s == pytest.approx(w.derived_deadline(60) + 100.0)
    with pytest.raises(ValueError, match="3 offsets for 2 requests"):
        shape.arrivals(2)
    with pytest.raises(ValueError, match="ascending"):
        LoadShape(offsets=(1.0, 0.5))
    assert not LoadShape().open_loop and LoadShape().arrivals(2) == [0.0, 0.0]


def test_lateness_against_the_trace_makes_the_run_invalid() -> None:
    """The open loop's own rule (p90 lateness over max_schedule_lag_ms) on the recorded schedule."""
    shape = LoadShape(offsets=tuple(float(i) for i in range(10)), max_schedule_lag_ms=100)
    late = []
    for i in range(10):
        r = RequestRecord(f"r{i}", 4, 2, scheduled_at=100.0 + i, queued_at=100.0 + i + 0.3, start=100.0 + i + 0.3)
        r.chunk_times = [r.start + 0.1]
        late.append(r)
    (why,) = preconditions(LoadResult(late, 10.0, shape, 0.0))
    assert why.startswith("behind schedule: the open-loop client sent requests late, p90 300 ms > 100 ms")
    assert "the trace's recorded arrival times were not kept; raise time_scale" in why
    on_time = [RequestRecord("r", 4, 2, scheduled_at=1.0, queued_at=1.001, start=1.001) for _ in range(10)]
    assert preconditions(LoadResult(on_time, 10.0, shape, 0.0)) == []


def test_the_shipped_samples_are_the_generated_ones(tmp_path: Path) -> None:
    fresh = write_samples(tmp_path)
    for fmt, path in fresh.items():
        shipped = samples_dir() / SAMPLES[fmt]
        assert shipped.read_bytes() == path.read_bytes(), (
            f"{shipped} differs from its generator: python -m servingbench.load.trace_samples servingbench/data/traces")
        assert read_trace(shipped)[0] == fmt and shipped.stat().st_size < 8000


def test_the_readme_example_loads_and_its_error_is_the_one_a_bad_line_gets(tmp_path: Path) -> None:
    import re
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    part = text[text.index("**Trace replay**"):text.index("**Request-rate sweeps")]
    table = tomllib.loads(re.search(r"```toml\n(.*?)```", part, re.S).group(1))
    for variant in ("cpu", "gpu"):
        w = workload_from("mooncake", table["workloads"]["mooncake"][variant], base_dir=tmp_path)
        assert w.source.kind == "trace" and w.source.dataset == str(tmp_path / "traces" / "mooncake.jsonl")
    p = write(tmp_path, "mooncake.jsonl", '{"timestamp": 0, "input_length": 3, "output_length": 1, "hash_ids": [0]}\n'
                                          '{"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": "7"}\n')
    with pytest.raises(DatasetError) as e:
        read_trace(p)
    shown = re.search(r"\(`(mooncake\.jsonl:2: .*?)`\)", part.replace("\n", " ")).group(1)
    assert str(e.value).endswith(shown), (str(e.value), shown)


def test_a_short_csv_row_names_the_missing_column(tmp_path: Path) -> None:
    p = write(tmp_path, "b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                                 "5,ChatGPT,3\n")
    with pytest.raises(DatasetError, match=r"b.csv:2: 'Response tokens' is missing \(a row shorter than the "
                                           r"header\?\); give every row every column"):
        read_trace(p)

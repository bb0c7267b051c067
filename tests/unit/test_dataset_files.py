"""Tests for dataset_files.py (JSONL prompt/chat/ShareGPT files, generated in tmp_path) and lengths.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servingbench.load.dataset_files import (DatasetError, estimate_tokens, read_conversations, read_dataset,
                                             write_jsonl)
from servingbench.load.synthetic import FIRST_ORDINARY_ID
from servingbench.load.lengths import LengthDist, synthetic_prompts
from servingbench.load.workload import ConfigError


def words(s: str) -> int:
    return len(s.split())


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def problem(path: Path, line: Any, **kw: Any) -> str:
    """The DatasetError message for a file whose only line is ``line`` (a dict, or raw text)."""
    raw = line if isinstance(line, str) else json.dumps(line)
    write_lines(path, [raw])
    with pytest.raises(DatasetError) as e:
        read_dataset(path, count_tokens=words, **kw)
    return str(e.value)


# ---------------------------------------------------------------- formats, end to end

def test_prompt_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "one two three", "output_len": 7},
        {"prompt": "a b", "max_tokens": 3},
        {"prompt": "no length here at all"},
    ])
    specs = read_dataset(path, count_tokens=words, default_output_len=50)
    assert [(s.prompt, s.prompt_len, s.max_tokens) for s in specs] == [
        ("one two three", 3, 7), ("a b", 2, 3), ("no length here at all", 5, 50)]
    assert all(s.messages is None for s in specs)
    assert [s.source for s in specs] == ["p.jsonl:1", "p.jsonl:2", "p.jsonl:3"]


def test_prompt_len_estimate_without_tokenizer(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "one two three four"}, {"prompt": "x"}])
    assert [s.prompt_len for s in read_dataset(path)] == [6, 2]  # ceil(4*4/3), ceil(4/3)
    assert estimate_tokens("   ") == 1


def test_chat_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
                      {"role": "assistant", "content": "hello you human"}, {"role": "user", "content": "why sky"},
                      {"role": "assistant", "content": "rayleigh scattering of light"}]},
        {"messages": [{"role": "user", "content": "count to ten"}], "output_len": 9},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c"}],
         "output_len": 2},
    ])
    first, second, third = read_dataset(path, count_tokens=words, default_output_len=33)
    # Sent up to the last user message; the final assistant message is the reference reply (4 words).
    assert first.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
                              {"role": "assistant", "content": "hello you human"},
                              {"role": "user", "content": "why sky"})
    assert (first.prompt, first.prompt_len, first.max_tokens) == ("why sky", 2 + 2 + 3 + 2, 4)
    assert (second.prompt, second.prompt_len, second.max_tokens) == ("count to ten", 3, 9)
    assert third.max_tokens == 2  # output_len wins over the reference reply
    assert third.messages == ({"role": "user", "content": "q"},)
    assert second.source == "c.jsonl:2"


def test_chat_without_reply_or_output_len_uses_default(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "system", "content": "b c"}]
    (spec,) = read_dataset(write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}]), count_tokens=words,
                           default_output_len=21)
    assert spec.max_tokens == 21 and spec.prompt_len == 1 and len(spec.messages or ()) == 1


def test_sharegpt_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"id": "x1", "conversations": [{"from": "system", "value": "you are kind"},
                                       {"from": "human", "value": "tell me a joke"},
                                       {"from": "gpt", "value": "why did the chicken"},
                                       {"from": "human", "value": "another"}, {"from": "gpt", "value": "no"}]},
        {"id": "x2", "conversations": [{"from": "human", "value": "only a question"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a b c"}], "output_len": 5},
    ])
    a, b, c = read_dataset(path, count_tokens=words, default_output_len=17)
    assert a.messages == ({"role": "system", "content": "you are kind"},
                          {"role": "user", "content": "tell me a joke"})
    assert (a.prompt, a.prompt_len, a.max_tokens) == ("tell me a joke", 3 + 4, 4)
    assert (b.prompt, b.prompt_len, b.max_tokens) == ("only a question", 3, 17)
    assert c.max_tokens == 5
    assert [s.source for s in (a, b, c)] == ["s.jsonl:1", "s.jsonl:2", "s.jsonl:3"]


def test_auto_detect_mixed_file_blank_lines_and_limit(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", [
        json.dumps({"prompt": "p one"}), "", "   ",
        json.dumps({"messages": [{"role": "user", "content": "c one two"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "s"}, {"from": "gpt", "value": "r r"}]}),
    ])
    specs = read_dataset(path, count_tokens=words)
    assert [s.source for s in specs] == ["m.jsonl:1", "m.jsonl:4", "m.jsonl:5"]
    assert [s.messages is None for s in specs] == [True, False, False]
    assert specs[2].max_tokens == 2
    assert len(read_dataset(path, count_tokens=words, limit=2)) == 2


def test_forced_format_accepts_its_own_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "a"}]}])
    assert read_dataset(path, format="chat")[0].prompt == "a"
    with pytest.raises(ValueError, match="format must be one of"):
        read_dataset(path, format="alpaca")


def test_read_conversations(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "conv.jsonl", [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}]},
        {"conversations": [{"from": "human", "value": "h1"}, {"from": "gpt", "value": "g1"},
                           {"from": "human", "value": "h2"}, {"from": "gpt", "value": "g2"}]},
        {"prompt": "single"},
    ])
    assert read_conversations(path) == [["u1", "u2"], ["h1", "h2"], ["single"]]
    assert read_conversations(path, limit=1) == [["u1", "u2"]]
    with pytest.raises(DatasetError, match=r"conv\.jsonl:2: mixed formats"):
        read_conversations(path, format="chat")


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    rows = [{"prompt": "héllo", "output_len": 3}, {"prompt": "b"}]
    path = write_jsonl(tmp_path / "sub" / "w.jsonl", rows)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows


# ---------------------------------------------------------------- errors

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        read_dataset(tmp_path / "nope.jsonl")
    assert str(e.value).startswith(f"{tmp_path / 'nope.jsonl'}: cannot read") and "check the path" in str(e.value)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        read_dataset(path := write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    assert str(e.value).startswith(f"{path}: no requests") and "one JSON object per line" in str(e.value)


@pytest.mark.parametrize("line, expected", [
    ('{"prompt": "a", ', ["not valid JSON", "one JSON object per line"]),
    ('["a", "b"]', ["expected a JSON object", "jq -c"]),
    ({"text": "a"}, ["missing field", "'prompt', 'messages' or 'conversations'", "human turn"]),
    ({"prompt": 5}, ["'prompt' must be a non-empty string", "int 5"]),
    ({"prompt": "a", "output_len": 0}, ["'output_len' must be a positive integer", '"output_len": 64']),
    ({"prompt": "a", "max_tokens": 2.5}, ["'max_tokens' must be a positive integer"]),
    ({"prompt": "a", "output_len": True}, ["'output_len' must be a positive integer"]),
    ({"prompt": "a", "output_len": 2, "max_tokens": 2}, ["keep one"]),
    ({"prompt": "a", "messages": []}, ["several formats", "keep one per line"]),
    ({"messages": "hi"}, ["'messages' must be a non-empty list", '"role"']),
    ({"messages": [{"role": "user"}]}, ["messages[0] must be an object with 'role' and 'content'"]),
    ({"messages": [{"role": "human", "content": "a"}]}, ["messages[0].role is str \"human\"",
                                                         "use one of system, user, assistant"]),
    ({"messages": [{"role": "user", "content": ["a"]}]}, ["messages[0].content must be a string"]),
    ({"messages": [{"role": "system", "content": "a"}]}, ["no user message", "add one"]),
    ({"conversations": [{"from": "gpt", "value": "a"}]}, ["no human turn", "add one"]),
    ({"conversations": [{"from": "bot", "value": "a"}]}, ["conversations[0].from", "system, human, gpt"]),
])
def test_line_errors_name_file_line_and_fix(tmp_path: Path, line: Any, expected: list[str]) -> None:
    path = tmp_path / "bad.jsonl"
    msg = problem(path, line)
    assert msg.startswith(f"{path}:1: ")
    for text in expected:
        assert text in msg


def test_forced_format_errors(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    msg = problem(path, {"messages": [{"role": "user", "content": "a"}]}, format="prompt")
    assert msg.startswith(f"{path}:1: mixed formats") and "format=None" in msg and '"prompt"' in msg
    msg = problem(path, {"text": "a"}, format="sharegpt")
    assert msg.startswith(f"{path}:1: missing field 'conversations'") and '"from"' in msg


def test_prompt_longer_than_context(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "a b c", "output_len": 2},
                                                 {"prompt": "a b c d e f", "output_len": 5}])
    assert len(read_dataset(path, count_tokens=words, max_model_len=5, limit=1)) == 1
    with pytest.raises(DatasetError) as e:
        read_dataset(path, count_tokens=words, max_model_len=10)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: ") and "prompt_len 6" in msg and "max_tokens 5" in msg
    assert "max_model_len 10" in msg
    for fix in ("shorten the prompt", "lower output_len", "raise max_model_len"):
        assert fix in msg


def test_problems_collected_together(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": "ok"})] + ["not json"] * 12 + [json.dumps({"prompt": 1})]
    path = write_lines(tmp_path / "many.jsonl", lines)
    with pytest.raises(DatasetError) as e:
        read_dataset(path)
    first, *rest = str(e.value).splitlines()
    assert first.startswith(f"{path}:2: 13 problems") and "first 10 shown" in first
    assert len(rest) == 10 and rest[0].strip().startswith(f"{path}:2: not valid JSON")
    assert rest[-1].strip().startswith(f"{path}:11: ")
    assert [no for no, _ in e.value.problems] == list(range(2, 12))


def test_two_problems_listed_with_their_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "two.jsonl", [json.dumps({"prompt": ""}), "", json.dumps({"messages": []})])
    with pytest.raises(DatasetError) as e:
        read_dataset(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:1: 2 problems") and "first" not in msg.splitlines()[0]
    assert f"{path}:1: 'prompt' must be" in msg and f"{path}:3: 'messages' must be" in msg


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"latin\.jsonl:1: not UTF-8"):
        read_dataset(tmp_path / "latin.jsonl")


# ---------------------------------------------------------------- length distributions

@pytest.mark.parametrize("entry", [
    {"dist": "normal", "mean": 200, "stdev": 40},
    {"dist": "lognormal", "mean": 128, "stdev": 64},
    {"dist": "uniform", "mean": 128, "range_ratio": 0.5},
])
def test_mean_within_10_percent(entry: dict[str, Any]) -> None:
    d = LengthDist.parse(entry, "test")
    x = np.array(d.sample(5000, np.random.default_rng(7)))
    assert abs(x.mean() - entry["mean"]) <= 0.1 * entry["mean"]
    assert x.std() > 0.15 * entry["mean"]  # really spread, not collapsed onto the mean
    assert x.dtype.kind == "i" and x.min() >= 1


def test_lognormal_stdev_is_of_the_lengths() -> None:
    x = np.array(LengthDist.parse({"dist": "lognormal", "mean": 500, "stdev": 250}, "t")
                 .sample(20000, np.random.default_rng(1)))
    assert abs(x.std() - 250) <= 25  # the log's sigma would be ~0.47, nowhere near


def test_uniform_bounds_match_vllm_range_ratio() -> None:
    x = LengthDist.parse({"dist": "uniform", "mean": 100, "range_ratio": 0.25}, "t").sample(
        5000, np.random.default_rng(2))
    assert min(x) == 75 and max(x) == 125


def test_sampling_is_deterministic_per_seed() -> None:
    d = LengthDist.parse({"dist": "lognormal", "mean": 128, "stdev": 64}, "t")
    a, b = d.sample(100, np.random.default_rng(3)), d.sample(100, np.random.default_rng(3))
    assert a == b and a != d.sample(100, np.random.default_rng(4))


def test_clipping_honoured() -> None:
    d = LengthDist.parse({"dist": "normal", "mean": 100, "stdev": 80, "min": 50, "max": 120}, "t")
    x = d.sample(3000, np.random.default_rng(5))
    assert min(x) == 50 and max(x) == 120
    assert min(LengthDist.parse({"dist": "normal", "mean": 2, "stdev": 10}, "t")
               .sample(2000, np.random.default_rng(6))) == 1


def test_fixed_and_int_entries() -> None:
    d = LengthDist.parse(64, "t")
    assert d.sample(3, np.random.default_rng(0)) == [64, 64, 64] and d.describe() == "fixed(64)"
    assert LengthDist.parse({"mean": 32}, "t").sample(2, np.random.default_rng(0)) == [32, 32]


def test_to_dict_round_trips_and_describe() -> None:
    entry = {"dist": "lognormal", "mean": 128, "stdev": 64, "min": 16, "max": 512}
    d = LengthDist.parse(entry, "t")
    assert d.to_dict() == entry and LengthDist.parse(d.to_dict(), "t") == d
    assert d.describe() == "lognormal(128±64, 16..512)"
    u = LengthDist.parse({"dist": "uniform", "mean": 128, "range_ratio": 0.5}, "t")
    assert u.describe() == "uniform(128±50%)" and LengthDist.parse(u.to_dict(), "t") == u


@pytest.mark.parametrize("entry, expected", [
    ({"dist": "gauss", "mean": 1}, ["unknown dist 'gauss'", "lognormal"]),
    ({"dist": "normal", "mean": 1, "stdev": 1, "sigma": 2}, ["unknown key(s) sigma", "it takes"]),
    ({"dist": "uniform", "mean": 1, "range_ratio": 0.1, "stdev": 2}, ["unknown key(s) stdev", "range_ratio"]),
    ({"dist": "normal", "stdev": 1}, ["needs 'mean'", "mean = 128"]),
    ({"dist": "normal", "mean": 10}, ["needs 'stdev'"]),
    ({"dist": "normal", "mean": "128", "stdev": 1}, ["mean = '128' is not a number", "unquoted"]),
    ({"dist": "normal", "mean": 128, "stdev": -1}, ["stdev = -1 is negative", "stdev >= 0"]),
    ({"dist": "uniform", "mean": 128, "range_ratio": 1.0}, ["range_ratio = 1 is outside [0, 1)"]),
    ({"dist": "uniform", "mean": 128, "range_ratio": -0.1}, ["outside [0, 1)"]),
    ({"mean": 128, "min": 100, "max": 10}, ["min = 100 > max = 10", "swap"]),
    ({"mean": 128, "min": 0}, ["min = 0", "min >= 1"]),
    ({"mean": 0}, ["mean = 0 must be > 0"]),
    ({"mean": 10, "max": 5.5}, ["whole number"]),
    (0, ["must be >= 1"]),
    ("128", ["expected a length"]),
])
def test_parse_errors(entry: Any, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        LengthDist.parse(entry, "workload 'mix' prompt_len")
    assert str(e.value).startswith("workload 'mix' prompt_len: ")
    for text in expected:
        assert text in str(e.value)


def test_synthetic_prompts() -> None:
    p = LengthDist.parse({"dist": "uniform", "mean": 40, "range_ratio": 0.5}, "t")
    o = LengthDist.parse({"dist": "normal", "mean": 20, "stdev": 5, "max": 25}, "t")
    specs = synthetic_prompts(50, p, o, vocab_size=100, seed=11)
    assert len(specs) == 50 and len({s.prompt_len for s in specs}) > 5
    assert all(len(s.prompt) == s.prompt_len and 20 <= s.prompt_len <= 60 for s in specs)
    assert all(FIRST_ORDINARY_ID <= t < 100 for s in specs for t in s.prompt)
    assert all(1 <= s.max_tokens <= 25 for s in specs)
    assert specs == synthetic_prompts(50, p, o, vocab_size=100, seed=11)
    assert specs != synthetic_prompts(50, p, o, vocab_size=100, seed=12)
    with pytest.raises(ValueError, match="vocab_size"):
        synthetic_prompts(1, p, o, vocab_size=FIRST_ORDINARY_ID, seed=0)

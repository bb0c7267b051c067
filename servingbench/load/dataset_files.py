"""Requests from JSONL dataset files: plain prompts, OpenAI chat messages, or vLLM bench's ShareGPT format.

Real prompts give real length mixes and real prefix overlap, which random ids do not. Each line is detected on
its own (or checked against a forced ``format``), and every problem names ``file:line`` and the fix; up to ten
problems are reported together so a bad file is fixed in one pass, not one run per line.

Formats, one JSON object per line:
  prompt:   {"prompt": "<text>", "output_len": 64}            (output_len, or max_tokens, optional)
  chat:     {"messages": [{"role": "user", "content": "<text>"}, ...], "output_len": 64}
  sharegpt: {"conversations": [{"from": "human", "value": "<text>"}, {"from": "gpt", "value": "..."}]}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from servingbench.errors import ConfigError
from servingbench.load.synthetic import RequestSpec

FORMATS = ("prompt", "chat", "sharegpt")
MAX_PROBLEMS = 10  # problems listed in one error; the count covers them all
_FIELD = {"prompt": "prompt", "chat": "messages", "sharegpt": "conversations"}
_NEEDS = {
    "prompt": '{"prompt": "<text>"} with an optional "output_len" (or "max_tokens"): a positive integer',
    "chat": '{"messages": [{"role": "system"|"user"|"assistant", "content": "<text>"}, ...]} with at least one '
            'user message',
    "sharegpt": '{"conversations": [{"from": "system"|"human"|"gpt", "value": "<text>"}, ...]} with at least one '
                'human turn',
}
# Each format's turn keys and its role names mapped to OpenAI's.
_TURNS = {"chat": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
          "sharegpt": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant"})}
_ARRAY_HINT = ("; the file looks like one JSON array, not JSONL: convert it with "
               "`jq -c '.[]' data.json > data.jsonl`")
T = TypeVar("T")


class DatasetError(ConfigError):
    """A dataset file that cannot be used. The message starts with ``path:line:`` and names each problem and
    its fix; ``problems`` holds the (line, message) pairs shown (line None for file-level problems). A
    ConfigError: the workload that reads the file is broken, so the test fails in every mode."""

    def __init__(self, message: str, problems: list[tuple[int | None, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class _LineError(Exception):
    """One line's problem, collected by ``_read`` rather than raised at once."""


@dataclass(frozen=True)
class _Line:
    fmt: str
    turns: list[tuple[str, str]]  # (OpenAI role, text), the whole conversation
    output_len: int | None  # the line's own output_len / max_tokens


def estimate_tokens(text: str) -> int:
    """About 4 tokens per 3 English words: a stand-in when no tokenizer is at hand (the server's usage counts
    replace it in the figures)."""
    return max(1, math.ceil(len(text.split()) * 4 / 3))


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> Path:
    """One ``json.dumps`` per line (parents created), for tests and for files the suite generates."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def _what(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False)  # every value here came from json.loads
    return f"{type(v).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _output_len(obj: dict[str, Any]) -> int | None:
    keys = [k for k in ("output_len", "max_tokens") if k in obj]
    if len(keys) == 2:
        raise _LineError("has both 'output_len' and 'max_tokens'; keep one of them")
    if not keys:
        return None
    v = obj[keys[0]]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _LineError(f"{keys[0]!r} must be a positive integer, got {_what(v)}; e.g. \"{keys[0]}\": 64")
    return v


def _turns(fmt: str, value: Any) -> list[tuple[str, str]]:
    field = _FIELD[fmt]
    role_key, text_key, roles = _TURNS[fmt]
    if not isinstance(value, list) or not value:
        raise _LineError(f"{field!r} must be a non-empty list of {{\"{role_key}\": ..., \"{text_key}\": ...}} "
                         f"objects, got {_what(value)}; format {fmt!r} needs {_NEEDS[fmt]}")
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or role_key not in m or text_key not in m:
            raise _LineError(f"{field}[{i}] must be an object with {role_key!r} and {text_key!r}, got {_what(m)}; "
                             f"format {fmt!r} needs {_NEEDS[fmt]}")
        role, text = m[role_key], m[text_key]
        if not isinstance(role, str) or role not in roles:
            raise _LineError(f"{field}[{i}].{role_key} is {_what(role)}; use one of {', '.join(roles)}")
        if not isinstance(text, str):
            raise _LineError(f"{field}[{i}].{text_key} must be a string, got {_what(text)}")
        turns.append((roles[role], text))
    if not any(role == "user" for role, _ in turns):
        user = "user message" if fmt == "chat" else "human turn"
        raise _LineError(f"{field!r} has no {user}, so there is nothing to send; add one or drop the line")
    return turns


def _parse(raw: str, line_no: int, fmt: str | None) -> _Line:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        hint = _ARRAY_HINT if line_no == 1 and raw.lstrip().startswith("[") else ""
        raise _LineError(f"not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line{hint}")
    if not isinstance(obj, dict):
        hint = _ARRAY_HINT if isinstance(obj, list) else ""
        raise _LineError(f"expected a JSON object, got {_what(obj)}; write one object per line{hint}")
    present = [f for f in FORMATS if _FIELD[f] in obj]
    if len(present) > 1:
        raise _LineError(f"has fields of several formats ({', '.join(repr(_FIELD[f]) for f in present)}); "
                         f"keep one per line")
    if not present:
        if fmt is not None:
            raise _LineError(f"missing field {_FIELD[fmt]!r}: format {fmt!r} needs {_NEEDS[fmt]}")
        raise _LineError("missing field: a line needs 'prompt', 'messages' or 'conversations': "
                         + "; ".join(f"{f} format: {_NEEDS[f]}" for f in FORMATS))
    got = present[0]
    if fmt is not None and got != fmt:
        raise _LineError(f"mixed formats: this line is {got!r} (it has {_FIELD[got]!r}) but format={fmt!r} was "
                         f"asked; convert it to {_NEEDS[fmt]}, or pass format=None to detect each line's format")
    output_len = _output_len(obj)
    if got == "prompt":
        text = obj["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise _LineError(f"'prompt' must be a non-empty string, got {_what(text)}; format 'prompt' needs "
                             f"{_NEEDS['prompt']}")
        return _Line(got, [("user", text)], output_len)
    return _Line(got, _turns(got, obj[_FIELD[got]]), output_len)


def _summary(path: str, problems: list[tuple[int | None, str]], total: int) -> str:
    lines = [f"{path}:{no}: {msg}" if no is not None else f"{path}: {msg}" for no, msg in problems]
    if total == 1:
        return lines[0]
    shown = f" (the first {len(problems)} shown)" if total > len(problems) else ""
    head = f"{path}:{problems[0][0]}: {total} problems in this dataset file{shown}; fix them all and rerun:"
    return "\n".join([head, *("  " + line for line in lines)])


def _read(path: str | os.PathLike[str], fmt: str | None, limit: int | None,
          build: Callable[[_Line, int], T]) -> list[T]:
    """Parse every non-blank line with ``build``, collecting problems; stop once ``limit`` items are built."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)} or None (auto-detect), got {fmt!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    name = os.fspath(path)
    out: list[T] = []
    problems: list[tuple[int | None, str]] = []
    total, line_no = 0, 0
    try:
        with open(name, encoding="utf-8") as f:
            for line_no, raw in enumerate(f, 1):
                if limit is not None and len(out) >= limit:
                    break
                if not raw.strip():
                    continue
                try:
                    out.append(build(_parse(raw, line_no, fmt), line_no))
                except _LineError as e:
                    total += 1
                    if len(problems) < MAX_PROBLEMS:
                        problems.append((line_no, str(e)))
    except UnicodeDecodeError:
        total += 1
        problems.append((line_no + 1, "not UTF-8 text (at or after this line); save the file as UTF-8 JSONL"))
    except OSError as e:
        msg = f"cannot read the dataset file ({e.strerror or e}); check the path (relative paths start from " \
              f"the current directory, {os.getcwd()})"
        raise DatasetError(f"{name}: {msg}", [(None, msg)]) from None
    if problems:
        raise DatasetError(_summary(name, problems, total), problems)
    if not out:
        msg = f"no requests: the file is empty or blank; write one JSON object per line, e.g. {_NEEDS['prompt']}"
        raise DatasetError(f"{name}: {msg}", [(None, msg)])
    return out


def _request_turns(line: _Line) -> tuple[list[tuple[str, str]], str | None]:
    """The turns to send and the reference reply whose length is the output length, if the line has one."""
    turns = line.turns
    if line.fmt == "sharegpt":
        # vLLM bench: the first human turn (after any system turns) and the gpt turn that answers it.
        first = next(i for i, (role, _) in enumerate(turns) if role == "user")
        sent = [t for t in turns[:first] if t[0] == "system"] + [turns[first]]
        nxt = turns[first + 1] if first + 1 < len(turns) else None
        return sent, nxt[1] if nxt is not None and nxt[0] == "assistant" else None
    last = max(i for i, (role, _) in enumerate(turns) if role == "user")
    return turns[:last + 1], turns[-1][1] if turns[-1][0] == "assistant" else None


def read_dataset(path: str | os.PathLike[str], *, format: str | None = None,
                 count_tokens: Callable[[str], int] | None = None, default_output_len: int = 128,
                 max_model_len: int | None = None, limit: int | None = None) -> list[RequestSpec]:
    """One request per line. Output length: the line's output_len/max_tokens, else the reference reply's token
    count (chat: a final assistant message; sharegpt: the gpt turn after the first human one), else
    ``default_output_len``. ``count_tokens`` defaults to ``estimate_tokens``."""
    if default_output_len < 1:
        raise ValueError(f"default_output_len must be >= 1, got {default_output_len}")
    count = count_tokens or estimate_tokens
    base = Path(path).name

    def build(line: _Line, line_no: int) -> RequestSpec:
        sent, reply = _request_turns(line)
        prompt_len = max(1, count("\n".join(text for _, text in sent)))
        if line.output_len is not None:
            max_tokens = line.output_len
        else:
            max_tokens = max(1, count(reply)) if reply is not None else default_output_len
        if max_model_len is not None and prompt_len + max_tokens > max_model_len:
            raise _LineError(f"prompt_len {prompt_len} + max_tokens {max_tokens} = {prompt_len + max_tokens} "
                             f"tokens does not fit max_model_len {max_model_len}; shorten the prompt, lower "
                             f"output_len, or raise max_model_len")
        messages = None if line.fmt == "prompt" else tuple({"role": r, "content": t} for r, t in sent)
        return RequestSpec(prompt=sent[-1][1], prompt_len=prompt_len, max_tokens=max_tokens, messages=messages,
                           source=f"{base}:{line_no}")

    return _read(path, format, limit, build)


def read_conversations(path: str | os.PathLike[str], *, format: str | None = None,
                       count_tokens: Callable[[str], int] | None = None,
                       limit: int | None = None) -> list[list[str]]:
    """The user turns of each line's conversation, in order, for multi-turn replay (a prompt line is one turn;
    the replay sends each turn after the server's own reply to the last). ``count_tokens`` is accepted for
    symmetry with ``read_dataset``; lengths are not checked here, the server's usage counts them."""
    del count_tokens
    return _read(path, format, limit, lambda line, _no: [text for role, text in line.turns if role == "user"])

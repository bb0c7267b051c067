"""Request traces read from files: when each request arrived and how long it was, in three public formats.

Replaying a production trace gives the arrival pattern (bursts, lulls, diurnal swings) and the length mix a
Poisson schedule of random prompts does not. Nothing is downloaded: the user gives the path. Formats:

  mooncake: JSONL, ``{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}``;
            ``timestamp`` in ms, ``hash_ids`` the ids of the prompt's 512-token blocks (equal id, equal block);
  azure:    CSV ``TIMESTAMP,ContextTokens,GeneratedTokens`` (Azure LLM inference traces, TIMESTAMP a datetime
            such as ``2023-11-16 18:15:46.6805900``);
  burstgpt: CSV ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`` (``Timestamp`` in s).

The format is detected from the first line (a JSON object, or the CSV header) unless forced. Every problem names
``file:line`` and the fix, up to ten at once (``dataset_files.DatasetError``, a ConfigError: the workload fails).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

from servingbench.load.dataset_files import MAX_PROBLEMS, DatasetError, _summary

TRACE_FORMATS = ("mooncake", "azure", "burstgpt")
# The CSV columns each format needs (others, such as BurstGPT's Model and Log Type, are read past).
_COLUMNS = {"azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
            "burstgpt": ("Timestamp", "Request tokens", "Response tokens")}
_NEEDS = {
    "mooncake": '{"timestamp": <ms>, "input_length": <tokens>, "output_length": <tokens>, "hash_ids": [<int>, ...]}',
    "azure": "a header TIMESTAMP,ContextTokens,GeneratedTokens and rows such as 2023-11-16 18:15:46.6805900,374,44",
    "burstgpt": "a header Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type and rows such as "
                "5,ChatGPT,472,18,490,Conversation log",
}


@dataclass(frozen=True, slots=True)  # slots: a full BurstGPT file is over a million of them
class TraceRequest:
    """One recorded request. Lengths are the trace's own token counts (0 stays 0 here: BurstGPT logs a failed
    request with 0 response tokens; the replay sends at least one token each way)."""

    time_s: float  # its arrival on the trace's own clock, seconds
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] | None  # Mooncake: the ids of its prompt's blocks; None: the trace records no sharing
    line: int  # 1-based line of the file, for messages and each request's source


class _LineError(Exception):
    """One line's problem, collected rather than raised at once."""


def _count(row: dict[str, Any], key: str, example: str) -> int:
    """A token count: a whole number >= 0 (a CSV's "374" and "374.0" both read as 374)."""
    v = row.get(key)
    if v is None:
        raise _LineError(f"{key!r} is missing (a row shorter than the header?); give every row every column, "
                         f"e.g. {example}")
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise _LineError(f"{key!r} is {row.get(key)!r}, not a number; write a whole number of tokens, "
                             f"e.g. {example}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or v != int(v):
        raise _LineError(f"{key!r} must be a whole number of tokens >= 0, got {v!r}; e.g. {example}")
    return int(v)


def _seconds(v: Any, key: str, unit: float, example: str) -> float:
    if v is None:
        raise _LineError(f"{key!r} is missing (a row shorter than the header?); give every row every column")
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise _LineError(f"{key!r} is {v!r}, not a number; e.g. {example}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _LineError(f"{key!r} must be a number >= 0, got {v!r}; e.g. {example}")
    return float(v) * unit


def _mooncake(raw: str) -> TraceRequest:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _LineError(f"not valid JSON ({e.msg} at column {e.colno}); write one object per line: "
                         f"{_NEEDS['mooncake']}") from None
    if not isinstance(obj, dict):
        raise _LineError(f"expected a JSON object, got {type(obj).__name__}; write {_NEEDS['mooncake']}")
    missing = [k for k in ("timestamp", "input_length", "output_length", "hash_ids") if k not in obj]
    if missing:
        raise _LineError(f"missing field(s) {', '.join(map(repr, missing))}; a mooncake line is {_NEEDS['mooncake']}")
    ids = obj["hash_ids"]
    if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in ids):
        raise _LineError(f"'hash_ids' must be a list of block ids (integers >= 0), got {json.dumps(ids)[:60]}; "
                         f"e.g. \"hash_ids\": [46, 47, 48]")
    return TraceRequest(_seconds(obj["timestamp"], "timestamp", 1e-3, '"timestamp": 27482 (ms)'),
                        _count(obj, "input_length", '"input_length": 6955'),
                        _count(obj, "output_length", '"output_length": 52'), tuple(ids), 0)


def _azure(row: dict[str, Any]) -> TraceRequest:
    stamp = (row.get("TIMESTAMP") or "").strip()
    try:
        t = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        raise _LineError(f"'TIMESTAMP' is {stamp!r}, not a date and time; write it as 2023-11-16 18:15:46.6805900")
    return TraceRequest(t, _count(row, "ContextTokens", "374"), _count(row, "GeneratedTokens", "44"), None, 0)


def _burstgpt(row: dict[str, Any]) -> TraceRequest:
    return TraceRequest(_seconds(row.get("Timestamp"), "Timestamp", 1.0, "5 (seconds)"),
                        _count(row, "Request tokens", "472"), _count(row, "Response tokens", "18"), None, 0)


def detect_format(first_line: str) -> str | None:
    """The format a file's first non-blank line says: a JSON object is mooncake, else the CSV header's columns."""
    text = first_line.strip().lstrip("\ufeff")
    if text.startswith("{"):
        return "mooncake"
    header = [c.strip() for c in next(csv.reader([text]), [])]
    for fmt, cols in _COLUMNS.items():
        if all(c in header for c in cols):
            return fmt
    return None


def _lines(name: str, fmt: str) -> Iterator[tuple[int, Any]]:
    """(line number, what the format's parser reads: the raw line, or the needed columns of a CSV row) for every
    data line of the file; a CSV header without the format's columns raises ``_LineError``."""
    with open(name, encoding="utf-8", newline="") as f:
        if fmt == "mooncake":
            yield from ((no, raw) for no, raw in enumerate(f, 1) if raw.strip())
            return
        reader = csv.reader(f, skipinitialspace=True)
        header = [c.strip().lstrip("\ufeff") for c in next(reader, [])]
        missing = [c for c in _COLUMNS[fmt] if c not in header]
        if missing:
            raise _LineError(f"the CSV header {','.join(header)!r} lacks column(s) {', '.join(map(repr, missing))}; "
                             f"format {fmt!r} needs {_NEEDS[fmt]}")
        at = [(c, header.index(c)) for c in _COLUMNS[fmt]]
        for row in reader:
            if any(v.strip() for v in row):  # a short row leaves its missing columns None: reported as such
                yield reader.line_num, {c: row[i] if i < len(row) else None for c, i in at}


_PARSE: dict[str, Callable[[Any], TraceRequest]] = {"mooncake": _mooncake, "azure": _azure, "burstgpt": _burstgpt}


def read_trace(path: str | os.PathLike[str], format: str | None = None) -> tuple[str, list[TraceRequest]]:
    """The file's format and its requests in arrival order (a stable sort by time: requests logged at one instant
    keep the file's order). Raises ``DatasetError`` naming ``file:line`` and the fix for every bad line."""
    if format is not None and format not in TRACE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(TRACE_FORMATS)} or None (detected), got {format!r}")
    name = os.fspath(path)
    problems: list[tuple[int | None, str]] = []
    out: list[TraceRequest] = []
    total = 0
    try:
        with open(name, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        if not first:
            msg = f"no requests: the file is empty; write a trace in one of the formats: {_NEEDS['mooncake']}; " \
                  f"{_NEEDS['azure']}; {_NEEDS['burstgpt']}"
            raise DatasetError(f"{name}: {msg}", [(None, msg)])
        found = detect_format(first)
        fmt = format or found
        if fmt is None:
            msg = (f"line 1 ({first.strip()[:80]!r}) is neither a JSON object nor a known CSV header; the trace "
                   f"formats are mooncake: {_NEEDS['mooncake']}; azure: {_NEEDS['azure']}; burstgpt: "
                   f"{_NEEDS['burstgpt']}")
            raise DatasetError(f"{name}:1: {msg}", [(1, msg)])
        if format is not None and found is not None and found != format:
            msg = f"the file looks like a {found!r} trace but trace_format = {format!r}; set trace_format = " \
                  f"\"{found}\" or leave it out to detect it"
            raise DatasetError(f"{name}:1: {msg}", [(1, msg)])
        try:
            parse = _PARSE[fmt]
            for no, item in _lines(name, fmt):
                try:
                    req = parse(item)
                except _LineError as e:
                    total += 1
                    if len(problems) < MAX_PROBLEMS:
                        problems.append((no, str(e)))
                    continue
                out.append(TraceRequest(req.time_s, req.input_len, req.output_len, req.hash_ids, no))
        except _LineError as e:  # the CSV header
            raise DatasetError(f"{name}:1: {e}", [(1, str(e))]) from None
    except UnicodeDecodeError:
        msg = "not UTF-8 text; save the trace as UTF-8"
        raise DatasetError(f"{name}: {msg}", [(None, msg)]) from None
    except OSError as e:
        msg = (f"cannot read the trace file ({e.strerror or e}); check the path (relative paths start from the "
               f"table's folder, or the current directory {os.getcwd()})")
        raise DatasetError(f"{name}: {msg}", [(None, msg)]) from None
    if problems:
        raise DatasetError(_summary(name, problems, total).replace("in this dataset file", "in this trace file"),
                           problems)
    if not out:
        msg = f"no requests: the file has a header but no rows; format {fmt!r} needs {_NEEDS[fmt]}"
        raise DatasetError(f"{name}: {msg}", [(None, msg)])
    return fmt, sorted(out, key=lambda r: r.time_s)

"""The suite's error bases, and where in a file an error is, in a module that imports nothing of the package, so
any layer can raise them and name file:line without a circle.

A ``ConfigError`` is a mistake in what the user wrote (the expectations table, a workload, a dataset file, a
config): it fails the test that meets it, in every mode. It is never a ``ServerUnavailable``, which a
``--server-url`` or ``--replay`` run turns into a skip: a broken workload skipped there would pass unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path


class ConfigError(ValueError):
    """A config or workload entry that cannot be used; the message names the entry and the fix."""


# ---- where a key is -------------------------------------------------------------------------------------------

_HEADER = re.compile(r"^\[\[?\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r'^("(?:[^"\\]|\\.)*"|[A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=')


def _dotted(key: str) -> tuple[str, ...]:
    if key.startswith('"'):
        return (key[1:-1],)
    return tuple(part.strip() for part in key.split("."))


class TableLines:
    """The line of each table header and key of a TOML file, so a message can say ``file:line``.

    ``at("workloads", "lab", "cpu")`` is the line of the longest prefix of that path the file spells out (the key's
    own line, else its table's header); the i-th table of an array such as ``[[device]]`` is ``("device", "i")``,
    and ``expect[i]`` the header line of the i-th ``[[expect]]`` row."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines: dict[tuple[str, ...], int] = {}
        self.expect: list[int] = []
        arrays: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            header = _HEADER.match(stripped)
            if header:
                table = _dotted(header.group(1))
                if stripped.startswith("[["):
                    index = arrays[table] = arrays.get(table, -1) + 1
                    if table == ("expect",):
                        self.expect.append(number)
                    table = table + (str(index),)
                self.lines.setdefault(table, number)
                continue
            key = _KEY.match(stripped)
            if key:
                self.lines.setdefault(table + _dotted(key.group(1)), number)

    def at(self, *path: str) -> str:
        key = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        return f"{self.path}:{self.lines[key] if key else '?'}"

    def row(self, i: int) -> str:
        return f"{self.path}:{self.expect[i] if i < len(self.expect) else '?'}"

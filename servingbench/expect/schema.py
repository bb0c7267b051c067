"""The expectations table's typed rows, checked when the table is loaded, each problem with its file and line.

``[[expect]]`` rows and their bounds are pydantic models with ``extra="forbid"``; ``[configs]`` entries are
checked against their engine's ``ServerConfig`` fields, so a misspelt field fails at load rather than when a test
starts its server; workloads are checked by ``load/workload_schema.py``. ``expect/bounds.load_table`` gathers
every problem and raises them in one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servingbench.errors import TableLines
from servingbench.load.workload_schema import describe

ENTRY_KEYS = {"hardware", "model", "config", "workload", "source", "note"}


# ---- [[expect]] rows ------------------------------------------------------------------------------------------

class BoundSpec(BaseModel):
    """``{ min = .., max = .. }``: either side or both; numbers only (a string or true is no bound)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min: Optional[float] = None
    max: Optional[float] = None

    @model_validator(mode="after")
    def _sides(self) -> "BoundSpec":
        if self.min is None and self.max is None:
            raise ValueError("give min and/or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} > max {self.max:g}")
        return self


class ExpectRow(BaseModel):
    """One ``[[expect]]`` row: what it applies to, and every other key a bound on that metric."""

    model_config = ConfigDict(extra="forbid", strict=True)

    hardware: Annotated[list[str], Field(min_length=1)]  # a key, a list of keys, or a portable class
    model: str
    config: str
    workload: str = "lab"
    source: str = "unspecified"
    note: Optional[str] = None
    bounds: dict[str, BoundSpec] = {}

    @model_validator(mode="before")
    @classmethod
    def _split(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            return raw
        out = {k: v for k, v in raw.items() if k in ENTRY_KEYS}
        if isinstance(out.get("hardware"), str):
            out["hardware"] = [out["hardware"]]
        out["bounds"] = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
        return out


def row_problems(raw: Mapping[str, Any]) -> tuple[ExpectRow | None, list[str]]:
    """The typed row, or None and every problem of its own keys (names it refers to are the table's to check)."""
    try:
        return ExpectRow.model_validate(raw), []
    except ValidationError as e:
        return None, [_row_problem(err) for err in e.errors()]


def _row_problem(err: Any) -> str:
    loc, value, kind = err["loc"], err.get("input"), err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if loc[0] == "bounds" and len(loc) >= 2:
        metric = loc[1]
        if len(loc) == 2 and kind in ("model_type", "model_attributes_type", "dict_type"):
            return f"bound {metric!r} must be a table with min and/or max, got {value!r}"
        if len(loc) == 2:
            return f"bound {metric!r}: {msg}"
        if kind == "extra_forbidden":
            return f"bound {metric!r} must be a table with min and/or max, not {loc[2]!r} (got {loc[2]} = {value!r})"
        return f"bound {metric!r}: min and max must be numbers, got {loc[2]} = {value!r}"
    key = loc[0]
    if kind == "missing":
        return f"[[expect]] entry has no {key!r}"
    if key == "hardware":
        return f"hardware must be a key, a list of keys, or a portable class (any-cpu, any-gpu, any); got {value!r}"
    return f"{key} must be a string, got {value!r}"


# ---- [configs] entries ----------------------------------------------------------------------------------------

def config_problems(name: str, entry: Any, engines: Mapping[str, type]) -> list[tuple[tuple[str, ...], str]]:
    """(where, problem) for one ``[configs.NAME]`` entry: its engine, and each field its engine's config lacks."""
    if not isinstance(entry, Mapping):
        return [((name,), f"[configs.{name}] must be a table with engine = one of {sorted(engines)}, got {entry!r}")]
    engine = entry.get("engine")
    if engine not in engines:
        return [((name, "engine"), f"[configs.{name}] engine = {engine!r}: use one of {sorted(engines)}")]
    fields = sorted(f.name for f in dataclasses.fields(engines[engine]))
    return [((name, key), f"[configs.{name}] unknown field {key!r} for engine {engine!r}: fix its spelling or remove "
                          f"it (the {engine} config has: {', '.join(fields)})")
            for key in entry if key != "engine" and key not in fields]

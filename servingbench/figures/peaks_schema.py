"""The schema of ``hardware_peaks.toml``'s ``[[device]]`` entries, checked when the peak table is loaded
(``efficiency.load_peak_table``), each problem in the table's words."""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servingbench.load.workload_schema import describe

Positive = Annotated[float, Field(gt=0)]


class DeviceEntry(BaseModel):
    """One ``[[device]]`` of ``hardware_peaks.toml``: the keys it is for and its vendor (or measured) peaks. A CPU
    entry's core counts are checked across fields by ``efficiency.check_cpu_cores``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    profiles: Annotated[list[str], Field(min_length=1)]
    gpu_name_contains: Optional[list[str]] = None
    memory_bandwidth_gb_s: Positive
    peak_tflops: dict[str, Positive]
    source: str
    cores_counted: Optional[int] = None
    bandwidth_threads: Optional[int] = None
    clock_ghz: Optional[Positive] = None
    flop_per_cycle: Optional[dict[str, Positive]] = None


def device_problems(raw: Any) -> list[str]:
    """Every problem of one ``[[device]]``'s own keys."""
    try:
        DeviceEntry.model_validate(raw)
    except ValidationError as e:
        return [describe(err) for err in e.errors()]
    return []

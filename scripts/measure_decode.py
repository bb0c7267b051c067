"""Per-token decode time at batch 1 and 32 for candidate CPU-profile model sizes (README: "Why this model size").

Runs the HF engine's static-batch decode on one thread (as both engines compute on this 2-core machine).
If a model is overhead-bound, a step costs about the same at batch 32 as at batch 1; a model for which batching
matters the way it does on a GPU reads its weights once per step, so batch 32 costs far less per token.
    .venv/bin/python scripts/measure_decode.py
"""

from __future__ import annotations

import dataclasses
import json
import sys

from servingbench.load.synthetic import random_token_prompts
from servingbench.servers.hf.engine import HFBaselineServer
from servingbench.servers.models import get_model, materialize

TINY = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 512}


def step_ms(engine: HFBaselineServer, batch: int, vocab: int, prompt: int = 128, out: int = 48) -> float:
    prompts = [s.prompt for s in random_token_prompts(batch, prompt, out, vocab, seed=batch)]
    engine.generate(prompts[:1], 4, ignore_eos=True)  # warm-up
    gens = engine.generate(prompts, out, ignore_eos=True)
    return max((g.e2e_s - g.ttft_s) / (out - 1) for g in gens) * 1000.0


def main() -> None:
    chosen = get_model("cpu-llama-36m")
    tiny = dataclasses.replace(chosen, name="cpu-llama-tiny", config={**chosen.config, **TINY})
    rows = []
    for profile in (tiny, chosen):
        engine = HFBaselineServer(materialize(profile), dtype="float32", device="cpu", threads=1)
        b1, b32 = step_ms(engine, 1, profile.config["vocab_size"]), step_ms(engine, 32, profile.config["vocab_size"])
        rows.append({"model": profile.name, "params_m": round(profile.num_parameters / 1e6, 1),
                     "step_ms_batch1": round(b1, 2), "step_ms_batch32": round(b32, 2),
                     "per_token_ms_batch32": round(b32 / 32, 3), "batch32_speedup_per_token": round(32 * b1 / b32, 1)})
    json.dump(rows, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

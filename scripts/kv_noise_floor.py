"""Noise floor of the KV-dtype study's accuracy figures: the study's prompts scored by the same model served in
two model dtypes (KV cache ``auto`` in both), e.g. float32 against bfloat16.

Why: a deep model with random weights can amplify a small perturbation layer by layer, so a quantized KV cache's
top-1 agreement with ``auto`` means little until it is read against what a perturbation as small as the model
dtype's own rounding does to the same prompts. Writes one JSON line per pair to stdout and to ``--out``.

    python scripts/kv_noise_floor.py --model llama-2-7b-seeded --gpu --dtypes float32 bfloat16 float16
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

from servingbench.suite.run_settings import RunSettings
from servingbench.measure.environment import detect
from servingbench.studies.kv_accuracy import compare, score_prompts, study_prompts
from servingbench.servers.models import get_model, materialize
from servingbench.servers.process import ServerProcess
from servingbench.studies.common import load_study_params
from servingbench.expect.defaults import default_studies_path

STUDIES = default_studies_path(Path(__file__).resolve().parents[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-2-7b-seeded")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--gpu", action="store_true", help="GPU study parameters; wait for GPU memory between servers")
    ap.add_argument("--log-dir", default="results/kv-noise-floor")
    ap.add_argument("--out", default="results/kv-noise-floor/pairs.jsonl")
    args = ap.parse_args()
    params = load_study_params(STUDIES, "kv_cache_dtype", args.gpu)
    profile = get_model(args.model)
    run = RunSettings(detect(args.gpu), profile, materialize(profile))
    prompts = study_prompts(params, run.vocab_size)
    scores = {}
    for dtype in args.dtypes:  # the suite's lab-load vLLM config, in eager mode, with only the dtype changed
        config = run.server_config("vllm", dtype=dtype, enforce_eager=True)
        with ServerProcess(config, args.log_dir, gpu=args.gpu) as server:
            scores[dtype] = score_prompts(server.url, config.name, prompts, params["output_len"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        for a, b in combinations(args.dtypes, 2):
            line = json.dumps({"model": profile.name, "reference": a, "other": b, **compare(scores[a], scores[b])
                               .to_dict()})
            print(line)
            fh.write(line + "\n")


if __name__ == "__main__":
    main()

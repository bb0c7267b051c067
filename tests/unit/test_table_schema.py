"""The table is typed and checked when it is loaded (#24 item 3): every problem at once, each at its file:line.

Before: a misspelt ``[configs]`` field passed the load and failed only when a test built the server config;
``concurrency = 0``, ``top_p = 7`` or a negative rate passed it too and crashed later in the load generator.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from servingbench.errors import ConfigError
from servingbench.load.workload import FLAT, PARTS, REQUIRED, RUNTIME, Workload, workload_from
from servingbench.load.workload_schema import WorkloadEntry
from servingbench.errors import TableLines
from servingbench.expect.bounds import load_table

ROOT = Path(__file__).resolve().parents[2]
HEAD = '''[workloads.lab]
cpu = { num_requests = 4, concurrency = 2, prompt_len = 8, output_len = 4 }
gpu = { num_requests = 4, concurrency = 2, prompt_len = 8, output_len = 4 }

[configs.vllm]
engine = "vllm"

[configs.hf]
engine = "hf"
'''
ROW = '''
[[expect]]
hardware = "any-cpu"
model = "cpu-llama-36m"
config = "vllm"
output_throughput = { min = 1 }
'''


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_table(path)
    head, *lines = str(e.value).splitlines()
    assert head == f"{len(lines)} problem(s) in the expectations table:", str(e.value)
    return [line.strip() for line in lines]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_a_misspelt_config_field_fails_at_load_naming_its_line(tmp_path: Path) -> None:
    text = HEAD + '\n[configs.vllm-small]\nengine = "vllm"\nmax_num_seq = 4\n' + ROW
    (problem,) = problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 't.toml'}:{line_of(text, 'max_num_seq')}: ")
    assert "unknown field 'max_num_seq' for engine 'vllm'" in problem and "max_num_seqs" in problem


@pytest.mark.parametrize("key, value, says", [
    ("concurrency", "0", "concurrency = 0: input should be greater than or equal to 1"),
    ("top_p", "7", "top_p = 7: input should be less than or equal to 1"),
    ("request_rate", "-2.5", "request_rate = -2.5: input should be greater than 0"),
    ("rates", "[1, -4]", "rates = -4: input should be greater than 0"),
    ("num_requests", "true", "num_requests = True: input should be a valid integer"),
    ("burstiness", "0", "burstiness = 0: input should be greater than 0"),
    ("temperature", "-1", "temperature = -1: input should be greater than or equal to 0"),
    ("warmup_requests", "-1", "warmup_requests = -1: input should be greater than or equal to 0"),
    ("max_queue_ms", '"fast"', "max_queue_ms = 'fast': input should be a valid number"),
])
def test_a_load_shape_value_out_of_range_fails_at_load_naming_its_line(tmp_path: Path, key: str, value: str,
                                                                       says: str) -> None:
    fields = {"num_requests": "4", "concurrency": "2", "prompt_len": "8", "output_len": "4", key: value}
    bad = "gpu = { " + ", ".join(f"{k} = {v}" for k, v in fields.items()) + " }"
    text = HEAD.replace("gpu = { num_requests = 4, concurrency = 2, prompt_len = 8, output_len = 4 }", bad) + ROW
    found = problems(tmp_path, text)
    assert any(p.startswith(f"{tmp_path / 't.toml'}:3: workload 'lab': ") and says in p for p in found), found


def test_every_problem_is_reported_at_once_each_at_its_line(tmp_path: Path) -> None:
    text = '''[workloads.lab]
cpu = { num_requests = 4, concurrency = 0, prompt_len = 8, output_len = 4, top_p = 7 }

[workloads.chat]
gpu = { num_requests = 4, concurrency = 2, kind = "chat" }

[configs.vllm]
engine = "vllm"
block_sise = 16

[configs.hf]
engine = "hf"
max_batch = 8

[[expect]]
hardware = []
model = "cpu-llama-36m"
config = "vllm"
output_throughput = { min = 2, max = 1 }
"median_ttft_ms/tgi" = { max = 1, below = 3 }
'''
    found = problems(tmp_path, text)
    at = {p.split(": ", 1)[0].rsplit(":", 1)[1] for p in found}
    assert at == {"2", "5", "9", "13", "15"}, found
    joined = "\n".join(found)
    for needle in ("concurrency = 0", "top_p = 7", "kind = 'chat'", "'block_sise'", "'max_batch'",
                   "hardware must be a key", "'output_throughput': min 2 > max 1",
                   "'median_ttft_ms/tgi' must be a table with min and/or max, not 'below'",
                   "ratio 'median_ttft_ms/tgi' names config 'tgi'"):
        assert needle in joined, (needle, joined)


def test_the_shipped_tables_pass_the_typed_load() -> None:
    for path in (ROOT / "perf" / "expected_performance.toml", ROOT / "servingbench" / "data" / "expected_performance.toml"):
        table = load_table(path)
        assert table.bounds and table.workloads and table.configs


def test_the_workload_schema_has_every_field_of_workload_with_its_default() -> None:
    """The flat entry names every field of Workload's parts once (the load shape's runtime fields aside), with the
    part's default; the two required ones are required."""
    parts = {name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in PARTS.items()}
    declared = {(name, f) for name, fields in parts.items() for f in fields} - {("load", f) for f in RUNTIME}
    assert [f.name for f in dataclasses.fields(Workload)] == ["name", *PARTS]
    assert sorted(FLAT.values()) == sorted(declared) and len(set(FLAT.values())) == len(FLAT)
    assert set(WorkloadEntry.model_fields) == set(FLAT)
    for name, (part, attr) in FLAT.items():
        mine, f = WorkloadEntry.model_fields[name], parts[part][attr]
        if name in REQUIRED:
            assert mine.is_required(), name
        else:
            assert mine.default == f.default or (math.isinf(f.default) and math.isinf(mine.default)), name


def test_a_checked_entry_keeps_its_own_values_so_labels_do_not_move() -> None:
    """The label hashes the entry's values: an int rate read back as a float would change saved keys."""
    entry = {"num_requests": 8, "concurrency": 2, "request_rate": 4, "temperature": 1, "rates": [1, 2],
             "slo_ttft_ms": 100}
    w = workload_from("w", entry)
    assert w == Workload.of("w", 8, 2, request_rate=4, temperature=1, rates=(1, 2), slo_ttft_ms=100)
    assert type(w.load.request_rate) is int and w.label == Workload.of("w", 8, 2, request_rate=4, temperature=1,
                                                             rates=(1, 2), slo_ttft_ms=100).label


def test_table_lines_find_keys_headers_and_rows() -> None:
    text = HEAD + ROW + '"median_ttft_ms/hf" = { max = 1 }\n'
    lines = TableLines(Path("t.toml"), text)
    assert lines.at("workloads", "lab", "gpu") == "t.toml:3"
    assert lines.at("configs", "hf", "engine") == "t.toml:9"
    assert lines.at("configs", "hf", "no_such_key") == "t.toml:8"  # the entry's header
    assert lines.row(0) == f"t.toml:{line_of(text, '[[expect]]')}" and lines.row(5) == "t.toml:?"
    assert lines.at("expect", "0", "median_ttft_ms/hf") == f"t.toml:{line_of(text, 'median_ttft_ms/hf')}"
    assert re.fullmatch(r"t\.toml:\?", lines.at("nowhere"))


def test_a_bad_peaks_table_lists_every_problem_at_its_line(tmp_path: Path) -> None:
    from servingbench.figures.efficiency import EfficiencyError, load_peak_table

    path = tmp_path / "peaks.toml"
    path.write_text('''[[device]]
name = "fine"
profiles = ["X-80GB"]
memory_bandwidth_gb_s = 2000
peak_tflops = { float16 = 756.0 }
source = "datasheet"

[[device]]
name = "broken"
profiles = []
memory_bandwith_gb_s = 2000
peak_tflops = { float16 = -1 }
''')
    with pytest.raises(EfficiencyError) as e:
        load_peak_table(path)
    text = str(e.value)
    assert text.startswith("5 problem(s) in the hardware peaks table:"), text
    for needle in ("profiles = []", "unknown field 'memory_bandwith_gb_s'", "memory_bandwidth_gb_s is required",
                   "peak_tflops.float16 = -1: input should be greater than 0", "source is required"):
        assert f"{path}:8: [[device]] #2 (broken): {needle}" in text, (needle, text)
    assert load_peak_table()  # the shipped one passes


def test_a_misspelt_bound_metric_fails_at_load_with_the_near_name(tmp_path: Path) -> None:
    """Before: the row loaded, its test ran the load, then ``Measurement.value`` raised KeyError."""
    text = HEAD + ROW + 'median_ttft = { max = 100 }\n"p99_ttft_ms/hf" = { max = 2 }\nbatch_efficiency = { min = 0.2 }\n'
    (problem,) = problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 't.toml'}:{line_of(text, '[[expect]]')}: bound 'median_ttft': no metric")
    assert "did you mean 'median_ttft_ms'?" in problem

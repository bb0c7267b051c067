"""Tensor parallelism: TP 1, 2, 4 on GPUs, and the scaling efficiency throughput(TP=n) / (n x throughput(TP=1)).

GPU only (marked gpu). A TP size needing more GPUs than are visible, or not dividing the model's heads, is skipped
with that reason (servingbench/studies/tensor_parallel.py). Writes studies/tensor_parallel.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servingbench.studies import tensor_parallel as tp
from servingbench.studies.common import StudyParams, load_study_params, record_rows, serving_row
from servingbench.studies.runs import require_local, variant

STUDY = "tensor_parallel"
PARAMS = Path(__file__).with_name("studies.toml")
pytestmark = [pytest.mark.gpu, pytest.mark.study]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "tp_size" not in metafunc.fixturenames:
        return
    sizes = load_study_params(PARAMS, STUDY, True)["sizes"]
    metafunc.parametrize(("tp_size", "config_name"),
                         [pytest.param(n, f"vllm-tp{n}", id=f"tp{n}") for n in sizes])


@pytest.fixture(scope="session")
def params() -> StudyParams:
    return load_study_params(PARAMS, STUDY, True)


def record(bench, row: dict) -> None:
    record_rows(bench, STUDY, [row], tp.tp_findings, sort_key=lambda r: r["tensor_parallel_size"])


def plan_for(bench, size: int) -> tp.TPPlan:
    c = bench.settings.model.config
    return tp.plan(size, tp.visible_gpu_count(), c.get("num_attention_heads"), c.get("num_key_value_heads"))


def run(bench, params: StudyParams, size: int) -> dict:
    require_local(bench)
    plan = plan_for(bench, size)
    if not plan.runnable:
        record(bench, {"key": f"tp{size}", "tensor_parallel_size": size, "status": "skipped", "reason": plan.reason})
        pytest.skip(plan.reason or "")
    config = variant(bench, **tp.server_overrides(size))
    m = bench.measure(f"vllm-tp{size}", params.workload(), config=config)
    row = {"key": f"tp{size}", "tensor_parallel_size": size, "status": "measured", "reason": None, **serving_row(m)}
    record(bench, row)
    return row


def test_tensor_parallel(tp_size: int, config_name: str, bench, params: StudyParams) -> None:
    row = run(bench, params, tp_size)
    assert row["failed"] == 0, f"TP={tp_size}: {row['failed']} requests failed"


@pytest.mark.servers("vllm-tp1", "vllm-tp2")
def test_tensor_parallel_scaling(bench, params: StudyParams) -> None:
    rows = {n: run(bench, params, n) for n in params["sizes"] if plan_for(bench, n).runnable}
    if len(rows) < 2:
        pytest.skip(f"scaling needs TP=1 and at least one more size; runnable here: {sorted(rows)}")
    eff = tp.scaling_efficiency({n: r["output_throughput"] for n, r in rows.items()})
    low = {n: e for n, e in eff.items() if n > 1 and e < params["min_scaling_efficiency"]}
    assert not low, (f"scaling efficiency below {params['min_scaling_efficiency']} ({PARAMS}): "
                     + ", ".join(f"TP={n}: {e:.2f}" for n, e in low.items()))

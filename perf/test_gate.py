"""The regression gate: rounds of the lab load and a verdict per metric (servingbench/suite/gate.py says how).

    make compare                                   # = pytest perf/test_gate.py --gate: against baselines/<key>/rounds.json
    pytest perf/test_gate.py --gate --ab-config vllm-candidate          # A/B: vllm against another vllm config
    pytest perf/test_gate.py --gate --server-url $A --ab-server-url $B  # A/B of two deployments
    pytest perf/test_gate.py --gate --ab-python /venv-pr/bin/python      # A/B of two Python environments

Each verdict is regressed, improved, unchanged or inconclusive, with the change, its confidence interval and the
minimum detectable regression of this run; the test fails only on "regressed".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytest

from servingbench.suite.gate import DEFAULT_ROUNDS, GateReport, run_interleaved, run_rounds, stored_baseline, verdicts
from servingbench.suite.rounds import Round

CONFIGS = ["vllm", "hf"]


@pytest.mark.parametrize("config_name", CONFIGS)
def test_no_regression(config_name: str, bench, expectations, measure_or_skip, pytestconfig, gate_reports) -> None:
    opt = pytestconfig.getoption
    if not opt("--gate"):
        pytest.skip("the regression gate: run with --gate (make compare)")
    rounds = opt("--gate-rounds") or DEFAULT_ROUNDS
    workload = bench.workload(expectations, "lab", config_name)

    def side(name: str, **kw: Any) -> Callable[[int], Round]:
        return lambda i: Round.of(measure_or_skip(name, workload, round=i, **kw), 0, i)

    if opt("--ab-config") or opt("--ab-server-url") or opt("--ab-python"):
        if opt("--ab-python"):
            candidate = dataclasses.replace(bench.config(config_name), python=opt("--ab-python"))
            b, mode = side(f"{config_name}@B", config=candidate), f"A/B: this environment against {opt('--ab-python')}"
        elif opt("--ab-server-url"):
            if config_name != "vllm":
                pytest.skip("an A/B of two deployments compares vllm (the reference, --server-url) with --ab-server-url")
            b, mode = side("vllm@B", config=bench.config("vllm"), server_url=opt("--ab-server-url")), \
                f"A/B: {opt('--server-url')} against {opt('--ab-server-url')}"
        else:
            if bench.config(opt("--ab-config")).engine != bench.config(config_name).engine:
                pytest.skip(f"an A/B of configs compares {opt('--ab-config')} with the config of its engine")
            b, mode = side(opt("--ab-config")), f"A/B: {config_name} against {opt('--ab-config')}"
        reference, current = run_interleaved(side(config_name), b, rounds)
        spread = None
    else:
        folder = Path(opt("--baseline-dir") or pytestconfig.rootpath / "baselines")
        try:
            calibration, reference = stored_baseline(folder / bench.settings.hardware.key, config_name)
        except (FileNotFoundError, ValueError) as e:
            pytest.fail(str(e), pytrace=False)
        current = run_rounds(side(config_name), rounds)
        spread = calibration.spread().get(config_name)
        mode = f"stored baseline {folder / bench.settings.hardware.key / 'rounds.json'}"
    report = GateReport(config_name, mode, rounds, verdicts(reference, current, spread=spread))
    gate_reports.append(report)
    assert not report.regressed, "regressed:\n" + "\n".join(v.describe() for v in report.regressed) \
        + "\n" + report.table()
